//! The attacks of a second local user on a running stack (issue: "Close the holes another
//! local user can walk through"): each test runs the attack as that user and checks it fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::security::{OTHER, as_other, open_scratch, other_user, system_python};
use crate::support::*;

/// A listener run by the other user: binds a port (given, or the one it sees
/// on a new Prometheus command line naming `needle`), records every request it
/// gets into `log`, and answers with a forged query result.
const SQUATTER: &str = r#"
import os, socket, sys, threading, time
mode, arg, log, ready = sys.argv[1:5]
body = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"forged":"yes"},"value":[0,"666"]}]}}'
def find_port():
    flag = '--web.listen-address=127.0.0.1:'
    while True:
        for pid in os.listdir('/proc'):
            if not pid.isdigit():
                continue
            try:
                cmd = open('/proc/%s/cmdline' % pid, 'rb').read().decode(errors='replace')
            except OSError:
                continue
            if arg in cmd and flag in cmd:
                return int(cmd.split(flag)[1].split('\0')[0])
        time.sleep(0.002)
port = find_port() if mode == 'watch' else int(arg)
deadline = time.time() + 120
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
open(log, 'ab').close()
open(ready, 'w').write(str(port))
def handle(c):
    data = b''
    c.settimeout(2)
    try:
        while b'\r\n\r\n' not in data and len(data) < 65536:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    with open(log, 'ab') as f:
        f.write(data + b'\n----\n')
    try:
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
    except OSError:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// The other user's squatter, killed on drop.
struct Squatter {
    child: Child,
    log: PathBuf,
    ready: PathBuf,
}

impl Squatter {
    /// Starts the squatter as the other user; its files go to `dir` (made writable for it).
    fn start(other: (u32, u32), python: &str, dir: &Path, mode: &str, arg: &str) -> Squatter {
        let drop = dir.join("squat");
        fs_err::create_dir_all(&drop).unwrap();
        fs_err::set_permissions(&drop, std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.join("squat.py");
        fs_err::write(&script, SQUATTER).unwrap();
        fs_err::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (log, ready) = (drop.join("requests.log"), drop.join("port"));
        let child = command_as(other, python)
            .arg(&script)
            .args([mode, arg])
            .arg(&log)
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Squatter { child, log, ready }
    }

    /// The port it holds, once it holds one.
    fn port(&self, limit: Duration) -> u16 {
        wait_for("the squatter to bind its port", limit, || {
            fs_err::read_to_string(&self.ready)
                .ok()?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Everything it was sent.
    fn received(&self) -> String {
        String::from_utf8_lossy(&fs_err::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_pid(stack: &Stack) -> u32 {
    fs_err::read_to_string(stack.home.join("run/prometheus.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_squatter_on_prometheus_port_at_up_gets_nothing_and_up_moves_away() {
    let other = other_user();
    let python = system_python();
    let dir = open_scratch();
    let home = dir.path().join("home");
    // A Prometheus that takes 2 s to bind: the window the attacker races for,
    // made wide so the attack wins every time.
    let real = which("prometheus");
    let slow = dir.path().join("slow-prometheus");
    fs_err::write(
        &slow,
        format!("#!/bin/sh\nsleep 2\nexec {} \"$@\"\n", real.display()),
    )
    .unwrap();
    fs_err::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let squatter = Squatter::start(other, python, dir.path(), "watch", home.to_str().unwrap());

    let stack = Stack::up_at(
        &home,
        &[
            "--no-default-watch",
            "--prometheus-bin",
            slow.to_str().unwrap(),
        ],
    );
    let squatted = squatter.port(Duration::from_secs(5));
    let st = stack.status();
    let p = &st["prometheus"];
    assert_eq!(p["ready"], true, "{st:#}");
    assert_ne!(p["port"], squatted, "Prometheus runs on the squatted port");
    let note = p["port_note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("uid {} ({OTHER})", other.0))
            && note.contains(&squatted.to_string()),
        "status does not say who took the port: {st:#}"
    );
    let q = stack.run(&["query", "up"]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert!(!String::from_utf8_lossy(&q.stdout).contains("forged"));
    let got = squatter.received();
    assert!(
        !got.to_ascii_lowercase().contains("authorization"),
        "credentials reached the squatter: {got}"
    );
    // Its command line names the home: gone before the stack's own check.
    drop(squatter);
}

#[test]
fn after_a_kill_9_of_prometheus_a_squatter_on_its_port_gets_nothing() {
    let other = other_user();
    let python = system_python();
    let dir = open_scratch();
    // A port the user chose: Prometheus may not move, so the clients face the squatter.
    let port = free_port();
    let stack = Stack::up_at(
        &dir.path().join("home"),
        &["--no-default-watch", "--prometheus-port", &port.to_string()],
    );
    let squatter = Squatter::start(other, python, dir.path(), "port", &port.to_string());
    kill9(prometheus_pid(&stack));
    assert_eq!(squatter.port(Duration::from_secs(10)), port);

    let q = stack.run(&["query", "up"]);
    assert!(!q.status.success(), "query answered through the squatter");
    assert!(!String::from_utf8_lossy(&q.stdout).contains("forged"));
    // `top` uses the same verified client: a clear error, not a screen of forged values.
    let t = stack.run(&["top", "--once"]);
    assert!(!t.status.success(), "top answered through the squatter");
    // So does `alerts`, which a squatter would love to answer with "all quiet".
    let al = stack.run(&["alerts"]);
    assert!(!al.status.success(), "alerts answered through the squatter");
    // Each names the port's holder (the other user) and says it sent it nothing.
    let mut filters = vec![(
        format!(r"\buid {} \({OTHER}\)", other.0),
        format!("uid [uid] ({OTHER})"),
    )];
    filters.extend(crate::snapshots::stack_filters(&stack));
    crate::snapshots::assert_transcripts(
        "query-and-top-facing-a-squatter",
        &[("query up", &q), ("top --once", &t), ("alerts", &al)],
        filters,
    );
    let problem = wait_for(
        "status to name the holder of Prometheus' port",
        Duration::from_secs(20),
        || {
            let st = stack.status();
            st["prometheus"]["listener_problem"]
                .as_str()
                .map(str::to_string)
        },
    );
    assert!(problem.contains(OTHER), "{problem}");
    let got = squatter.received();
    assert!(
        !got.to_ascii_lowercase().contains("authorization"),
        "credentials reached the squatter: {got}"
    );

    // The squatter gone, Prometheus is back on its port.
    drop(squatter);
    wait_for(
        "Prometheus back on its port",
        Duration::from_secs(90),
        || (stack.status()["prometheus"]["ready"] == true).then_some(()),
    );
    assert!(stack.run(&["query", "up"]).status.success());
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn which(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not on PATH"))
}

/// Searches, as the other user, the places another user can read (/tmp,
/// /var/tmp, /dev/shm, /run, every process' command line and environment) for
/// any of `needles`; returns what matched.
fn search_as_other(other: (u32, u32), patterns_dir: &Path, needles: &[String]) -> String {
    // The patterns sit in a file outside the searched folders, so that neither
    // the search's own command line nor its files give a false match.
    let patterns = patterns_dir.join("needles");
    fs_err::write(&patterns, needles.join("\n")).unwrap();
    fs_err::set_permissions(&patterns, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = format!(
        "grep -rlsaF -D skip -f {p} /tmp /var/tmp /dev/shm /run --exclude=needles; \
         for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; do grep -lsaF -f {p} \"$f\"; done; true",
        p = patterns.display()
    );
    let out = as_other(other, &["sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("/proc/self/") && !l.contains("/proc/thread-self/"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the other user gets any HTTP answer from `url`.
fn other_gets_an_answer(other: (u32, u32), python: &str, url: &str) -> bool {
    let out = as_other(
        other,
        &[
            python,
            "-c",
            &format!(
                "import urllib.request\ntry:\n urllib.request.urlopen({url:?}, timeout=5).read()\n print('ANSWERED')\nexcept urllib.error.HTTPError as e:\n print('ANSWERED', e.code)\nexcept Exception as e:\n print('REFUSED', e)"
            ),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ANSWERED") || text.contains("REFUSED"),
        "the probe did not run: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.contains("ANSWERED")
}

#[test]
fn after_the_readme_flow_another_user_finds_no_usable_credential() {
    use base64::Engine as _;
    let other = other_user();
    let python = system_python();
    let dir = open_scratch();
    let stack = Stack::up_at(&dir.path().join("home"), &["--no-default-watch"]);
    let first_password = stack.password();

    // The README's example: a temp dir under /tmp, which Ray makes world-writable.
    let temp_dir = PathBuf::from(format!("/tmp/ray_rwcred_{}", std::process::id()));
    let _cleanup = RemoveOnDrop(temp_dir.clone());
    let out = stack.run(&["env", "--temp-dir", temp_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = parse_exports(&String::from_utf8_lossy(&out.stdout));
    assert!(env.iter().all(|(k, _)| k != "RAY_PROMETHEUS_HEADERS"));
    let gateway = env
        .iter()
        .find(|(k, _)| k == "RAY_PROMETHEUS_HOST")
        .map(|(_, v)| v.clone())
        .unwrap();
    let mut ray = RayCluster::start_with_env(&temp_dir, false, &env);
    let (file, _) = ray.wait_discovery(Duration::from_secs(120));
    let datasource = file
        .parent()
        .unwrap()
        .join("metrics/grafana/provisioning/datasources/default.yml");
    // `env` turned Ray's token auth on: its Dashboard answers its owner's token.
    let dashboard_healthy = || {
        ray.dashboard_get("/api/prometheus_health")
            .filter(|r| r.status().is_success())
            .map(|_| ())
    };
    wait_for(
        "Ray's Dashboard to reach Prometheus through the gateway",
        Duration::from_secs(90),
        dashboard_healthy,
    );
    let yml = fs_err::read_to_string(&datasource).unwrap();
    assert!(yml.contains(&gateway), "{yml}");

    let needles = |password: &str| {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("raywatch:{password}"));
        vec![password.to_string(), basic]
    };
    let found = search_as_other(other, dir.path(), &needles(&stack.password()));
    assert!(
        found.is_empty(),
        "the other user found the credential in: {found}"
    );
    // The gateway Ray uses refuses the other user's connections (and only those).
    let query = format!("{gateway}/api/v1/query?query=up");
    assert!(
        !other_gets_an_answer(other, python, &query),
        "the gateway answered another user"
    );
    assert!(
        stack.status()["gateway"]["refused_connections"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // The same after Prometheus restarts (on its port or another).
    let old = prometheus_pid(&stack);
    kill9(old);
    wait_for("Prometheus restarted", Duration::from_secs(30), || {
        let st = stack.status();
        (st["prometheus"]["ready"] == true && st["prometheus"]["pid"] != old).then_some(())
    });
    wait_for(
        "Ray's Dashboard to reach Prometheus again",
        Duration::from_secs(30),
        dashboard_healthy,
    );
    let found = search_as_other(other, dir.path(), &needles(&stack.password()));
    assert!(
        found.is_empty(),
        "after a restart, the credential is in: {found}"
    );
    assert!(!other_gets_an_answer(other, python, &query));

    // A new password at every start: an old one stops working.
    drop(ray);
    let down = stack.run(&["down"]);
    assert!(down.status.success());
    let up = stack.run(&["up"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_ne!(stack.password(), first_password);
    let stale = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "http://127.0.0.1:{}/api/v1/query?query=up",
            stack.port()
        ))
        .basic_auth("raywatch", Some(&first_password))
        .send()
        .unwrap();
    assert_eq!(stale.status().as_u16(), 401);
    assert_eq!(
        stack.prom_get("/api/v1/query?query=up").status().as_u16(),
        200
    );
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs_err::remove_dir_all(&self.0);
    }
}

#[test]
fn a_fifo_a_dev_zero_link_and_a_huge_file_in_a_session_folder_neither_hang_nor_bloat_the_daemon() {
    let other = other_user();
    let dir = open_scratch();
    let root = dir.path().join("ray_hostile");
    fs_err::create_dir(&root).unwrap();
    fs_err::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let stack = Stack::up_at(
        &dir.path().join("home"),
        &[
            "--no-default-watch",
            "--watch",
            root.to_str().unwrap(),
            "--liveness",
            "120s",
        ],
    );
    // Three sessions whose files are written once: past 7 s without a rewrite
    // the daemon reads each one's gcs_server_port_* file, planted by the other user.
    let plants = [
        ("fifo", "mkfifo {f}"),
        ("zero", "ln -s /dev/zero {f}"),
        ("huge", "head -c 104857600 /dev/zero > {f}"),
    ];
    for (i, (kind, cmd)) in plants.iter().enumerate() {
        let session = root.join(format!("session_2026-01-01_00-00-00_000001_{}", 100 + i));
        fs_err::create_dir(&session).unwrap();
        fs_err::set_permissions(&session, std::fs::Permissions::from_mode(0o777)).unwrap();
        let f = session.join(format!("gcs_server_port_{kind}"));
        let out = as_other(
            other,
            &["sh", "-c", &cmd.replace("{f}", f.to_str().unwrap())],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        write_discovery(&session.join(DISCOVERY), &[format!("127.0.0.1:{}", 1 + i)]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = stack.log();
        if [
            "gcs_server_port_fifo: it is a FIFO",
            "gcs_server_port_zero: it is a symbolic link",
            "gcs_server_port_huge: it is owned by uid",
        ]
        .iter()
        .all(|w| log.contains(w))
        {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not try each planted file:\n{log}\n{:#}",
            stack.status()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(log.contains("gcs_server_port_fifo"), "{log}");
    // Responsive and small, for a while.
    let pid = daemon_pid(&stack);
    for _ in 0..5 {
        let t = Instant::now();
        let out = stack.run(&["status", "--json"]);
        assert!(out.status.success());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "status took {:?}",
            t.elapsed()
        );
        let st: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            st["clusters"].as_array().unwrap().len(),
            3,
            "the clusters stay followed: {st:#}"
        );
        assert!(rss_kib(pid) < 50 * 1024, "daemon RSS {} KiB", rss_kib(pid));
        std::thread::sleep(Duration::from_secs(1));
    }
    let t = Instant::now();
    assert!(stack.run(&["down"]).status.success());
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "down took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_squatted_metrics_port_is_never_scraped_under_a_cluster() {
    let other = other_user();
    let python = system_python();
    let dir = open_scratch();
    let (stack, root) = Stack::watching("ray_squat", &[]);
    // The other user holds a port before the cluster lists it (as for Ray's
    // autoscaler or dashboard metrics port before `ray start`).
    let port = free_port();
    let squatter = Squatter::start(other, python, dir.path(), "port", &port.to_string());
    assert_eq!(squatter.port(Duration::from_secs(10)), port);
    let squatted = format!("127.0.0.1:{port}");
    // A second squatted port, listed by one cluster only (no contest to resolve).
    let dir2 = open_scratch();
    let port2 = free_port();
    let alone = Squatter::start(other, python, dir2.path(), "port", &port2.to_string());
    assert_eq!(alone.port(Duration::from_secs(10)), port2);
    let squatted_alone = format!("127.0.0.1:{port2}");
    let good = MetricsEndpoint::serve("ray_node_cpu_utilization{SessionName=\"session_a\"} 1\n");
    // One cluster lists one port alone, and both list the other.
    let _a = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000001_1",
        vec![good.addr.clone(), squatted.clone(), squatted_alone.clone()],
    );
    let _b = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000001_2",
        vec![squatted.clone()],
    );
    let mut name_a = String::new();
    wait_for("the good target scraped", Duration::from_secs(30), || {
        let st = stack.status();
        let c = st["clusters"].as_array()?.iter().find(|c| {
            c["targets"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["address"] == good.addr.as_str() && t["health"] == "up")
            })
        })?;
        name_a = c["name"].as_str()?.to_string();
        Some(())
    });
    let st = stack.status();
    let withheld: Vec<&Value> = st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["withheld"].as_array().unwrap())
        .filter(|w| w["address"] == squatted.as_str())
        .collect();
    assert_eq!(withheld.len(), 2, "both clusters withhold it: {st:#}");
    let alone_withheld: Vec<&Value> = st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["withheld"].as_array().unwrap())
        .filter(|w| w["address"] == squatted_alone.as_str())
        .collect();
    assert_eq!(alone_withheld.len(), 1, "{st:#}");
    assert!(
        alone_withheld[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("uid {} ({OTHER})", other.0))
    );
    for w in withheld {
        assert!(
            w["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("uid {} ({OTHER})", other.0)),
            "{w}"
        );
    }
    // Two more scrape intervals: Prometheus never lists it, nobody connects to it.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        stack
            .active_targets()
            .iter()
            .all(|(_, i)| *i != squatted && *i != squatted_alone),
        "{:?}",
        stack.active_targets()
    );
    assert_eq!(stack.instances_of(&name_a), vec![good.addr.clone()]);
    assert_eq!(squatter.received(), "", "the squatter was contacted");
    assert_eq!(alone.received(), "", "the lone squatter was scraped");
    let forged = stack.run(&["query", "ray_node_cpu_utilization"]);
    assert!(!String::from_utf8_lossy(&forged.stdout).contains("666"));
}

/// A stack with the default roots, whose `$RAY_TMPDIR` is `<dir>/tmp`, made
/// sticky and world-writable like /tmp: returns the stack and that folder.
fn stack_with_tmpdir(dir: &Path) -> (Stack, PathBuf) {
    let parent = dir.join("tmp");
    fs_err::create_dir(&parent).unwrap();
    fs_err::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let stack = Stack::adopt(dir.join("home"));
    let out = stack
        .cmd()
        .env("RAY_TMPDIR", &parent)
        .args(["up", "--scrape-interval", "2s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stack, parent)
}

#[test]
fn links_shared_roots_and_moved_files_make_no_phantom_cluster() {
    let other = other_user();
    let dir = open_scratch();
    let (stack, parent) = stack_with_tmpdir(dir.path());

    // The victim's cluster, rewriting every 5 s like Ray, in a world-writable root.
    let victim_root = parent.join("ray_victim");
    fs_err::create_dir(&victim_root).unwrap();
    fs_err::set_permissions(&victim_root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let session = "session_2026-01-01_00-00-00_000001_9";
    let head = FakeHead::start_every(
        &victim_root,
        session,
        vec!["127.0.0.1:9".into()],
        Duration::from_secs(5),
    );
    fs_err::set_permissions(
        victim_root.join(session),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let name = format!("{}-ray_victim", user());
    wait_for("the victim's cluster", Duration::from_secs(20), || {
        (stack.instances_of(&name) == ["127.0.0.1:9"]).then_some(())
    });

    // A shared root another user created (Ray's default `ray`), holding one
    // session of each user: the victim's is followed, the other's is not.
    let shared = parent.join("ray");
    let out = as_other(
        other,
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -m 777 {s} && mkdir -m 777 {s}/session_2026-01-01_00-00-00_000001_50 && \
                 printf '[{{\"targets\":[\"127.0.0.1:50\"]}}]' > {s}/session_2026-01-01_00-00-00_000001_50/{DISCOVERY} && \
                 ln -s {v} {p}/ray_link",
                s = shared.display(),
                v = victim_root.display(),
                p = parent.display()
            ),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _mine = FakeHead::start(
        &shared,
        "session_2026-01-01_00-00-00_000001_51",
        vec!["127.0.0.1:51".into()],
    );
    let shared_name = format!("{}-ray", user());
    wait_for(
        "the victim's session in the shared root",
        Duration::from_secs(20),
        || (stack.instances_of(&shared_name) == ["127.0.0.1:51"]).then_some(()),
    );

    // The other user moves the victim's discovery file into its own session
    // folder of the shared root; meanwhile the victim's cluster must stay, once.
    let moved = as_other(
        other,
        &[
            "mv",
            victim_root.join(session).join(DISCOVERY).to_str().unwrap(),
            shared
                .join("session_2026-01-01_00-00-00_000001_50")
                .join(DISCOVERY)
                .to_str()
                .unwrap(),
        ],
    );
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let st = stack.status();
        let clusters = st["clusters"].as_array().unwrap();
        let ours: Vec<&Value> = clusters
            .iter()
            .filter(|c| {
                c["session"] == session || c["session"] == "session_2026-01-01_00-00-00_000001_50"
            })
            .collect();
        assert_eq!(ours.len(), 1, "a phantom cluster: {st:#}");
        assert_eq!(ours[0]["state"], "live", "the real cluster died: {st:#}");
        assert_eq!(ours[0]["name"], name.as_str());
        assert!(
            clusters
                .iter()
                .all(|c| !c["temp_dir"].as_str().unwrap().ends_with("ray_link")),
            "a cluster through the link: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = stack.status();
    assert!(
        st["watch"]["roots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r.as_str().unwrap().ends_with("ray_link")),
        "{st:#}"
    );
    drop(head);
}

#[test]
fn another_users_folder_flood_costs_the_daemon_nothing() {
    let other = other_user();
    let python = system_python();
    let dir = open_scratch();
    let (stack, parent) = stack_with_tmpdir(dir.path());
    let pid = daemon_pid(&stack);

    // 100 000 session folders in the other user's root, then 1000 renames a
    // second for 15 s.
    let flood = parent.join("ray_flood");
    let script = format!(
        "import os, time\nroot = {root:?}\nos.mkdir(root)\nfor i in range(100000):\n    os.mkdir(os.path.join(root, 'session_%d' % i))\n\
         open(os.path.join(root, 'made'), 'w').close()\nend = time.time() + 15\ni = 0\n\
         while time.time() < end:\n    t = time.time()\n    for _ in range(50):\n        a = os.path.join(root, 'session_%d' % (i % 100000))\n        os.rename(a, a + '_x')\n        os.rename(a + '_x', a)\n        i += 1\n\
             \n    time.sleep(max(0, 0.1 - (time.time() - t)))\n",
        root = flood.to_str().unwrap()
    );
    let script_file = dir.path().join("flood.py");
    fs_err::write(&script_file, script).unwrap();
    fs_err::set_permissions(&script_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut flooder = command_as(other, python).arg(&script_file).spawn().unwrap();
    wait_for("the folders made", Duration::from_secs(120), || {
        flood.join("made").exists().then_some(())
    });
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    // A new cluster of the victim during the flood is still found within 10 s.
    let victim = parent.join("ray_during_flood");
    let _head = FakeHead::start(
        &victim,
        "session_2026-01-01_00-00-00_000001_3",
        vec!["127.0.0.1:3".into()],
    );
    let started = Instant::now();
    let name = format!("{}-ray_during_flood", user());
    wait_for("the victim's new cluster", Duration::from_secs(10), || {
        (stack.instances_of(&name) == ["127.0.0.1:3"]).then_some(())
    });
    eprintln!(
        "new cluster listed after {:?} during the flood",
        started.elapsed()
    );
    let status = flooder.wait().unwrap();
    assert!(status.success());
    let busy = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let watches = inotify_watches(pid);
    eprintln!(
        "daemon CPU during the flood: {:.2} %, inotify watches: {watches}",
        busy * 100.0
    );
    assert!(
        busy < 0.05,
        "the daemon used {:.1} % of a core",
        busy * 100.0
    );
    assert!(watches < 1000, "{watches} inotify watches");
    let _ = fs_err::remove_dir_all(&flood);
}
