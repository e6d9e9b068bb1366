//! `raywatch export`: one cluster's series over its life, as OpenMetrics text in a file.

use std::path::Path;

use anyhow::{Result, anyhow};

use super::{Exit, HintExt, runtime, unless_stack_down};
use crate::config::StackConfig;
use crate::escape;
use crate::history::{self, History};
use crate::home::Home;

/// Around a cluster's life: its first and last samples lie within it, and a
/// minute more costs nothing.
const MARGIN_SECS: f64 = 60.0;

pub(super) fn export(
    home: &Home,
    name: &str,
    session: Option<&str>,
    from: Option<f64>,
    to: Option<f64>,
    out: &Path,
) -> Result<Exit> {
    let rt = runtime()?;
    let Some(config) = StackConfig::load(&home.config())? else {
        return Err(rt.block_on(unless_stack_down(
            home,
            anyhow!("{} is missing", escape::path(&home.config())),
        )));
    };
    if config.agent {
        return Err(anyhow!(
            "Prometheus runs as an agent here: it keeps no data to export"
        ))
        .hint("export from the central store that receives this host's remote write");
    }
    let (selector, from, to) = span(home, name, session, from, to)?;
    let stats = rt.block_on(async {
        let client = crate::prometheus::Client::for_home(home)?;
        let req = crate::export::Request {
            client: &client,
            selector,
            from,
            to,
            interval: config.scrape_interval,
        };
        match crate::export::to_file(&req, out).await {
            Ok(s) => Ok(s),
            Err(e) => Err(unless_stack_down(home, e).await),
        }
    })?;
    eprintln!(
        "wrote {} samples of {} series ({} metrics) from {} to {} to {} ({} bytes)",
        stats.samples,
        stats.series,
        stats.metrics,
        history::when(from),
        history::when(to),
        escape::path(out),
        stats.bytes
    );
    eprintln!(
        "# into another Prometheus: promtool tsdb create-blocks-from openmetrics {} DATA_DIR{}",
        escape::path(out),
        if out.extension().is_some_and(|e| e == "gz") {
            " (gunzip it first)"
        } else {
            ""
        }
    );
    Ok(Exit::Success)
}

/// Label matchers: (name, value).
type Selector = Vec<(String, String)>;

/// The series to export (the cluster, and its session when known) and the span:
/// the cluster's life from the history (with a margin) unless `--from`/`--to`
/// say otherwise, never past now.
fn span(
    home: &Home,
    name: &str,
    session: Option<&str>,
    from: Option<f64>,
    to: Option<f64>,
) -> Result<(Selector, f64, f64)> {
    let now = crate::clock::unix_now();
    let history = History::load(&home.history())?;
    let mut selector = vec![("ray_io_cluster".to_string(), name.to_string())];
    let (from, to) =
        match history.find(name, session) {
            Some(e) => {
                selector.push(("ray_session".into(), e.cluster.session.clone()));
                let end = if e.ended() || !super::history::daemon_running(home) {
                    e.ended_unix
                        .unwrap_or(e.last_seen_unix)
                        .max(e.last_seen_unix)
                        + MARGIN_SECS
                } else {
                    now
                };
                (
                    from.unwrap_or(e.first_seen_unix - MARGIN_SECS),
                    to.unwrap_or(end),
                )
            }
            None => {
                if let Some(s) = session {
                    selector.push(("ray_session".into(), s.to_string()));
                }
                let Some(from) = from else {
                    return Err(anyhow!(
                    "no cluster named {name:?}{} is in the history, so its life is unknown",
                    session
                        .map(|s| format!(" with session {s:?}"))
                        .unwrap_or_default()
                ))
                .hint("`raywatch history` lists the clusters; for another, give --from (and --to)");
                };
                (from, to.unwrap_or(now))
            }
        };
    // Nothing is in Prometheus past now (a margin may reach beyond it).
    let to = to.min(now);
    if from >= to {
        return Err(anyhow!(
            "--from ({}) is not before --to ({})",
            history::when(from),
            history::when(to)
        ))
        .hint("give --from earlier than --to");
    }
    Ok((selector, from, to))
}
