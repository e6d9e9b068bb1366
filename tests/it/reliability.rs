//! Faults: killed or crashing children, a killed daemon, races, full disks, odd files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::support::*;

fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn prometheus_processes(home: &Path) -> Vec<u32> {
    processes_mentioning(&format!(
        "--config.file={}",
        home.join("prometheus/prometheus.yml").display()
    ))
}

/// Every state file of the home parses (JSON, YAML, PID numbers). Temp files and
/// `targets.tmp/` are not state: a killed writer may leave them, and the next
/// daemon sweeps them.
fn assert_home_parses(home: &Path) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs_err::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if ["data", "logs", "targets.tmp", "plugins"].contains(&name.as_str())
                || name.ends_with(".tmp")
            {
                continue;
            }
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(&p, out);
            } else if t.is_file() {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(home, &mut files);
    for f in files {
        let text = fs_err::read(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            serde_json::from_slice::<Value>(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
        } else if name.ends_with(".yml") || name.ends_with(".yaml") {
            serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
        } else if name.ends_with(".pid") {
            String::from_utf8_lossy(&text)
                .trim()
                .parse::<u32>()
                .unwrap_or_else(|e| panic!("{} is not a PID: {e}", f.display()));
        }
    }
}

#[test]
fn a_killed_prometheus_is_back_and_scraping_within_10_s() {
    let (stack, root) = Stack::watching("ray_p", &[]);
    let _head = FakeHead::start(&root, "session_1", vec!["127.0.0.1:51".into()]);
    let name = format!("{}-ray_p", user());
    wait_for("the target", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:51"]).then_some(())
    });
    let old = stack.pids()[1];
    kill(old, nix::sys::signal::Signal::SIGKILL);
    let killed = SystemTime::now();
    let killed_at = Instant::now();
    wait_for(
        "a fresh scrape after the kill",
        Duration::from_secs(10),
        || {
            let out = stack.run(&[
                "query",
                &format!("timestamp(up{{ray_io_cluster=\"{name}\"}})"),
                "--json",
            ]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            let ts = v["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()?;
            let kill_ts = raywatch::clock::unix(killed);
            (ts > kill_ts).then_some(())
        },
    );
    eprintln!(
        "Prometheus back and scraping {:?} after kill -9",
        killed_at.elapsed()
    );
    let st = stack.status();
    assert_ne!(st["prometheus"]["pid"].as_u64().unwrap() as u32, old);
    assert!(st["prometheus"]["restarts"].as_u64().unwrap() >= 1);
    assert_eq!(prometheus_processes(&stack.home).len(), 1);
}

#[test]
fn a_crash_loop_is_shown_with_its_output_and_backoff() {
    let dir = scratch();
    let bin = dir.path().join("prometheus");
    fs_err::write(
        &bin,
        "#!/bin/sh\necho \"boom: this prometheus cannot start ($*)\" >&2\nexit 3\n",
    )
    .unwrap();
    fs_err::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    let stack = Stack::adopt(home.clone());
    let out = stack.run(&[
        "up",
        "--no-default-watch",
        "--prometheus-bin",
        bin.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "up succeeded with a Prometheus that cannot start"
    );
    // It "keeps exiting": its last output, and where the rest is (prometheus.log).
    crate::snapshots::assert_transcript(
        "up-with-a-crash-looping-prometheus",
        &out,
        crate::snapshots::scratch_filters(dir.path()),
    );
    let st = stack.status();
    let p = &st["prometheus"];
    assert_eq!(p["crash_loop"], true, "{p}");
    assert_eq!(p["ready"], false);
    assert!(p["last_exit"].as_str().unwrap().contains("3"), "{p}");
    assert!(
        p["last_output"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("boom")),
        "{p}"
    );
    let next = p["next_start_unix"]
        .as_f64()
        .expect("a next retry time while down");
    let now = raywatch::clock::unix_now();
    assert!(
        next > now - 1.0,
        "the next retry is scheduled, not overdue: {next} vs {now}"
    );
    // Backoff, not a busy loop: a few restarts over several seconds.
    let r0 = p["restarts"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let r1 = stack.status()["prometheus"]["restarts"].as_u64().unwrap();
    assert!(r1 - r0 <= 2, "{} restarts in 3 s", r1 - r0);
    let human = String::from_utf8_lossy(&stack.run(&["status"]).stdout).into_owned();
    // The status holds the next retry's time and the restart count, which move.
    assert!(
        human.contains("CRASH LOOP") && human.contains("boom"),
        "{human}"
    );
}

#[test]
fn after_the_daemon_is_killed_up_recovers_with_one_prometheus_and_reconciled_targets() {
    let (stack, root) = Stack::watching("ray_r", &[]);
    let keep = FakeHead::start(&root, "session_keep_1", vec!["127.0.0.1:61".into()]);
    let gone = FakeHead::start(&root, "session_gone_2", vec!["127.0.0.1:62".into()]);
    let name = format!("{}-ray_r", user());
    let names = || -> Vec<String> {
        let mut v: Vec<String> = stack.active_targets().into_iter().map(|(_, i)| i).collect();
        v.sort();
        v
    };
    wait_for("both clusters", Duration::from_secs(20), || {
        (names() == ["127.0.0.1:61", "127.0.0.1:62"]).then_some(())
    });

    let name_of = |instance: &str| {
        stack
            .active_targets()
            .into_iter()
            .find(|(_, i)| i == instance)
            .map(|(c, _)| c)
    };
    let kept_name = name_of("127.0.0.1:61").unwrap();
    assert!(kept_name.starts_with(&name));
    let daemon = stack.pids()[0];
    kill(daemon, nix::sys::signal::Signal::SIGKILL);
    drop(gone); // dies while nobody watches
    let _new = FakeHead::start(&root, "session_new_3", vec!["127.0.0.1:63".into()]);
    wait_for("the old daemon to be gone", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{daemon}")).exists()).then_some(())
    });

    let out = stack.run(&[
        "up",
        "--no-default-watch",
        "--watch",
        root.to_str().unwrap(),
        "--scrape-interval",
        "2s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "targets reconciled: kept, new, and the dead one gone",
        Duration::from_secs(45),
        || (names() == ["127.0.0.1:61", "127.0.0.1:63"]).then_some(()),
    );
    assert_eq!(
        prometheus_processes(&stack.home).len(),
        1,
        "exactly one Prometheus"
    );
    // The dead one's listener went with it at once; the cluster itself
    // ends when the liveness bound passes.
    wait_for(
        "two live clusters: kept and new",
        Duration::from_secs(45),
        || {
            let st = stack.status();
            let mut live: Vec<String> = st["clusters"]
                .as_array()?
                .iter()
                .filter(|c| c["state"] == "live")
                .map(|c| c["session"].as_str().unwrap_or("").to_string())
                .collect();
            live.sort();
            (live == ["session_keep_1", "session_new_3"]).then_some(())
        },
    );
    assert_eq!(
        name_of("127.0.0.1:61"),
        Some(kept_name),
        "a daemon restart does not rename a cluster"
    );
    drop(keep);
}

#[test]
fn sigterm_to_the_daemon_stops_everything() {
    let stack = Stack::up(&["--no-default-watch"]);
    let pids = stack.pids();
    kill(pids[0], nix::sys::signal::Signal::SIGTERM);
    wait_for(
        "no process of the home left",
        Duration::from_secs(30),
        || {
            processes_mentioning(stack.home.to_str().unwrap())
                .is_empty()
                .then_some(())
        },
    );
    assert_eq!(stack.run(&["status"]).status.code(), Some(3));
}

#[test]
fn two_hundred_kill_9s_of_the_daemon_during_churn_leave_every_file_parseable() {
    let (stack, root) = Stack::watching("ray_churn", &[]);
    assert!(stack.run(&["down"]).status.success());

    // Churn: clusters appear and disappear every few milliseconds.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let d = root.join(format!("session_churn_{}", i % 40));
                if d.exists() && i.is_multiple_of(3) {
                    let _ = fs_err::remove_dir_all(&d);
                } else {
                    let _ = fs_err::create_dir_all(&d);
                    let _ = std::panic::catch_unwind(|| {
                        write_discovery(
                            &d.join(DISCOVERY),
                            &[format!("127.0.0.1:{}", 1000 + i % 40)],
                        )
                    });
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut seed = std::process::id() as u64;
    for round in 0..200 {
        let mut daemon = stack.cmd().args(["daemon", "--log-file"]).spawn().unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 300));
        let _ = daemon.kill();
        let _ = daemon.wait();
        if round % 20 == 0 {
            assert_home_parses(&stack.home);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    assert_home_parses(&stack.home);
    // And the stack comes back from all that.
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
    assert_eq!(prometheus_processes(&stack.home).len(), 1);
    assert_home_parses(&stack.home);
    let leftovers: Vec<_> = fs_err::read_dir(stack.home.join("targets.tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn a_hundred_parallel_attaches_then_detaches_end_in_the_expected_set() {
    let base = scratch();
    let stack = Stack::up(&["--no-default-watch"]);
    let files: Vec<PathBuf> = (0..100)
        .map(|i| {
            let d = base
                .path()
                .join(format!("c{i}/session_2026-01-01_00-00-00_000001_{i}"));
            fs_err::create_dir_all(&d).unwrap();
            let f = d.join(DISCOVERY);
            write_discovery(&f, &[format!("127.0.0.1:{}", 2000 + i)]);
            f
        })
        .collect();
    let live_names = || -> Vec<String> {
        let mut v: Vec<String> = stack.status()["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == "live")
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    run_parallel(
        &stack,
        files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                vec![
                    "attach".into(),
                    f.display().to_string(),
                    "--name".into(),
                    format!("att-{i:03}"),
                ]
            })
            .collect(),
    );
    let expected: Vec<String> = (0..100).map(|i| format!("att-{i:03}")).collect();
    assert_eq!(live_names(), expected);
    let saved: Vec<Value> =
        serde_json::from_slice(&fs_err::read(stack.home.join("attachments.json")).unwrap())
            .unwrap();
    assert_eq!(saved.len(), 100);

    run_parallel(
        &stack,
        (0..100)
            .map(|i| vec!["detach".into(), format!("att-{i:03}")])
            .collect(),
    );
    assert_eq!(live_names(), Vec::<String>::new());
    let saved: Vec<Value> =
        serde_json::from_slice(&fs_err::read(stack.home.join("attachments.json")).unwrap())
            .unwrap();
    assert!(saved.is_empty());
}

/// A tmpfs mounted for one test, unmounted (with whatever is bound below it) on drop.
struct Mount(Vec<PathBuf>);

impl Drop for Mount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

#[test]
fn a_full_disk_is_reported_keeps_old_targets_and_recovers() {
    if !nix::unistd::geteuid().is_root() {
        unmet("root, to mount a small tmpfs");
    }
    let base = scratch();
    let small = base.path().join("small");
    let big = base.path().join("big");
    fs_err::create_dir_all(&small).unwrap();
    fs_err::create_dir_all(big.join("pdata")).unwrap();
    fs_err::create_dir_all(big.join("gdata")).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(&small)
            .status()
            .unwrap()
            .success()
    );
    let mut mounts = Mount(vec![small.clone()]);
    // The home lives on the small disk; Prometheus' and Grafana's data are bound elsewhere.
    let home = small.join("home");
    for (d, src) in [("prometheus/data", "pdata"), ("grafana/data", "gdata")] {
        fs_err::create_dir_all(home.join(d)).unwrap();
        assert!(
            Command::new("mount")
                .arg("--bind")
                .arg(big.join(src))
                .arg(home.join(d))
                .status()
                .unwrap()
                .success()
        );
        mounts.0.push(home.join(d));
    }
    for d in [home.clone(), home.join("prometheus"), home.join("grafana")] {
        fs_err::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let root = base.path().join("ray_disk");
    let stack = Stack::up_at(
        &home,
        &["--no-default-watch", "--watch", root.to_str().unwrap()],
    );
    let _first = FakeHead::start(&root, "session_first_1", vec!["127.0.0.1:71".into()]);
    let name = format!("{}-ray_disk", user());
    wait_for("the first cluster", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:71"]).then_some(())
    });
    let before = published_group(&home, &name).unwrap();

    // Fill the disk.
    let filler = small.join("filler");
    let mut f = fs_err::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);

    let _second = FakeHead::start(&root, "session_second_2", vec!["127.0.0.1:72".into()]);
    let err = wait_for("the write error in status", Duration::from_secs(20), || {
        stack.status()["targets_error"].as_str().map(String::from)
    });
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(
        published_group(&home, &name),
        Some(before),
        "the previous group is intact"
    );
    assert_eq!(stack.instances_of(&name), vec!["127.0.0.1:71".to_string()]);

    fs_err::remove_file(&filler).unwrap();
    let second = format!("{name}-2");
    wait_for(
        "recovery once space returns",
        Duration::from_secs(20),
        || (stack.instances_of(&second) == ["127.0.0.1:72"]).then_some(()),
    );
    wait_for("the error to clear", Duration::from_secs(10), || {
        stack.status()["targets_error"].is_null().then_some(())
    });
    drop(stack);
    drop(mounts);
}

#[test]
fn odd_filesystem_states_are_survived() {
    let (stack, root) = Stack::watching("ray_odd", &["--liveness", "6s"]);
    let name = format!("{}-ray_odd", user());

    // A dangling session_latest next to a real session.
    fs_err::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink("/nonexistent/session_x", root.join("session_latest")).unwrap();
    let head = FakeHead::start(&root, "session_a_1", vec!["127.0.0.1:81".into()]);
    wait_for(
        "the cluster despite a dangling session_latest",
        Duration::from_secs(20),
        || (stack.instances_of(&name) == ["127.0.0.1:81"]).then_some(()),
    );
    assert!(stack.status()["rejected"].as_array().unwrap().is_empty());

    // The discovery file replaced by a directory: reported, the cluster dies, then comes back.
    drop(head);
    let file = root.join("session_a_1").join(DISCOVERY);
    fs_err::remove_file(&file).unwrap();
    fs_err::create_dir(&file).unwrap();
    wait_for("the directory reported", Duration::from_secs(20), || {
        stack.status()["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("directory"))
            .then_some(())
    });
    wait_for("the cluster to leave", Duration::from_secs(20), || {
        stack.instances_of(&name).is_empty().then_some(())
    });
    fs_err::remove_dir(&file).unwrap();
    let head = FakeHead::start(&root, "session_a_1", vec!["127.0.0.1:81".into()]);
    wait_for("the cluster back", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:81"]).then_some(())
    });
    drop(head);

    // The watched root deleted and created again.
    fs_err::remove_dir_all(&root).unwrap();
    wait_for(
        "the cluster gone with its root",
        Duration::from_secs(20),
        || stack.instances_of(&name).is_empty().then_some(()),
    );
    let _head = FakeHead::start(&root, "session_b_2", vec!["127.0.0.1:82".into()]);
    wait_for(
        "the recreated root's cluster",
        Duration::from_secs(20),
        || (stack.instances_of(&name) == ["127.0.0.1:82"]).then_some(()),
    );

    // A file whose mtime lies an hour ahead does not stay alive once its writer stops.
    let (stack2, future_root) = Stack::watching("ray_future", &["--liveness", "6s"]);
    let session = future_root.join("session_f_1");
    fs_err::create_dir_all(&session).unwrap();
    let f = session.join(DISCOVERY);
    let _held = hold(&["127.0.0.1:83".into()]);
    write_discovery(&f, &["127.0.0.1:83".into()]);
    let future = SystemTime::now() + Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(future)
        .unwrap();
    let fname = format!("{}-ray_future", user());
    wait_for("the future-dated cluster", Duration::from_secs(20), || {
        (stack2.instances_of(&fname) == ["127.0.0.1:83"]).then_some(())
    });
    wait_for(
        "the future-dated cluster to leave",
        Duration::from_secs(25),
        || stack2.instances_of(&fname).is_empty().then_some(()),
    );
}

#[test]
fn up_on_a_running_stack_applies_changed_settings_and_keeps_the_last_good_config() {
    let roots = scratch();
    let (one, two) = (roots.path().join("ray_one"), roots.path().join("ray_two"));
    let stack = Stack::up(&["--no-default-watch", "--watch", one.to_str().unwrap()]);
    let prometheus = stack.pids()[1];
    let config_yaml = || -> String {
        let v: Value = stack.prom_get("/api/v1/status/config").json().unwrap();
        v["data"]["yaml"].as_str().unwrap().to_string()
    };

    // A new scrape interval: validated, written, Prometheus reloaded in place.
    let out = stack.run(&["up", "--scrape-interval", "5s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut said = vec![("up --scrape-interval 5s", out)];
    wait_for("Prometheus to run with 5s", Duration::from_secs(20), || {
        config_yaml().contains("scrape_interval: 5s").then_some(())
    });
    assert_eq!(stack.pids()[1], prometheus, "a reload, not a restart");

    // A new watch root: its clusters are found.
    let out = stack.run(&["up", "--watch", two.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _head = FakeHead::start(&two, "session_1", vec!["127.0.0.1:91".into()]);
    let name = format!("{}-ray_two", user());
    wait_for(
        "the newly watched root's cluster",
        Duration::from_secs(20),
        || (stack.instances_of(&name) == ["127.0.0.1:91"]).then_some(()),
    );

    // An invalid change is refused with the reason; the last good config stays.
    let out = stack.run(&["up", "--scrape-interval", "300years"]);
    assert!(!out.status.success());
    said.push(("up --scrape-interval 300years", out));
    assert!(config_yaml().contains("scrape_interval: 5s"));
    let saved: Value =
        serde_json::from_slice(&fs_err::read(stack.home.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["scrape_interval"], "5s");
    assert!(
        fs_err::read_to_string(stack.home.join("prometheus/prometheus.yml"))
            .unwrap()
            .contains("scrape_interval: 5s")
    );

    // Nothing new: it just says it runs.
    let out = stack.run(&["up"]);
    said.push(("up", out));
    assert_eq!(stack.pids()[1], prometheus);
    // The change applied (scrape interval 2s -> 5s, Prometheus reloaded by
    // SIGHUP); the invalid one refused by promtool, the previous config kept
    // ("out of range"); then "already running".
    crate::snapshots::assert_transcripts(
        "up-applies-settings-keeps-the-last-good",
        &said,
        crate::snapshots::stack_filters(&stack),
    );
}

#[test]
fn parallel_ups_on_one_home_end_in_exactly_one_stack() {
    let dir = scratch();
    let home = dir.path().join("home");
    let stack = Stack::adopt(home.clone());
    let up: Vec<String> = vec!["up".into(), "--no-default-watch".into()];
    run_parallel(&stack, vec![up; 5]);
    let home_str = home.to_str().unwrap();
    let daemons: Vec<u32> = processes_mentioning(home_str)
        .into_iter()
        .filter(|p| {
            fs_err::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("daemon"))
        })
        .collect();
    assert_eq!(daemons.len(), 1, "daemons: {daemons:?}");
    assert_eq!(prometheus_processes(&home).len(), 1);
    assert_eq!(stack.status()["prometheus"]["ready"], true);
}

#[test]
fn after_prometheus_moves_to_another_port_settings_apply_and_clients_follow() {
    let (stack, _root) = Stack::watching("ray_move", &[]);
    let old_port = stack.port();
    let pid = prometheus_processes(&stack.home)[0];
    // Someone takes the port the moment Prometheus dies: raywatch moves it.
    let taker = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", old_port)) {
                return l;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "could not take the port"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    let held = taker.join().unwrap();
    let new_port = wait_for("Prometheus on a new port", Duration::from_secs(30), || {
        let st = stack.status();
        let p = st["prometheus"]["port"].as_u64()? as u16;
        (p != old_port && st["prometheus"]["ready"] == true).then_some(p)
    });
    drop(held);

    let out = stack.run(&["up", "--scrape-interval", "5s"]);
    assert!(
        out.status.success(),
        "a settings change after the move was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scrape interval"));
    let st = stack.status();
    assert_eq!(st["prometheus"]["port"], new_port);
    assert_eq!(stack.port(), new_port, "config.json");
    let q = stack.run(&["query", "up"]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    // What Ray is told follows too: the gateway, which forwards to the new port.
    let env = stack.run(&["env", "--temp-dir", _root.join("next").to_str().unwrap()]);
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
    let vars = parse_exports(&String::from_utf8_lossy(&env.stdout));
    let host = &vars
        .iter()
        .find(|(k, _)| k == "RAY_PROMETHEUS_HOST")
        .unwrap()
        .1;
    let answer: serde_json::Value = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{host}/api/v1/query?query=up"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["status"], "success", "{answer}");
}
