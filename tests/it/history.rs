//! The cluster history: clusters started and killed, the daemon killed between,
//! each listed once with its first and last seen and why it ended.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::snapshots::{assert_transcript, stack_filters};
use crate::support::*;

fn now() -> f64 {
    raywatch::clock::unix_now()
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for("the daemon to die", Duration::from_secs(10), || {
        state(pid).is_none_or(|s| s == 'Z').then_some(())
    });
}

/// `raywatch history --json`'s clusters.
fn history(stack: &Stack) -> Vec<Value> {
    let out = stack.run(&["history", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], 1);
    v["clusters"].as_array().unwrap().clone()
}

/// The one entry of `session` (panics when there are several).
fn entry(stack: &Stack, session: &str) -> Option<Value> {
    let all: Vec<Value> = history(stack)
        .into_iter()
        .filter(|c| c["session"] == session)
        .collect();
    assert!(all.len() <= 1, "{session} is listed {} times", all.len());
    all.into_iter().next()
}

fn up_again(stack: &Stack, watch: &[&Path]) {
    let mut args = vec!["up", "--no-default-watch", "--liveness", "8s"];
    for w in watch {
        args.extend(["--watch", w.to_str().unwrap()]);
    }
    let out = stack.run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_near(what: &str, got: &Value, want: f64) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a time: {got}"));
    assert!(
        (got - want).abs() <= 15.0,
        "{what}: {got} is {:.1} s from {want}",
        got - want
    );
}

/// The issue's scenario: a real Ray cluster and synthetic ones start and
/// end, the daemon is killed with -9 while some end, and `history` lists
/// each cluster once with first and last seen within 15 s and its end reason.
#[test]
fn ray_and_synthetic_clusters_with_the_daemon_killed_between_are_each_listed_once() {
    let base = scratch();
    let (ta, tb) = (base.path().join("ray_ha"), base.path().join("ray_hb"));
    fs_err::create_dir_all(&tb).unwrap();
    let watch = [ta.as_path(), tb.as_path()];
    let stack = Stack::up(&[
        "--no-default-watch",
        "--watch",
        ta.to_str().unwrap(),
        "--watch",
        tb.to_str().unwrap(),
        "--liveness",
        "8s",
    ]);

    // A: real Ray. B and C: synthetic heads in another temp dir.
    let mut a = RayCluster::start(&ta, false);
    let (file_a, _) = a.wait_discovery(Duration::from_secs(120));
    let start_a = now();
    let session_a = cluster_session(&file_a);
    let (sb, sc, sd) = (
        "session_2026-01-01_00-00-00_000000_101",
        "session_2026-01-01_00-00-00_000000_102",
        "session_2026-01-01_00-00-00_000000_103",
    );
    let start_bc = now();
    let b = FakeHead::start(&tb, sb, vec!["127.0.0.1:9".into()]);
    let c = FakeHead::start(&tb, sc, vec!["127.0.0.1:9".into()]);
    for s in [session_a.as_str(), sb, sc] {
        wait_for(
            &format!("{s} live in the history"),
            Duration::from_secs(60),
            || entry(&stack, s).filter(|e| e["state"] == "live"),
        );
    }
    // Past one heartbeat, so that last seen survives the kill.
    wait_for("a heartbeat", Duration::from_secs(30), || {
        let e = entry(&stack, sc)?;
        (e["last_seen_unix"].as_f64()? - e["first_seen_unix"].as_f64()? >= 5.0).then_some(())
    });

    // The daemon dies; meanwhile B stops (its file stays) and C goes with its folder.
    kill9(daemon_pid(&stack));
    drop(b);
    let end_b = now();
    drop(c);
    fs_err::remove_dir_all(tb.join(sc)).unwrap();
    let end_c = now();
    // Without the daemon, `history` still reads the file: not ended, state unknown.
    let e = entry(&stack, sb).unwrap();
    assert_eq!(e["state"], "unknown", "{e}");
    wait_for("B's file to go stale", Duration::from_secs(30), || {
        let age = fs_err::metadata(tb.join(sb).join(DISCOVERY))
            .ok()?
            .modified()
            .ok()?
            .elapsed()
            .ok()?;
        (age > Duration::from_secs(10)).then_some(())
    });
    up_again(&stack, &watch);

    let b = wait_for("B ended", Duration::from_secs(30), || {
        entry(&stack, sb).filter(|e| e["state"] == "ended")
    });
    let reason = b["end_reason"].as_str().unwrap();
    assert!(
        reason.contains("found ended when raywatch restarted") && reason.contains("last written"),
        "{reason}"
    );
    assert_near("B's first seen", &b["first_seen_unix"], start_bc);
    assert_near("B's last seen", &b["last_seen_unix"], end_b);
    let c = wait_for("C ended", Duration::from_secs(30), || {
        entry(&stack, sc).filter(|e| e["state"] == "ended")
    });
    assert!(
        c["end_reason"]
            .as_str()
            .unwrap()
            .contains("discovery file is gone"),
        "{c}"
    );
    assert_near("C's last seen", &c["last_seen_unix"], end_c);
    assert_eq!(entry(&stack, &session_a).unwrap()["state"], "live");

    // D starts and stops under the running daemon: the liveness bound ends it.
    let start_d = now();
    let d = FakeHead::start(&tb, sd, vec!["127.0.0.1:9".into()]);
    wait_for("D live", Duration::from_secs(30), || {
        entry(&stack, sd).filter(|e| e["state"] == "live")
    });
    drop(d);
    let end_d = now();
    let d = wait_for("D ended", Duration::from_secs(40), || {
        entry(&stack, sd).filter(|e| e["state"] == "ended")
    });
    assert!(
        d["end_reason"].as_str().unwrap().contains("not rewritten"),
        "{d}"
    );
    assert_near("D's first seen", &d["first_seen_unix"], start_d);
    assert_near("D's last seen", &d["last_seen_unix"], end_d);

    // A is killed with -9.
    a.kill9();
    let end_a = now();
    let ea = wait_for("A ended", Duration::from_secs(40), || {
        entry(&stack, &session_a).filter(|e| e["state"] == "ended")
    });
    assert_near("A's first seen", &ea["first_seen_unix"], start_a);
    assert_near("A's last seen", &ea["last_seen_unix"], end_a);
    let reason = ea["end_reason"].as_str().unwrap();
    assert!(
        reason.contains("GCS refuses") || reason.contains("not rewritten"),
        "{reason}"
    );
    assert_eq!(ea["name"], format!("{}-ray_ha", user()));
    assert_eq!(ea["user"], user());
    assert_eq!(ea["temp_dir"], ta.to_str().unwrap());

    // Once more through a kill -9: the same four clusters, once each, unchanged.
    let before = history(&stack);
    kill9(daemon_pid(&stack));
    up_again(&stack, &watch);
    wait_for("the daemon's first pass", Duration::from_secs(10), || {
        stack.status()["daemon"]["pid"].as_u64()
    });
    let after = history(&stack);
    assert_eq!(after.len(), 4, "{after:#?}");
    assert_eq!(before, after);
    // The human listing names each once, with its end.
    let text = String::from_utf8(stack.run(&["history"]).stdout).unwrap();
    for s in [session_a.as_str(), sb, sc, sd] {
        assert_eq!(text.matches(s).count(), 1, "{text}");
    }
    assert_eq!(text.matches("    ended: ").count(), 4, "{text}");

    // `open` of an ended cluster: Prometheus' graph over its life (no Grafana here).
    let out = stack.run(&["open", &format!("{}-ray_ha", user())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{}/graph?", stack.port()))
            && url.contains("g0.range_input=")
            && url.contains(&session_a),
        "{url}"
    );
}

/// Every line of the history files parses as JSON, except a last line the
/// caller allows to be torn; returns the lines.
fn history_lines(home: &Path, allow_torn_tail: bool) -> usize {
    let mut n = 0;
    for f in ["history.jsonl.1", "history.jsonl"] {
        let Ok(text) = fs_err::read(home.join(f)) else {
            continue;
        };
        let ends_clean = text.is_empty() || text.ends_with(b"\n");
        let lines: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        for (i, l) in lines.iter().enumerate() {
            let last = i + 1 == lines.len() && !ends_clean;
            if let Err(e) = serde_json::from_slice::<Value>(l) {
                assert!(
                    allow_torn_tail && last && f == "history.jsonl",
                    "{f} line {i} does not parse ({e}): {}",
                    String::from_utf8_lossy(l)
                );
            }
            n += 1;
        }
    }
    n
}

/// 100 kill -9s of the daemon at random moments while clusters come and go:
/// the history parses after each, and after the next start with no torn line.
#[test]
fn a_hundred_kill_9s_of_the_daemon_during_churn_leave_a_history_that_parses() {
    let (stack, root) = Stack::watching("ray_hchurn", &["--liveness", "3s"]);
    assert!(stack.run(&["down"]).status.success());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let d = root.join(format!("session_2026-01-01_00-00-00_000000_{}", i % 30));
                if d.exists() && i.is_multiple_of(3) {
                    let _ = fs_err::remove_dir_all(&d);
                } else {
                    let _ = fs_err::create_dir_all(&d);
                    let _ = std::panic::catch_unwind(|| {
                        write_discovery(
                            &d.join(DISCOVERY),
                            &[format!("127.0.0.1:{}", 1000 + i % 30)],
                        )
                    });
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut seed = std::process::id() as u64;
    for _ in 0..100 {
        let mut daemon = stack.cmd().args(["daemon", "--log-file"]).spawn().unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(200 + (seed >> 33) % 1000));
        let _ = daemon.kill();
        let _ = daemon.wait();
        history_lines(&stack.home, true);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    let out = stack.run(&[
        "up",
        "--no-default-watch",
        "--watch",
        root.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restarted daemon cut any torn line (before it answers); stopped
    // cleanly, it leaves none.
    wait_for("the daemon", Duration::from_secs(10), || {
        stack.status()["daemon"]["pid"].as_u64()
    });
    assert!(stack.run(&["down"]).status.success());
    let n = history_lines(&stack.home, false);
    assert!(
        n > 30,
        "only {n} history lines: the daemons recorded little"
    );
    let all = history(&stack);
    assert!(!all.is_empty());
    let mut sessions: Vec<&str> = all.iter().map(|c| c["session"].as_str().unwrap()).collect();
    sessions.sort();
    let before = sessions.len();
    sessions.dedup();
    assert_eq!(before, sessions.len(), "a session is listed twice");
    for c in &all {
        let (first, last) = (
            c["first_seen_unix"].as_f64().unwrap(),
            c["last_seen_unix"].as_f64().unwrap(),
        );
        assert!(first <= last, "{c}");
    }
}

/// Names and folders with escape sequences are escaped in `history`'s human
/// output (a temp dir is anyone's choice of name).
#[test]
fn history_escapes_what_came_from_outside() {
    let base = scratch();
    let root = base.path().join("ray_\u{1b}]0;pwned\u{7}\u{1b}[2J");
    fs_err::create_dir_all(&root).unwrap();
    let stack = Stack::up(&["--no-default-watch", "--watch", root.to_str().unwrap()]);
    let _head = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000000_7",
        vec!["127.0.0.1:9".into()],
    );
    let text = wait_for(
        "the cluster in the history",
        Duration::from_secs(30),
        || {
            let out = stack.run(&["history"]);
            let text = String::from_utf8(out.stdout).unwrap();
            text.contains("session_2026-01-01_00-00-00_000000_7")
                .then_some(text)
        },
    );
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("\\e]0;pwned"), "{text}");
}

/// `status` shows the disk Prometheus' data uses, the space left, and the
/// retention, 30 days by default.
#[test]
fn status_shows_prometheus_disk_use_and_a_30_day_default_retention() {
    let stack = Stack::up(&["--no-default-watch"]);
    let s = stack.status();
    let p = &s["prometheus"];
    assert_eq!(p["retention"], "30d", "{p}");
    assert!(p["data_bytes"].as_u64().unwrap() > 0, "{p}");
    assert!(p["data_free_bytes"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(
        p["data_dir"].as_str().unwrap(),
        stack.home.join("prometheus/data").to_str().unwrap()
    );
    let text = String::from_utf8(stack.run(&["status"]).stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("  data        "))
        .unwrap_or_else(|| panic!("no data line:\n{text}"));
    assert!(
        line.contains("(retention 30d; ") && line.contains(" free)"),
        "{line}"
    );
}

/// With the stack down, `history` still lists a cluster (state unknown) and
/// `open` still prints its range; a history file that is a FIFO or absurdly
/// large is refused by name, without hanging, and the daemon runs on without it.
#[test]
fn history_and_open_work_with_the_stack_down() {
    let (stack, root) = Stack::watching("ray_hdown", &[]);
    let head = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000000_9",
        vec!["127.0.0.1:9".into()],
    );
    let name = format!("{}-ray_hdown", user());
    wait_for(
        "the cluster in the history",
        Duration::from_secs(30),
        || {
            history(&stack)
                .into_iter()
                .find(|c| c["name"] == name.as_str())
        },
    );
    drop(head);
    assert!(stack.run(&["down"]).status.success());
    let e = history(&stack)
        .into_iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap();
    assert_eq!(e["state"], "unknown", "{e}");
    let out = stack.run(&["open", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The Prometheus graph link (its query holds this run's times) and a word
    // that raywatch is not running.
    let mut filters = vec![(r"/graph\?\S+".to_string(), "/graph?[query]".to_string())];
    filters.extend(stack_filters(&stack));
    assert_transcript("open-with-the-stack-down", &out, filters);
    // An unknown name with the stack down: "not running" (exit 3).
    assert_eq!(stack.run(&["open", "no-such"]).status.code(), Some(3));
}

#[test]
fn a_history_file_that_is_not_a_regular_file_is_refused_at_once_and_the_daemon_records_none() {
    let (stack, root) = Stack::watching("ray_hfifo", &[]);
    assert!(stack.run(&["down"]).status.success());
    let file = stack.home.join("history.jsonl");
    let _ = fs_err::remove_file(&file);
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = std::time::Instant::now();
    let out = stack.run(&["history"]);
    assert_eq!(out.status.code(), Some(1));
    // The error names history.jsonl: not a regular file.
    assert_transcript("history-a-fifo", &out, stack_filters(&stack));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The daemon starts anyway, and says why it records no history.
    let out = stack.run(&[
        "up",
        "--no-default-watch",
        "--watch",
        root.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the daemon's complaint", Duration::from_secs(10), || {
        stack
            .log()
            .contains("the cluster history is not recorded")
            .then_some(())
    });
    assert!(stack.run(&["down"]).status.success());
}

#[test]
fn a_history_file_larger_than_raywatch_ever_writes_is_refused() {
    let stack = Stack::up(&["--no-default-watch"]);
    assert!(stack.run(&["down"]).status.success());
    let file = stack.home.join("history.jsonl");
    let _ = fs_err::remove_file(&file);
    let f = fs_err::File::create(&file).unwrap();
    f.set_len(1 << 30).unwrap();
    let out = stack.run(&["history"]);
    assert_eq!(out.status.code(), Some(1));
    // "more than raywatch ever writes"
    assert_transcript("history-too-large", &out, stack_filters(&stack));
}
