//! The cardinality guard against real Prometheus and Ray: the sample limit refuses a
//! flooding target (and `status` says so) while a real cluster beside it keeps being
//! scraped; `--drop-label` removes a label from the stored series; bad label names are
//! refused with the value named.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const FLOOD_SERIES: usize = 300_000;

/// Prometheus text with `n` distinct series of one metric (about 11 MB for 300 000).
fn flood_body(n: usize) -> String {
    use std::fmt::Write;
    let mut body = String::with_capacity(n * 40 + 100);
    body.push_str("# TYPE rw_guard_flood gauge\n");
    for i in 0..n {
        let _ = writeln!(body, "rw_guard_flood{{dataset=\"d{i}\"}} 1");
    }
    body
}

/// The single value of a scalar-like query (`count(...)`), 0 when empty.
fn value(stack: &Stack, promql: &str) -> f64 {
    stack
        .query(promql)
        .first()
        .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn cluster<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn target<'a>(status: &'a Value, name: &str, address: &str) -> Option<&'a Value> {
    cluster(status, name)?["targets"]
        .as_array()?
        .iter()
        .find(|t| t["address"] == address)
}

fn up(stack: &Stack, args: &[&str]) -> std::process::Output {
    stack.run(&[&["up"], args].concat())
}

#[test]
fn with_ray_a_300000_series_target_is_refused_by_the_limit_while_a_real_cluster_stays_scraped_and_drop_label_removes_worker_id()
 {
    let base = scratch();
    let (real_root, flood_root) = (base.path().join("ray_real"), base.path().join("ray_flood"));
    fs_err::create_dir(&flood_root).unwrap();
    // The default sample limit (200 000) is what refuses the flood.
    let stack = Stack::up(&[
        "--no-default-watch",
        "--watch",
        real_root.to_str().unwrap(),
        "--watch",
        flood_root.to_str().unwrap(),
    ]);
    let (real, flood) = (
        format!("{}-ray_real", user()),
        format!("{}-ray_flood", user()),
    );

    // Beside the flood, in the same cluster, a small endpoint whose series carry a WorkerId.
    let body = flood_body(FLOOD_SERIES);
    eprintln!("flood body: {} bytes", body.len());
    let flood_ep = MetricsEndpoint::serve(&body);
    drop(body);
    let workers = MetricsEndpoint::serve(
        "# TYPE rw_guard_tasks gauge\nrw_guard_tasks{WorkerId=\"w1\",task=\"a\"} 1\nrw_guard_tasks{WorkerId=\"w2\",task=\"b\"} 2\n",
    );
    let _head = FakeHead::start(
        &flood_root,
        "session_2026-01-01_00-00-00_000000_1",
        vec![flood_ep.addr.clone(), workers.addr.clone()],
    );
    let mut ray = RayCluster::start(&real_root, false);
    ray.wait_discovery(Duration::from_secs(120));
    let node = format!("127.0.0.1:{}", ray.metrics_port);

    // status flags the flooding target, naming the limit and the flag that raises it.
    // The flag comes from the target's own scrape and the count of refused scrapes from
    // Prometheus' scrape of itself, so the two can arrive one scrape interval apart.
    let st = wait_for(
        "status to flag the flooding target and count its refused scrapes",
        Duration::from_secs(90),
        || {
            let st = stack.status();
            let flagged = target(&st, &flood, &flood_ep.addr)
                .is_some_and(|t| t["sample_limit_exceeded"].is_string());
            let counted = st["prometheus"]["scrapes_over_sample_limit"]
                .as_f64()
                .is_some_and(|n| n >= 1.0);
            (flagged && counted).then_some(st)
        },
    );
    let t = target(&st, &flood, &flood_ep.addr).unwrap();
    assert_eq!(t["health"], "down", "{t:#}");
    assert_eq!(t["samples_per_scrape"], FLOOD_SERIES as f64, "{t:#}");
    let note = t["sample_limit_exceeded"].as_str().unwrap();
    for part in [
        "300000 samples",
        "sample limit of 200000",
        "raywatch up --sample-limit",
    ] {
        assert!(note.contains(part), "{part:?} missing from {note:?}");
    }
    assert_eq!(st["prometheus"]["sample_limit"], 200_000, "{st:#}");
    assert!(
        st["prometheus"]["scrapes_over_sample_limit"]
            .as_f64()
            .unwrap()
            >= 1.0,
        "{st:#}"
    );
    // Prometheus agrees on why: its own lastError for that target.
    let targets: Value = stack
        .prom_get("/api/v1/targets?state=active")
        .json()
        .unwrap();
    let last_error = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["instance"] == flood_ep.addr.as_str())
        .map(|t| t["lastError"].as_str().unwrap_or_default().to_string())
        .unwrap();
    assert!(
        last_error.contains("sample limit exceeded"),
        "Prometheus' lastError: {last_error:?}"
    );
    // Nothing of the flood is stored; its neighbour in the same cluster is.
    assert_eq!(value(&stack, "count(rw_guard_flood)"), 0.0);
    let w = target(&st, &flood, &workers.addr).unwrap();
    assert!(w["sample_limit_exceeded"].is_null(), "{w:#}");
    // The human report says it too.
    let human = String::from_utf8(stack.run(&["status"]).stdout).unwrap();
    for part in [
        "OVER SAMPLE LIMIT",
        "the sample limit refuses 1 target(s)",
        "200000 samples per scrape per target",
    ] {
        assert!(human.contains(part), "{part:?} missing:\n{human}");
    }

    // The real cluster beside it stays scraped: every target up, samples keep arriving.
    let st = wait_for(
        "the real cluster's targets up with samples counted",
        Duration::from_secs(60),
        || {
            let st = stack.status();
            let c = cluster(&st, &real)?;
            let all_up = c["targets"]
                .as_array()?
                .iter()
                .all(|t| t["health"] == "up" && t["sample_limit_exceeded"].is_null());
            (all_up
                && !c["targets"].as_array()?.is_empty()
                && c["samples_per_scrape"].as_f64()? > 0.0)
                .then_some(st)
        },
    );
    let c = cluster(&st, &real).unwrap();
    assert!(target(&st, &real, &node).is_some(), "{c:#}");
    let per_scrape = c["samples_per_scrape"].as_f64().unwrap();
    let targets_sum: f64 = c["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["samples_per_scrape"].as_f64())
        .sum();
    assert_eq!(per_scrape, targets_sum, "{c:#}");
    let cpu =
        format!("count_over_time(ray_node_cpu_utilization{{ray_io_cluster=\"{real}\"}}[10m])");
    let before = wait_for(
        "ray_node_cpu_utilization of the real cluster",
        Duration::from_secs(60),
        || Some(value(&stack, &cpu)).filter(|v| *v > 0.0),
    );
    wait_for(
        "more ray_node_cpu_utilization samples while the flood is refused",
        Duration::from_secs(30),
        || (value(&stack, &cpu) > before).then_some(()),
    );
    assert_eq!(
        value(&stack, &format!("up{{instance=\"{node}\"}}")),
        1.0,
        "the real cluster's node target"
    );

    // --drop-label WorkerId, applied live: stored series lose the label.
    let worker_series = "count({WorkerId!=\"\"})";
    wait_for(
        "series with a WorkerId in the store",
        Duration::from_secs(30),
        || (value(&stack, worker_series) >= 2.0).then_some(()),
    );
    let real_worker_series = value(
        &stack,
        &format!("count({{ray_io_cluster=\"{real}\", WorkerId!=\"\"}})"),
    );
    eprintln!("series of the real Ray cluster with a WorkerId: {real_worker_series}");
    let out = up(&stack, &["--drop-label", "WorkerId"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("dropped labels"), "{said}");
    assert!(said.contains("reloaded"), "{said}");
    wait_for(
        "no stored series with a WorkerId",
        Duration::from_secs(30),
        || (value(&stack, worker_series) == 0.0).then_some(()),
    );
    let tasks = stack.query("rw_guard_tasks");
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    for s in &tasks {
        assert!(s["metric"].get("WorkerId").is_none(), "{s}");
        assert!(s["metric"]["task"].is_string(), "{s}");
    }
    // The real cluster keeps its series (and its own labels) without WorkerId.
    assert!(value(&stack, &cpu) > before);
    let st = stack.status();
    assert_eq!(
        st["prometheus"]["drop_labels"],
        serde_json::json!(["WorkerId"])
    );
    let config: Value =
        serde_json::from_slice(&fs_err::read(stack.home.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["drop_labels"], serde_json::json!(["WorkerId"]));
    // The flood is still refused after the reload.
    assert!(
        target(&st, &flood, &flood_ep.addr).is_some_and(|t| t["sample_limit_exceeded"].is_string()),
        "{st:#}"
    );
    let prometheus = stack.pids()[1];
    eprintln!(
        "Prometheus refusing a {FLOOD_SERIES}-series target every 2 s: RSS {} MiB, head series {}, CPU {:.1} s so far",
        rss_kib(prometheus) / 1024,
        stack.own_metric("prometheus_tsdb_head_series"),
        cpu_seconds(prometheus)
    );
    drop(ray);
}

/// The `ray` job of a stack's generated prometheus.yml.
fn ray_job(stack_home: &Path) -> Value {
    let text = fs_err::read_to_string(stack_home.join("prometheus/prometheus.yml")).unwrap();
    let yml: Value = serde_yaml_ng::from_str(&text).unwrap();
    yml["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "ray")
        .cloned()
        .unwrap()
}

#[test]
fn drop_labels_that_would_break_raywatch_or_are_not_label_names_are_refused_with_the_value_named() {
    let stack = Stack::up(&["--no-default-watch", "--sample-limit", "5000"]);
    let job = ray_job(&stack.home);
    assert_eq!(job["sample_limit"], 5000, "{job:#}");
    assert!(job.get("metric_relabel_configs").is_none(), "{job:#}");
    // Each is refused naming the value and why: it would break raywatch, Ray's
    // own dashboards need it, it is internal, or it is not a label name.
    let mut refusals = Vec::new();
    for bad in [
        "ray_io_cluster",
        "instance",
        "SessionName",
        "__name__",
        "Worker-Id",
        "a|b",
        "x\u{1b}[2J",
    ] {
        let out = up(&stack, &["--drop-label", "WorkerId", "--drop-label", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains('\u{1b}'), "raw escape in {err:?}");
        refusals.push((
            format!("up --drop-label WorkerId --drop-label {bad:?}"),
            out,
        ));
    }
    crate::snapshots::assert_transcripts(
        "drop-labels-refused",
        &refusals,
        crate::snapshots::stack_filters(&stack),
    );
    // Nothing was applied: the running config is unchanged.
    let job = ray_job(&stack.home);
    assert!(job.get("metric_relabel_configs").is_none(), "{job:#}");
    assert!(
        stack.status()["prometheus"]["drop_labels"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Valid ones apply live, and --no-drop-label clears them.
    let out = up(
        &stack,
        &[
            "--drop-label",
            "WorkerId",
            "--drop-label",
            "dataset",
            "--sample-limit",
            "0",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = ray_job(&stack.home);
    assert_eq!(
        job["metric_relabel_configs"],
        serde_json::json!([
            {"action": "labeldrop", "regex": "WorkerId"},
            {"action": "labeldrop", "regex": "dataset"}
        ])
    );
    assert_eq!(job["sample_limit"], 0, "0 is Prometheus' 'no limit'");
    let st = stack.status();
    assert!(st["prometheus"]["sample_limit"].is_null(), "{st:#}");
    let out = up(&stack, &["--no-drop-label"]);
    assert!(out.status.success());
    assert!(ray_job(&stack.home).get("metric_relabel_configs").is_none());
}
