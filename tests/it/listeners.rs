//! The daemon's TCP ports under attack by another local user: idle connections to
//! `--sd-listen`, a flood of sockets around the gateway, requests `/sd` does not serve.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::security::{other_user, system_python};
use crate::support::*;

/// A program the other user runs, killed (and reaped) on drop.
struct Attacker(Child);

impl Attacker {
    /// Runs `script` with `python` as the other user, with `args`; waits for
    /// the script's `READY` line and returns it.
    fn start(other: (u32, u32), python: &str, script: &str, args: &[String]) -> (Attacker, String) {
        let mut child = command_as(other, python)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut attacker = Attacker(child);
        writeln!(attacker.0.stdin.as_mut().unwrap(), "go").unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("READY"),
            "the attack did not start: {line:?}"
        );
        (attacker, line.trim().to_string())
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Holds `n` connections to a port, sending nothing, until its stdin closes.
const IDLE_CONNECTIONS: &str = r#"
import resource, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sys.stdin.readline()
held = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    held.append(s)
print("READY", len(held), flush=True)
sys.stdin.read()
"#;

/// `raywatch up` run the way an ordinary user's shell would, with a soft
/// limit of 1024 open files (the tests run as root, with a higher one).
fn up_as_an_ordinary_user(home: &Path, args: &[&str]) -> Stack {
    let out = Command::new("prlimit")
        .arg("--nofile=1024:")
        .arg("--")
        .arg(raywatch_bin())
        .args(["up", "--scrape-interval", "2s"])
        .args(args)
        .env("RAYWATCH_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stack = Stack::adopt(home.to_path_buf());
    assert!(
        out.status.success(),
        "raywatch up failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stack.log()
    );
    stack
}

/// `status --json`, and how long it took.
fn timed_status(stack: &Stack) -> (Option<Value>, Duration) {
    let t = Instant::now();
    let out = stack.run(&["status", "--json"]);
    let took = t.elapsed();
    let v = out
        .status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten();
    (v, took)
}

/// Whether the gateway answers its owner's query within `limit`.
fn gateway_serves_owner(url: &str, limit: Duration) -> Result<(), String> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(limit)
        .build()
        .unwrap();
    match client.get(format!("{url}/api/v1/query?query=up")).send() {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("answered {}", r.status())),
        Err(e) => Err(format!("{e}")),
    }
}

fn open_descriptors(pid: u32) -> usize {
    fs_err::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn cluster_states(status: &Value) -> Vec<(String, String)> {
    status["clusters"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("").to_string(),
                        c["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn idle_connections_to_the_sd_port_neither_exhaust_the_daemon_nor_end_its_clusters() {
    let other = other_user();
    let python = system_python();
    if Command::new("prlimit").arg("--version").output().is_err() {
        unmet("prlimit (util-linux), to start the stack with a soft limit of 1024");
    }
    let dir = scratch();
    let root = dir.path().join("ray_idle");
    fs_err::create_dir(&root).unwrap();
    let sd_port = free_port();
    let sd = format!("127.0.0.1:{sd_port}");
    let stack = up_as_an_ordinary_user(
        &dir.path().join("home"),
        &[
            "--no-default-watch",
            "--watch",
            root.to_str().unwrap(),
            "--sd-listen",
            &sd,
            "--liveness",
            "6s",
        ],
    );
    let endpoint = MetricsEndpoint::serve("ray_node_cpu_utilization 5\n");
    let _heads: Vec<FakeHead> = (1..=3)
        .map(|i| {
            FakeHead::start(
                &root,
                &format!("session_2026-01-01_00-00-00_00000{i}_{i}"),
                vec![endpoint.addr.clone()],
            )
        })
        .collect();
    wait_for("three live clusters", Duration::from_secs(30), || {
        let states = cluster_states(&stack.status());
        (states.len() == 3 && states.iter().all(|(_, s)| s == "live")).then_some(())
    });
    let gateway = stack.status()["gateway"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let daemon = daemon_pid(&stack);
    // The daemon raised its soft limit to the hard one.
    let limits = fs_err::read_to_string(format!("/proc/{daemon}/limits")).unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(
        files[0], files[1],
        "the soft limit was not raised: {files:?}"
    );
    let before = open_descriptors(daemon);

    let (_attack, ready) = Attacker::start(
        other,
        python,
        IDLE_CONNECTIONS,
        &[sd_port.to_string(), "1100".into()],
    );
    eprintln!("attacker: {ready}");
    // Past the liveness bound, twice over: every check holds all along.
    let until = Instant::now() + Duration::from_secs(14);
    let mut most_fds = 0;
    while Instant::now() < until {
        let (status, took) = timed_status(&stack);
        let status = status.unwrap_or_else(|| {
            panic!(
                "status failed during the attack (after {took:?})\n{}",
                stack.log()
            )
        });
        assert!(
            took <= Duration::from_secs(2),
            "status took {took:?} during the attack"
        );
        let states = cluster_states(&status);
        assert!(
            states.len() == 3 && states.iter().all(|(_, s)| s == "live"),
            "a cluster was lost to the attack: {states:?}\n{}",
            stack.log()
        );
        gateway_serves_owner(&gateway, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("the gateway did not serve its owner: {e}"));
        most_fds = most_fds.max(open_descriptors(daemon));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "the daemon held {before} descriptors before the attack, at most {most_fds} during it"
    );
    // The cap holds whatever the limit: 1100 connections never all get a descriptor.
    assert!(
        most_fds < 512,
        "the daemon held {most_fds} descriptors during the attack"
    );
    assert!(
        !stack.log().contains("is dead"),
        "a cluster was declared dead:\n{}",
        stack.log()
    );
    // A failed read, had there been one, is not a death: nothing was rejected for it either.
    let rejected = stack.status()["rejected"].clone();
    assert_eq!(rejected, serde_json::json!([]), "{rejected}");
}

#[test]
fn another_user_posting_to_sd_gets_404_like_any_other_request() {
    let other = other_user();
    let python = system_python();
    let dir = scratch();
    let root = dir.path().join("ray_post");
    fs_err::create_dir(&root).unwrap();
    let sd = format!("127.0.0.1:{}", free_port());
    let stack = Stack::up_at(
        &dir.path().join("home"),
        &[
            "--no-default-watch",
            "--watch",
            root.to_str().unwrap(),
            "--sd-listen",
            &sd,
        ],
    );
    // Every method but GET on /sd, and GET elsewhere: 404, the same as an unknown path.
    let script = r#"
import sys, urllib.request
base = sys.argv[1]
for method, path in [("POST", "/sd"), ("PUT", "/sd"), ("DELETE", "/sd"), ("PATCH", "/sd"), ("GET", "/nothing"), ("GET", "/sd")]:
    req = urllib.request.Request(base + path, data=b"x" if method != "GET" else None, method=method)
    try:
        r = urllib.request.urlopen(req, timeout=10)
        print(method, path, r.status, r.read().decode(errors="replace")[:200].replace("\n", " "))
    except urllib.error.HTTPError as e:
        print(method, path, e.code, e.read().decode(errors="replace")[:200].replace("\n", " "))
"#;
    let out = command_as(other, python)
        .arg("-c")
        .arg(script)
        .arg(format!("http://{sd}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<(String, u16, String)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (m, p, code) = (parts.next()?, parts.next()?, parts.next()?);
            Some((
                format!("{m} {p}"),
                code.parse().ok()?,
                parts.next().unwrap_or("").to_string(),
            ))
        })
        .collect();
    assert_eq!(
        answers.len(),
        6,
        "the probe did not run: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (request, code, body) in &answers {
        let wanted = if request == "GET /sd" { 401 } else { 404 };
        assert_eq!(*code, wanted, "{request}: {code} {body}");
        assert!(body.trim().is_empty(), "{request} learned {body:?}");
    }
    drop(stack);
}

/// Holds `n` loopback connections of its own (both ends: `2n` lines of the
/// kernel's table); with `trickle` 1, then connects to the gateway again and
/// again (half of the time sending a query) until its stdin closes.
const FLOOD_AND_TRICKLE: &str = r#"
import os, resource, socket, struct, sys, threading, time
gateway, n, trickle = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sys.stdin.readline()
linger = struct.pack("ii", 1, 0)
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(4096)
held = []
for _ in range(n):
    c = socket.socket()
    # Closed with a reset: no TIME_WAIT left behind.
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    c.connect(l.getsockname())
    a, _ = l.accept()
    held += [c, a]
print("READY", n, flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
i = 0
while True:
    if not trickle:
        time.sleep(3600)
    i += 1
    try:
        s = socket.create_connection(("127.0.0.1", gateway), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        if i % 2:
            s.sendall(b"GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()
    except OSError:
        pass
    time.sleep(0.005)
"#;

#[test]
fn a_flood_of_sockets_and_a_trickle_of_connects_starve_neither_the_gateway_nor_the_daemon() {
    let other = other_user();
    let python = system_python();
    let connections = 20_000;
    let hard = fs_err::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            let line = t
                .lines()
                .find(|l| l.starts_with("Max open files"))?
                .to_string();
            line.split_whitespace().nth(4)?.parse::<u64>().ok()
        })
        .unwrap_or(u64::MAX);
    if hard < 15_000 {
        unmet(&format!(
            "a hard limit of 15 000 open files (not {hard}): each attacker holds 14 000"
        ));
    }
    let (lo, hi) = fs_err::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if hi - lo < connections + 2000 {
        unmet(&format!(
            "an ephemeral port range wider than {lo}-{hi} for {connections} connections"
        ));
    }
    let (stack, root) = Stack::watching("ray_flood", &[]);
    let endpoint = MetricsEndpoint::serve("ray_node_cpu_utilization 5\n");
    let _first = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000001_1",
        vec![endpoint.addr.clone()],
    );
    wait_for("the first cluster", Duration::from_secs(30), || {
        (cluster_states(&stack.status()).len() == 1).then_some(())
    });
    let status = stack.status();
    let gateway = status["gateway"]["url"].as_str().unwrap().to_string();
    let gateway_port = status["gateway"]["port"].as_u64().unwrap();

    // 40 000 descriptors, more than one process may hold here: three
    // attackers hold a third each, and one of them trickles connects.
    let mut attack = Vec::new();
    for (i, n) in [7000, 7000, 6000].into_iter().enumerate() {
        let trickle = if i == 2 { "1" } else { "0" };
        let (a, ready) = Attacker::start(
            other,
            python,
            FLOOD_AND_TRICKLE,
            &[gateway_port.to_string(), n.to_string(), trickle.into()],
        );
        eprintln!("attacker {i}: {ready}");
        attack.push(a);
    }

    // A new cluster is listed within 10 s.
    let started = Instant::now();
    let _second = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000002_2",
        vec![endpoint.addr.clone()],
    );
    let mut worst_status = Duration::ZERO;
    loop {
        let (status, took) = timed_status(&stack);
        worst_status = worst_status.max(took);
        assert!(
            took <= Duration::from_secs(2),
            "status took {took:?} during the attack"
        );
        if status.is_some_and(|s| cluster_states(&s).len() == 2) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new cluster was not listed within 10 s during the attack"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "new cluster listed after {:?}; slowest status {worst_status:?}",
        started.elapsed()
    );
    // The owner keeps being served, and status keeps answering, while the trickle goes on.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        gateway_serves_owner(&gateway, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("the gateway did not serve its owner in 2 s: {e}"));
        let (status, took) = timed_status(&stack);
        assert!(
            status.is_some() && took <= Duration::from_secs(2),
            "status took {took:?} during the attack"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(attack);

    // Connections their client closed before the daemon looked at them
    // (once listed with uid 0, and admitted by a stack run as root): every
    // one is refused, and counted.
    let refused_before = stack.status()["gateway"]["refused_connections"]
        .as_u64()
        .unwrap();
    let out = command_as(other, python)
        .arg("-c")
        .arg(CONNECT_SEND_CLOSE)
        .arg(gateway_port.to_string())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DONE 50"),
        "the probe did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the gateway to refuse all 50 closed connections",
        Duration::from_secs(10),
        || {
            let refused = stack.status()["gateway"]["refused_connections"]
                .as_u64()
                .unwrap();
            (refused - refused_before == 50).then_some(())
        },
    );
    let log = stack.log();
    assert!(
        !log.contains("(uid 0, root)"),
        "a closed socket was taken for root's:\n{log}"
    );
}

/// Connects to a port 50 times, each time sending a query and closing at once.
const CONNECT_SEND_CLOSE: &str = r#"
import socket, sys
port = int(sys.argv[1])
for _ in range(50):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\n\r\n")
    s.close()
print("DONE 50", flush=True)
"#;

/// Sets the soft limit on open files of process `pid` (prlimit), back to what it was on drop.
struct SoftLimit {
    pid: u32,
    was: String,
}

impl SoftLimit {
    fn set(pid: u32, soft: usize) -> SoftLimit {
        let limits = fs_err::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let was = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap()
            .to_string();
        let guard = SoftLimit { pid, was };
        guard.prlimit(&soft.to_string());
        guard
    }

    fn prlimit(&self, soft: &str) {
        let out = Command::new("prlimit")
            .args(["--pid", &self.pid.to_string(), &format!("--nofile={soft}:")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "prlimit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SoftLimit {
    fn drop(&mut self) {
        let was = self.was.clone();
        self.prlimit(&was);
    }
}

#[test]
fn a_daemon_out_of_descriptors_keeps_its_clusters_and_says_why() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        unmet("prlimit (util-linux), to take the daemon's descriptors away");
    }
    let (stack, root) = Stack::watching("ray_emfile", &["--liveness", "6s"]);
    let endpoint = MetricsEndpoint::serve("ray_node_cpu_utilization 5\n");
    let _heads: Vec<FakeHead> = (1..=2)
        .map(|i| {
            FakeHead::start(
                &root,
                &format!("session_2026-01-01_00-00-00_00000{i}_{i}"),
                vec![endpoint.addr.clone()],
            )
        })
        .collect();
    wait_for("two live clusters", Duration::from_secs(30), || {
        let states = cluster_states(&stack.status());
        (states.len() == 2 && states.iter().all(|(_, s)| s == "live")).then_some(())
    });
    let daemon = daemon_pid(&stack);

    // No descriptor left to open a folder or a file with, for twice the liveness bound.
    let limit = SoftLimit::set(daemon, open_descriptors(daemon).saturating_sub(4).max(8));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(13) {
        assert!(
            !stack.log().contains("is dead"),
            "a cluster was declared dead for a read that failed:\n{}",
            stack.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        stack.log().contains("cannot be read for now"),
        "no read failed for want of descriptors:\n{}",
        stack.log()
    );
    drop(limit);

    // Descriptors again: both clusters are still live, and nothing is left rejected.
    wait_for("the clusters read again", Duration::from_secs(20), || {
        let status = stack.status();
        let states = cluster_states(&status);
        (states.len() == 2
            && states.iter().all(|(_, s)| s == "live")
            && status["rejected"] == serde_json::json!([]))
        .then_some(())
    });
    assert!(!stack.log().contains("is dead"), "{}", stack.log());
}

#[test]
fn over_tls_the_sd_port_is_bounded_too_and_serves_only_get_sd() {
    let other = other_user();
    let python = system_python();
    let dir = scratch();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        // Not a CA: rustls refuses a CA certificate as a server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    if !made.is_ok_and(|o| o.status.success()) {
        unmet("openssl, to make a test certificate");
    }
    let root = dir.path().join("ray_tls");
    fs_err::create_dir(&root).unwrap();
    let port = free_port();
    let sd = format!("127.0.0.1:{port}");
    let stack = Stack::up_at(
        &dir.path().join("home"),
        &[
            "--no-default-watch",
            "--watch",
            root.to_str().unwrap(),
            "--sd-listen",
            &sd,
            "--sd-tls-cert",
            cert.to_str().unwrap(),
            "--sd-tls-key",
            key.to_str().unwrap(),
        ],
    );
    let endpoint = MetricsEndpoint::serve("ray_node_cpu_utilization 5\n");
    let _head = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000001_1",
        vec![endpoint.addr.clone()],
    );
    let token = fs_err::read_to_string(stack.home.join("secrets/sd-token")).unwrap();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&fs_err::read(&cert).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://{sd}/sd");
    let groups: Value = wait_for("the groups over TLS", Duration::from_secs(20), || {
        let v: Value = match client.get(&url).bearer_auth(token.trim()).send() {
            Ok(r) => r.json().ok()?,
            Err(e) => {
                eprintln!("GET {url}: {e:?}");
                return None;
            }
        };
        (!v.as_array()?.is_empty()).then_some(v)
    });
    assert!(
        groups[0]["labels"]["ray_io_cluster"].is_string(),
        "{groups}"
    );
    let post = client.post(&url).bearer_auth(token.trim()).send().unwrap();
    assert_eq!(post.status().as_u16(), 404);

    // The other user's connections that never start a handshake hold no more
    // than the cap of descriptors, and go at the deadline.
    let daemon = daemon_pid(&stack);
    let (attack, ready) = Attacker::start(
        other,
        python,
        IDLE_CONNECTIONS,
        &[port.to_string(), "300".into()],
    );
    eprintln!("attacker: {ready}");
    let until = Instant::now() + Duration::from_secs(5);
    let mut most_fds = 0;
    while Instant::now() < until {
        most_fds = most_fds.max(open_descriptors(daemon));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        most_fds < 200,
        "the daemon held {most_fds} descriptors for 300 silent TLS clients"
    );
    drop(attack);
    wait_for("GET /sd over TLS again", Duration::from_secs(30), || {
        client
            .get(&url)
            .bearer_auth(token.trim())
            .send()
            .ok()
            .filter(|r| r.status().is_success())
    });
}
