//! What a second local user (or a dropped connection) can make raywatch hold, bounded:
//! a `top` whose terminal went away, other processes' huge command lines, and idle
//! connections to the stack's Prometheus (issue 16).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::security::{other_user, system_python};
use crate::support::*;
use crate::top::Tmux;

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    state(pid).is_none_or(|s| s == 'Z')
}

/// A `raywatch top` of the stack at `home`, found by its command line; SIGKILLed
/// on drop if it is still there.
struct Top(u32);

impl Top {
    fn find(home: &Path) -> Top {
        let bin = raywatch_bin().display().to_string();
        let pids = wait_for("top's process", Duration::from_secs(30), || {
            let pids: Vec<u32> = processes_mentioning(&home.display().to_string())
                .into_iter()
                .filter(|p| {
                    fs_err::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                        args.first() == Some(&bin.as_bytes()) && args.contains(&&b"top"[..])
                    })
                })
                .collect();
            (!pids.is_empty()).then_some(pids)
        });
        assert_eq!(pids.len(), 1, "{pids:?}");
        Top(pids[0])
    }

    /// Whether it is gone within `limit`.
    fn gone_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if gone(self.0) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        gone(self.0)
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        if !gone(self.0) {
            let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        }
    }
}

/// `top` on the screen of a fresh tmux session, started by `prefix` (a shell
/// word such as `setsid -w`, or nothing).
fn top_in_tmux(stack: &Stack, prefix: &str) -> (Tmux, Top) {
    let tmux = Tmux::start(160, 30);
    tmux.literal(&format!(
        "{prefix} '{}' --home '{}' top",
        raywatch_bin().display(),
        stack.home.display()
    ));
    tmux.keys(&["Enter"]);
    tmux.wait_screen("top's screen", |s| s.contains("q quit"));
    let top = Top::find(&stack.home);
    (tmux, top)
}

/// Issue 16, item 8: the tmux session killed (what a dropped SSH connection does
/// to a login shell), `top` is gone within 2 s, not left spinning on a dead terminal.
#[test]
fn top_exits_when_its_tmux_session_is_killed() {
    let (stack, _root) = Stack::watching("ray_hangup", &[]);
    let (tmux, top) = top_in_tmux(&stack, "");
    assert!(tmux.tmux(&["kill-session"]).status.success());
    assert!(
        top.gone_within(Duration::from_secs(2)),
        "top (pid {}) still runs 2 s after its terminal went away: state {:?}, {:.1} s of CPU",
        top.0,
        state(top.0),
        cpu_seconds(top.0)
    );
}

/// Issue 16, item 8: a `top` in a session of its own (so the hangup sends it no
/// SIGHUP) whose terminal goes away, then SIGHUP or SIGTERM: gone within 2 s.
#[test]
fn sighup_and_sigterm_end_a_top_whose_terminal_is_gone() {
    let (stack, _root) = Stack::watching("ray_orphan", &[]);
    for signal in [Signal::SIGHUP, Signal::SIGTERM] {
        let (tmux, top) = top_in_tmux(&stack, "setsid -w");
        assert!(tmux.tmux(&["kill-session"]).status.success());
        let _ = kill(Pid::from_raw(top.0 as i32), signal);
        assert!(
            top.gone_within(Duration::from_secs(2)),
            "top (pid {}) still runs 2 s after its terminal went away and {signal}: \
             state {:?}, {:.1} s of CPU",
            top.0,
            state(top.0),
            cpu_seconds(top.0)
        );
    }
}

/// Processes the other user runs, SIGKILLed and reaped on drop.
struct Others(Vec<Child>);

impl Drop for Others {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// The largest resident size (KiB) of any reaped child of this process so far.
fn children_max_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let rc = unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: initialised by the successful call above.
    unsafe { usage.assume_init() }.ru_maxrss
}

/// Issue 16, item 6: 150 processes of the other user, each with 5 MiB of command
/// line: `doctor` (which looks at every process) stays under 50 MiB resident.
#[test]
fn doctor_stays_small_beside_processes_with_huge_command_lines() {
    let other = other_user();
    let dir = scratch();
    let home = dir.path().join("home");
    let root = dir.path().join("ray_tmp");
    fs_err::create_dir_all(home.join("secrets")).unwrap();
    fs_err::create_dir_all(&root).unwrap();
    // 40 arguments of just under 128 KiB (the kernel's limit for one), 5 MiB in all.
    let arg = "a".repeat(128 * 1024 - 1);
    let mut others = Others(Vec::new());
    for _ in 0..150 {
        let mut cmd = command_as(other, "sh");
        cmd.args(["-c", "read line", "huge"])
            .args(std::iter::repeat_n(&arg, 40))
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        // SAFETY: only setrlimit between fork and exec: a stack limit that lets
        // execve take 5 MiB of arguments (a quarter of the stack limit).
        unsafe {
            cmd.pre_exec(|| {
                let limit = nix::libc::rlimit {
                    rlim_cur: 64 << 20,
                    rlim_max: nix::libc::RLIM_INFINITY,
                };
                if nix::libc::setrlimit(nix::libc::RLIMIT_STACK, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        others
            .0
            .push(cmd.spawn().expect("the other user's process"));
    }
    let pid = others.0[149].id();
    let held = wait_for(
        "the other user's huge command lines",
        Duration::from_secs(30),
        || {
            let len = fs_err::read(format!("/proc/{pid}/cmdline")).ok()?.len();
            (len > 5 << 20).then_some(len)
        },
    );
    assert!(held > 5 << 20);
    let before = children_max_rss_kib();
    assert!(
        before < 50 << 10,
        "a child was already over 50 MiB: {before} KiB"
    );
    let out = Command::new(raywatch_bin())
        .arg("--home")
        .arg(&home)
        .args(["doctor", "--json", "--root"])
        .arg(&root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.stdout.is_empty(),
        "doctor said nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = children_max_rss_kib();
    drop(others);
    eprintln!("doctor's peak resident size: {peak} KiB");
    assert!(
        peak < 50 << 10,
        "doctor's peak resident size: {} MiB beside 150 processes of 5 MiB of command line",
        peak >> 10
    );
}

/// The other user's Python holding `n` TCP connections to 127.0.0.1:`port`, idle,
/// until killed (on drop).
struct Holder(Child);

impl Holder {
    fn connect(other: (u32, u32), python: &str, port: u16, n: usize) -> Holder {
        let script = format!(
            r#"
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [socket.create_connection(("127.0.0.1", {port})) for _ in range({n})]
print("held", len(held), flush=True)
time.sleep(600)
"#
        );
        let mut child = command_as(other, python)
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let holder = Holder(child);
        assert_eq!(line.trim(), format!("held {n}"), "the connections are held");
        holder
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 16, item 4: 600 idle connections to Prometheus' port held by the other
/// user (no password needed to connect) no longer fill its connection limit: the
/// stack stays ready and `query` answers while they are held.
#[test]
fn six_hundred_idle_connections_leave_prometheus_ready() {
    let other = other_user();
    let python = system_python();
    let (stack, _root) = Stack::watching("ray_conns", &[]);
    let port = stack.port();
    let held_at = Instant::now();
    let _holder = Holder::connect(other, python, port, 600);
    // Before Prometheus' read timeout could have closed any of them.
    let limit = Duration::from_secs(20);
    let (answered, last) = loop {
        let status = stack.status();
        let query = stack.run(&["query", "up", "--json"]);
        let last = format!(
            "ready: {}, connections_held: {}, query: {:?} {}",
            status["prometheus"]["ready"],
            status["prometheus"]["connections_held"],
            query.status.code(),
            String::from_utf8_lossy(&query.stderr)
        );
        if status["prometheus"]["ready"] == true && query.status.success() {
            break (true, last);
        }
        if held_at.elapsed() > limit {
            break (false, last);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        answered,
        "with 600 idle connections held by uid {}: {last}",
        other.0
    );
}

/// Issue 16, item 4: a Prometheus that is not ready (stopped here) while another
/// user holds connections to its port: `status` names them, by count and uid.
#[test]
fn status_names_the_user_holding_connections_to_a_prometheus_not_ready() {
    let other = other_user();
    let python = system_python();
    let (stack, _root) = Stack::watching("ray_held", &[]);
    let port = stack.port();
    let prometheus = Pid::from_raw(
        fs_err::read_to_string(stack.home.join("run/prometheus.pid"))
            .expect("Prometheus' PID file")
            .trim()
            .parse()
            .unwrap(),
    );
    /// Continues Prometheus on drop, even when the test fails.
    struct Stopped(Pid);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    kill(prometheus, Signal::SIGSTOP).unwrap();
    let stopped = Stopped(prometheus);
    let _holder = Holder::connect(other, python, port, 50);
    let expected = format!(
        "50 connections to Prometheus' port {port} held by uid {}",
        other.0
    );
    let status = wait_for("status to name the holder", Duration::from_secs(30), || {
        let s = stack.status();
        let held = s["prometheus"]["connections_held"].as_str()?.to_string();
        held.contains(&expected).then_some(s)
    });
    assert_eq!(status["prometheus"]["ready"], false);
    let text = stack.run(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&expected), "{text}");
    let doctor = stack.run(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&doctor.stdout)));
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "targets_down")
        .unwrap_or_else(|| panic!("no targets_down in {report}"))
        .clone();
    assert_eq!(finding["status"], "problem", "{finding}");
    assert!(finding.to_string().contains(&expected), "{finding}");
    drop(stopped);
}
