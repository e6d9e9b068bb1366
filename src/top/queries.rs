//! The PromQL of `raywatch top`: a few batched expressions, each answering for every cluster at once.
//!
//! Every per-cluster value is one branch `label_replace(sum by (K) (…), "rw_field", "<name>", "", "")`
//! of a single `or` expression, so a refresh costs a constant number of queries whatever
//! the number of clusters. Ray's metric names moved between versions (OpenCensus, then
//! OpenTelemetry export; `ray_object_store_used_memory` beside `ray_resources`), so a
//! value with two sources is `(first) or (second)`, per cluster. A value no source has
//! is absent from the answer, and shows as `–`.

use std::time::Duration;

/// The label that names a branch's field in a batched answer.
pub const FIELD: &str = "rw_field";

/// What identifies a cluster: its host (`ray_host`, set on series that left the
/// machine: a central store), its name and its user.
pub const KEY: &str = "ray_host, ray_io_cluster, ray_user";

/// Matchers of the series read. None: a label-exists matcher (`ray_io_cluster!=""`)
/// costs Prometheus a merge of every cluster's postings, per selector (measured: a
/// third of a refresh at 1000 clusters). Every group is keyed by `ray_io_cluster`
/// anyway, and the group without one (other jobs' series) is dropped when the
/// answer is read.
const OURS: &str = "";
const RAY: &str = "";

/// Ray's task states counted as running and as pending (summed over owner and
/// executor, whose `SUBMITTED_TO_WORKER` -1 cancels the owner's +1 once a task runs).
pub const RUNNING_STATES: &str = "RUNNING|RUNNING_IN_RAY_GET|RUNNING_IN_RAY_WAIT";
pub const PENDING_STATES: &str = "PENDING.*|SUBMITTED_TO_WORKER";

/// How far back a Ray series' last sample still counts. Ray's exporters report every
/// few seconds and some versions drop a gauge from a scrape between two reports
/// (Prometheus then marks it stale), so a plain selector flickers between a value and
/// nothing; the newest sample within this window does not.
pub const FRESH: &str = "60s";

/// How long a node whose target went is counted lost (its cluster still live).
pub const LOST_WINDOW: &str = "10m";

/// `metric{selector}`'s newest sample within [`FRESH`], `offset` ago when given.
fn fresh(metric: &str, selector: &str, offset: Option<&str>) -> String {
    match offset {
        Some(o) => format!("last_over_time({metric}{{{selector}}}[{FRESH}] offset {o})"),
        None => format!("last_over_time({metric}{{{selector}}}[{FRESH}])"),
    }
}

/// The branches as one expression: `or on(rw_field)`, as a balanced tree. Prometheus
/// hashes the whole left side of every `or`, so a chain `a or b or c …` costs the
/// square of the branches (measured: the chain took twice the sum of its branches
/// at 1000 clusters); matching on the one label that tells the branches apart, in a
/// tree, costs each sample a few hashes of one label.
pub fn join_or(branches: &[String]) -> String {
    match branches {
        [] => "vector(0) < 0".into(),
        [one] => one.clone(),
        _ => {
            let (l, r) = branches.split_at(branches.len() / 2);
            format!("({}) or on({FIELD}) ({})", join_or(l), join_or(r))
        }
    }
}

/// `expr` with its field named in [`FIELD`].
pub fn branch(name: &str, expr: &str) -> String {
    format!(r#"label_replace({expr}, "{FIELD}", "{name}", "", "")"#)
}

/// The matchers of a Ray series: [`RAY`] and `extra` (`,Name="GPU"` …).
fn ray_selector(extra: &str) -> String {
    format!("{RAY}{extra}").trim_start_matches(',').to_string()
}

fn sum(metric: &str, extra: &str) -> String {
    format!(
        "sum by ({KEY}) ({})",
        fresh(metric, &ray_selector(extra), None)
    )
}

/// A Ray series, fresh (see [`FRESH`]).
fn ours(metric: &str) -> String {
    fresh(metric, &ray_selector(""), None)
}

/// A PromQL duration for `d` (whole milliseconds, at least 1 s).
pub fn duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1000))
}

/// The clusters view in one instant query: every field of every cluster, plus
/// `last_seen` of each cluster whose targets were scraped within `remember`.
pub fn clusters(remember: Duration) -> String {
    join_or(&clusters_branches(remember))
}

/// [`clusters_split`] with each part a plain chain `a or b or c …` (for comparison).
pub fn clusters_split_chained(remember: Duration, parts: usize) -> Vec<String> {
    let mut out = vec![Vec::new(); parts.max(1)];
    for (i, b) in clusters_branches(remember).into_iter().enumerate() {
        out[i % parts.max(1)].push(b);
    }
    out.into_iter().map(|b| b.join(" or ")).collect()
}

/// [`clusters`] as `parts` queries of about equal cost, for Prometheus to evaluate
/// side by side (it runs queries in parallel, one branch after the other within one).
pub fn clusters_split(remember: Duration, parts: usize) -> Vec<String> {
    let mut out = vec![Vec::new(); parts.max(1)];
    for (i, b) in clusters_branches(remember).into_iter().enumerate() {
        out[i % parts.max(1)].push(b);
    }
    out.into_iter().map(|b| join_or(&b)).collect()
}

/// The branches of [`clusters`], each a whole expression (for measuring them one by one).
pub fn clusters_branches(remember: Duration) -> Vec<String> {
    let mut out: Vec<String> = cluster_values()
        .into_iter()
        .map(|(name, expr)| branch(name, &expr))
        .collect();
    out.insert(3, branch("last_seen", &last_seen(remember)));
    out
}

/// The newest scrape (unix seconds) of each cluster's targets within `remember`, to
/// within `remember / 60`: the newest evaluation of the subquery that found a sample.
fn last_seen(remember: Duration) -> String {
    let step = remember / 60;
    format!(
        "max by ({KEY}) (max_over_time(timestamp(last_over_time(up{{{OURS}}}[{s}]))[{r}:{s}]))",
        s = duration(step),
        r = duration(remember)
    )
}

/// Every per-cluster value but `last_seen` (which depends on the window remembered), by
/// field name: what [`clusters`] asks live and what [`super::rules`] records.
pub fn cluster_values() -> Vec<(&'static str, String)> {
    let mut values = scrape_values();
    values.extend(resource_values());
    values.extend(task_values());
    values.extend(alert_values());
    values
}

/// What Prometheus knows of a cluster's scrapes: targets, samples, when it started.
fn scrape_values() -> Vec<(&'static str, String)> {
    vec![
        ("targets", format!("count by ({KEY}) (up{{{OURS}}})")),
        (
            "targets_down",
            format!("count by ({KEY}) (up{{{OURS}}} == 0)"),
        ),
        (
            "samples",
            format!("sum by ({KEY}) (scrape_samples_scraped{{{OURS}}})"),
        ),
        (
            "started",
            format!(
                "min by ({KEY}) ({})",
                fresh("process_start_time_seconds", OURS, None)
            ),
        ),
    ]
}

/// A cluster's nodes and what they hold: CPU, memory, GPUs, object store.
fn resource_values() -> Vec<(&'static str, String)> {
    // The object store, from Ray's own series or (older Ray) its resources.
    let store = |ray: &str, state: &str| {
        format!(
            "{} or {}",
            sum(ray, ""),
            sum(
                "ray_resources",
                &format!(r#",Name="object_store_memory",State="{state}""#)
            )
        )
    };
    vec![
        // A node reporting whose target is still scraped: a worker Ray no
        // longer lists leaves `up` at once (its target is gone) while its last
        // report stays fresh for a minute.
        (
            "nodes_up",
            format!(
                "count by ({KEY}) ({} and on({KEY}, instance) up{{{OURS}}})",
                ours("ray_node_cpu_utilization")
            ),
        ),
        // Nodes that reported within LOST_WINDOW and whose target is gone: Ray
        // dropped them from the cluster's list (a dead or removed worker).
        (
            "nodes_lost",
            // Of a live session only: a new cluster of the same name has new
            // endpoints, and the old session's nodes are no lost ones.
            format!(
                "count by ({KEY}) ((max by ({KEY}, ray_session, instance) (last_over_time(ray_node_cpu_utilization{{{RAY}}}[{LOST_WINDOW}])) unless on({KEY}, ray_session, instance) up{{{OURS}}}) and on({KEY}, ray_session) group by ({KEY}, ray_session) (up{{{OURS}}}))"
            ),
        ),
        (
            "nodes_total",
            format!(
                "{} or {}",
                sum("ray_cluster_active_nodes", ""),
                sum("autoscaler_active_nodes", "")
            ),
        ),
        // The nodes' average CPU % (a weighting by cores cost a join per refresh).
        (
            "cpu",
            format!("avg by ({KEY}) ({})", ours("ray_node_cpu_utilization")),
        ),
        ("mem_used", sum("ray_node_mem_used", "")),
        ("mem_total", sum("ray_node_mem_total", "")),
        ("gpus", sum("ray_node_gpus_available", "")),
        (
            "gpus_used",
            sum("ray_resources", r#",Name="GPU",State="USED""#),
        ),
        (
            "gpu_util",
            format!("avg by ({KEY}) ({})", ours("ray_node_gpus_utilization")),
        ),
        ("gram_used_mib", sum("ray_node_gram_used", "")),
        ("gram_free_mib", sum("ray_node_gram_available", "")),
        ("store_used", store("ray_object_store_used_memory", "USED")),
        (
            "store_free",
            store("ray_object_store_available_memory", "AVAILABLE"),
        ),
    ]
}

/// The alerts firing for a cluster (Prometheus' `ALERTS` series carry the
/// cluster's labels, as raywatch's rules aggregate by them).
fn alert_values() -> Vec<(&'static str, String)> {
    vec![(
        "alerts_firing",
        format!(r#"count by ({KEY}) (ALERTS{{alertstate="firing"}})"#),
    )]
}

/// A cluster's tasks by state: running, pending (now and two minutes ago), finished,
/// failed in the last five minutes.
fn task_values() -> Vec<(&'static str, String)> {
    let tasks = |states: &str| sum("ray_tasks", &format!(r#",State=~"{states}""#));
    let failed_sel = ray_selector(r#",State="FAILED""#);
    let failed = fresh("ray_tasks", &failed_sel, None);
    let failed_before = fresh("ray_tasks", &failed_sel, Some("5m"));
    vec![
        ("tasks_running", tasks(RUNNING_STATES)),
        ("tasks_pending", tasks(PENDING_STATES)),
        (
            "tasks_pending_before",
            format!(
                "sum by ({KEY}) ({})",
                fresh(
                    "ray_tasks",
                    &ray_selector(&format!(r#",State=~"{PENDING_STATES}""#)),
                    Some("2m")
                )
            ),
        ),
        ("tasks_finished", sum("ray_tasks", r#",State="FINISHED""#)),
        // Failures since 5 minutes ago; a series younger than that counts whole.
        (
            "tasks_failed_5m",
            format!("sum by ({KEY}) (({failed} - {failed_before}) or {failed})"),
        ),
    ]
}

/// The sparkline column: each cluster's average CPU and GPU utilisation, as a range query.
pub fn sparklines() -> String {
    join_or(&[
        branch(
            "cpu",
            &format!("avg by ({KEY}) ({})", ours("ray_node_cpu_utilization")),
        ),
        branch(
            "gpu",
            &format!("avg by ({KEY}) ({})", ours("ray_node_gpus_utilization")),
        ),
    ])
}

/// Escapes a label value for a PromQL string literal.
pub fn literal(s: &str) -> String {
    crate::quote::label_value(s)
}

/// The selector of one cluster's series.
pub fn selector(host: &str, name: &str) -> String {
    format!(
        "ray_io_cluster={},ray_host={}",
        literal(name),
        literal(host)
    )
}

/// The alerts of one cluster, firing and pending: raywatch's rules keep the
/// cluster's labels, and so do the user's that aggregate by them.
pub fn alerts(host: &str, name: &str) -> String {
    format!("ALERTS{{{}}}", selector(host, name))
}

/// The cluster view's per-node values of one cluster, in one instant query.
pub fn nodes(host: &str, name: &str) -> String {
    let sel = selector(host, name);
    let raw = |field: &str, metric: &str| branch(field, &fresh(metric, &sel, None));
    let by_address = |field: &str, metric: &str| {
        branch(
            field,
            &format!(
                "sum by (NodeAddress, instance) ({})",
                fresh(metric, &sel, None)
            ),
        )
    };
    join_or(&[
        raw("cpu", "ray_node_cpu_utilization"),
        raw("cpus", "ray_node_cpu_count"),
        raw("mem_used", "ray_node_mem_used"),
        raw("mem_total", "ray_node_mem_total"),
        raw("disk_used", "ray_node_disk_usage"),
        raw("disk_free", "ray_node_disk_free"),
        raw("gpu_util", "ray_node_gpus_utilization"),
        raw("gram_used_mib", "ray_node_gram_used"),
        raw("gram_free_mib", "ray_node_gram_available"),
        format!(
            "{} or {}",
            by_address("store_used", "ray_object_store_used_memory"),
            branch(
                "store_used",
                &format!(
                    "sum by (NodeAddress, instance) ({})",
                    fresh(
                        "ray_resources",
                        &format!(r#"{sel},Name="object_store_memory",State="USED""#),
                        None
                    )
                )
            )
        ),
        format!(
            "{} or {}",
            by_address("store_free", "ray_object_store_available_memory"),
            branch(
                "store_free",
                &format!(
                    "sum by (NodeAddress, instance) ({})",
                    fresh(
                        "ray_resources",
                        &format!(r#"{sel},Name="object_store_memory",State="AVAILABLE""#),
                        None
                    )
                )
            )
        ),
    ])
}

/// The cluster view's charts: CPU, GPU and memory (%) and running / pending tasks, as a range query.
pub fn charts(host: &str, name: &str) -> String {
    let sel = selector(host, name);
    let f = |metric: &str| fresh(metric, &sel, None);
    let tasks = |states: &str| fresh("ray_tasks", &format!(r#"{sel},State=~"{states}""#), None);
    join_or(&[
        branch("cpu", &format!("avg({})", f("ray_node_cpu_utilization"))),
        branch("gpu", &format!("avg({})", f("ray_node_gpus_utilization"))),
        branch(
            "mem",
            &format!(
                "100 * sum({}) / sum({})",
                f("ray_node_mem_used"),
                f("ray_node_mem_total")
            ),
        ),
        branch(
            "running",
            &format!("clamp_min(sum({}), 0)", tasks(RUNNING_STATES)),
        ),
        branch(
            "pending",
            &format!("clamp_min(sum({}), 0)", tasks(PENDING_STATES)),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(selector("", "x"), r#"ray_io_cluster="x",ray_host="""#);
    }

    #[test]
    fn the_clusters_query_does_not_name_a_cluster() {
        let q = clusters(Duration::from_secs(600));
        assert!(!q.contains("ray_io_cluster=\""), "{q}");
        assert!(q.contains("[600000ms:10000ms]"), "{q}");
    }
}

#[cfg(test)]
mod promtool {
    use super::*;

    /// Every expression `top` sends parses (promtool's rule checker parses PromQL).
    #[test]
    fn every_query_parses_with_promtool() {
        let mut exprs = vec![
            clusters(Duration::from_secs(600)),
            clusters(crate::top::REMEMBER_ALL),
            sparklines(),
            nodes("", "alice-ray"),
            charts("gpu07", "we\"ird\\name"),
        ];
        exprs.extend(clusters_split(Duration::from_secs(20), 3));
        let rules = serde_json::json!({"groups": [{"name": "top", "rules": exprs
            .iter()
            .enumerate()
            .map(|(i, e)| serde_json::json!({"record": format!("top:q{i}"), "expr": e}))
            .collect::<Vec<_>>()}]});
        crate::top::assert_promtool_accepts_rules(&rules.to_string());
    }
}
