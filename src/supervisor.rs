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

impl Supervisor {
    /// Starts supervising. `make` builds the spec for each start (it may pick a new port).
    pub fn start<F>(name: &'static str, mut make: F) -> Supervisor
    where
        F: FnMut() -> anyhow::Result<Spec> + Send + 'static,
    {
        let status = Arc::new(Mutex::new(ChildStatus::default()));
        let (stop, mut stop_rx) = watch::channel(false);
        let (restart, mut restart_rx) = watch::channel(0u64);
        let st = status.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            let mut quick_exits = 0u32;
            loop {
                let started = Instant::now();
                let tail = crate::logfile::Tail::default();
                match make().and_then(|spec| spawn(&spec, &tail).map(|c| (c, spec))) {
                    Ok((mut child, spec)) => {
                        let pid = child.id().unwrap_or(0);
                        let _ = crate::atomic::write(
                            &spec.pid_file,
                            format!("{pid}\n").as_bytes(),
                            0o600,
                        );
                        {
                            let mut s = st.lock().unwrap();
                            s.pid = Some(pid);
                            s.next_start_unix = None;
                        }
                        tracing::info!("{name} started (pid {pid})");
                        tokio::select! {
                            res = child.wait() => {
                                let what = match res {
                                    Ok(s) => s.to_string(),
                                    Err(e) => e.to_string(),
                                };
                                tracing::warn!("{name} (pid {pid}) exited: {what}; see {}", spec.log.display());
                                // Let the output pumps catch the last lines.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                let mut s = st.lock().unwrap();
                                s.pid = None;
                                s.last_exit = Some(what);
                                s.last_output = tail.lines();
                                s.restarts += 1;
                            }
                            _ = stop_rx.changed() => {
                                terminate(&mut child, pid).await;
                                let _ = fs_err::remove_file(&spec.pid_file);
                                st.lock().unwrap().pid = None;
                                tracing::info!("{name} stopped");
                                return;
                            }
                            _ = restart_rx.changed() => {
                                tracing::info!("restarting {name} (pid {pid}) for a configuration change");
                                terminate(&mut child, pid).await;
                                st.lock().unwrap().pid = None;
                                backoff = Duration::from_secs(1);
                                quick_exits = 0;
                                continue;
                            }
                        }
                        let _ = fs_err::remove_file(&spec.pid_file);
                    }
                    Err(e) => {
                        tracing::error!("cannot start {name}: {e:#}");
                        let mut s = st.lock().unwrap();
                        s.last_exit = Some(format!("could not start: {e:#}"));
                        s.restarts += 1;
                    }
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                    quick_exits = 0;
                } else {
                    quick_exits += 1;
                }
                {
                    let mut s = st.lock().unwrap();
                    s.crash_loop = quick_exits >= 3;
                    let next = SystemTime::now() + backoff;
                    s.next_start_unix = Some(crate::clock::unix(next));
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_rx.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        });
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

async fn terminate(child: &mut tokio::process::Child, pid: u32) {
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        tracing::warn!("pid {pid} did not stop within {GRACE:?}; killing it");
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}
