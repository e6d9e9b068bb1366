//! Running a child (Prometheus or Grafana) under the daemon: start, restart with backoff, stop.
//!
//! The child gets its own process group and a parent-death signal, so a killed
//! daemon takes it along (a child left by a daemon killed between fork and the
//! signal's setup is reaped by the next `up`, by recorded PID); a graceful stop
//! is SIGTERM, a grace period, then SIGKILL to the whole group.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How to start the child, made afresh before every start.
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

/// What `status` shows about a supervised child.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChildStatus {
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Unix time of the next start attempt while the child is down.
    pub next_start_unix: Option<f64>,
    /// Several exits in a row within a short time: something needs fixing.
    pub crash_loop: bool,
    /// The last lines the child printed before it last exited.
    pub last_output: Vec<String>,
}

pub struct Supervisor {
    pub status: Arc<Mutex<ChildStatus>>,
    stop: watch::Sender<bool>,
    restart: watch::Sender<u64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

const GRACE: Duration = Duration::from_secs(10);

/// The pause before each restart: 1 s, doubling up to a minute while the child
/// keeps exiting; a child that ran for a minute starts the count afresh.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backoff {
    next: Duration,
    quick_exits: u32,
}

/// A child that ran longer than this was not crash-looping.
const STABLE: Duration = Duration::from_secs(60);
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(60);
/// Exits in a row, each within [`STABLE`], that make a crash loop.
const CRASH_LOOP_EXITS: u32 = 3;

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: FIRST_PAUSE,
            quick_exits: 0,
        }
    }
}

impl Backoff {
    /// The child ended (or could not start) after `ran_for`: how long to wait
    /// before the next start, and whether it is crash-looping.
    fn after_exit(&mut self, ran_for: Duration) -> (Duration, bool) {
        if ran_for > STABLE {
            *self = Backoff::default();
        } else {
            self.quick_exits += 1;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(LONGEST_PAUSE);
        (pause, self.quick_exits >= CRASH_LOOP_EXITS)
    }
}

/// How one run of the child ended.
enum Ended {
    /// It exited, or could not start: restart after the backoff.
    Exited,
    /// A configuration change: restart at once, the backoff afresh.
    Restart,
    /// The supervision stops.
    Stopped,
}

/// The receiving ends of [`Supervisor::stop`] and [`Supervisor::restart`].
struct Orders {
    stop: watch::Receiver<bool>,
    restart: watch::Receiver<u64>,
}

impl Supervisor {
    /// Starts supervising. `make` builds the spec for each start (it may pick a new port).
    pub fn start<F>(name: &'static str, make: F) -> Supervisor
    where
        F: FnMut() -> anyhow::Result<Spec> + Send + 'static,
    {
        let status = Arc::new(Mutex::new(ChildStatus::default()));
        let (stop, stop_rx) = watch::channel(false);
        let (restart, restart_rx) = watch::channel(0u64);
        let orders = Orders {
            stop: stop_rx,
            restart: restart_rx,
        };
        let task = tokio::spawn(supervise(name, make, status.clone(), orders));
        Supervisor {
            status,
            stop,
            restart,
            task: Mutex::new(Some(task)),
        }
    }

    /// Restarts the child now (a flag changed), without counting it as a crash.
    pub fn restart(&self) {
        self.restart.send_modify(|g| *g += 1);
    }

    /// Sends a signal to the running child, if any (SIGHUP: reload its config).
    pub fn signal(&self, sig: Signal) -> bool {
        match self.status.lock().unwrap().pid {
            Some(pid) => kill(Pid::from_raw(pid as i32), sig).is_ok(),
            None => false,
        }
    }

    /// Stops the child (TERM, grace, KILL) and the supervision.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Starts the child again and again, with [`Backoff`] between quick exits, until told to stop.
async fn supervise<F>(
    name: &'static str,
    mut make: F,
    st: Arc<Mutex<ChildStatus>>,
    mut orders: Orders,
) where
    F: FnMut() -> anyhow::Result<Spec>,
{
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        match run_once(name, &mut make, &st, &mut orders).await {
            Ended::Stopped => return,
            Ended::Restart => {
                backoff = Backoff::default();
                continue;
            }
            Ended::Exited => {}
        }
        let (pause, crash_loop) = backoff.after_exit(started.elapsed());
        {
            let mut s = st.lock().unwrap();
            s.crash_loop = crash_loop;
            let next = SystemTime::now() + pause;
            s.next_start_unix = Some(crate::clock::unix(next));
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = orders.stop.changed() => return,
        }
    }
}

/// One start of the child, until it exits or is stopped or restarted.
async fn run_once(
    name: &'static str,
    make: &mut impl FnMut() -> anyhow::Result<Spec>,
    st: &Mutex<ChildStatus>,
    orders: &mut Orders,
) -> Ended {
    let tail = crate::logfile::Tail::default();
    let started = make().and_then(|spec| spawn(&spec, &tail).map(|c| (c, spec)));
    // No PID means it was already reaped; a PID of 0 would name raywatch's own
    // process group to `killpg`, so there is none here.
    let (mut child, spec, pid) = match started {
        Ok((child, spec)) => match child.id().filter(|&p| p != 0) {
            Some(pid) => (child, spec, pid),
            None => {
                could_not_start(
                    name,
                    st,
                    anyhow::anyhow!("it exited before its PID was read"),
                );
                return Ended::Exited;
            }
        },
        Err(e) => {
            could_not_start(name, st, e);
            return Ended::Exited;
        }
    };
    let _ = crate::atomic::write(&spec.pid_file, format!("{pid}\n").as_bytes(), 0o600);
    {
        let mut s = st.lock().unwrap();
        s.pid = Some(pid);
        s.next_start_unix = None;
    }
    tracing::info!("{name} started (pid {pid})");
    tokio::select! {
        res = child.wait() => {
            // Reaped: its PID may name another process from now on, so no
            // signal may go to it (`signal` reads this).
            st.lock().unwrap().pid = None;
            let what = match res {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!("{name} (pid {pid}) exited: {what}; see {}", spec.log.display());
            // Let the output pumps catch the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut s = st.lock().unwrap();
            s.last_exit = Some(what);
            s.last_output = tail.lines();
            s.restarts += 1;
        }
        _ = orders.stop.changed() => {
            terminate(&mut child, pid).await;
            let _ = fs_err::remove_file(&spec.pid_file);
            st.lock().unwrap().pid = None;
            tracing::info!("{name} stopped");
            return Ended::Stopped;
        }
        _ = orders.restart.changed() => {
            tracing::info!("restarting {name} (pid {pid}) for a configuration change");
            terminate(&mut child, pid).await;
            st.lock().unwrap().pid = None;
            return Ended::Restart;
        }
    }
    let _ = fs_err::remove_file(&spec.pid_file);
    Ended::Exited
}

fn could_not_start(name: &str, st: &Mutex<ChildStatus>, e: anyhow::Error) {
    tracing::error!("cannot start {name}: {e:#}");
    let mut s = st.lock().unwrap();
    s.last_exit = Some(format!("could not start: {e:#}"));
    s.restarts += 1;
}

fn spawn(spec: &Spec, tail: &crate::logfile::Tail) -> anyhow::Result<tokio::process::Child> {
    use anyhow::Context;
    let log = crate::logfile::SharedLog::open(spec.log.clone());
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid, kill) between fork and exec.
    unsafe {
        let parent = nix::unistd::getpid();
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                let _ = kill(nix::unistd::getpid(), Signal::SIGTERM);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", spec.program.display()))?;
    // Output goes line by line to a rotating log and the tail, on their own tasks,
    // so a chatty child never blocks on a full pipe and never fills memory.
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, log.clone(), tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, log, tail.clone()));
    }
    Ok(child)
}

async fn pump(
    stream: impl tokio::io::AsyncRead + Unpin,
    mut log: crate::logfile::SharedLog,
    tail: crate::logfile::Tail,
) {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stream).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let _ = log.write_all(&line);
        let _ = log.write_all(b"\n");
        tail.push(&String::from_utf8_lossy(&line));
    }
}

/// Stops the child's process group: TERM, [`GRACE`], KILL. `pid` is never 0
/// (see [`run_once`]), which `killpg` would take for raywatch's own group.
async fn terminate(child: &mut tokio::process::Child, pid: u32) {
    debug_assert_ne!(pid, 0);
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        tracing::warn!("pid {pid} did not stop within {GRACE:?}; killing it");
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_secs(2);

    #[test]
    fn quick_exits_wait_1s_doubling_to_a_minute() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..8).map(|_| b.after_exit(QUICK).0.as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn three_quick_exits_in_a_row_are_a_crash_loop() {
        let mut b = Backoff::default();
        let looping: Vec<bool> = (0..4).map(|_| b.after_exit(QUICK).1).collect();
        assert_eq!(looping, [false, false, true, true]);
    }

    #[test]
    fn a_run_of_over_a_minute_starts_the_count_afresh() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.after_exit(QUICK);
        }
        assert_eq!(
            b.after_exit(Duration::from_secs(61)),
            (Duration::from_secs(1), false)
        );
        assert_eq!(b.after_exit(QUICK), (Duration::from_secs(2), false));
        // Exactly a minute is still quick.
        let mut b = Backoff::default();
        b.after_exit(QUICK);
        b.after_exit(QUICK);
        assert_eq!(b.after_exit(STABLE), (Duration::from_secs(4), true));
    }

    #[test]
    fn a_start_that_fails_counts_as_an_exit() {
        let st = Mutex::new(ChildStatus::default());
        could_not_start("prometheus", &st, anyhow::anyhow!("no such file"));
        let s = st.lock().unwrap();
        assert_eq!(s.restarts, 1);
        assert_eq!(
            s.last_exit.as_deref(),
            Some("could not start: no such file")
        );
        assert_eq!(s.pid, None);
    }

    /// A real child that exits at once: restarted after 1 s then 2 s, a crash
    /// loop at the third exit; a stop ends the supervision and removes its PID file.
    #[tokio::test]
    async fn a_child_that_keeps_exiting_is_restarted_then_called_a_crash_loop() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let spec_pid_file = pid_file.clone();
        let log = dir.path().join("child.log");
        let sup = Supervisor::start("child", move || {
            Ok(Spec {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "echo bye; exit 3".into()],
                log: log.clone(),
                pid_file: spec_pid_file.clone(),
            })
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            let s = sup.status.lock().unwrap().clone();
            if s.crash_loop || Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.crash_loop, "{status:?}");
        assert_eq!(status.restarts, 3, "{status:?}");
        assert_eq!(status.last_exit.as_deref(), Some("exit status: 3"));
        assert_eq!(status.last_output, ["bye"]);
        assert!(status.next_start_unix.is_some());
        sup.stop().await;
        assert!(!pid_file.exists());
    }
}
