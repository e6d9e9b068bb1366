//! `raywatch top`: every Ray cluster of this stack's Prometheus (or a central store) on one
//! terminal screen, from a constant number of batched PromQL queries per refresh.
//!
//! [`queries`] writes the PromQL, [`model`] turns answers into rows (and `--once` text or
//! JSON), [`ui`] draws them with ratatui and reads the keys. A refresh is [`fetch_clusters`]
//! and, in the cluster view, [`fetch_cluster`] (two more queries). Where the stack's
//! Prometheus records [`rules`], a refresh reads them (four queries sent together: the
//! clusters' values in two parts, when each was last seen, the sparklines); elsewhere it
//! asks the values live (four queries too: the values in three parts, the sparklines).
//! [`source`] tells which, once.

pub mod model;
pub mod queries;
pub mod rules;
pub mod ui;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::home::Home;
use crate::prometheus::Counted;
use model::{Cluster, Key, Node};

/// How long a dead cluster stays on screen, greyed ($RAYWATCH_TOP_DEAD_FOR shortens it for tests).
pub const DEAD_FOR: Duration = Duration::from_secs(600);
/// How far back `h` (every remembered cluster) looks.
pub const REMEMBER_ALL: Duration = Duration::from_secs(24 * 3600);
/// The sparkline column's window and resolution.
pub const SPARK_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const SPARK_POINTS: u32 = 30;

/// What a refresh of the clusters view found.
#[derive(Debug, Clone)]
pub struct Clusters {
    pub clusters: Vec<Cluster>,
    pub time_unix: f64,
    /// Requests it cost, and how long they took.
    pub queries: u64,
    pub took: Duration,
}

/// What a refresh of one cluster's view found.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    pub nodes: Vec<Node>,
    /// Its alerts firing or pending.
    pub alerts: Vec<model::ClusterAlert>,
    pub charts: BTreeMap<String, Vec<Option<f64>>>,
    pub window: Duration,
    pub grafana_url: Option<String>,
}

/// Unix seconds now.
pub fn now_unix() -> f64 {
    crate::clock::unix_now()
}

/// The range `[start, end]` of `window` ending at the last multiple of `step` (so the
/// points of successive refreshes line up).
fn grid(window: Duration, points: u32) -> (f64, f64, Duration) {
    let step = window / points;
    let s = step.as_secs_f64();
    let end = (now_unix() / s).floor() * s;
    (end - window.as_secs_f64(), end, step)
}

/// Where a refresh reads the per-cluster values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The series [`rules`] records (the stack's own Prometheus).
    Recorded,
    /// The live expressions of [`queries`] (a store without the rules, or `--live`).
    Live,
}

/// Whether `api` records [`rules`] (one request to `/api/v1/rules`, at start). Asked
/// of the rules rather than of the recorded series: with no cluster yet there are no
/// series either way, and a central store holding a few hosts' recorded series would
/// show only those. An API without the rules API (or a failing one) is read live.
pub async fn source(api: &Counted) -> Source {
    match api.api.recording_rules().await {
        Ok(groups) if rules::recorded(&groups) => Source::Recorded,
        Ok(_) => Source::Live,
        Err(e) => {
            tracing::debug!("no recording rules, so live queries: {e:#}");
            Source::Live
        }
    }
}

/// Every cluster (live, and dead for less than `dead_for`; every one remembered
/// in the last day when `show_all`) with its sparkline: four queries sent together,
/// from the recorded series or live.
pub async fn fetch_clusters(
    api: &Counted,
    source: Source,
    dead_for: Duration,
    show_all: bool,
) -> Result<Clusters> {
    let t0 = Instant::now();
    let before = api.counter.get();
    let remember = if show_all { REMEMBER_ALL } else { dead_for };
    let (start, end, step) = grid(SPARK_WINDOW, SPARK_POINTS);
    // Recorded: two parts and `last_seen`; live: the values in three parts.
    let (parts, spark) = match source {
        Source::Recorded => (rules::clusters(remember, 2), rules::sparklines()),
        Source::Live => (queries::clusters_split(remember, 3), queries::sparklines()),
    };
    let [a, b, c]: [String; 3] = parts.try_into().expect("three queries");
    let (a, b, c, series) = tokio::join!(
        api.instant_as::<model::Labels>(&a),
        api.instant_as::<model::Labels>(&b),
        api.instant_as::<model::Labels>(&c),
        api.range::<model::Labels>(&spark, start, end, step)
    );
    let mut samples = a?;
    samples.extend(b?);
    samples.extend(c?);
    let now = now_unix();
    let mut clusters = model::clusters(&samples, now, (!show_all).then_some(dead_for));
    model::add_sparklines(&mut clusters, &series?, start, end, step.as_secs_f64());
    Ok(Clusters {
        clusters,
        time_unix: now,
        queries: api.counter.get() - before,
        took: t0.elapsed(),
    })
}

/// One cluster's nodes and charts over `window`, and its Grafana URL when this
/// stack's Grafana runs (from the daemon, when `home` is given).
pub async fn fetch_cluster(
    api: &Counted,
    key: &Key,
    window: Duration,
    home: Option<&Home>,
) -> Result<Detail> {
    let (host, name, _) = key;
    let (start, end, step) = grid(window, 60);
    let (nodes, charts) = (queries::nodes(host, name), queries::charts(host, name));
    let alerts = queries::alerts(host, name);
    let (samples, series, alerts) = tokio::join!(
        api.instant(&nodes),
        api.range::<BTreeMap<String, String>>(&charts, start, end, step),
        api.instant(&alerts)
    );
    let grafana_url = match home {
        Some(home) if host.is_empty() => grafana_url(home, name).await,
        _ => None,
    };
    Ok(Detail {
        nodes: model::nodes(&samples?),
        alerts: model::alerts(&alerts?),
        charts: model::charts(&series?, start, end, step.as_secs_f64()),
        window,
        grafana_url,
    })
}

/// The Grafana URL of a cluster's Ray dashboard, from the daemon's status report.
async fn grafana_url(home: &Home, name: &str) -> Option<String> {
    let report = crate::api::request(&home.socket(), &crate::api::StatusRequest)
        .await
        .ok()?;
    report
        .clusters
        .into_iter()
        .find(|c| c.name == name)
        .and_then(|c| c.grafana_url)
}

/// Asserts that `promtool check rules` accepts `text` as a rules file (promtool
/// parses every expression in it as PromQL). Fails without a promtool, which
/// `scripts/test` installs (Debian's `prometheus` carries it).
#[cfg(test)]
pub(crate) fn assert_promtool_accepts_rules(text: &str) {
    let promtool = which::which("promtool")
        .expect("these tests need promtool on PATH: scripts/test installs Debian's prometheus");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    fs_err::write(&path, text).unwrap();
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
