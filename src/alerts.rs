//! The alert rules of a stack: what its Prometheus alerts on for every Ray cluster, as typed rules.
//!
//! Ray ships no alert rules. These are written on the series every stack has:
//! Ray's own (tasks, nodes, object store, GPUs, disks, its memory monitor's
//! kills), raywatch's own (how each cluster ended, its nodes lost: see
//! `daemon::metrics`), `up` of the targets raywatch publishes, and
//! Prometheus' own (remote write, the sample limit). Each rule carries a
//! severity, a `for`, a summary naming the cluster, its user and host, and a
//! description saying what to do. [`rules`] renders them for
//! `<home>/prometheus/alerts.yml`, which is checked with `promtool check
//! rules` before it replaces the old file, like every file raywatch hands
//! Prometheus.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The rule group's name in alerts.yml and in Prometheus' `/api/v1/rules`.
pub const GROUP: &str = "raywatch_alerts";

/// What identifies a cluster on every series (`ray_host` on series that left
/// their machine; on a stack's own, Prometheus adds it as an external label).
const KEY: &str = "ray_host, ray_io_cluster, ray_user";

/// Ray's task states that mean work not done yet (see `top`'s queries).
const UNFINISHED: &str =
    "RUNNING|RUNNING_IN_RAY_GET|RUNNING_IN_RAY_WAIT|PENDING.*|SUBMITTED_TO_WORKER";

/// The thresholds people change (flags of `up`); the rest are fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// GPUs held by a cluster below this utilisation (%) ...
    pub gpu_idle_percent: f64,
    /// ... for this long fire `RayGpusIdle`.
    #[serde(with = "humantime_serde")]
    pub gpu_idle_for: Duration,
    /// Object store use (fraction of its size) that fires `RayObjectStoreFull`.
    pub object_store_full: f64,
    /// A node's disk use (fraction) that fires `RayNodeDiskFull`.
    pub disk_full: f64,
    /// Failed tasks within 5 minutes that fire `RayTasksFailing`.
    pub failed_tasks_5m: u64,
    /// How long a target may be down before `RayTargetDown`.
    #[serde(with = "humantime_serde")]
    pub target_down_for: Duration,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            gpu_idle_percent: 5.0,
            gpu_idle_for: Duration::from_secs(30 * 60),
            object_store_full: 0.9,
            disk_full: 0.9,
            failed_tasks_5m: 10,
            target_down_for: Duration::from_secs(5 * 60),
        }
    }
}

/// A Prometheus rules file of alerting rules.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct AlertFile {
    pub groups: Vec<AlertGroup>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct AlertGroup {
    pub name: String,
    pub rules: Vec<Alert>,
}

/// One alerting rule.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Alert {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// How urgent an alert is: `critical` wakes someone, `warning` waits for the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

/// The cluster an alert is about, for its summary: name, user and host (the
/// series' `ray_host`, else this Prometheus' external label).
const WHO: &str = "{{ $labels.ray_io_cluster }} (user {{ $labels.ray_user }} on \
{{ with $labels.ray_host }}{{ . }}{{ else }}{{ $externalLabels.ray_host }}{{ end }})";

/// `d` as a Prometheus duration (`1h30m`, `45s`, `0s`), to the second.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out += &format!("{n}{unit}");
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

fn alert(
    name: &str,
    severity: Severity,
    for_: Duration,
    expr: String,
    summary: &str,
    what_to_do: &str,
) -> Alert {
    Alert {
        alert: name.to_string(),
        expr,
        for_: duration(for_),
        labels: BTreeMap::from([("severity".to_string(), severity.as_str().to_string())]),
        annotations: BTreeMap::from([
            ("summary".to_string(), summary.replace("{who}", WHO)),
            ("description".to_string(), what_to_do.to_string()),
        ]),
    }
}

/// Every built-in rule, with thresholds `t`.
pub fn builtin(t: &Thresholds) -> Vec<Alert> {
    let mut v = cluster_rules(t);
    v.extend(resource_rules(t));
    v.extend(stack_rules(t));
    v
}

/// The rules file of the built-in set.
pub fn rules(t: &Thresholds) -> AlertFile {
    AlertFile {
        groups: vec![AlertGroup {
            name: GROUP.to_string(),
            rules: builtin(t),
        }],
    }
}

/// Workers Ray's memory monitor killed in the last 5 minutes, per cluster.
///
/// Ray (2.60) exports its kill counter per (Type, Name) only from that name's
/// first kill on, at 1: `increase` needs two samples of a series, so it never
/// counts a first kill. Each series' count now less its count 5 minutes ago;
/// a series born since then counts whole when its target was scraped before
/// it appeared (fewer samples than the target's `up`), and not when it came
/// with its target (a cluster found with old kills).
fn oom_kills() -> String {
    let x = "ray_memory_manager_worker_eviction_total";
    let now = format!("last_over_time({x}[1m])");
    let then = format!("last_over_time({x}[1m] offset 5m)");
    let born = format!(
        "count_over_time({x}[5m]) < on({KEY}, ray_session, job, instance) group_left count_over_time(up[5m])"
    );
    format!(
        "sum by ({KEY}) (clamp_min({now} - {then}, 0) or ({now} and (({born}) unless {then}))) > 0"
    )
}

/// A cluster ending with work left, a node lost, workers killed, tasks failing.
fn cluster_rules(t: &Thresholds) -> Vec<Alert> {
    let min = Duration::from_secs(60);
    vec![
        // raywatch says how a cluster ended (`died`: found dead by the liveness
        // bound or its GCS; not a detach, nor a folder no longer watched); its
        // last task counts, within 10 minutes, say whether work was left. The
        // `for` lets a cluster found dead by mistake (a head stalled past the
        // bound, then rewriting again) come back before anything fires.
        alert(
            "RayClusterDied",
            Severity::Critical,
            min,
            // By session too: a new cluster of the same name (its head restarted)
            // is live, and the old one's end still counts.
            format!(
                r#"(sum by ({KEY}, ray_session) (last_over_time(ray_tasks{{State=~"{UNFINISHED}"}}[10m])) > 0) and on({KEY}, ray_session) raywatch_cluster_ended_timestamp_seconds{{reason="died"}}"#
            ),
            "Ray cluster {who} ended with tasks still running or pending",
            "The cluster stopped (head killed, OOM, node failure, job cancelled) before its work finished. \
             `raywatch history` shows when and why it ended; its session folder's logs/ (gcs_server.out, raylet.out) say what failed. \
             Restart the job, with more memory or fewer workers if it was killed.",
        ),
        alert(
            "RayNodeLost",
            Severity::Warning,
            Duration::ZERO,
            // raywatch's count of a live cluster's nodes lost (listed by Ray, then
            // not), while one was lost within 10 minutes. Only live clusters
            // have node counts: the nodes of a cluster that ended are no loss.
            format!(
                "(sum by ({KEY}) (raywatch_cluster_nodes{{state=\"lost\"}}) > 0) \
                 and on({KEY}) (sum by ({KEY}) (increase(raywatch_cluster_node_losses_total[10m])) > 0)"
            ),
            "Ray cluster {who} lost {{ $value }} node(s)",
            "A worker node left the live cluster (its raylet died, its host went down or was preempted). \
             `raywatch status` lists it as LOST and `raywatch history` records when. \
             Tasks on it were retried elsewhere or failed; check the node's own logs and, under Slurm, `sacct` for the job step.",
        ),
        alert(
            "RayWorkersOOMKilled",
            Severity::Warning,
            Duration::ZERO,
            oom_kills(),
            "Ray's memory monitor killed {{ $value | humanize }} worker(s) of {who} in the last 5 minutes",
            "Workers are killed because the node ran out of memory (RAY_memory_usage_threshold). \
             Give tasks a memory= requirement so fewer run at once, use fewer workers or smaller batches, or a node with more memory.",
        ),
        alert(
            "RayTasksFailing",
            Severity::Warning,
            Duration::ZERO,
            format!(
                r#"(sum by ({KEY}) (ray_tasks{{State="FAILED"}}) - (sum by ({KEY}) (ray_tasks{{State="FAILED"}} offset 5m) or sum by ({KEY}) (ray_tasks{{State="FAILED"}}) * 0)) > {}"#,
                t.failed_tasks_5m
            ),
            "{{ $value | humanize }} tasks of {who} failed in the last 5 minutes",
            "Tasks are failing at a high rate. `ray list tasks --filter state=FAILED` (with the cluster's address) \
             or the Ray Dashboard's job page shows their errors.",
        ),
    ]
}

/// A Ray gauge's newest sample within a minute: some Ray versions drop a gauge
/// from a scrape between two reports, and an empty evaluation would reset a `for`.
fn fresh(metric: &str, selector: &str) -> String {
    format!("last_over_time({metric}{{{selector}}}[60s])")
}

/// The object store, GPUs held idle, nodes' disks.
fn resource_rules(t: &Thresholds) -> Vec<Alert> {
    let five = Duration::from_secs(5 * 60);
    let used = format!(
        "sum by ({KEY}) ({})",
        fresh("ray_object_store_used_memory", "")
    );
    let free = format!(
        "sum by ({KEY}) ({})",
        fresh("ray_object_store_available_memory", "")
    );
    vec![
        alert(
            "RayObjectStoreFull",
            Severity::Warning,
            five,
            format!("{used} / ({used} + {free}) > {}", t.object_store_full),
            "The object store of {who} is {{ $value | humanizePercentage }} full",
            "Objects are kept alive by references (ray.put results, task outputs held by the driver). \
             Drop references you no longer need, pass data by task arguments instead of ray.put, \
             or start the cluster with a larger --object-store-memory.",
        ),
        alert(
            "RayObjectStoreSpilling",
            Severity::Warning,
            Duration::from_secs(60),
            format!(
                "sum by ({KEY}) ({}) > 0",
                fresh("ray_object_store_memory", r#"Location="SPILLED""#)
            ),
            "Ray cluster {who} is spilling objects to disk ({{ $value | humanize1024 }}B spilled)",
            "The object store is full and Ray writes objects to disk, which is slow and fills the disk. \
             See RayObjectStoreFull: fewer live references or a larger object store.",
        ),
        alert(
            "RayGpusIdle",
            Severity::Warning,
            t.gpu_idle_for,
            format!(
                "(avg by ({KEY}) ({}) < {}) and on({KEY}) (sum by ({KEY}) ({}) > 0)",
                fresh("ray_node_gpus_utilization", ""),
                t.gpu_idle_percent,
                fresh("ray_resources", r#"Name="GPU",State="USED""#)
            ),
            "GPUs held by {who} have been idle (below {{ $value | humanize }} %)",
            "The cluster holds GPUs that do no work, on a machine others may be waiting for. \
             If the job is stuck or finished, stop the cluster; if it waits on input, feed it; \
             `raywatch top` shows its GPUs per node.",
        ),
        alert(
            "RayNodeDiskFull",
            Severity::Warning,
            five,
            format!(
                "max by ({KEY}, instance) ({u} / ({u} + {f})) > {}",
                t.disk_full,
                u = fresh("ray_node_disk_usage", ""),
                f = fresh("ray_node_disk_free", "")
            ),
            "The disk of node {{ $labels.instance }} of {who} is {{ $value | humanizePercentage }} full",
            "Ray stops accepting objects and logs stop being written when the disk fills. \
             Clear old session folders (`<temp dir>/session_*` of ended clusters), spilled objects, or checkpoints.",
        ),
    ]
}

/// The stack itself: targets down, remote write failing, scrapes over the sample limit.
fn stack_rules(t: &Thresholds) -> Vec<Alert> {
    vec![
        alert(
            "RayTargetDown",
            Severity::Warning,
            t.target_down_for,
            r#"up{ray_io_cluster!=""} == 0"#.into(),
            "Target {{ $labels.instance }} of {who} is down",
            "Prometheus cannot scrape this endpoint of the cluster: the process behind it hangs or is gone, \
             or a firewall blocks it (a worker on another host). `raywatch status` shows the target; `raywatch doctor` checks it.",
        ),
        alert(
            "RayRemoteWriteFailing",
            Severity::Warning,
            Duration::from_secs(5 * 60),
            "sum by (remote_name) (rate(prometheus_remote_storage_samples_failed_total[5m])) > 0".into(),
            "Samples to the central store {{ $labels.remote_name }} are failing",
            "The central store refuses or cannot be reached. `raywatch status` shows the last error Prometheus logged \
             (401: the credential file; connection refused: the store or the network). Samples wait in the WAL meanwhile.",
        ),
        alert(
            "RayScrapeOverSampleLimit",
            Severity::Warning,
            Duration::ZERO,
            "sum by (job) (increase(prometheus_target_scrapes_exceeded_sample_limit_total[5m])) > 0".into(),
            "Scrapes are refused for carrying more samples than the sample limit",
            "A cluster's endpoint carries more series than `--sample-limit` allows, so none of its samples are kept. \
             `raywatch status` names the target and the limit; raise it or drop a high-cardinality label with `--drop-label`.",
        ),
    ]
    .into_iter()
    .map(|mut a| {
        // The stack's own rules need no cluster in their summary.
        if a.alert != "RayTargetDown" {
            a.annotations
                .entry("summary".into())
                .and_modify(|s| *s = s.replace(WHO, "this stack"));
        }
        a
    })
    .collect()
}

/// [`rules`] as YAML.
pub fn yaml(t: &Thresholds) -> anyhow::Result<String> {
    Ok(serde_yaml_ng::to_string(&rules(t))?)
}

/// The built-in rules file a stack's Prometheus evaluates: none when told not
/// to (`up --no-default-alerts`), nor as an agent (which evaluates no rules:
/// the central store's Prometheus or vmalert loads `raywatch alerts rules`).
pub fn for_stack(off: bool, agent: bool, t: &Thresholds) -> anyhow::Result<Option<String>> {
    if off || agent {
        return Ok(None);
    }
    yaml(t).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_a_severity_a_summary_naming_the_cluster_and_what_to_do() {
        let all = builtin(&Thresholds::default());
        let names: Vec<&str> = all.iter().map(|a| a.alert.as_str()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for a in &all {
            assert!(
                ["critical", "warning"].contains(&a.labels["severity"].as_str()),
                "{a:?}"
            );
            let summary = &a.annotations["summary"];
            let about_a_cluster = a.expr.contains("ray_io_cluster") || a.alert == "RayTargetDown";
            assert_eq!(
                summary.contains("$labels.ray_io_cluster"),
                about_a_cluster,
                "{a:?}"
            );
            assert!(a.annotations["description"].len() > 40, "{a:?}");
            assert!(
                a.for_.ends_with('s') || a.for_.ends_with('m') || a.for_.ends_with('h'),
                "{a:?}"
            );
        }
    }

    #[test]
    fn thresholds_reach_the_expressions_and_the_for() {
        let t = Thresholds {
            gpu_idle_percent: 12.5,
            gpu_idle_for: Duration::from_secs(90),
            failed_tasks_5m: 3,
            ..Thresholds::default()
        };
        let y = yaml(&t).unwrap();
        let file: AlertFile = serde_yaml_ng::from_str(&y).unwrap();
        let gpu = file.groups[0]
            .rules
            .iter()
            .find(|a| a.alert == "RayGpusIdle")
            .unwrap();
        assert!(gpu.expr.contains("< 12.5"), "{}", gpu.expr);
        assert_eq!(gpu.for_, "1m30s");
        assert_eq!(duration(Duration::from_secs(2 * 3600 + 5)), "2h5s");
        assert_eq!(duration(Duration::ZERO), "0s");
        assert!(y.contains("> 3"), "{y}");
    }
}
