//! Discovery with synthetic Ray heads: new roots, bad input, liveness, no reloads.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn a_temp_dir_created_under_tmp_after_up_is_found() {
    let stack = Stack::up(&[]);
    let root = tempfile::Builder::new()
        .prefix("ray_rwtest_")
        .tempdir_in("/tmp")
        .unwrap();
    let name = format!(
        "{}-{}",
        user(),
        root.path().file_name().unwrap().to_string_lossy()
    );
    let _head = FakeHead::start(
        root.path(),
        "session_2026-01-01_00-00-00_000001_7",
        vec!["127.0.0.1:7".into()],
    );
    wait_for(
        "the new root's cluster in Prometheus",
        Duration::from_secs(20),
        || (stack.instances_of(&name) == ["127.0.0.1:7"]).then_some(()),
    );
    let labels = stack
        .active_target_labels()
        .into_iter()
        .find(|l| l["ray_io_cluster"] == name)
        .unwrap();
    assert_eq!(
        labels["ray_session"],
        "session_2026-01-01_00-00-00_000001_7"
    );
    assert_eq!(Path::new(&labels["ray_temp_dir"]), root.path());
    assert_eq!(labels["ray_user"], user());
}

#[test]
fn bad_discovery_files_are_reported_and_the_good_cluster_keeps_its_targets() {
    let (stack, root) = Stack::watching("ray_mixed", &[]);
    let good = FakeHead::start(&root, "session_good_1", vec!["127.0.0.1:11".into()]);
    let name = format!("{}-ray_mixed", user());
    wait_for("the good cluster", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:11"]).then_some(())
    });

    let session = |s: &str| {
        let d = root.join(s);
        fs_err::create_dir_all(&d).unwrap();
        d.join(DISCOVERY)
    };
    let truncated = session("session_truncated_2");
    fs_err::write(
        &truncated,
        br#"[{"labels": {"job": "ray"}, "targets": ["127.0.0.1:1"#,
    )
    .unwrap();
    let garbage = session("session_garbage_3");
    fs_err::write(&garbage, b"\x00\x01 not json at all \xff\xfe").unwrap();
    let huge = session("session_huge_4");
    fs_err::File::create(&huge)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let dir = session("session_dir_5");
    fs_err::create_dir(&dir).unwrap();
    let looped = session("session_loop_6");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let bad_target = session("session_badtarget_7");
    write_discovery(&bad_target, &["http://127.0.0.1:80/metrics".into()]);

    let expected: [(&Path, &str); 6] = [
        (&truncated, "not valid discovery JSON"),
        (&garbage, "not valid discovery JSON"),
        (&huge, "over the 1048576-byte limit"),
        (&dir, "is a directory"),
        (&looped, "symbolic link"),
        (&bad_target, "not host:port"),
    ];
    let rejected = wait_for(
        "all six rejections in status",
        Duration::from_secs(20),
        || {
            let st = stack.status();
            let rejected = st["rejected"].as_array().unwrap().clone();
            (rejected.len() >= expected.len()).then_some(rejected)
        },
    );
    for (path, reason) in expected {
        let hit = rejected
            .iter()
            .find(|r| Path::new(r["path"].as_str().unwrap()) == path);
        let hit = hit.unwrap_or_else(|| panic!("{} not reported: {rejected:?}", path.display()));
        assert!(
            hit["reason"].as_str().unwrap().contains(reason),
            "{}: {}",
            path.display(),
            hit["reason"]
        );
    }
    let log = stack.log();
    assert!(
        log.contains(&format!("rejected {}", huge.display())),
        "rejections are logged with their path"
    );

    // The daemon keeps serving the good cluster, which stays live past the liveness bound.
    std::thread::sleep(Duration::from_secs(1));
    let until = Instant::now() + Duration::from_secs(22);
    while Instant::now() < until {
        assert_eq!(stack.instances_of(&name), vec!["127.0.0.1:11".to_string()]);
        std::thread::sleep(Duration::from_secs(2));
    }
    let st = stack.status();
    let live: Vec<_> = st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "live")
        .collect();
    assert_eq!(live.len(), 1, "only the good cluster is live: {live:?}");
    drop(good);
}

#[test]
fn a_cluster_whose_file_stops_changing_leaves_and_prometheus_is_not_reloaded() {
    let (stack, root) = Stack::watching("ray_life", &["--liveness", "6s"]);
    let reloaded_at = stack.own_metric("prometheus_config_last_reload_success_timestamp_seconds");
    let name = format!("{}-ray_life", user());
    let head = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000001_1",
        vec!["127.0.0.1:21".into()],
    );
    wait_for("the cluster's target", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:21"]).then_some(())
    });
    let file = head.file.clone();
    drop(head);
    let stopped = Instant::now();
    // The cluster's group leaves the targets files (which stay, in place).
    assert!(published_group(&stack.home, &name).is_some());
    wait_for(
        "the stale cluster's group to leave the targets files",
        Duration::from_secs(60),
        || published_group(&stack.home, &name).is_none().then_some(()),
    );
    assert!(
        stopped.elapsed() > Duration::from_secs(5),
        "left before the liveness bound"
    );
    wait_for(
        "Prometheus to drop the stale cluster",
        Duration::from_secs(30),
        || stack.instances_of(&name).is_empty().then_some(()),
    );

    // The same temp dir restarted: the cluster comes back under the same name.
    let _head2 = FakeHead::start(
        &root,
        "session_2026-01-01_00-05-00_000002_2",
        vec!["127.0.0.1:22".into()],
    );
    wait_for("the restarted cluster", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:22"]).then_some(())
    });
    assert!(file.exists());
    assert_eq!(
        stack.own_metric("prometheus_config_last_reload_success_timestamp_seconds"),
        reloaded_at,
        "Prometheus was reloaded while clusters came and went"
    );
}

#[test]
fn the_legacy_layout_one_file_per_temp_dir_is_followed() {
    // Ray before 2.5x: a regular file at the temp-dir level, session_latest naming the session.
    let roots = scratch();
    let root = roots.path().join("ray_old");
    let session = root.join("session_2024-01-01_00-00-00_000001_5");
    fs_err::create_dir_all(&session).unwrap();
    std::os::unix::fs::symlink(&session, root.join("session_latest")).unwrap();
    let stack = Stack::up(&["--no-default-watch", "--watch", root.to_str().unwrap()]);
    let file = root.join(DISCOVERY);
    let _held = hold(&["127.0.0.1:95".into()]);
    write_discovery(&file, &["127.0.0.1:95".into()]);
    let name = format!("{}-ray_old", user());
    wait_for("the legacy cluster", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:95"]).then_some(())
    });
    let labels = stack
        .active_target_labels()
        .into_iter()
        .find(|l| l["ray_io_cluster"] == name)
        .unwrap();
    assert_eq!(
        labels["ray_session"],
        "session_2024-01-01_00-00-00_000001_5"
    );

    // Ray ≥ 2.5x makes the temp-dir file a symlink to the session's file: only the
    // session-scoped file counts, so the cluster is not listed twice.
    fs_err::remove_file(&file).unwrap();
    let scoped = session.join(DISCOVERY);
    write_discovery(&scoped, &["127.0.0.1:95".into()]);
    std::os::unix::fs::symlink(&scoped, &file).unwrap();
    wait_for(
        "one cluster, from the session-scoped file",
        Duration::from_secs(20),
        || {
            let st = stack.status();
            let live: Vec<_> = st["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["state"] == "live")
                .cloned()
                .collect();
            (live.len() == 1 && live[0]["discovery_file"] == scoped.to_str().unwrap()).then_some(())
        },
    );
    assert!(
        stack.status()["rejected"].as_array().unwrap().is_empty(),
        "the temp-dir symlink is not an error"
    );
}
