//! raywatch's own metrics: served on the gateway to the stack's own uid only,
//! scraped by the stack's Prometheus, saying how each cluster ended; the
//! cluster-died rule reads them, so a detached cluster is no death.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::security::other_user;
use crate::support::*;

/// A node with `running` tasks running (Ray's task series, 2.60 names).
fn busy_node(session: &str, running: u32) -> String {
    let node = format!(r#"SessionName="{session}",ip="127.0.0.1""#);
    format!(
        "# TYPE ray_node_cpu_utilization gauge\nray_node_cpu_utilization{{{node}}} 50\n\
         # TYPE ray_tasks gauge\nray_tasks{{{node},State=\"RUNNING\",Name=\"busy\"}} {running}\n"
    )
}

/// The gateway's URL of a stack.
fn gateway(stack: &Stack) -> String {
    stack.status()["gateway"]["url"]
        .as_str()
        .expect("status names the gateway")
        .to_string()
}

/// The one series `promql` gives, once it gives one.
fn one(stack: &Stack, what: &str, promql: &str, limit: Duration) -> Value {
    wait_explained(
        what,
        limit,
        || stack.query(promql).into_iter().next(),
        || stack.diagnostics(),
    )
}

/// The stack's Prometheus scrapes raywatch's metrics from the gateway: a live
/// cluster with its nodes, under the labels its Ray series carry; then its
/// death, as `died`. Another user gets no connection to them, and the refusal
/// is counted in them.
#[test]
fn own_metrics_are_scraped_by_the_stack_show_a_death_as_died_and_give_another_user_nothing() {
    let other = other_user();
    let (stack, root) = Stack::watching("ray_selfm", &["--liveness", "5s"]);
    let endpoint = MetricsEndpoint::serve(&busy_node("session_selfm_1", 0));
    let head = FakeHead::start(&root, "session_selfm_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_selfm", user());

    let live = one(
        &stack,
        "raywatch_cluster_live scraped by the stack's Prometheus",
        &format!(r#"raywatch_cluster_live{{ray_io_cluster="{name}"}} == 1"#),
        Duration::from_secs(60),
    );
    let m = &live["metric"];
    assert_eq!(m["job"], "raywatch", "{live}");
    assert_eq!(m["ray_user"], user().as_str(), "{live}");
    assert_eq!(m["ray_session"], "session_selfm_1", "{live}");
    // The labels the alert rules join on are the Ray series' own.
    let ray = one(
        &stack,
        "the cluster's Ray series",
        &format!(r#"ray_node_cpu_utilization{{ray_io_cluster="{name}"}}"#),
        Duration::from_secs(60),
    );
    for label in ["ray_io_cluster", "ray_user", "ray_session", "ray_temp_dir"] {
        assert_eq!(ray["metric"][label], m[label], "{label}: {ray} vs {live}");
    }
    let nodes = one(
        &stack,
        "the cluster's nodes up",
        &format!(r#"raywatch_cluster_nodes{{ray_io_cluster="{name}",state="up"}}"#),
        Duration::from_secs(30),
    );
    assert_eq!(nodes["value"][1], "1", "{nodes}");

    // Another user: no connection to the gateway, so no metrics (and no
    // credential exists for them to find: the kernel says who connects).
    let url = format!("{}/raywatch/metrics", gateway(&stack));
    let out = command_as(other, "curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", &url])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("raywatch_cluster"), "{said}");
    assert!(said.ends_with("000"), "another user got an answer: {said}");
    // This user gets them, with the refusal counted.
    let text = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let refused = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"raywatch_gateway_refusals_total{kind="connection"} "#))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(refused >= Some(1), "{text}");

    // The head stops: raywatch finds it dead (the liveness bound), and says so.
    drop(head);
    let ended = one(
        &stack,
        "the cluster's end as died",
        &format!(
            r#"raywatch_cluster_ended_timestamp_seconds{{ray_io_cluster="{name}",reason="died"}}"#
        ),
        Duration::from_secs(60),
    );
    assert_eq!(ended["metric"]["ray_session"], "session_selfm_1", "{ended}");
    one(
        &stack,
        "raywatch_cluster_live 0",
        &format!(r#"raywatch_cluster_live{{ray_io_cluster="{name}"}} == 0"#),
        Duration::from_secs(30),
    );
    assert!(
        stack
            .query(&format!(
                r#"raywatch_cluster_nodes{{ray_io_cluster="{name}"}}"#
            ))
            .is_empty(),
        "an ended cluster keeps node counts"
    );
}

/// Two clusters with running tasks: one detached (it still runs, raywatch just
/// stops following it), one that dies. Only the one that died raises
/// RayClusterDied; the detached one never does, not even pending.
#[test]
fn a_detached_cluster_with_running_tasks_raises_no_cluster_died_and_one_that_dies_does() {
    let base = scratch();
    let (kept, gone) = (base.path().join("ray_kept"), base.path().join("ray_gone"));
    for d in [&kept, &gone] {
        fs_err::create_dir(d).unwrap();
    }
    let stack = Stack::up(&["--no-default-watch", "--liveness", "5s"]);
    let (e1, e2) = (
        MetricsEndpoint::serve(&busy_node("session_kept_1", 2)),
        MetricsEndpoint::serve(&busy_node("session_gone_1", 2)),
    );
    let _kept_head = FakeHead::start(&kept, "session_kept_1", vec![e1.addr.clone()]);
    let gone_head = FakeHead::start(&gone, "session_gone_1", vec![e2.addr.clone()]);
    let (kept_name, gone_name) = ("detached-one", "dying-one");
    for (dir, name) in [(&kept, kept_name), (&gone, gone_name)] {
        let out = stack.run(&["attach", dir.to_str().unwrap(), "--name", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in [kept_name, gone_name] {
        one(
            &stack,
            "running tasks and the cluster live, in Prometheus",
            &format!(
                r#"sum(ray_tasks{{ray_io_cluster="{name}",State="RUNNING"}}) > 0 and on() raywatch_cluster_live{{ray_io_cluster="{name}"}} == 1"#
            ),
            Duration::from_secs(60),
        );
    }

    let out = stack.run(&["detach", kept_name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(gone_head);
    let since = Instant::now();
    one(
        &stack,
        "the detached cluster's end as detached",
        &format!(
            r#"raywatch_cluster_ended_timestamp_seconds{{ray_io_cluster="{kept_name}",reason="detached"}}"#
        ),
        Duration::from_secs(30),
    );
    // Until the dead one fires (its `for` passed) and 10 s more, the detached
    // one, detached at the same moment, shows no RayClusterDied at all, not
    // even pending (an end read from `up` going away was pending within an
    // evaluation and firing with the other).
    let alerts = |name: &str| {
        stack.query(&format!(
            r#"ALERTS{{alertname="RayClusterDied",ray_io_cluster="{name}"}}"#
        ))
    };
    let mut fired = None;
    let deadline = Duration::from_secs(5 + 60 + 60);
    while since.elapsed() < deadline {
        let kept_alerts = alerts(kept_name);
        assert!(
            kept_alerts.is_empty(),
            "a detached cluster raised RayClusterDied: {kept_alerts:?}"
        );
        if fired.is_none()
            && alerts(gone_name)
                .iter()
                .any(|a| a["metric"]["alertstate"] == "firing")
        {
            fired = Some(since.elapsed());
        }
        if fired.is_some_and(|f| since.elapsed() > f + Duration::from_secs(10)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        fired.is_some(),
        "the cluster that died raised no RayClusterDied within {deadline:?}\n{}",
        stack.diagnostics()
    );
}

/// A worker node Ray stops listing while the cluster lives: raywatch counts it
/// lost, and RayNodeLost fires on that count, naming the cluster.
#[test]
fn a_node_a_live_cluster_stops_listing_is_counted_lost_and_fires_ray_node_lost() {
    let (stack, root) = Stack::watching("ray_nodes", &[]);
    let endpoint = MetricsEndpoint::serve(&busy_node("session_nodes_1", 0));
    // Ray lists its nodes, the head's last: a worker on another address.
    let worker = format!("127.0.0.2:{}", free_port());
    let head = FakeHead::start(
        &root,
        "session_nodes_1",
        vec![worker.clone(), endpoint.addr.clone()],
    );
    let name = format!("{}-ray_nodes", user());
    one(
        &stack,
        "two nodes up",
        &format!(r#"raywatch_cluster_nodes{{ray_io_cluster="{name}",state="up"}} == 2"#),
        Duration::from_secs(60),
    );
    assert!(
        stack
            .query(&format!(
                r#"ALERTS{{alertname="RayNodeLost",ray_io_cluster="{name}"}}"#
            ))
            .is_empty()
    );
    // The worker leaves: Ray's next listing has the head alone.
    drop(head);
    let _head = FakeHead::start(&root, "session_nodes_1", vec![endpoint.addr.clone()]);
    one(
        &stack,
        "one node lost",
        &format!(r#"raywatch_cluster_nodes{{ray_io_cluster="{name}",state="lost"}} == 1"#),
        Duration::from_secs(30),
    );
    let alert = one(
        &stack,
        "RayNodeLost firing",
        &format!(
            r#"ALERTS{{alertname="RayNodeLost",ray_io_cluster="{name}",alertstate="firing"}}"#
        ),
        Duration::from_secs(60),
    );
    assert_eq!(alert["metric"]["severity"], "warning", "{alert}");
    let out = stack.run(&["alerts", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "RayNodeLost")
        .map(|a| a["annotations"]["summary"].as_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        summary.starts_with(&format!("Ray cluster {name} (user {} on ", user()))
            && summary.ends_with("lost 1 node(s)"),
        "{summary}"
    );
}
