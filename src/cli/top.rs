//! `raywatch top`: picks the query API (this stack's Prometheus or `--prometheus URL`), then runs
//! the screen of [`crate::top::ui`] or prints one snapshot (`--once [--json]`).

use std::io::IsTerminal;

use anyhow::{Result, anyhow};

use super::{Exit, TopArgs, runtime, unless_stack_down};
use crate::error::HintExt;
use crate::home::Home;
use crate::prometheus::{Client, Counted, Counter};
use crate::top;

pub(super) fn top(home: impl Fn() -> Result<Home>, args: TopArgs) -> Result<Exit> {
    let dead_for = match crate::env::top_dead_for() {
        Some(v) => {
            crate::config::parse_duration(&v).map_err(|e| anyhow!("RAYWATCH_TOP_DEAD_FOR: {e}"))?
        }
        None => top::DEAD_FOR,
    };
    let rt = runtime()?;
    let (api, home) = match &args.prometheus {
        Some(url) => (
            Client::remote(
                url,
                args.bearer_file.as_deref(),
                args.basic_auth_file.as_deref(),
            )?,
            None,
        ),
        None => {
            let home = home()?;
            let api = match Client::for_queries(&home) {
                Ok(api) => api,
                Err(e) => return Err(rt.block_on(unless_stack_down(&home, e))),
            };
            (api, Some(home))
        }
    };
    let terminal = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if !args.once && !terminal {
        return Err(anyhow!("raywatch top needs a terminal"))
            .hint("for scripts and logs: raywatch top --once [--json]");
    }
    let api = api.counted(Counter::default());
    let source = if args.live {
        top::Source::Live
    } else {
        rt.block_on(top::source(&api))
    };
    let first = rt.block_on(top::fetch_clusters(&api, source, dead_for, false));
    let mut first = match (first, &home) {
        (Ok(c), _) => c,
        (Err(e), Some(home)) => return Err(rt.block_on(unless_stack_down(home, e))),
        (Err(e), None) => return Err(e),
    };
    if !args.once {
        drop(rt);
        top::ui::run(api, source, home, first, args.interval, dead_for)?;
        return Ok(Exit::Success);
    }
    print_once(&api, source, &mut first, args.json)?;
    Ok(Exit::Success)
}

/// `--once`: the clusters view sorted by name, as a table or (`--json`) a snapshot.
fn print_once(
    api: &Counted,
    source: top::Source,
    first: &mut top::Clusters,
    json: bool,
) -> Result<()> {
    top::model::sort(&mut first.clusters, top::model::Column::Name, false);
    if json {
        let snapshot = top::model::Snapshot {
            schema: 1,
            source: api.api.describe(),
            values: source,
            time_unix: first.time_unix,
            queries: first.queries,
            clusters: &first.clusters,
        };
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print!("{}", top::model::text_table(&first.clusters));
    }
    Ok(())
}
