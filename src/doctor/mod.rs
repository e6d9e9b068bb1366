//! `raywatch doctor`: the checks that name what breaks Ray monitoring on this machine, each with its fix.
//!
//! Every check is a small function of a [`Machine`] (what was read once: the
//! session folders of the Ray temp dirs, the processes and sockets /proc shows,
//! the stack's settings and, when it runs, its status report) returning one
//! [`Finding`]. Ray's folders are read only through [`crate::untrusted`] /
//! [`crate::discovery`] (no links followed, bounded reads); another process's
//! environment is read only when it is this user's; the network is touched
//! only on loopback, with read-only GETs and a 2 s timeout.
//!
//! | file | checks |
//! | --- | --- |
//! | `sessions.rs` | `shared_temp_dir`, `fixed_ports`, `stale_discovery_files` |
//! | `dashboard.rs` | `dashboard_wiring` |
//! | `auth.rs` | `dashboard_auth`, `ray_token_file` |
//! | `servers.rs` | `foreign_prometheus` |
//! | `inotify.rs` | `inotify_limits` |
//! | `stack.rs` | `prometheus_disk`, `targets_down`, `remote_write`, `home_permissions` |

mod auth;
mod dashboard;
mod inotify;
mod servers;
mod sessions;
mod stack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::StackConfig;
use crate::home::Home;
use crate::status::StatusReport;

pub use inotify::InotifyLimits;

/// How long doctor waits for the daemon's status report.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Problem,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Problem => "problem",
            Status::Skipped => "skipped",
        }
    }
}

/// One line of the doctor's report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub summary: String,
    pub evidence: Vec<String>,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, summary: impl Into<String>) -> Finding {
        Finding::new(check, Status::Ok, summary)
    }

    fn skipped(check: &'static str, summary: impl Into<String>) -> Finding {
        Finding::new(check, Status::Skipped, summary)
    }

    fn new(check: &'static str, status: Status, summary: impl Into<String>) -> Finding {
        Finding {
            check,
            status,
            summary: summary.into(),
            evidence: Vec::new(),
            fix: None,
        }
    }

    fn with(mut self, evidence: Vec<String>, fix: impl Into<String>) -> Finding {
        self.evidence = evidence;
        self.fix = Some(fix.into());
        self
    }
}

/// What the checks look at: the stack's home and the Ray temp dirs.
pub struct Scope {
    pub home: Home,
    /// Ray temp dirs given on the command line (`--root`): only these are looked at.
    pub roots: Vec<PathBuf>,
}

/// One process as far as /proc shows it to this user.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub uid: u32,
    pub cmdline: Vec<String>,
}

/// This machine's processes: who they are, which listening sockets this user
/// may attribute to them, and this user's inotify use.
#[derive(Debug, Default)]
pub struct Procs {
    pub list: Vec<Proc>,
    /// Socket inode → PID, for the processes whose fds this user may read.
    sockets: HashMap<u64, u32>,
    /// PIDs whose fds this user may read.
    readable: std::collections::HashSet<u32>,
    pub inotify_instances: u64,
    pub inotify_watches: u64,
}

impl Procs {
    pub fn read() -> Procs {
        let me = nix::unistd::getuid().as_raw();
        let mut out = Procs::default();
        let Ok(all) = ::procfs::process::all_processes() else {
            return out;
        };
        for p in all.flatten() {
            let pid = p.pid as u32;
            let Ok(uid) = p.uid() else { continue };
            let Some(cmdline) = crate::process::cmdline(pid) else {
                continue;
            };
            if let Ok(fds) = p.fd() {
                out.readable.insert(pid);
                for fd in fds.flatten() {
                    match fd.target {
                        ::procfs::process::FDTarget::Socket(inode) => {
                            out.sockets.insert(inode, pid);
                        }
                        ::procfs::process::FDTarget::AnonInode(ref k)
                            if uid == me && k == "inotify" =>
                        {
                            out.inotify_instances += 1;
                            out.inotify_watches += inotify::watches_of(pid, fd.fd);
                        }
                        _ => {}
                    }
                }
            }
            out.list.push(Proc { pid, uid, cmdline });
        }
        out
    }

    /// The PID holding the socket `inode`, when this user may see it.
    pub fn socket_owner(&self, inode: u64) -> Option<u32> {
        self.sockets.get(&inode).copied()
    }

    /// Whether this user could read `pid`'s fds (and so attribute its sockets).
    pub fn fds_readable(&self, pid: u32) -> bool {
        self.readable.contains(&pid)
    }
}

/// Everything the checks read, read once.
pub struct Machine {
    pub me: u32,
    pub home: Home,
    /// `<home>/config.json`, when a stack was set up in this home.
    pub config: Option<StackConfig>,
    /// The daemon's status report, or why there is none.
    pub report: Result<StatusReport, String>,
    pub sessions: Vec<sessions::Session>,
    /// The temp dirs of `--root`, when given: Ray processes elsewhere are not looked at.
    pub only_roots: Option<Vec<PathBuf>>,
    pub procs: Procs,
    pub listeners: crate::process::Listeners,
    pub inotify: InotifyLimits,
}

impl Machine {
    /// Reads the machine for `scope`.
    pub fn read(scope: &Scope) -> Machine {
        let config = StackConfig::load(&scope.home.config()).ok().flatten();
        let report = status_report(&scope.home, config.is_some());
        let roots = if scope.roots.is_empty() {
            default_roots(&report)
        } else {
            scope.roots.clone()
        };
        Machine {
            me: nix::unistd::getuid().as_raw(),
            home: scope.home.clone(),
            config,
            report,
            sessions: sessions::sessions(&roots),
            only_roots: (!scope.roots.is_empty()).then(|| scope.roots.clone()),
            procs: Procs::read(),
            listeners: crate::process::Listeners::read(),
            inotify: InotifyLimits::read(),
        }
    }

    /// The stack's status report, or a "skipped" finding saying why there is none.
    fn report_or_skip(&self, check: &'static str) -> Result<&StatusReport, Finding> {
        self.report
            .as_ref()
            .map_err(|why| Finding::skipped(check, why.clone()))
    }
}

/// `/tmp/ray*`, `$RAY_TMPDIR/ray*`, and what the running stack watches and follows.
fn default_roots(report: &Result<StatusReport, String>) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = crate::ray::default_temp_dir_parents()
        .iter()
        .flat_map(|p| crate::discovery::roots_in(p, &|_| true))
        .collect();
    if let Ok(r) = report {
        let followed = r
            .watch
            .roots
            .iter()
            .chain(r.clusters.iter().map(|c| &c.temp_dir));
        for root in followed {
            if !roots.contains(root) {
                roots.push(root.clone());
            }
        }
    }
    roots
}

/// The daemon's status report, asked with a short timeout.
fn status_report(home: &Home, set_up: bool) -> Result<StatusReport, String> {
    let not_running = || {
        if set_up {
            format!(
                "the stack is not running for {} (start it with `raywatch up`)",
                show(home.root())
            )
        } else {
            format!(
                "no stack in {} (`raywatch up` sets one up)",
                show(home.root())
            )
        }
    };
    if !home.socket().exists() {
        return Err(not_running());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let socket = home.socket();
    rt.block_on(async {
        let call = crate::api::request(&socket, &crate::api::StatusRequest);
        match tokio::time::timeout(STATUS_TIMEOUT, call).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) if e.chain().any(|c| c.is::<crate::api::NotRunning>()) => Err(not_running()),
            Ok(Err(e)) => Err(format!("the daemon's status report failed: {e:#}")),
            Err(_) => Err(format!(
                "the daemon did not answer within {} s",
                STATUS_TIMEOUT.as_secs()
            )),
        }
    })
}

fn show(p: &Path) -> String {
    crate::escape::path(p).into_owned()
}

/// Runs every check.
pub fn run(scope: &Scope) -> Vec<Finding> {
    let m = Machine::read(scope);
    vec![
        sessions::shared_temp_dir(&m),
        sessions::fixed_ports(&m),
        dashboard::dashboard_wiring(&m),
        auth::dashboard_auth(&m),
        auth::ray_token_file(&m),
        servers::foreign_servers(&m),
        sessions::stale_discovery_files(&m),
        inotify::inotify_check(&m),
        stack::prometheus_disk(&m),
        stack::targets_down(&m),
        stack::remote_write(&m),
        stack::home_check(&m),
    ]
}
