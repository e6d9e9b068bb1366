//! Liveness and late listeners against another local user (issue 16, items 5 and 7): a
//! session folder moved away does not end a cluster whose GCS listens, and a port the
//! other user binds after a cluster lists it is never scraped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::security::{OTHER, as_other, open_scratch, other_user, system_python};
use crate::support::*;

/// The status entry of cluster `name`.
fn cluster(stack: &Stack, name: &str) -> Option<Value> {
    stack.status()["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// The PIDs of `gcs_server` processes whose command line names `session`.
fn gcs_pids(session: &str) -> Vec<u32> {
    processes_mentioning(session)
        .into_iter()
        .filter(|pid| {
            fs_err::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .next()
                    .is_some_and(|argv0| String::from_utf8_lossy(argv0).ends_with("gcs_server"))
            })
        })
        .collect()
}

#[test]
fn a_session_folder_another_user_moves_away_keeps_its_cluster_live_until_its_gcs_dies() {
    let other = other_user();
    let dir = open_scratch();
    // Ray's temp and session folders are writable by everyone.
    let root = dir.path().join("ray_moved");
    fs_err::create_dir(&root).unwrap();
    fs_err::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Where the other user takes the session folder: a folder of its own.
    let away = dir.path().join("away");
    fs_err::create_dir(&away).unwrap();
    std::os::unix::fs::chown(&away, Some(other.0), Some(other.1)).unwrap();
    let liveness = Duration::from_secs(12);
    let stack = Stack::up_at(
        &dir.path().join("home"),
        &[
            "--no-default-watch",
            "--watch",
            root.to_str().unwrap(),
            "--liveness",
            "12s",
        ],
    );
    let mut ray = RayCluster::start(&root, false);
    let (file, _) = ray.wait_discovery(Duration::from_secs(120));
    let session_dir = file.parent().unwrap().to_path_buf();
    assert_ne!(session_dir, root, "this Ray writes a session-scoped file");
    let session = session_of(&file);
    fs_err::set_permissions(&session_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let name = format!("{}-ray_moved", user());
    let node = format!("127.0.0.1:{}", ray.metrics_port);
    let up = format!("up{{ray_io_cluster=\"{name}\",instance=\"{node}\"}}");
    wait_for("the node target scraped", Duration::from_secs(90), || {
        stack
            .query(&up)
            .iter()
            .any(|s| s["value"][1] == "1")
            .then_some(())
    });
    assert_eq!(gcs_pids(&session).len(), 1, "one GCS for {session}");

    // The other user moves the live session folder away (its GCS port file with it).
    let moved_to = away.join(&session);
    let out = as_other(
        other,
        &[
            "mv",
            session_dir.to_str().unwrap(),
            moved_to.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "the other user could not move the session folder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!session_dir.exists() && moved_to.is_dir());

    // Twice the liveness bound: the cluster stays live, once, and scraped;
    // `status` says where its discovery file was.
    let moved_at = Instant::now();
    let mut noted = false;
    while moved_at.elapsed() < liveness * 2 + Duration::from_secs(4) {
        let c = cluster(&stack, &name).expect("the cluster is listed");
        assert_eq!(
            c["state"],
            "live",
            "the cluster ended when its folder moved: {c:#}\n{}",
            stack.log()
        );
        if let Some(note) = c["discovery_file_gone"].as_str() {
            assert!(note.contains(file.to_str().unwrap()), "{note}");
            noted = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(noted, "status never said the discovery file is gone");
    let st = stack.status();
    let ours: Vec<&Value> = st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["session"] == session.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{st:#}");
    assert!(stack.instances_of(&name).contains(&node));
    // Scraped after the move: a sample newer than the move.
    let fresh = stack.query(&format!("timestamp({up})"));
    let newest = fresh
        .first()
        .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let moved_unix = raywatch::clock::unix_now() - moved_at.elapsed().as_secs_f64();
    assert!(
        newest > moved_unix + liveness.as_secs_f64(),
        "no scrape well after the move: {fresh:?}"
    );

    // Its GCS killed: dead within the liveness bound.
    for pid in gcs_pids(&session) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let killed = Instant::now();
    let reason = wait_for(
        "the cluster to die once its GCS is gone",
        liveness + Duration::from_secs(10),
        || {
            let c = cluster(&stack, &name)?;
            (c["state"] == "dead").then(|| c["dead_reason"].as_str().unwrap_or("").to_string())
        },
    );
    let took = killed.elapsed();
    assert!(
        took <= liveness + Duration::from_secs(2),
        "dead {took:?} after its GCS ({reason})"
    );
    ray.kill9();
}

/// A listener the other user runs on one port: it serves a marker metric and
/// records every request it gets into `log`.
const ATTACKER: &str = r#"
import socket, sys, threading, time
port, log, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
body = b'raywatch_attacker_marker{forged="yes"} 1\n'
deadline = time.time() + 30
while True:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(('127.0.0.1', port))
        break
    except OSError:
        s.close()
        if time.time() > deadline:
            sys.exit(1)
        time.sleep(0.001)
s.listen(64)
open(ready, 'w').write(str(port))
def handle(c):
    c.settimeout(2)
    try:
        data = c.recv(65536)
    except OSError:
        data = b''
    with open(log, 'ab') as f:
        f.write(data + b'\n----\n')
    try:
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
    except OSError:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// The other user's listeners, killed on drop.
struct Attackers(Vec<Child>);

impl Drop for Attackers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the other user's listener on `port`, writing to `drop_dir`.
fn attack(other: (u32, u32), python: &str, script: &Path, drop_dir: &Path, port: u16) -> Child {
    command_as(other, python)
        .arg(script)
        .arg(port.to_string())
        .arg(drop_dir.join("requests.log"))
        .arg(drop_dir.join(format!("ready-{port}")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The withheld entries of every cluster for `address`.
fn withheld_reasons(st: &Value, address: &str) -> Vec<String> {
    st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["withheld"].as_array().cloned().unwrap_or_default())
        .filter(|w| w["address"] == address)
        .map(|w| w["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_port_another_user_binds_after_a_cluster_lists_it_is_never_scraped() {
    let other = other_user();
    let python = system_python();
    let dir = open_scratch();
    let drop_dir = dir.path().join("attacker");
    fs_err::create_dir(&drop_dir).unwrap();
    fs_err::set_permissions(&drop_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = dir.path().join("attacker.py");
    fs_err::write(&script, ATTACKER).unwrap();
    fs_err::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (stack, root) = Stack::watching("ray_late", &["--liveness", "5m"]);
    let mut goods = Vec::new();
    let mut attackers = Attackers(Vec::new());
    let mut ports = Vec::new();
    for round in 0..20 {
        // The victim's cluster lists its own endpoint and one nobody holds
        // yet; the other user binds that one a moment after the file appears.
        let port = free_port();
        ports.push(port);
        let session = root.join(format!(
            "session_2026-01-01_00-00-00_000001_{}",
            100 + round
        ));
        fs_err::create_dir(&session).unwrap();
        let late = format!("127.0.0.1:{port}");
        let good = MetricsEndpoint::serve("victim_marker 1\n");
        write_discovery(&session.join(DISCOVERY), &[good.addr.clone(), late.clone()]);
        goods.push(good);
        attackers
            .0
            .push(attack(other, python, &script, &drop_dir, port));
        wait_for("the other user's listener", Duration::from_secs(10), || {
            drop_dir
                .join(format!("ready-{port}"))
                .exists()
                .then_some(())
        });
        // The daemon has seen the listener: the endpoint is withheld, naming its owner.
        wait_for(
            &format!("round {round}: the late port withheld as the other user's"),
            Duration::from_secs(10),
            || {
                withheld_reasons(&stack.status(), &late)
                    .iter()
                    .any(|r| r.contains(&format!("uid {} ({OTHER})", other.0)))
                    .then_some(())
            },
        );
    }
    // Past two discovery ticks and scrape intervals: nothing of theirs was ever stored.
    std::thread::sleep(Duration::from_secs(12));
    let alternatives: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let scraped_up = stack.query(&format!(
        "count_over_time(up{{instance=~\"{}\"}}[30m])",
        alternatives.join("|")
    ));
    let forged = stack.query("count_over_time(raywatch_attacker_marker[30m])");
    let requests =
        String::from_utf8_lossy(&fs_err::read(drop_dir.join("requests.log")).unwrap_or_default())
            .into_owned();
    assert!(
        forged.is_empty() && scraped_up.is_empty() && requests.is_empty(),
        "the other user's listeners were scraped: series {forged:?}, up {scraped_up:?}, requests:\n{requests}"
    );
    // The victim's own endpoints were scraped all along.
    assert_eq!(
        stack.query("victim_marker").len(),
        goods.len(),
        "the victim's endpoints were not all scraped"
    );
    drop(attackers);
}

#[test]
fn a_late_listener_of_the_victim_is_published_and_scraped() {
    let (stack, root) = Stack::watching("ray_victim_late", &[]);
    let port = free_port();
    let late = format!("127.0.0.1:{port}");
    // A remote target of a multi-node cluster cannot be checked here: published as it is.
    let remote = "192.0.2.7:9100".to_string();
    let session: PathBuf = root.join("session_2026-01-01_00-00-00_000001_7");
    fs_err::create_dir(&session).unwrap();
    write_discovery(&session.join(DISCOVERY), &[late.clone(), remote.clone()]);
    let name = format!("{}-ray_victim_late", user());
    // Nobody listens yet: shown as waiting, not published.
    wait_for("the late port waiting", Duration::from_secs(20), || {
        withheld_reasons(&stack.status(), &late)
            .iter()
            .any(|r| r.contains("waiting for a listener"))
            .then_some(())
    });
    wait_for(
        "the remote target published",
        Duration::from_secs(20),
        || stack.instances_of(&name).contains(&remote).then_some(()),
    );
    assert!(!stack.instances_of(&name).contains(&late));
    // Ray's metrics agents bind seconds after the file lists them: then published and scraped.
    let _victim = MetricsEndpoint::serve_on(port, "victim_late_marker 1\n");
    let listened = Instant::now();
    wait_for(
        "the late listener published",
        Duration::from_secs(10),
        || {
            published_group(&stack.home, &name)?["targets"]
                .as_array()?
                .iter()
                .any(|t| *t == late.as_str())
                .then_some(())
        },
    );
    assert!(
        listened.elapsed() < Duration::from_secs(5),
        "published {:?} after its listener",
        listened.elapsed()
    );
    wait_for("the late listener scraped", Duration::from_secs(30), || {
        stack
            .query(&format!(
                "victim_late_marker{{ray_io_cluster=\"{name}\",instance=\"{late}\"}}"
            ))
            .first()
            .map(|_| ())
    });
    assert!(withheld_reasons(&stack.status(), &late).is_empty());
}
