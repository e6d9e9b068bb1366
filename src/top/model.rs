//! What `raywatch top` shows: clusters and nodes built from batched query answers, their
//! sorting and filtering, and the plain-text and JSON forms of `top --once`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::queries::FIELD;
use crate::escape;
use crate::prometheus::Sample;
use crate::prometheus::{Point, RangeSeries, Series};

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

    /// Something is wrong: targets down, pending tasks growing, object store over 80 %.
    pub fn troubled(&self) -> bool {
        self.targets_down.unwrap_or(0) > 0 || self.pending_growing() || self.store_full()
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
    let mut fields: BTreeMap<Key, BTreeMap<&str, f64>> = BTreeMap::new();
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
    let mut out = Vec::new();
    for ((host, name, user), f) in fields {
        if name.is_empty() {
            continue;
        }
        let get = |k: &str| f.get(k).copied();
        let live = get("targets").is_some();
        let last_seen = get("last_seen");
        if !live {
            let Some(seen) = last_seen else { continue };
            if dead_for.is_some_and(|d| now - seen > d.as_secs_f64()) {
                continue;
            }
        }
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
            c.nodes_up = count(get("nodes_up").or(get("nodes_total").map(|_| 0.0)));
            c.nodes_total = count(get("nodes_total")).or(c.nodes_up);
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
        }
        out.push(c);
    }
    out
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

/// A column of the clusters view, for sorting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Name,
    User,
    Host,
    State,
    Age,
    Nodes,
    Cpu,
    Mem,
    Gpus,
    GpuUtil,
    GpuMem,
    Store,
    Tasks,
    Failed,
    Down,
    Samples,
}

impl Column {
    pub const ALL: [Column; 16] = [
        Column::Name,
        Column::User,
        Column::Host,
        Column::State,
        Column::Age,
        Column::Nodes,
        Column::Cpu,
        Column::Mem,
        Column::Gpus,
        Column::GpuUtil,
        Column::GpuMem,
        Column::Store,
        Column::Tasks,
        Column::Failed,
        Column::Down,
        Column::Samples,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Name => "CLUSTER",
            Column::User => "USER",
            Column::Host => "HOST",
            Column::State => "STATE",
            Column::Age => "AGE",
            Column::Nodes => "NODES",
            Column::Cpu => "CPU%",
            Column::Mem => "MEM",
            Column::Gpus => "GPUS",
            Column::GpuUtil => "GPU%",
            Column::GpuMem => "GMEM",
            Column::Store => "OBJSTORE",
            Column::Tasks => "RUN/PEND",
            Column::Failed => "FAIL5m",
            Column::Down => "DOWN",
            Column::Samples => "SAMPLES",
        }
    }

    fn number(self, c: &Cluster) -> Option<f64> {
        match self {
            Column::Age => c.age_seconds,
            Column::Nodes => c.nodes_up.map(|n| n as f64),
            Column::Cpu => c.cpu_percent,
            Column::Mem => c.mem_used_bytes,
            Column::Gpus => c.gpus,
            Column::GpuUtil => c.gpu_util_percent,
            Column::GpuMem => c.gpu_mem_used_bytes,
            Column::Store => c.object_store_used_bytes,
            Column::Tasks => c.tasks_running.map(|n| n as f64),
            Column::Failed => c.tasks_failed_5m.map(|n| n as f64),
            Column::Down => c.targets_down.map(|n| n as f64),
            Column::Samples => c.samples_per_scrape,
            _ => None,
        }
    }

    /// Orders two clusters by this column (absent values last), then by name.
    pub fn compare(self, a: &Cluster, b: &Cluster) -> std::cmp::Ordering {
        let by = match self {
            Column::Name => a.name.cmp(&b.name),
            Column::User => a.user.cmp(&b.user),
            Column::Host => a.host.cmp(&b.host),
            Column::State => a.state.cmp(&b.state),
            _ => match (self.number(a), self.number(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
        };
        by.then_with(|| a.key_ref().cmp(&b.key_ref()))
    }
}

/// The order of the clusters view by `column`: numbers biggest first, text A–Z,
/// absent values last; `reverse` flips it.
pub fn order(column: Column, reverse: bool, a: &Cluster, b: &Cluster) -> std::cmp::Ordering {
    let text = matches!(
        column,
        Column::Name | Column::User | Column::Host | Column::State
    );
    let o = match (text, column.number(a), column.number(b)) {
        (false, Some(x), Some(y)) => y.total_cmp(&x).then_with(|| a.key_ref().cmp(&b.key_ref())),
        _ => column.compare(a, b),
    };
    if reverse { o.reverse() } else { o }
}

/// Sorts in the [`order`] of `column`.
pub fn sort(clusters: &mut [Cluster], column: Column, reverse: bool) {
    clusters.sort_by(|a, b| order(column, reverse, a, b));
}

/// Whether a cluster matches the filter text (in its name, user or host; case-insensitive).
pub fn matches(c: &Cluster, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let f = filter.to_lowercase();
    [Some(&c.name), Some(&c.user), c.host.as_ref()]
        .into_iter()
        .flatten()
        .any(|s| s.to_lowercase().contains(&f))
}

/// A missing value.
pub const DASH: &str = "–";

pub fn bytes(v: Option<f64>) -> String {
    let Some(v) = v else { return DASH.into() };
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = v.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

pub fn used_of(used: Option<f64>, total: Option<f64>) -> String {
    if used.is_none() && total.is_none() {
        return DASH.into();
    }
    format!("{}/{}", bytes(used), bytes(total))
}

pub fn percent(v: Option<f64>) -> String {
    v.map_or(DASH.into(), |v| format!("{v:.0}"))
}

pub fn num(v: Option<u64>) -> String {
    v.map_or(DASH.into(), |v| v.to_string())
}

pub fn age(secs: Option<f64>) -> String {
    let Some(s) = secs else { return DASH.into() };
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A sparkline of percentages in block characters (` ` where no sample).
pub fn spark(points: &[Option<f64>]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    points
        .iter()
        .map(|p| match p {
            None => ' ',
            Some(v) => BARS[((v.clamp(0.0, 100.0) / 100.0) * 7.0).round() as usize],
        })
        .collect()
}

/// The text of each column of a cluster row (untrusted text escaped).
pub fn cells(c: &Cluster) -> Vec<String> {
    Column::ALL
        .iter()
        .map(|col| match col {
            Column::Name => escape::text(&c.name).into_owned(),
            Column::User => escape::text(&c.user).into_owned(),
            Column::Host => c
                .host
                .as_deref()
                .map_or(DASH.into(), |h| escape::text(h).into_owned()),
            Column::State => match c.state {
                Some(State::Live) => "live".into(),
                Some(State::Dead) => "dead".into(),
                None => DASH.into(),
            },
            Column::Age => age(c.age_seconds),
            Column::Nodes => match (c.nodes_up, c.nodes_total) {
                (None, None) => DASH.into(),
                (u, t) => format!("{}/{}", num(u), num(t)),
            },
            Column::Cpu => percent(c.cpu_percent),
            Column::Mem => used_of(c.mem_used_bytes, c.mem_total_bytes),
            Column::Gpus => match (c.gpus_used, c.gpus) {
                (None, None) => DASH.into(),
                (u, t) => format!(
                    "{}/{}",
                    u.map_or(DASH.into(), |u| format!("{u:.0}")),
                    t.map_or(DASH.into(), |t| format!("{t:.0}"))
                ),
            },
            Column::GpuUtil => percent(c.gpu_util_percent),
            Column::GpuMem => used_of(c.gpu_mem_used_bytes, c.gpu_mem_total_bytes),
            Column::Store => used_of(c.object_store_used_bytes, c.object_store_total_bytes),
            Column::Tasks => match (c.tasks_running, c.tasks_pending) {
                (None, None) => DASH.into(),
                (r, p) => format!("{}/{}", num(r), num(p)),
            },
            Column::Failed => num(c.tasks_failed_5m),
            Column::Down => num(c.targets_down),
            Column::Samples => c
                .samples_per_scrape
                .map_or(DASH.into(), |v| format!("{v:.0}")),
        })
        .collect()
}

/// `top --once`: the clusters view as a plain table.
pub fn text_table(clusters: &[Cluster]) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        Column::ALL
            .iter()
            .map(|c| c.title().to_string())
            .chain(["CPU/GPU 15m".to_string()])
            .collect(),
    ];
    for c in clusters {
        let mut r = cells(c);
        r.push(spark(&c.spark));
        rows.push(r);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if clusters.is_empty() {
        out.push_str("(no cluster)\n");
    }
    out
}

/// `top --once --json`.
#[derive(Serialize, Debug)]
pub struct Snapshot<'a> {
    pub schema: u32,
    /// Where the values come from ("this stack's Prometheus at …" or the `--prometheus` URL).
    pub source: String,
    /// Whether the per-cluster values were read from the recording rules' series
    /// (`recorded`) or asked live (`live`).
    pub values: super::Source,
    pub time_unix: f64,
    /// PromQL requests this snapshot cost.
    pub queries: u64,
    pub clusters: &'a [Cluster],
}

/// One node of the cluster view.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub instance: String,
    pub ip: String,
    /// "head" or "worker" (Ray's `RayNodeType`, or `IsHeadNode`).
    pub kind: Option<String>,
    pub cpu_percent: Option<f64>,
    pub cpus: Option<f64>,
    pub mem_used_bytes: Option<f64>,
    pub mem_total_bytes: Option<f64>,
    pub disk_used_bytes: Option<f64>,
    pub disk_total_bytes: Option<f64>,
    pub object_store_used_bytes: Option<f64>,
    pub object_store_total_bytes: Option<f64>,
    /// Per GPU: index, utilisation (%), memory used and total (bytes).
    pub gpus: Vec<Gpu>,
}

#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Gpu {
    pub index: String,
    pub name: Option<String>,
    pub util_percent: Option<f64>,
    pub mem_used_bytes: Option<f64>,
    pub mem_total_bytes: Option<f64>,
}

/// The nodes of one cluster from an answer of [`super::queries::nodes`], keyed by IP.
pub fn nodes(samples: &[Sample]) -> Vec<Node> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut store: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    let mut gpus: BTreeMap<(String, String), Gpu> = BTreeMap::new();
    let mut disk_free: BTreeMap<String, f64> = BTreeMap::new();
    let mut gram_free: BTreeMap<(String, String), f64> = BTreeMap::new();
    for s in samples {
        let (Some(field), Some(v)) = (s.metric.get(FIELD), value(&s.value)) else {
            continue;
        };
        let m = &s.metric;
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        match field.as_str() {
            "store_used" | "store_free" => {
                let e = store.entry(get("NodeAddress")).or_default();
                if field == "store_used" {
                    e.0 = Some(v);
                } else {
                    e.1 = Some(v);
                }
                continue;
            }
            "gpu_util" | "gram_used_mib" | "gram_free_mib" => {
                let k = (get("ip"), get("GpuIndex"));
                if field == "gram_free_mib" {
                    gram_free.insert(k, v * 1048576.0);
                    continue;
                }
                let g = gpus.entry(k.clone()).or_insert_with(|| Gpu {
                    index: k.1.clone(),
                    name: m.get("GpuDeviceName").cloned(),
                    ..Default::default()
                });
                if field == "gpu_util" {
                    g.util_percent = Some(v);
                } else {
                    g.mem_used_bytes = Some(v * 1048576.0);
                }
                continue;
            }
            _ => {}
        }
        let ip = get("ip");
        let n = nodes.entry(ip.clone()).or_insert_with(|| Node {
            ip: ip.clone(),
            instance: get("instance"),
            ..Default::default()
        });
        if n.kind.is_none() {
            n.kind = m.get("RayNodeType").cloned().or_else(|| {
                m.get("IsHeadNode")
                    .map(|h| if h == "true" { "head" } else { "worker" }.to_string())
            });
        }
        match field.as_str() {
            "cpu" => n.cpu_percent = Some(v),
            "cpus" => n.cpus = Some(v),
            "mem_used" => n.mem_used_bytes = Some(v),
            "mem_total" => n.mem_total_bytes = Some(v),
            "disk_used" => n.disk_used_bytes = Some(v),
            "disk_free" => {
                disk_free.insert(ip, v);
            }
            _ => {}
        }
    }
    for (ip, n) in nodes.iter_mut() {
        if let (Some(u), Some(f)) = (n.disk_used_bytes, disk_free.get(ip)) {
            n.disk_total_bytes = Some(u + f);
        }
        if let Some((u, f)) = store.get(ip) {
            n.object_store_used_bytes = *u;
            n.object_store_total_bytes = match (u, f) {
                (Some(u), Some(f)) => Some(u + f),
                _ => None,
            };
        }
    }
    for ((ip, idx), mut g) in gpus {
        if let (Some(u), Some(f)) = (g.mem_used_bytes, gram_free.get(&(ip.clone(), idx))) {
            g.mem_total_bytes = Some(u + f);
        }
        nodes
            .entry(ip.clone())
            .or_insert_with(|| Node {
                ip,
                ..Default::default()
            })
            .gpus
            .push(g);
    }
    let mut out: Vec<Node> = nodes.into_values().collect();
    // The head first, then by address.
    out.sort_by(|a, b| {
        (a.kind.as_deref() != Some("head"), &a.ip).cmp(&(b.kind.as_deref() != Some("head"), &b.ip))
    });
    out
}

/// The cluster view's charts: one series per name ("cpu", "gpu", "mem", "running", "pending").
pub fn charts(
    series: &[RangeSeries],
    start: f64,
    end: f64,
    step: f64,
) -> BTreeMap<String, Vec<Option<f64>>> {
    series
        .iter()
        .filter_map(|s| {
            let field = s.metric.get(FIELD)?;
            Some((field.clone(), points(&s.values, start, end, step)))
        })
        .collect()
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
