//! Isolation on a shared machine: what other local users can and cannot do to a stack.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

pub const OTHER: &str = "rwtest-other";

/// The suite's second local user (created once). Creating it needs root:
/// `scripts/test` reports the tests that call this as skipped when it is not
/// root, so one that gets here without root was run some other way, and fails.
pub fn other_user() -> (u32, u32) {
    if !nix::unistd::geteuid().is_root() {
        unmet("root, to create the second local user rwtest-other");
    }
    let lookup = || {
        nix::unistd::User::from_name(OTHER)
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
    };
    if let Some(ids) = lookup() {
        return ids;
    }
    // Parallel tests may race to create it; whoever loses finds it afterwards.
    let _ = Command::new("useradd")
        .args(["--no-create-home", "--shell", "/usr/sbin/nologin", OTHER])
        .output();
    lookup().expect("useradd created the second user")
}

/// A Python the other user can run (not a per-user shim).
pub fn system_python() -> &'static str {
    let p = "/usr/bin/python3";
    if !Path::new(p).exists() {
        unmet("/usr/bin/python3, a Python the second user can run");
    }
    p
}

/// A copy of raywatch the other user can execute, wherever the repo lives.
pub fn shared_raywatch(dir: &Path) -> std::path::PathBuf {
    let dest = dir.join("raywatch");
    fs_err::copy(raywatch_bin(), &dest).unwrap();
    fs_err::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    dest
}

/// Runs a command as the other user.
pub fn as_other((uid, gid): (u32, u32), args: &[&str]) -> Output {
    command_as((uid, gid), args[0])
        .args(&args[1..])
        .output()
        .unwrap()
}

/// A scratch folder other users may traverse, so that only raywatch's own
/// permissions stand between them and the stack.
pub fn open_scratch() -> tempfile::TempDir {
    let d = scratch();
    fs_err::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn prometheus_refuses_anonymous_callers_and_has_no_lifecycle_api() {
    let stack = Stack::up(&["--no-default-watch"]);
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{}", stack.port());
    assert_eq!(
        http.get(format!("{base}/api/v1/query?query=up"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    for path in ["/-/reload", "/-/quit"] {
        let anon = http
            .post(format!("{base}{path}"))
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(anon, 401, "{path} without credentials");
        let authed = http
            .post(format!("{base}{path}"))
            .basic_auth("raywatch", Some(stack.password()))
            .send()
            .unwrap()
            .status();
        assert!(
            !authed.is_success(),
            "{path} with credentials answered {authed}: lifecycle endpoints must be off"
        );
    }
    let wrong = http
        .get(format!("{base}/api/v1/query?query=up"))
        .basic_auth("raywatch", Some("guess"))
        .send()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // Prometheus is still there, and raywatch's own commands authenticate.
    wait_for(
        "Prometheus' self-scrape through `raywatch query`",
        Duration::from_secs(30),
        || {
            let q = stack.run(&["query", "up{job=\"prometheus\"}"]);
            assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
            String::from_utf8_lossy(&q.stdout)
                .contains("prometheus")
                .then_some(())
        },
    );
    for (path, mode) in [
        ("secrets/prometheus-password", 0o600),
        ("secrets", 0o700),
        ("run/raywatch.sock", 0o600),
        (".", 0o700),
    ] {
        let m = fs_err::symlink_metadata(stack.home.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{path} has mode {m:o}");
    }
}

#[test]
fn another_user_can_neither_reach_the_control_socket_nor_read_the_stack() {
    let other = other_user();
    let shared = open_scratch();
    let home = shared.path().join("home");
    let stack = Stack::up_at(&home, &[]);
    let sock = home.join("run/raywatch.sock");

    let connect = as_other(
        other,
        &[
            "python3",
            "-c",
            &format!(
                "import socket; socket.socket(socket.AF_UNIX).connect({:?})",
                sock.to_str().unwrap()
            ),
        ],
    );
    assert!(
        !connect.status.success(),
        "the other user reached the control socket"
    );
    assert!(
        String::from_utf8_lossy(&connect.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&connect.stderr)
    );
    let read = as_other(
        other,
        &[
            "cat",
            home.join("secrets/prometheus-password").to_str().unwrap(),
        ],
    );
    assert!(
        !read.status.success(),
        "the other user read the Prometheus password"
    );
    let status = as_other(
        other,
        &[
            raywatch_bin().to_str().unwrap(),
            "--home",
            home.to_str().unwrap(),
            "status",
        ],
    );
    // The other user sees no status of the stack (nothing of its clusters),
    // only an error.
    crate::snapshots::assert_transcript(
        "another-user-asks-the-status",
        &status,
        crate::snapshots::stack_filters(&stack),
    );
}

#[test]
fn another_users_planted_roots_and_files_make_no_cluster() {
    let other = other_user();
    let shared = open_scratch();
    let home = shared.path().join("home");
    let stack = Stack::up_at(&home, &[]);

    // A root the other user makes under /tmp is neither followed nor watched.
    let planted_root = format!("/tmp/ray_rwsec_{}", std::process::id());
    let planted = format!(
        "{planted_root}/session_2026-01-01_00-00-00_000001_66/prom_metrics_service_discovery.json"
    );
    let plant = |file: &str| {
        let script = format!(
            "mkdir -p {dir} && printf '[{{\"labels\":{{}},\"targets\":[\"127.0.0.1:1\"]}}]' > {file}",
            dir = Path::new(file).parent().unwrap().display()
        );
        let wrote = as_other(other, &["sh", "-c", &script]);
        assert!(
            wrote.status.success(),
            "{}",
            String::from_utf8_lossy(&wrote.stderr)
        );
    };
    plant(&planted);
    // In a root of the stack's user that is world-writable, as Ray makes them:
    // the other user's session folder is left alone (counted, not read), and a
    // file planted in the user's own session folder is rejected with the reason.
    let root = shared.path().join("ray_victim");
    let session = root.join("session_2026-01-01_00-00-00_000001_7");
    fs_err::create_dir_all(&session).unwrap();
    for d in [&root, &session] {
        fs_err::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    plant(
        &root
            .join("session_2026-01-01_00-00-00_000001_8")
            .join(DISCOVERY)
            .to_string_lossy(),
    );
    let in_session = session.join(DISCOVERY).to_string_lossy().into_owned();
    plant(&in_session);
    let out = stack.run(&["up", "--watch", root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reason = wait_for(
        "the planted file to be rejected",
        Duration::from_secs(20),
        || {
            let st = stack.status();
            st["rejected"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["path"] == in_session.as_str())
                .map(|r| r["reason"].as_str().unwrap().to_string())
        },
    );
    assert!(
        reason.contains(&format!("owned by uid {}", other.0)) && reason.contains("--trust-uid"),
        "{reason}"
    );
    let st = stack.status();
    assert!(
        st["watch"]["foreign_session_dirs"].as_u64().unwrap() >= 1,
        "{st:#}"
    );
    assert!(
        st["watch"]["roots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r != planted_root.as_str()),
        "the other user's root is watched: {st:#}"
    );
    assert!(
        st["clusters"].as_array().unwrap().iter().all(|c| {
            c["temp_dir"] != planted_root.as_str() && c["temp_dir"] != root.to_str().unwrap()
        }),
        "a cluster was made of the other user's files: {st:#}"
    );
    let _ = fs_err::remove_dir_all(&planted_root);
}

#[test]
fn a_home_another_user_prepared_is_refused() {
    let other = other_user();
    let shared = open_scratch();
    let drop_box = shared.path().join("dropbox");
    fs_err::create_dir(&drop_box).unwrap();
    fs_err::set_permissions(&drop_box, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let up = |home: &Path| -> String {
        let out = Command::new(raywatch_bin())
            .args(["--home", home.to_str().unwrap(), "up", "--no-default-watch"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "up accepted {}", home.display());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // Pre-created folder.
    let precreated = drop_box.join("victim");
    assert!(
        as_other(other, &["mkdir", precreated.to_str().unwrap()])
            .status
            .success()
    );
    let err = up(&precreated);
    assert!(err.contains(&format!("owned by uid {}", other.0)), "{err}");

    // A symlink in its place, pointing at a folder the other user controls.
    let theirs = drop_box.join("theirs");
    let link = drop_box.join("link");
    assert!(
        as_other(other, &["mkdir", theirs.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        as_other(
            other,
            &["ln", "-s", theirs.to_str().unwrap(), link.to_str().unwrap()]
        )
        .status
        .success()
    );
    let err = up(&link);
    assert!(err.contains("symbolic link"), "{err}");

    // A home below a folder the other user owns (they could swap it at any time).
    let err = up(&theirs.join("home"));
    assert!(err.contains("could replace it"), "{err}");
    assert!(!theirs.join("home").exists(), "nothing was created there");

    // A link of the victim's own, in a folder of the victim's, leading into a folder
    // the other user may write to: the real path is checked too.
    let open_dir = drop_box.join("open");
    assert!(
        as_other(other, &["mkdir", "-m", "777", open_dir.to_str().unwrap()])
            .status
            .success()
    );
    let mine = shared.path().join("mine");
    fs_err::create_dir(&mine).unwrap();
    std::os::unix::fs::symlink(&open_dir, mine.join("state")).unwrap();
    let err = up(&mine.join("state").join("home"));
    assert!(err.contains("others can write to"), "{err}");
    assert!(!open_dir.join("home").exists(), "nothing was created there");
}

#[test]
fn hostile_discovery_files_are_rejected_and_the_daemon_stays_up() {
    let (stack, root) = Stack::watching("ray_hostile", &[]);
    let daemon_pid = stack.pids()[0];
    let _good = FakeHead::start(&root, "session_good_1", vec!["127.0.0.1:41".into()]);
    let _multi = FakeHead::start(
        &root,
        "session_multinode_9",
        vec!["127.0.0.1:42".into(), "192.0.2.1:8080".into()],
    );
    let name = format!("{}-ray_hostile", user());
    wait_for("the good cluster", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:41"]).then_some(())
    });

    let session = |s: &str| {
        let d = root.join(s);
        fs_err::create_dir_all(&d).unwrap();
        d.join(DISCOVERY)
    };
    let shadow = session("session_shadow_2");
    std::os::unix::fs::symlink("/etc/shadow", &shadow).unwrap();
    let fifo = session("session_fifo_3");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let huge = session("session_huge_4");
    let mut big = Vec::with_capacity(100 << 20);
    big.extend_from_slice(br#"[{"labels": {}, "targets": ["#);
    while big.len() < 100 << 20 {
        big.extend_from_slice(br#""127.0.0.1:1", "#);
    }
    big.extend_from_slice(br#""127.0.0.1:1"]}]"#);
    fs_err::write(&huge, &big).unwrap();
    drop(big);
    let nested = session("session_nested_5");
    fs_err::write(&nested, "[".repeat(100_000)).unwrap();
    let scheme = session("session_scheme_6");
    write_discovery(&scheme, &["file:///etc/passwd".into()]);
    let path = session("session_path_7");
    write_discovery(&path, &["127.0.0.1:8080/metrics".into()]);
    let many = session("session_many_8");
    write_discovery(
        &many,
        &(0..10_000)
            .map(|i| format!("127.0.0.1:{}", 1 + i % 60000))
            .collect::<Vec<_>>(),
    );
    let latin1 = session("session_latin1_10");
    fs_err::write(
        &latin1,
        b"[{\"labels\": {\"job\": \"caf\xe9\"}, \"targets\": [\"127.0.0.1:1\"]}]",
    )
    .unwrap();

    let expected: [(&Path, &str); 8] = [
        (&shadow, "symbolic link"),
        (&fifo, "a FIFO"),
        (&huge, "over the 1048576-byte limit"),
        (&nested, "not valid discovery JSON"),
        (&scheme, "URL scheme"),
        (&path, "has a path"),
        (&many, "10000 targets, over the limit"),
        (&latin1, "not UTF-8"),
    ];
    let rejected = wait_for(
        "every hostile file rejected",
        Duration::from_secs(20),
        || {
            let r = stack.status()["rejected"].as_array().unwrap().clone();
            (r.len() >= expected.len()).then_some(r)
        },
    );
    for (p, why) in expected {
        let hit = rejected
            .iter()
            .find(|r| Path::new(r["path"].as_str().unwrap()) == p);
        let hit = hit.unwrap_or_else(|| panic!("{} not reported: {rejected:#?}", p.display()));
        assert!(
            hit["reason"].as_str().unwrap().contains(why),
            "{}: {}",
            p.display(),
            hit["reason"]
        );
    }
    assert_eq!(stack.pids()[0], daemon_pid, "the daemon was not restarted");
    assert!(Path::new(&format!("/proc/{daemon_pid}")).exists());
    assert_eq!(
        stack.instances_of(&name),
        vec!["127.0.0.1:41".to_string()],
        "the good cluster keeps its targets"
    );

    // A target that is not an address of this machine is scraped but flagged.
    let st = stack.status();
    let multi = st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["session"] == "session_multinode_9")
        .unwrap();
    assert_eq!(
        multi["remote_targets"],
        serde_json::json!(["192.0.2.1:8080"])
    );
}

#[test]
fn two_ups_in_the_same_instant_both_come_up_on_different_ports() {
    let (a, b) = (scratch(), scratch());
    let start = |dir: &Path| {
        Command::new(raywatch_bin())
            .args([
                "--home",
                dir.join("h").to_str().unwrap(),
                "up",
                "--no-default-watch",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (start(a.path()), start(b.path()));
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    let stacks = [
        Stack::adopt(a.path().join("h")),
        Stack::adopt(b.path().join("h")),
    ];
    assert!(
        oa.status.success(),
        "{}",
        String::from_utf8_lossy(&oa.stderr)
    );
    assert!(
        ob.status.success(),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );
    assert_ne!(stacks[0].port(), stacks[1].port());
    for s in &stacks {
        assert_eq!(s.status()["prometheus"]["ready"], true);
    }
}

#[test]
fn without_inotify_the_daemon_rescans_and_says_so() {
    let other = other_user();
    let shared = open_scratch();
    let mine = shared.path().join("o");
    let root = mine.join("ray_noinotify");
    fs_err::create_dir_all(&root).unwrap();
    for d in [&mine, &root] {
        nix::unistd::chown(
            d.as_path(),
            Some(nix::unistd::Uid::from_raw(other.0)),
            Some(nix::unistd::Gid::from_raw(other.1)),
        )
        .unwrap();
    }
    let home = mine.join("home");
    let python = system_python();
    let raywatch = shared_raywatch(shared.path());
    // The other user's inotify instances, all taken (the limit is per user).
    /// Killed and reaped on drop, whatever happens.
    struct Hog(std::process::Child);
    impl Drop for Hog {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut hog = command_as(other, python)
        .args(["-c", "import ctypes,time\nl=ctypes.CDLL(None)\nn=0\nwhile l.inotify_init()>=0: n+=1\nprint(n,flush=True)\ntime.sleep(600)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(Hog)
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hog.0.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(
        first.trim().parse::<u32>().unwrap() > 0,
        "the hog holds inotify instances: {first}"
    );

    let rw = |args: &[&str]| {
        as_other(
            other,
            &[
                &[raywatch.to_str().unwrap(), "--home", home.to_str().unwrap()],
                args,
            ]
            .concat(),
        )
    };
    let up = rw(&[
        "up",
        "--no-default-watch",
        "--watch",
        root.to_str().unwrap(),
        "--trust-uid",
        "0",
        "--scrape-interval",
        "2s",
    ]);
    let cleanup = || {
        let _ = rw(&["down"]);
    };
    if !up.status.success() {
        cleanup();
        panic!(
            "up as the other user failed: {}",
            String::from_utf8_lossy(&up.stderr)
        );
    }
    let _head = FakeHead::start(&root, "session_1", vec!["127.0.0.1:93".into()]);
    let status = || -> serde_json::Value {
        serde_json::from_slice(&rw(&["status", "--json"]).stdout).unwrap_or_default()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let st = wait_for(
            "the cluster found by rescanning",
            Duration::from_secs(20),
            || {
                let st = status();
                st["clusters"]
                    .as_array()?
                    .iter()
                    .any(|c| c["state"] == "live")
                    .then_some(st)
            },
        );
        assert_eq!(st["watch"]["mode"], "rescan", "{}", st["watch"]);
        assert!(
            st["watch"]["degraded"]
                .as_str()
                .unwrap()
                .contains("inotify"),
            "{}",
            st["watch"]
        );
        assert!(published_group(&home, &format!("{}-ray_noinotify", user())).is_some());
        // Prometheus (also this user's) cannot watch its targets folder either;
        // raywatch says that it is not scraping what was published.
        let st = wait_for(
            "the unscraped-targets warning",
            Duration::from_secs(60),
            || {
                let st = status();
                (!st["prometheus"]["unscraped_targets"].as_array()?.is_empty()).then_some(st)
            },
        );
        assert_eq!(
            st["prometheus"]["unscraped_targets"],
            serde_json::json!([format!("{}-ray_noinotify/127.0.0.1:93", user())])
        );
        let human = String::from_utf8_lossy(&rw(&["status"]).stdout).into_owned();
        assert!(
            human.contains("rescan") && human.contains("not scraping"),
            "{human}"
        );
    }));
    cleanup();
    drop(hog);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
