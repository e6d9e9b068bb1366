//! The one Prometheus client against a hostile "Prometheus" whose every answer (but
//! `/-/ready`) is an endless body: each command that reads Prometheus ends in bounded
//! time and memory, with an error that says what happened.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::snapshots::{assert_transcript, keeping, scratch_filters, stack_filters};
use crate::support::{Stack, daemon_pid, free_port, raywatch_bin, scratch, wait_for};

/// What every command must say: the answer was refused for its size.
const REFUSED: &str = "is over 64 MiB: refused";
/// The deadline for a command facing the endless body (its timeouts are 10 s, 120 s
/// for `export`: a refusal by size comes long before).
const DEADLINE: Duration = Duration::from_secs(60);
/// The most memory a command (or the daemon) may have used.
const MAX_RSS_KIB: u64 = 512 << 10;

/// Ready at once; any other request gets the start of a query answer, then
/// series without end (about 100 MB/s, so a reader without a bound grows fast
/// but the machine's memory is not at risk within one timeout).
const SCRIPT: &str = r#"#!/usr/bin/python3
import sys, time, http.server
if "--version" in sys.argv:
    print("prometheus, version 2.53.0 (hostile test server)")
    sys.exit(0)
addr = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--web.listen-address="))
host, port = addr.rsplit(":", 1)
SERIES = b'{"metric":{"pad":"' + b"x" * 65000 + b'"},"value":[1,"1"]},'

class Endless(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def answer(self):
        if self.path.startswith("/-/ready") or self.path.startswith("/-/healthy"):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            self.wfile.write(b'{"status":"success","data":{"resultType":"vector","result":[')
            while True:
                for _ in range(16):
                    self.wfile.write(SERIES)
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = answer
    do_POST = answer

http.server.ThreadingHTTPServer((host, int(port)), Endless).serve_forever()
"#;

/// The hostile server's script in `dir`, or None (SKIPPED) without a system Python.
fn script(dir: &Path) -> Option<PathBuf> {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIPPED: no /usr/bin/python3 to run the hostile Prometheus");
        return None;
    }
    let path = dir.join("hostile-prometheus");
    fs_err::write(&path, SCRIPT).unwrap();
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(path)
}

/// A stack whose Prometheus is the hostile server (the daemon runs it, so its
/// port is held by the PID the stack recorded and the client talks to it).
struct Hostile {
    stack: Stack,
    _dir: tempfile::TempDir,
}

fn hostile_stack() -> Option<Hostile> {
    let dir = scratch();
    let bin = script(dir.path())?;
    let stack = Stack::up_at(
        &dir.path().join("home"),
        &[
            "--no-default-watch",
            "--prometheus-bin",
            bin.to_str().unwrap(),
        ],
    );
    Some(Hostile { stack, _dir: dir })
}

/// Runs raywatch with `args` on `home` (when given) under a 4 GiB address-space
/// limit (a reader without a bound dies of it instead of taking the machine's
/// memory); checks the deadline and its peak memory.
fn bounded(home: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(raywatch_bin());
    if let Some(home) = home {
        cmd.env("RAYWATCH_HOME", home);
    }
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setrlimit, which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sys::resource::{Resource, setrlimit};
            setrlimit(Resource::RLIMIT_AS, 4 << 30, 4 << 30).map_err(std::io::Error::from)
        });
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < DEADLINE,
        "raywatch {args:?} took {took:?}; stderr: {stderr}"
    );
    let peak = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .max_rss() as u64;
    assert!(
        peak < MAX_RSS_KIB,
        "raywatch {args:?} peaked at {peak} KiB; stderr: {stderr}"
    );
    out
}

/// Fails unless `out` is a failure whose stderr says the answer from the
/// stack's Prometheus was refused (is over 64 MiB): snapshot `name`.
fn refused_with_a_clear_error(out: &Output, name: &str, stack: &Stack) {
    assert_transcript(name, out, keeping(&[REFUSED], stack_filters(stack)));
}

/// The daemon's peak memory (VmHWM) is under the bound.
fn daemon_stayed_small(stack: &Stack) {
    let status = fs_err::read_to_string(format!("/proc/{}/status", daemon_pid(stack))).unwrap();
    let hwm: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/<daemon>/status");
    assert!(hwm < MAX_RSS_KIB, "the daemon peaked at {hwm} KiB");
}

#[test]
fn query_refuses_an_endless_answer() {
    let Some(h) = hostile_stack() else { return };
    let out = bounded(Some(&h.stack.home), &["query", "up"]);
    refused_with_a_clear_error(&out, "endless-answer-query", &h.stack);
}

#[test]
fn export_refuses_an_endless_answer() {
    let Some(h) = hostile_stack() else { return };
    let dest = h._dir.path().join("export");
    let out = bounded(
        Some(&h.stack.home),
        &[
            "export",
            "any",
            "--from",
            "1h",
            "--out",
            dest.to_str().unwrap(),
        ],
    );
    refused_with_a_clear_error(&out, "endless-answer-export", &h.stack);
}

#[test]
fn top_once_refuses_an_endless_answer_from_the_stack() {
    let Some(h) = hostile_stack() else { return };
    let out = bounded(Some(&h.stack.home), &["top", "--once"]);
    refused_with_a_clear_error(&out, "endless-answer-top", &h.stack);
}

/// The hostile server run by hand, as a remote query API (`top --prometheus URL`).
struct Remote {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hostile_remote() -> Option<Remote> {
    let dir = scratch();
    let bin = script(dir.path())?;
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let remote = Remote {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    wait_for(
        "the hostile server to listen",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    Some(remote)
}

#[test]
fn top_once_refuses_an_endless_answer_from_a_remote_api() {
    let Some(remote) = hostile_remote() else {
        return;
    };
    let out = bounded(None, &["top", "--once", "--prometheus", &remote.url]);
    // A failure naming the remote API and that its answer was refused.
    assert_transcript(
        "endless-answer-top-remote",
        &out,
        keeping(&[REFUSED], scratch_filters(remote._dir.path())),
    );
}

#[test]
fn status_says_the_answers_cannot_be_read() {
    let Some(h) = hostile_stack() else { return };
    let out = bounded(Some(&h.stack.home), &["status"]);
    // Prometheus' line says its answers cannot be read: over 64 MiB, refused.
    assert_transcript(
        "endless-answer-status",
        &out,
        keeping(&[REFUSED], stack_filters(&h.stack)),
    );
    daemon_stayed_small(&h.stack);
}

#[test]
fn doctor_says_the_answers_cannot_be_read() {
    let Some(h) = hostile_stack() else { return };
    let out = bounded(Some(&h.stack.home), &["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "doctor found nothing wrong: {stdout}"
    );
    // The rest of doctor's report depends on the machine (its other checks):
    // only the finding about Prometheus is checked.
    assert!(
        stdout.contains("raywatch cannot read its answers") && stdout.contains(REFUSED),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon_stayed_small(&h.stack);
}

#[test]
fn the_gateway_answers_bad_gateway_to_an_endless_answer() {
    let Some(h) = hostile_stack() else { return };
    let url = h.stack.status()["gateway"]["url"]
        .as_str()
        .expect("the gateway's URL in status")
        .to_string();
    let start = Instant::now();
    let resp = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .build()
        .unwrap()
        .get(format!("{url}/api/v1/query?query=up"))
        .send()
        .unwrap();
    assert!(start.elapsed() < DEADLINE);
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_GATEWAY);
    let body = resp.text().unwrap();
    assert!(body.contains(REFUSED), "{body}");
    daemon_stayed_small(&h.stack);
}
