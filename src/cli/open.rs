//! `raywatch open`: the Grafana URL of a cluster's Ray dashboard (for a cluster
//! that ended, over the time range of its life), and the `ssh -L` line to reach it.

use anyhow::Result;

use super::{Exit, HintExt, fetch_status, not_running, runtime};
use crate::config::StackConfig;
use crate::escape;
use crate::history::{Entry, History};
use crate::home::Home;

/// Around a past cluster's life: its first scrape comes after it was first
/// seen, its last before its end was noticed.
const MARGIN_SECS: f64 = 60.0;

pub(super) fn open(home: &Home, name: &str) -> Result<Exit> {
    let rt = runtime()?;
    let report = match rt.block_on(fetch_status(home)) {
        Ok(mut r) => {
            rt.block_on(crate::ray_dashboard::annotate(&mut r));
            Some(r)
        }
        Err(e) if not_running(&e) => {
            // A past cluster's URL can still be printed; the stack must run to show it.
            if History::load(&home.history())?.find(name, None).is_none() {
                return Err(e);
            }
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(report) = &report
        && let Some(c) = report
            .clusters
            .iter()
            .find(|c| c.name == name && c.state == crate::status::ClusterState::Live)
    {
        match &c.grafana_url {
            Some(url) => println!("{}", escape::text(url)),
            None => println!(
                "Grafana is not running for this stack; with an existing Grafana, see `raywatch grafana dir`.\n\
                 Prometheus: {}/graph?g0.expr=up%7Bray_io_cluster%3D%22{}%22%7D",
                escape::text(&report.prometheus.url),
                escape::text(name)
            ),
        }
        if let Some(d) = &c.dashboard {
            println!("{}", dashboard_sign_in(d));
        }
        println!("# from a laptop: {}", crate::status::ssh_hint(report));
        return Ok(Exit::Success);
    }
    let history = History::load(&home.history())?;
    let entry = history
        .find(name, None)
        .ok_or_else(|| anyhow::anyhow!("no cluster is named {name:?}"))
        .hint("`raywatch status` lists the live clusters, `raywatch history` the past ones")?;
    let config = StackConfig::load(&home.config())?.unwrap_or_default();
    println!("{}", escape::text(&past_url(&config, entry)));
    match &report {
        Some(r) => println!("# from a laptop: {}", crate::status::ssh_hint(r)),
        None => println!("# raywatch is not running: `raywatch up` to view it"),
    }
    Ok(Exit::Success)
}

/// How to open a live cluster's Ray Dashboard: where its token is (never the token itself).
fn dashboard_sign_in(d: &crate::status::DashboardStatus) -> String {
    let url = escape::text(&d.url);
    match (d.job_api.as_str(), &d.token_file) {
        ("token", Some(f)) => format!(
            "# Ray Dashboard: {url} (token auth on: when it asks, paste the token from {}; `cat` it in your own terminal, never into a log)",
            escape::path(f)
        ),
        ("token", None) => format!(
            "# Ray Dashboard: {url} (token auth on: its token is in the RAY_AUTH_TOKEN it was started with)"
        ),
        ("open", _) => format!(
            "# Ray Dashboard: {url} (WARNING: no token auth: any local user can submit jobs that run as you; restart the cluster after `eval \"$(raywatch env)\"`)"
        ),
        _ => format!("# Ray Dashboard: {url}"),
    }
}

/// The URL of a past cluster over its life: Ray's dashboard in this stack's
/// Grafana (`from`/`to` in ms), else Prometheus' graph page with that range.
pub fn past_url(config: &StackConfig, e: &Entry) -> String {
    let from = e.first_seen_unix - MARGIN_SECS;
    let to = e
        .ended_unix
        .unwrap_or(e.last_seen_unix)
        .max(e.last_seen_unix)
        + MARGIN_SECS;
    let c = &e.cluster;
    if config.grafana_bin.is_some() {
        return format!(
            "{}&from={}&to={}",
            crate::grafana::cluster_url(config.grafana_port, &c.name, &c.session),
            (from * 1000.0) as i64,
            (to * 1000.0) as i64
        );
    }
    let expr = format!(
        "ray_node_cpu_utilization{{ray_io_cluster={},ray_session={}}}",
        crate::quote::label_value(&c.name),
        crate::quote::label_value(&c.session)
    );
    let end = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(to.max(0.0)),
    )
    .to_string()
    .replace('T', " ")
    .trim_end_matches('Z')
    .to_string();
    let range = format!("{}s", (to - from).max(60.0) as u64);
    let base = format!("http://127.0.0.1:{}/graph", config.prometheus_port);
    reqwest::Url::parse_with_params(
        &base,
        [
            ("g0.expr", expr.as_str()),
            ("g0.tab", "0"),
            ("g0.range_input", range.as_str()),
            ("g0.end_input", end.as_str()),
            ("g0.moment_input", end.as_str()),
        ],
    )
    .map(|u| u.to_string())
    .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Identity;

    fn entry() -> Entry {
        Entry {
            cluster: Identity {
                id: "x".into(),
                name: "alice-ray".into(),
                session: "session_2026-11-27_13-26-35_555015_2972".into(),
                session_dir: None,
                temp_dir: "/tmp/ray".into(),
                discovery_file: "/tmp/ray/f".into(),
                user: "alice".into(),
                host: "h".into(),
                source: "watch".into(),
                slurm_job_id: None,
                slurm_job_name: None,
            },
            first_seen_unix: 1_795_785_995.0,
            last_seen_unix: 1_795_791_731.0,
            ended_unix: Some(1_795_791_738.0),
            end_reason: Some("gone".into()),
            nodes_lost: Vec::new(),
        }
    }

    #[test]
    fn a_past_cluster_opens_over_its_life() {
        let mut config = StackConfig {
            prometheus_port: 9999,
            grafana_port: 3999,
            grafana_bin: Some("/usr/sbin/grafana".into()),
            ..Default::default()
        };
        let grafana = past_url(&config, &entry());
        assert!(
            grafana.starts_with("http://127.0.0.1:3999/d/")
                && grafana.contains("var-Cluster=alice-ray")
                && grafana.ends_with("&from=1795785935000&to=1795791798000"),
            "{grafana}"
        );
        config.grafana_bin = None;
        let prom = past_url(&config, &entry());
        let url = reqwest::Url::parse(&prom).unwrap();
        let q: std::collections::BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(url.port(), Some(9999));
        assert_eq!(
            q["g0.expr"],
            "ray_node_cpu_utilization{ray_io_cluster=\"alice-ray\",ray_session=\"session_2026-11-27_13-26-35_555015_2972\"}"
        );
        assert_eq!(q["g0.range_input"], "5863s");
        assert_eq!(q["g0.end_input"], "2026-11-27 15:03:18");
    }
}
