//! `raywatch doctor`: each check's condition created for real, reported with its fix, then removed and ok.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::security::{OTHER, as_other, open_scratch, other_user, shared_raywatch, system_python};
use crate::support::{
    FakeHead, MetricsEndpoint, RayCluster, Stack, command_as, free_port, raywatch, scratch, unmet,
    wait_for, write_discovery,
};

const DISCOVERY: &str = "prom_metrics_service_discovery.json";

/// A private home and one Ray temp dir to look at, inside a scratch folder.
struct Machine {
    _dir: tempfile::TempDir,
    home: PathBuf,
    root: PathBuf,
}

impl Machine {
    fn new() -> Machine {
        Machine::in_dir(scratch(), None)
    }

    /// A Ray temp dir in `dir`, looked at for the stack at `home` (a private one in `dir` if None).
    fn in_dir(dir: tempfile::TempDir, home: Option<&Path>) -> Machine {
        let Some(home) = home else {
            return Machine::private(dir);
        };
        let root = dir.path().join("ray_tmp");
        fs_err::create_dir_all(&root).unwrap();
        Machine {
            _dir: dir,
            home: home.to_path_buf(),
            root,
        }
    }

    /// doctor of the stack at `home`, looking at its watched root `root`.
    fn for_stack(home: &Path, root: &Path) -> Machine {
        Machine {
            _dir: scratch(),
            home: home.to_path_buf(),
            root: root.to_path_buf(),
        }
    }

    fn private(dir: tempfile::TempDir) -> Machine {
        let home = dir.path().join("home");
        let root = dir.path().join("ray_tmp");
        fs_err::create_dir_all(home.join("secrets")).unwrap();
        for p in [&home, &home.join("secrets")] {
            fs_err::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        fs_err::create_dir_all(&root).unwrap();
        Machine {
            _dir: dir,
            home,
            root,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--home".to_string(),
            self.home.display().to_string(),
            "doctor".into(),
            "--root".into(),
            self.root.display().to_string(),
        ];
        a.push("--json".into());
        a
    }

    /// `doctor --json`: its exit code and its report.
    fn json(&self) -> (i32, Value) {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = raywatch(&args)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code().unwrap_or(-1), report)
    }

    fn finding(&self, check: &str) -> Value {
        finding(&self.json().1, check)
    }

    fn human(&self) -> (i32, String) {
        let mut args = self.args();
        args.pop();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = raywatch(&args)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

fn finding(report: &Value, check: &str) -> Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {report}"))
        .clone()
}

fn status(f: &Value) -> &str {
    f["status"].as_str().unwrap()
}

#[test]
fn doctor_clean_machine_reports_no_problem() {
    let m = Machine::new();
    let (code, report) = m.json();
    assert_eq!(report["findings"].as_array().unwrap().len(), 12, "{report}");
    for f in report["findings"].as_array().unwrap() {
        // Machine-wide: other tests' Prometheus servers and inotify watchers
        // (the limits are per user) come and go meanwhile.
        if f["check"] == "foreign_prometheus" || f["check"] == "inotify_limits" {
            continue;
        }
        assert!(
            matches!(status(f), "ok" | "skipped"),
            "{f} on a clean machine"
        );
    }
    if status(&finding(&report, "foreign_prometheus")) != "problem" {
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["problems"], 0);
    }
}

#[test]
fn doctor_two_live_sessions_in_one_temp_dir() {
    let m = Machine::new();
    let a = FakeHead::start(&m.root, "session_a_1", vec!["127.0.0.1:1".into()]);
    let b = FakeHead::start(&m.root, "session_b_2", vec!["127.0.0.1:2".into()]);
    let (code, report) = m.json();
    let f = finding(&report, "shared_temp_dir");
    assert_eq!(status(&f), "problem", "{f}");
    assert_eq!(code, 1);
    let fix = f["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!(
            "eval \"$(raywatch env --temp-dir {}_2)\"",
            m.root.display()
        )),
        "{fix}"
    );
    let evidence = f["evidence"].to_string();
    assert!(evidence.contains("session_a_1") && evidence.contains("session_b_2"));
    drop((a, b));
    fs_err::remove_dir_all(m.root.join("session_b_2")).unwrap();
    assert_eq!(status(&m.finding("shared_temp_dir")), "ok");
}

#[test]
fn doctor_cluster_on_rays_fixed_ports() {
    let m = Machine::new();
    let head = FakeHead::start(&m.root, "session_fixed_1", vec!["127.0.0.1:44217".into()]);
    let f = m.finding("fixed_ports");
    assert_eq!(status(&f), "warning", "{f}");
    assert!(f["evidence"].to_string().contains("session_fixed_1"), "{f}");
    assert!(f["fix"].as_str().unwrap().contains("raywatch env"));
    drop(head);
    write_discovery(
        &m.root.join("session_fixed_1").join(DISCOVERY),
        &["127.0.0.1:5555".into()],
    );
    assert_eq!(status(&m.finding("fixed_ports")), "ok");
}

#[test]
fn doctor_stale_discovery_file() {
    let m = Machine::new();
    let dir = m.root.join("session_dead_1");
    fs_err::create_dir_all(&dir).unwrap();
    let file = dir.join(DISCOVERY);
    write_discovery(&file, &["127.0.0.1:1".into()]);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    let f = m.finding("stale_discovery_files");
    assert_eq!(status(&f), "warning", "{f}");
    assert!(f["evidence"].to_string().contains("session_dead_1"), "{f}");
    assert!(f["fix"].as_str().unwrap().contains("delete"));
    fs_err::remove_file(&file).unwrap();
    assert_eq!(status(&m.finding("stale_discovery_files")), "ok");
}

#[test]
fn doctor_home_open_to_others() {
    let m = Machine::new();
    let secrets = m.home.join("secrets");
    fs_err::set_permissions(&secrets, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, report) = m.json();
    let f = finding(&report, "home_permissions");
    assert_eq!(status(&f), "problem", "{f}");
    assert_eq!(code, 1);
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("chmod go-rwx {}", secrets.display())),
        "{f}"
    );
    fs_err::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(status(&m.finding("home_permissions")), "ok");
}

struct Prometheus(Child);

impl Prometheus {
    fn start(data: &Path, port: u16, lifecycle: bool) -> Prometheus {
        let config = data.join("prometheus.yml");
        fs_err::create_dir_all(data).unwrap();
        fs_err::write(&config, "global: {}\n").unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if lifecycle {
            cmd.arg("--web.enable-lifecycle");
        }
        Prometheus(cmd.spawn().unwrap())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The foreign_prometheus evidence line about `port`, once doctor sees it.
fn evidence_about(m: &Machine, port: u16) -> Option<(Value, String)> {
    let f = m.finding("foreign_prometheus");
    let needle = format!("127.0.0.1:{port}");
    let line = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|l| l.contains(&needle))?
        .to_string();
    Some((f, line))
}

#[test]
fn doctor_foreign_prometheus_with_open_lifecycle_api() {
    let m = Machine::new();
    let dir = scratch();
    let port = free_port();
    let prom = Prometheus::start(&dir.path().join("open"), port, true);
    let (f, line) = wait_for(
        "doctor to see the foreign Prometheus",
        Duration::from_secs(30),
        || evidence_about(&m, port).filter(|(_, l)| l.contains("lifecycle")),
    );
    assert_eq!(status(&f), "problem", "{f}");
    assert!(line.contains("without credentials"), "{line}");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("--web.enable-lifecycle")
    );
    // The GET did not stop it.
    assert!(crate::support::state(prom.0.id()).is_some_and(|s| s != 'Z'));
    let pid = prom.0.id();
    drop(prom);
    wait_for("doctor to see it gone", Duration::from_secs(10), || {
        evidence_about(&m, port).is_none().then_some(())
    });
    eprintln!("pid {pid} gone");

    let port = free_port();
    let _closed = Prometheus::start(&dir.path().join("closed"), port, false);
    let (_, line) = wait_for(
        "doctor to see the second Prometheus",
        Duration::from_secs(30),
        || evidence_about(&m, port).filter(|(_, l)| l.contains("lifecycle")),
    );
    assert!(line.contains("lifecycle API is off"), "{line}");
}

#[test]
fn doctor_attack_fifo_link_and_escapes_in_a_root() {
    let m = Machine::new();
    let fifo_dir = m.root.join("session_fifo_1");
    fs_err::create_dir_all(&fifo_dir).unwrap();
    nix::unistd::mkfifo(
        &fifo_dir.join(DISCOVERY),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let link_dir = m.root.join("session_zero_2");
    fs_err::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink("/dev/zero", link_dir.join(DISCOVERY)).unwrap();
    // A live session whose discovery file is 4 GiB (sparse): read no further than its bound.
    let huge_dir = m.root.join("session_huge_5");
    fs_err::create_dir_all(&huge_dir).unwrap();
    fs_err::File::create(huge_dir.join(DISCOVERY))
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let _a = FakeHead::start(
        &m.root,
        "session_\x1b[31mred\x07_3",
        vec!["127.0.0.1:44227".into()],
    );
    let _b = FakeHead::start(&m.root, "session_b_4", vec!["127.0.0.1:1".into()]);
    // Finishes (the 30 s timeout of `human` would fail it), and escapes what it shows.
    let (code, out) = m.human();
    assert_eq!(code, 1, "{out}");
    // doctor's other findings depend on the machine (its limits, disk, other
    // users' processes): only what this test causes is checked.
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
    assert!(out.contains("session_"), "{out}");
    assert!(out.contains("problem  shared_temp_dir"), "{out}");
}

/// The `session_*` folders of `root` holding a discovery file.
fn sessions_with_discovery(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs_err::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join(DISCOVERY).is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("session_") && n != "session_latest")
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn evidence(f: &Value) -> String {
    f["evidence"].to_string()
}

#[test]
fn ray_two_sessions_in_one_temp_dir_fixed_ports_and_an_unwired_dashboard() {
    let stack = Stack::up(&["--no-default-watch"]);
    let gateway = stack.status()["gateway"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let m = Machine::in_dir(scratch(), Some(&stack.home));
    // A: Ray's fixed metrics ports, started without `raywatch env`.
    let mut a = RayCluster::start(&m.root, true);
    let (a_file, _) = a.wait_discovery(Duration::from_secs(120));
    let a_session = a_file
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // B: the same temp dir, its Dashboard wired to this stack.
    let _b = RayCluster::start_with_env(
        &m.root,
        false,
        &[("RAY_PROMETHEUS_HOST".to_string(), gateway.clone())],
    );
    let b_session = wait_for(
        "the second session's discovery file",
        Duration::from_secs(120),
        || {
            sessions_with_discovery(&m.root)
                .into_iter()
                .find(|s| *s != a_session)
        },
    );
    let (code, report) = wait_for(
        "doctor to see both sessions and both dashboards",
        Duration::from_secs(60),
        || {
            let (code, r) = m.json();
            let dash = finding(&r, "dashboard_wiring");
            (status(&finding(&r, "shared_temp_dir")) == "problem"
                && dash["summary"].as_str().unwrap().contains("1 of 2"))
            .then_some((code, r))
        },
    );
    assert_eq!(code, 1, "{report}");

    let shared = finding(&report, "shared_temp_dir");
    assert!(
        evidence(&shared).contains(&a_session) && evidence(&shared).contains(&b_session),
        "{shared}"
    );
    let fix = shared["fix"].as_str().unwrap();
    assert!(fix.contains("raywatch env --temp-dir"), "{fix}");

    let fixed = finding(&report, "fixed_ports");
    assert_eq!(status(&fixed), "warning", "{fixed}");
    assert!(evidence(&fixed).contains(&a_session), "{fixed}");
    assert!(evidence(&fixed).contains(":44217"), "{fixed}");
    assert!(!evidence(&fixed).contains(&b_session), "{fixed}");

    // A's Dashboard has no RAY_PROMETHEUS_HOST; B's asks this stack and is not listed.
    let dash = finding(&report, "dashboard_wiring");
    assert_eq!(status(&dash), "warning", "{dash}");
    assert!(evidence(&dash).contains(&a_session), "{dash}");
    assert!(
        evidence(&dash).contains("RAY_PROMETHEUS_HOST is not set"),
        "{dash}"
    );
    assert!(!evidence(&dash).contains(&b_session), "{dash}");
    assert!(
        dash["fix"]
            .as_str()
            .unwrap()
            .contains("eval \"$(raywatch env)\""),
        "{dash}"
    );
    let (_, human) = m.human();
    // The rest of doctor's report depends on the machine.
    assert!(human.contains("warning  dashboard_wiring"), "{human}");

    // Both clusters gone (they share the temp dir, so A's kill takes B's processes
    // too): the files age out of liveness and every check clears.
    a.kill9();
    let report = wait_for("doctor to clear", Duration::from_secs(90), || {
        let (_, r) = m.json();
        let ok = |c: &str| status(&finding(&r, c)) == "ok";
        (ok("shared_temp_dir") && ok("fixed_ports") && ok("dashboard_wiring")).then_some(r)
    });
    assert!(
        finding(&report, "dashboard_wiring")["summary"]
            .as_str()
            .unwrap()
            .contains("no live Ray Dashboard"),
        "{report}"
    );
}

#[test]
fn doctor_targets_down_and_a_failing_remote_write_then_a_clean_stack() {
    let nowhere = free_port();
    let write = format!("http://127.0.0.1:{nowhere}/api/v1/write");
    let (stack, root) = Stack::watching("ray_doc", &["--remote-write", &write]);
    let m = Machine::for_stack(&stack.home, &root);
    let session = "session_2026-01-01_00-00-00_000001_7";
    let dead = format!("127.0.0.1:{}", free_port());
    let head = FakeHead::start(&root, session, vec![dead.clone()]);
    let (code, report) = wait_for(
        "doctor to see the target down and the remote write failing",
        Duration::from_secs(90),
        || {
            let (code, r) = m.json();
            (status(&finding(&r, "targets_down")) == "warning"
                && status(&finding(&r, "remote_write")) == "problem")
                .then_some((code, r))
        },
    );
    assert_eq!(code, 1, "{report}");
    let down = finding(&report, "targets_down");
    assert!(evidence(&down).contains(&dead), "{down}");
    assert!(down["fix"].as_str().unwrap().contains("raywatch status"));
    let rw = finding(&report, "remote_write");
    assert!(
        evidence(&rw).contains(&format!("127.0.0.1:{nowhere}")),
        "{rw}"
    );
    assert!(
        rw["fix"].as_str().unwrap().contains("--no-remote-write"),
        "{rw}"
    );

    // Fixed: the cluster's target serves metrics, the remote write is removed.
    drop(head);
    let endpoint = MetricsEndpoint::serve("ray_node_cpu_utilization{SessionName=\"s\"} 1\n");
    let _head = FakeHead::start(&root, session, vec![endpoint.addr.clone()]);
    let out = stack.run(&["up", "--no-remote-write"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Prometheus drops the old remote-write queue only after trying to flush it
    // (up to a minute): the daemon's status waits for it meanwhile.
    let report = wait_for("doctor to clear", Duration::from_secs(150), || {
        let (_, r) = m.json();
        (status(&finding(&r, "targets_down")) == "ok"
            && status(&finding(&r, "remote_write")) == "ok")
            .then_some(r)
    });
    // A running, healthy stack: nothing but ok (other tests' servers aside).
    for f in report["findings"].as_array().unwrap() {
        match f["check"].as_str().unwrap() {
            "foreign_prometheus" | "inotify_limits" => {}
            _ => assert_eq!(status(f), "ok", "{f} on a healthy stack"),
        }
    }
}

/// Unmounts a file system the test mounted (lazily: whatever still holds it lets go later).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn doctor_prometheus_short_of_disk_space() {
    if !nix::unistd::geteuid().is_root() {
        unmet("root, to mount a small file system");
    }
    let dir = scratch();
    let small = dir.path().join("small");
    fs_err::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=400m,mode=0700", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        unmet("a tmpfs it can mount");
    }
    let _mounted = Mounted(small.clone());
    let stack = Stack::up_at(&small.join("home"), &["--no-default-watch"]);
    let m = Machine::for_stack(&stack.home, &dir.path().join("ray_tmp"));
    let f = wait_for(
        "doctor to see Prometheus' data",
        Duration::from_secs(30),
        || Some(m.finding("prometheus_disk")).filter(|f| status(f) != "skipped"),
    );
    assert_eq!(status(&f), "ok", "{f}");
    assert!(
        f["summary"].as_str().unwrap().contains("retention 30d"),
        "{f}"
    );

    // Fill the file system up to 100 MiB free.
    let free = |p: &Path| {
        let s = nix::sys::statvfs::statvfs(p).unwrap();
        s.blocks_available() as u64 * s.fragment_size() as u64
    };
    let filler = small.join("filler");
    {
        let mut file = fs_err::File::create(&filler).unwrap();
        let chunk = vec![1u8; 1 << 20];
        while free(&small) > 100 << 20 {
            std::io::Write::write_all(&mut file, &chunk).unwrap();
        }
        file.sync_all().unwrap();
    }
    let (code, report) = m.json();
    let f = finding(&report, "prometheus_disk");
    assert_eq!(status(&f), "problem", "{f}");
    assert_eq!(code, 1);
    assert!(evidence(&f).contains("free is below 256 MiB"), "{f}");
    assert!(f["fix"].as_str().unwrap().contains("--retention"), "{f}");

    fs_err::remove_file(&filler).unwrap();
    assert_eq!(status(&m.finding("prometheus_disk")), "ok");
    drop(stack);
}

#[test]
fn doctor_attack_another_users_session_folder_in_a_shared_temp_dir() {
    let other = other_user();
    let m = Machine::in_dir(open_scratch(), None);
    fs_err::set_permissions(&m.root, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let _mine = FakeHead::start(
        &m.root,
        "session_2026-01-01_00-00-00_000001_1",
        vec!["127.0.0.1:1".into()],
    );
    let theirs = m.root.join("session_2026-01-01_00-00-00_000002_2");
    let out = as_other(other, &["mkdir", theirs.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = m.finding("shared_temp_dir");
    assert_eq!(status(&f), "problem", "{f}");
    assert!(evidence(&f).contains("session folders of 2 users"), "{f}");
    assert!(evidence(&f).contains(OTHER), "{f}");
    fs_err::remove_dir(&theirs).unwrap();
    assert_eq!(status(&m.finding("shared_temp_dir")), "ok");
}

/// `doctor --json` run by the other user (with a copy of raywatch it may execute).
fn doctor_as_other(other: (u32, u32), exe: &Path, home: &Path, root: &Path) -> Value {
    let out = as_other(
        other,
        &[
            exe.to_str().unwrap(),
            "--home",
            home.to_str().unwrap(),
            "doctor",
            "--json",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn doctor_attack_another_users_prometheus_is_found_from_its_command_line() {
    // Here the other user runs doctor: this user's Prometheus is the foreign one, and
    // its fds (which socket is whose) are not the other user's to read.
    let other = other_user();
    let dir = open_scratch();
    let exe = shared_raywatch(dir.path());
    let root = dir.path().join("ray_tmp");
    fs_err::create_dir(&root).unwrap();
    let port = free_port();
    let data = scratch();
    let prom = Prometheus::start(&data.path().join("p"), port, true);
    let home = dir.path().join("their-home");
    let run = || doctor_as_other(other, &exe, &home, &root);
    let needle = format!("127.0.0.1:{port}");
    let line = wait_for(
        "the other user's doctor to see this user's Prometheus",
        Duration::from_secs(30),
        || {
            let f = finding(&run(), "foreign_prometheus");
            f["evidence"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .find(|l| l.contains(&needle) && l.contains("lifecycle"))
                .map(String::from)
        },
    );
    assert!(
        line.contains(&format!(
            "pid {} of {}",
            prom.0.id(),
            crate::support::user()
        )),
        "{line}"
    );
    assert!(line.contains("without credentials"), "{line}");
    // The GET did not stop it.
    assert!(crate::support::state(prom.0.id()).is_some_and(|s| s != 'Z'));
}

/// A process of the other user whose command line says `prometheus
/// --web.listen-address=127.0.0.1:PORT` and whose server answers hostilely:
/// `hang` accepts and never answers, `flood` answers 200 and streams without end.
fn hostile_prometheus(other: (u32, u32), python: &str, port: u16, mode: &str) -> Child {
    let server = format!(
        r#"
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port})); s.listen(16)
held = []
while True:
    c, _ = s.accept(); held.append(c)
    if "{mode}" == "flood":
        try:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
            c.settimeout(5)
            while True:
                c.sendall(b"\x1b[31m" * 65536)
        except Exception:
            pass
"#
    );
    let exec = format!(
        "import os; os.execv({python:?}, ['prometheus', '-c', {server:?}, '--web.listen-address=127.0.0.1:{port}'])"
    );
    command_as(other, python)
        .args(["-c", &exec])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn doctor_attack_hostile_fake_prometheus_servers_neither_hang_nor_bloat_doctor() {
    let other = other_user();
    let python = system_python();
    let (hang, flood) = (free_port(), free_port());
    let _servers = [
        Killed(hostile_prometheus(other, python, hang, "hang")),
        Killed(hostile_prometheus(other, python, flood, "flood")),
    ];
    let m = Machine::new();
    wait_for("both servers to listen", Duration::from_secs(20), || {
        let up = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
        (up(hang) && up(flood)).then_some(())
    });
    let started = std::time::Instant::now();
    let out = raywatch(&[
        "--home",
        m.home.to_str().unwrap(),
        "doctor",
        "--root",
        m.root.to_str().unwrap(),
    ])
    .timeout(Duration::from_secs(30))
    .output()
    .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Both probes run side by side, each cut off after 2 s.
    assert!(
        took < Duration::from_secs(8),
        "doctor took {took:?}:\n{text}"
    );
    // The rest of doctor's report depends on the machine: only these lines are checked.
    for port in [hang, flood] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("127.0.0.1:{port}")))
            .unwrap_or_else(|| panic!("no line about {port}:\n{text}"));
        assert!(line.contains(&format!("of {OTHER}")), "{line}");
        assert!(line.contains("did not answer within 2 s"), "{line}");
    }
    assert!(!text.contains('\x1b'), "{text:?}");
}

#[test]
fn doctor_inotify_instances_near_the_limit() {
    // The limit is per user: the other user (whose processes are only the tests')
    // takes 81 % of its instances, and runs doctor.
    let other = other_user();
    let python = system_python();
    let max: u64 = fs_err::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let hold = max * 81 / 100 + 1;
    let dir = open_scratch();
    let exe = shared_raywatch(dir.path());
    let root = dir.path().join("ray_tmp");
    fs_err::create_dir(&root).unwrap();
    let home = dir.path().join("their-home");
    let script = format!(
        "import ctypes, sys, time\nlibc = ctypes.CDLL(None)\nfds = [libc.inotify_init() for _ in range({hold})]\nassert all(f >= 0 for f in fds), fds\nprint('ready', flush=True)\ntime.sleep(120)\n"
    );
    let mut holder = Killed(
        command_as(other, python)
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the other user could not take {hold} inotify instances"
    );
    let f = finding(
        &doctor_as_other(other, &exe, &home, &root),
        "inotify_limits",
    );
    assert_eq!(status(&f), "warning", "{f}");
    assert!(evidence(&f).contains("max_user_instances"), "{f}");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("sudo sysctl fs.inotify.max_user_instances="),
        "{f}"
    );
    drop(holder);
    let f = finding(
        &doctor_as_other(other, &exe, &home, &root),
        "inotify_limits",
    );
    assert_eq!(status(&f), "ok", "{f}");
}
