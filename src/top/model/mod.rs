//! What `raywatch top` shows: clusters built from batched query answers ([`clusters`]),
//! with their sparklines; [`nodes`] builds one cluster's nodes and charts, [`column`] sorts
//! and filters, [`format`] writes values and the plain-text and JSON forms of `top --once`.

mod column;
mod format;
mod nodes;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::prometheus::{Point, Series};

pub use column::{Column, matches, order, sort};
pub use format::{DASH, Snapshot, age, bytes, cells, num, percent, spark, text_table, used_of};
pub use nodes::{ClusterAlert, Gpu, Node, alerts, charts, nodes};

/// The labels of a batched per-cluster answer; any other label is skipped unread.
#[derive(serde::Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Labels {
    #[serde(default)]
    pub rw_field: String,
    #[serde(default)]
    pub ray_host: String,
    #[serde(default)]
    pub ray_io_cluster: String,
    #[serde(default)]
    pub ray_user: String,
}

impl Labels {
    fn key(&self) -> Key {
        (
            self.ray_host.clone(),
            self.ray_io_cluster.clone(),
            self.ray_user.clone(),
        )
    }
}

/// Whether a cluster's targets are scraped now.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Live,
    Dead,
}

/// One row of the clusters view (and of `top --once --json`).
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub user: String,
    /// `ray_host`, on series read from a central store; None on this machine's.
    pub host: Option<String>,
    pub state: Option<State>,
    /// When its targets were last scraped (unix seconds).
    pub last_seen_unix: Option<f64>,
    /// Since its oldest Ray process started.
    pub age_seconds: Option<f64>,
    pub nodes_up: Option<u64>,
    pub nodes_total: Option<u64>,
    /// Nodes that reported within the last [`crate::top::queries::LOST_WINDOW`]
    /// and that Ray no longer lists (a worker died or left); 0 when none.
    pub nodes_lost: Option<u64>,
    /// The average of its nodes' CPU %.
    pub cpu_percent: Option<f64>,
    pub mem_used_bytes: Option<f64>,
    pub mem_total_bytes: Option<f64>,
    pub gpus: Option<f64>,
    pub gpus_used: Option<f64>,
    pub gpu_util_percent: Option<f64>,
    pub gpu_mem_used_bytes: Option<f64>,
    pub gpu_mem_total_bytes: Option<f64>,
    pub object_store_used_bytes: Option<f64>,
    pub object_store_total_bytes: Option<f64>,
    pub tasks_running: Option<u64>,
    pub tasks_pending: Option<u64>,
    /// Pending tasks two minutes ago (pending tasks growing is trouble).
    pub tasks_pending_before: Option<u64>,
    pub tasks_finished: Option<u64>,
    pub tasks_failed_5m: Option<u64>,
    /// Alerts firing for it (`raywatch alerts` lists them); 0 when none.
    pub alerts_firing: Option<u64>,
    pub targets: Option<u64>,
    pub targets_down: Option<u64>,
    pub samples_per_scrape: Option<f64>,
    /// "cpu" or "gpu" (when the cluster has GPUs): what `spark` holds.
    pub spark_kind: Option<String>,
    /// Utilisation (%) over the last 15 minutes, oldest first; None where no sample.
    pub spark: Vec<Option<f64>>,
}

/// A cluster's identity: host (empty on this machine), name, user.
pub type Key = (String, String, String);

impl Cluster {
    pub fn key(&self) -> Key {
        (
            self.host.clone().unwrap_or_default(),
            self.name.clone(),
            self.user.clone(),
        )
    }

    /// [`Cluster::key`] without copies, for comparisons.
    pub fn key_ref(&self) -> (&str, &str, &str) {
        (self.host.as_deref().unwrap_or(""), &self.name, &self.user)
    }

    pub fn is_live(&self) -> bool {
        self.state == Some(State::Live)
    }

    /// Object store use above 80 %.
    pub fn store_full(&self) -> bool {
        matches!((self.object_store_used_bytes, self.object_store_total_bytes), (Some(u), Some(t)) if t > 0.0 && u / t > 0.8)
    }

    /// More tasks pending than two minutes ago.
    pub fn pending_growing(&self) -> bool {
        matches!((self.tasks_pending, self.tasks_pending_before), (Some(now), Some(before)) if now > before)
    }
}

fn value(v: &(f64, String)) -> Option<f64> {
    v.1.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn count(v: Option<f64>) -> Option<u64> {
    v.map(|v| v.max(0.0).round() as u64)
}

/// The clusters of one batched answer ([`super::queries::clusters`]) at `now`:
/// live ones (targets scraped now) and those dead for less than `dead_for`
/// (every remembered one when `dead_for` is None).
pub fn clusters(samples: &[Point<Labels>], now: f64, dead_for: Option<Duration>) -> Vec<Cluster> {
    let mut fields: BTreeMap<Key, Fields> = BTreeMap::new();
    for s in samples {
        let Some(v) = value(&s.value) else { continue };
        if s.metric.rw_field.is_empty() || s.metric.ray_io_cluster.is_empty() {
            continue;
        }
        fields
            .entry(s.metric.key())
            .or_default()
            .insert(s.metric.rw_field.as_str(), v);
    }
    fields
        .into_iter()
        .filter_map(|(key, f)| cluster(key, &f, now, dead_for))
        .collect()
}

/// One cluster's values of a batched answer, by field name.
type Fields<'a> = BTreeMap<&'a str, f64>;

/// The cluster of `key` from its fields; None when it has no name, or is dead
/// for longer than `dead_for`.
fn cluster(key: Key, f: &Fields, now: f64, dead_for: Option<Duration>) -> Option<Cluster> {
    let (host, name, user) = key;
    if name.is_empty() {
        return None;
    }
    let get = |k: &str| f.get(k).copied();
    let live = get("targets").is_some();
    let last_seen = get("last_seen");
    if !live {
        let seen = last_seen?;
        if dead_for.is_some_and(|d| now - seen > d.as_secs_f64()) {
            return None;
        }
    }
    let mut c = Cluster {
        name,
        user,
        host: (!host.is_empty()).then_some(host),
        state: Some(if live { State::Live } else { State::Dead }),
        last_seen_unix: if live { Some(now) } else { last_seen },
        age_seconds: if live {
            get("started").map(|s| (now - s).max(0.0))
        } else {
            None
        },
        targets: count(get("targets")),
        targets_down: if live {
            count(get("targets_down").or(Some(0.0)))
        } else {
            None
        },
        samples_per_scrape: get("samples"),
        ..Default::default()
    };
    if live {
        add_live_values(&mut c, f);
    }
    Some(c)
}

/// What only a live cluster shows: its nodes, resources and tasks.
fn add_live_values(c: &mut Cluster, f: &Fields) {
    let get = |k: &str| f.get(k).copied();
    // A cluster that ran a task exports ray_tasks: its states without a series are 0.
    let any_tasks = [
        "tasks_running",
        "tasks_pending",
        "tasks_finished",
        "tasks_failed_5m",
    ]
    .iter()
    .any(|k| f.contains_key(k));
    let tasks = |k: &str| count(get(k).or(any_tasks.then_some(0.0)));
    let plus = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
    let mib = |v: Option<f64>| v.map(|v| v * 1024.0 * 1024.0);
    c.nodes_up = count(get("nodes_up").or(get("nodes_total").map(|_| 0.0)));
    // Ray counts a new node a little after its metrics arrive: never fewer in total than up.
    c.nodes_total = count(get("nodes_total")).max(c.nodes_up);
    c.nodes_lost = count(get("nodes_lost").or(c.nodes_up.map(|_| 0.0)));
    c.cpu_percent = get("cpu");
    c.mem_used_bytes = get("mem_used");
    c.mem_total_bytes = get("mem_total");
    c.gpus = get("gpus");
    c.gpus_used = get("gpus_used");
    c.gpu_util_percent = get("gpu_util");
    c.gpu_mem_used_bytes = mib(get("gram_used_mib"));
    c.gpu_mem_total_bytes = mib(plus(get("gram_used_mib"), get("gram_free_mib")));
    c.object_store_used_bytes = get("store_used");
    c.object_store_total_bytes = plus(get("store_used"), get("store_free"));
    c.tasks_running = tasks("tasks_running");
    c.tasks_pending = tasks("tasks_pending");
    c.tasks_pending_before = count(get("tasks_pending_before"));
    c.tasks_finished = tasks("tasks_finished");
    c.tasks_failed_5m = tasks("tasks_failed_5m");
    c.alerts_firing = count(get("alerts_firing").or(Some(0.0)));
}

/// Puts each cluster's sparkline (GPU when it has GPUs, else CPU) from a
/// range answer of [`super::queries::sparklines`] taken `start` to `end` every `step`.
pub fn add_sparklines(
    clusters: &mut [Cluster],
    series: &[Series<Labels>],
    start: f64,
    end: f64,
    step: f64,
) {
    let mut by: BTreeMap<(Key, &str), &[(f64, String)]> = BTreeMap::new();
    for s in series {
        by.insert((s.metric.key(), s.metric.rw_field.as_str()), &s.values);
    }
    for c in clusters {
        let kind = if c.gpus.unwrap_or(0.0) > 0.0 && by.contains_key(&(c.key(), "gpu")) {
            "gpu"
        } else {
            "cpu"
        };
        if let Some(s) = by.get(&(c.key(), kind)) {
            c.spark = points(s, start, end, step);
            c.spark_kind = Some(kind.into());
        }
    }
}

/// A range series on a fixed grid, `None` where it has no sample.
pub fn points(values: &[(f64, String)], start: f64, end: f64, step: f64) -> Vec<Option<f64>> {
    let n = ((end - start) / step).round() as usize + 1;
    let mut out = vec![None; n];
    for (t, v) in values {
        let i = ((t - start) / step).round();
        if i >= 0.0 && (i as usize) < n {
            out[i as usize] = v.parse::<f64>().ok().filter(|v| v.is_finite());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(field: &str, name: &str, v: &str) -> Point<Labels> {
        Point {
            metric: Labels {
                rw_field: field.into(),
                ray_io_cluster: name.into(),
                ray_user: "alice".into(),
                ..Default::default()
            },
            value: (0.0, v.to_string()),
        }
    }

    #[test]
    fn absent_series_are_none_not_zero() {
        let c = clusters(&[sample("targets", "a", "2")], 100.0, None);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].cpu_percent, None);
        assert_eq!(c[0].tasks_running, None, "no ray_tasks: no task count");
        assert_eq!(c[0].targets_down, Some(0));
        let c = clusters(
            &[
                sample("targets", "a", "2"),
                sample("tasks_finished", "a", "3"),
            ],
            100.0,
            None,
        );
        assert_eq!(c[0].tasks_running, Some(0), "ray_tasks without RUNNING: 0");
    }

    fn nodes_cell(c: &Cluster) -> String {
        let i = Column::ALL
            .iter()
            .position(|k| *k == Column::Nodes)
            .unwrap();
        format::cells(c).swap_remove(i)
    }

    #[test]
    fn never_more_nodes_up_than_in_total_and_lost_ones_are_counted() {
        let live = |extra: &[(&str, &str)]| {
            let mut s = vec![sample("targets", "a", "3"), sample("last_seen", "a", "100")];
            s.extend(extra.iter().map(|(f, v)| sample(f, "a", v)));
            clusters(&s, 100.0, None).remove(0)
        };
        // Ray's own count lags a joining node.
        let c = live(&[("nodes_up", "2"), ("nodes_total", "1")]);
        assert_eq!(
            (c.nodes_up, c.nodes_total, c.nodes_lost),
            (Some(2), Some(2), Some(0))
        );
        assert_eq!(nodes_cell(&c), "2/2");
        // A worker gone from Ray's list while Ray still counts it.
        let c = live(&[("nodes_up", "2"), ("nodes_total", "3"), ("nodes_lost", "1")]);
        assert_eq!(
            (c.nodes_up, c.nodes_total, c.nodes_lost),
            (Some(2), Some(3), Some(1))
        );
        assert_eq!(nodes_cell(&c), "2/3 -1");
        // No node series at all: nothing known, nothing lost.
        let c = live(&[]);
        assert_eq!(
            (c.nodes_up, c.nodes_total, c.nodes_lost),
            (None, None, None)
        );
    }

    #[test]
    fn never_more_nodes_up_than_in_total() {
        // A worker's metrics arrive before Ray's own count has it.
        let s = [
            sample("targets", "a", "4"),
            sample("nodes_up", "a", "2"),
            sample("nodes_total", "a", "1"),
        ];
        let c = clusters(&s, 100.0, None);
        assert_eq!((c[0].nodes_up, c[0].nodes_total), (Some(2), Some(2)));
        let s = [sample("targets", "a", "4"), sample("nodes_total", "a", "3")];
        let c = clusters(&s, 100.0, None);
        assert_eq!((c[0].nodes_up, c[0].nodes_total), (Some(0), Some(3)));
    }

    #[test]
    fn a_live_cluster_with_alerts_firing_says_how_many() {
        let s = [
            sample("targets", "a", "1"),
            sample("last_seen", "a", "100"),
            sample("alerts_firing", "a", "2"),
        ];
        let c = clusters(&s, 100.0, None).remove(0);
        assert_eq!(c.alerts_firing, Some(2));
        let state = Column::ALL
            .iter()
            .position(|k| *k == Column::State)
            .unwrap();
        assert_eq!(format::cells(&c)[state], "live !2");
        let quiet = clusters(&s[..2], 100.0, None).remove(0);
        assert_eq!(quiet.alerts_firing, Some(0));
        assert_eq!(format::cells(&quiet)[state], "live");
    }

    #[test]
    fn dead_clusters_stay_for_their_bound_then_go() {
        let s = [sample("last_seen", "gone", "100")];
        let dead = clusters(&s, 150.0, Some(Duration::from_secs(60)));
        assert_eq!(dead[0].state, Some(State::Dead));
        assert!(clusters(&s, 170.0, Some(Duration::from_secs(60))).is_empty());
        assert_eq!(
            clusters(&s, 10_000.0, None).len(),
            1,
            "h shows every remembered one"
        );
    }

    #[test]
    fn sorting_puts_big_numbers_first_and_absent_last() {
        let mut v: Vec<Cluster> = [(Some(5.0), "a"), (None, "b"), (Some(50.0), "c")]
            .into_iter()
            .map(|(cpu, n)| Cluster {
                name: n.into(),
                cpu_percent: cpu,
                ..Default::default()
            })
            .collect();
        sort(&mut v, Column::Cpu, false);
        let names: Vec<&str> = v.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        sort(&mut v, Column::Name, false);
        assert_eq!(v[0].name, "a");
    }

    #[test]
    fn formats() {
        assert_eq!(bytes(Some(2.5 * 1024.0 * 1024.0 * 1024.0)), "2.5G");
        assert_eq!(bytes(None), DASH);
        assert_eq!(age(Some(3725.0)), "1h02m");
        assert_eq!(spark(&[Some(0.0), None, Some(100.0)]), "▁ █");
    }
}
