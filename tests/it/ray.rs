//! Real Ray clusters on loopback: discovery, labels, shared ports, kill -9, attach.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Ray 2.60 writes its discovery file in the session folder (and a link at
/// the temp-dir level).
#[test]
fn two_clusters_are_labelled_attributed_and_a_killed_one_leaves() {
    two_clusters(&ray_bin(), true);
}

/// The seed's Ray 2.52.1 writes the discovery file at the temp-dir level: the
/// same guarantees, for real.
#[test]
fn two_clusters_of_ray_2_52_temp_dir_layout_are_labelled_attributed_and_a_killed_one_leaves() {
    two_clusters(&legacy_ray_bin(), false);
}

fn two_clusters(ray: &std::path::Path, session_scoped: bool) {
    let base = scratch();
    let (ta, tb) = (base.path().join("ray_a"), base.path().join("ray_b"));
    let stack = Stack::up(&[
        "--no-default-watch",
        "--watch",
        ta.to_str().unwrap(),
        "--watch",
        tb.to_str().unwrap(),
        "--liveness",
        "8s",
    ]);
    let reloaded_at = stack.own_metric("prometheus_config_last_reload_success_timestamp_seconds");

    // Both clusters keep Ray's fixed autoscaler/dashboard metrics ports, so both list them.
    let mut a = RayCluster::start_with(ray, &ta, true, &[]);
    let mut b = RayCluster::start_with(ray, &tb, true, &[]);
    let (file_a, _) = a.wait_discovery(Duration::from_secs(120));
    let (file_b, _) = b.wait_discovery(Duration::from_secs(120));
    assert_eq!(
        file_a.parent() != Some(ta.as_path()),
        session_scoped,
        "this Ray writes its discovery file at {}",
        file_a.display()
    );
    let (name_a, name_b) = (format!("{}-ray_a", user()), format!("{}-ray_b", user()));
    let (session_a, session_b) = (cluster_session(&file_a), cluster_session(&file_b));

    // A node target is published once its listener is there (see endpoints.rs):
    // Ray's metrics agent starts after the discovery file, on a loaded machine
    // a minute or more later. raywatch's share is measured from the moment the
    // endpoint serves.
    for (name, cluster) in [(&name_a, &a), (&name_b, &b)] {
        let node = format!("127.0.0.1:{}", cluster.metrics_port);
        cluster.wait(
            &format!("{name}'s metrics agent to serve {node}"),
            Duration::from_secs(180),
            || served_session(&node),
        );
        let serving = Instant::now();
        wait_explained(
            &format!("{name}'s node target in Prometheus"),
            Duration::from_secs(60),
            || stack.instances_of(name).contains(&node).then_some(()),
            || stack.diagnostics(),
        );
        let took = serving.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "{name}'s node target appeared {took:?} after its endpoint served"
        );
    }
    for labels in stack.active_target_labels() {
        let (name, session) = if labels["ray_io_cluster"] == name_a {
            (&name_a, &session_a)
        } else {
            (&name_b, &session_b)
        };
        assert_eq!(&labels["ray_io_cluster"], name);
        assert_eq!(&labels["ray_session"], session);
        assert_eq!(labels["ray_user"], user());
    }

    // A node metric per cluster, through `raywatch query`, carrying its own session.
    // Ray's node reporter starts after the discovery file, and later still on a
    // loaded machine (60 s was once not enough in a full run): two minutes.
    for (name, session) in [(&name_a, &session_a), (&name_b, &session_b)] {
        let cluster = if name == &name_a { &a } else { &b };
        let series = cluster.wait(
            &format!("ray_node_cpu_utilization of {name}"),
            Duration::from_secs(120),
            || {
                let r = stack.query(&format!(
                    "ray_node_cpu_utilization{{ray_io_cluster=\"{name}\"}}"
                ));
                (!r.is_empty()).then_some(r)
            },
        );
        for s in series {
            assert_eq!(s["metric"]["SessionName"], session.as_str(), "{name}: {s}");
        }
    }

    // 44217 / 44227 are listed by both clusters but served by one: only that one keeps them.
    for port in [44217, 44227] {
        let endpoint = format!("127.0.0.1:{port}");
        let owner_session = wait_for(
            &format!("{endpoint} to serve metrics"),
            Duration::from_secs(60),
            || served_session(&endpoint),
        );
        let owner = if owner_session == session_a {
            &name_a
        } else {
            &name_b
        };
        assert!(
            owner_session == session_a || owner_session == session_b,
            "{endpoint} serves {owner_session}"
        );
        wait_for(
            &format!("{endpoint} in exactly one cluster, {owner}"),
            Duration::from_secs(30),
            || {
                let holders: Vec<String> = stack
                    .active_targets()
                    .into_iter()
                    .filter(|(_, i)| *i == endpoint)
                    .map(|(c, _)| c)
                    .collect();
                (holders == [owner.clone()]).then_some(())
            },
        );
    }
    let other = stack.status()["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["withheld"].as_array().unwrap().clone())
        .count();
    assert_eq!(
        other, 2,
        "the non-owner reports both shared endpoints as withheld"
    );

    // kill -9 of every process of b: its targets leave within 30 s, a's stay.
    b.kill9();
    let killed = Instant::now();
    wait_for("b's targets to leave", Duration::from_secs(30), || {
        stack.instances_of(&name_b).is_empty().then_some(())
    });
    let gone_after = killed.elapsed();
    assert!(gone_after < Duration::from_secs(30), "took {gone_after:?}");
    assert!(
        stack
            .instances_of(&name_a)
            .contains(&format!("127.0.0.1:{}", a.metrics_port))
    );
    // Its targets leave with their listeners; the cluster ends once its GCS
    // refuses (or the liveness bound passes), within the same 30 s.
    let state = |st: &Value, n: &str| {
        st["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .map(|c| c["state"].clone())
    };
    let st = wait_for(
        "b to be dead",
        Duration::from_secs(30).saturating_sub(killed.elapsed()),
        || {
            let st = stack.status();
            (state(&st, &name_b) == Some(Value::from("dead"))).then_some(st)
        },
    );
    assert_eq!(state(&st, &name_a), Some(Value::from("live")));

    // a stays live while idle, past the (shortened) liveness bound.
    std::thread::sleep(Duration::from_secs(1));
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        assert!(
            stack
                .instances_of(&name_a)
                .contains(&format!("127.0.0.1:{}", a.metrics_port)),
            "idle live cluster dropped"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    assert_eq!(
        stack.own_metric("prometheus_config_last_reload_success_timestamp_seconds"),
        reloaded_at,
        "Prometheus was reloaded while clusters came and went"
    );
    eprintln!("kill -9 to targets gone: {gone_after:?}");
}

#[test]
fn attach_outside_the_roots_then_detach_and_attachments_survive_a_restart() {
    let base = scratch();
    let temp = base.path().join("elsewhere");
    let stack = Stack::up(&["--no-default-watch"]);
    let mut c = RayCluster::start(&temp, false);
    let (file, _) = c.wait_discovery(Duration::from_secs(120));
    let node = format!("127.0.0.1:{}", c.metrics_port);

    let out = stack.run(&["attach", file.to_str().unwrap(), "--name", "nfs-train"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nfs-train"));
    wait_for(
        "the attached cluster's targets",
        Duration::from_secs(30),
        || {
            stack
                .instances_of("nfs-train")
                .contains(&node)
                .then_some(())
        },
    );
    let taken = stack.run(&["attach", temp.to_str().unwrap(), "--name", "bad/name"]);
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("bad/name"));

    // Restart the daemon: the attachment is remembered.
    assert!(stack.run(&["down"]).status.success());
    assert!(
        stack
            .run(&["up", "--no-default-watch", "--scrape-interval", "2s"])
            .status
            .success()
    );
    wait_for(
        "the attached cluster after a restart",
        Duration::from_secs(30),
        || {
            stack
                .instances_of("nfs-train")
                .contains(&node)
                .then_some(())
        },
    );

    let out = stack.run(&["detach", "nfs-train"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the detached cluster's targets to go",
        Duration::from_secs(20),
        || stack.instances_of("nfs-train").is_empty().then_some(()),
    );
    let again = stack.run(&["detach", "nfs-train"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no attached cluster is named"));
}
