//! `raywatch doctor`: each check's condition created for real, reported with its fix, then removed and ok.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::{FakeHead, free_port, raywatch, scratch, wait_for, write_discovery};

const DISCOVERY: &str = "prom_metrics_service_discovery.json";

/// A private home and one Ray temp dir to look at, inside a scratch folder.
struct Machine {
    _dir: tempfile::TempDir,
    home: PathBuf,
    root: PathBuf,
}

impl Machine {
    fn new() -> Machine {
        let dir = scratch();
        let home = dir.path().join("home");
        let root = dir.path().join("ray_tmp");
        std::fs::create_dir_all(home.join("secrets")).unwrap();
        for p in [&home, &home.join("secrets")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
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
    for f in report["findings"].as_array().unwrap() {
        // Other Prometheus servers of other tests may run on this machine meanwhile.
        if f["check"] != "foreign_prometheus" {
            assert!(
                matches!(status(f), "ok" | "skipped"),
                "{f} on a clean machine"
            );
        }
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
    std::fs::remove_dir_all(m.root.join("session_b_2")).unwrap();
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
    std::fs::create_dir_all(&dir).unwrap();
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
    std::fs::remove_file(&file).unwrap();
    assert_eq!(status(&m.finding("stale_discovery_files")), "ok");
}

#[test]
fn doctor_home_open_to_others() {
    let m = Machine::new();
    let secrets = m.home.join("secrets");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o755)).unwrap();
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
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(status(&m.finding("home_permissions")), "ok");
}

struct Prometheus(Child);

impl Prometheus {
    fn start(data: &Path, port: u16, lifecycle: bool) -> Prometheus {
        let config = data.join("prometheus.yml");
        std::fs::create_dir_all(data).unwrap();
        std::fs::write(&config, "global: {}\n").unwrap();
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
    std::fs::create_dir_all(&fifo_dir).unwrap();
    nix::unistd::mkfifo(
        &fifo_dir.join(DISCOVERY),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let link_dir = m.root.join("session_zero_2");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink("/dev/zero", link_dir.join(DISCOVERY)).unwrap();
    let _a = FakeHead::start(
        &m.root,
        "session_\x1b[31mred\x07_3",
        vec!["127.0.0.1:44227".into()],
    );
    let _b = FakeHead::start(&m.root, "session_b_4", vec!["127.0.0.1:1".into()]);
    // Finishes (the 30 s timeout of `human` would fail it), and escapes what it shows.
    let (code, out) = m.human();
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
    assert!(out.contains("session_"), "{out}");
    assert!(out.contains("problem  shared_temp_dir"), "{out}");
}
