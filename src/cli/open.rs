//! `raywatch open`: the Grafana URL of a cluster's Ray dashboard, and the `ssh -L` line to reach it.

use anyhow::Result;

use super::{Exit, HintExt, fetch_status, runtime};
use crate::escape;
use crate::home::Home;

pub(super) fn open(home: &Home, name: &str) -> Result<Exit> {
    let rt = runtime()?;
    let report = rt.block_on(fetch_status(home))?;
    let c = report
        .clusters
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| anyhow::anyhow!("no cluster is named {name:?}"))
        .hint("`raywatch status` lists the clusters")?;
    match &c.grafana_url {
        Some(url) => println!("{}", escape::text(url)),
        None => println!(
            "Grafana is not running for this stack; with an existing Grafana, see `raywatch grafana dir`.\n\
             Prometheus: {}/graph?g0.expr=up%7Bray_io_cluster%3D%22{}%22%7D",
            escape::text(&report.prometheus.url),
            escape::text(name)
        ),
    }
    println!("# from a laptop: {}", crate::status::ssh_hint(&report));
    Ok(Exit::Success)
}
