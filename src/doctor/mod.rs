//! `raywatch doctor`: the checks that name what breaks Ray monitoring on this machine, each with its fix.
//!
//! Every check is a small function returning [`Finding`]s. They read Ray's folders
//! only through [`crate::untrusted`] / [`crate::discovery`] (no links followed,
//! bounded reads), look at other users' processes only as far as /proc allows,
//! and talk over the network only to loopback, with a GET and a 2 s timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::discovery::{self, DISCOVERY_FILE};
use crate::home::Home;
use crate::ray::is_session_name;
use crate::untrusted::Folder;

/// A discovery file rewritten this recently belongs to a live cluster (Ray: every 5 s).
pub const LIVE_WITHIN: Duration = Duration::from_secs(30);
/// A discovery file not rewritten for this long belongs to a dead cluster.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// Ray's fixed default metrics-export ports (dashboard agent, metrics export).
pub const FIXED_PORTS: [u16; 2] = [44217, 44227];

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
        Finding {
            check,
            status: Status::Ok,
            summary: summary.into(),
            evidence: Vec::new(),
            fix: None,
        }
    }
}

/// What the checks look at: the stack's home and the Ray temp dirs.
pub struct Scope {
    pub home: PathBuf,
    pub roots: Vec<PathBuf>,
}

impl Scope {
    /// The default roots: every `ray*` folder in /tmp and `$RAY_TMPDIR`, unless `roots` is given.
    pub fn new(home: &Home, roots: Vec<PathBuf>) -> Scope {
        let roots = if roots.is_empty() {
            crate::ray::default_temp_dir_parents()
                .iter()
                .flat_map(|p| discovery::roots_in(p, &|_| true))
                .collect()
        } else {
            roots
        };
        Scope {
            home: home.root().to_path_buf(),
            roots,
        }
    }
}

/// One session folder seen in a root.
#[derive(Debug, Clone)]
struct Session {
    root: PathBuf,
    name: String,
    owner: u32,
    /// The discovery file's mtime, if it is a regular file.
    written: Option<SystemTime>,
}

impl Session {
    fn age(&self) -> Option<Duration> {
        self.written
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }
    fn live(&self) -> bool {
        self.age().is_some_and(|a| a <= LIVE_WITHIN)
    }
    fn file(&self) -> PathBuf {
        self.root.join(&self.name).join(DISCOVERY_FILE)
    }
}

/// The session folders of every root (stat only: nothing is opened but folders).
fn sessions(roots: &[PathBuf]) -> Vec<Session> {
    let mut out = Vec::new();
    for root in roots {
        let Ok(Some(folder)) = Folder::open(root) else {
            continue;
        };
        for (name, _) in folder.entries() {
            let text = name.to_string_lossy().into_owned();
            if !is_session_name(&text) {
                continue;
            }
            let Some(st) = folder.stat(&name) else {
                continue;
            };
            if !crate::untrusted::is_dir(&st) {
                continue;
            }
            let written = folder
                .child(&name)
                .ok()
                .flatten()
                .and_then(|s| s.stat(OsStr::new(DISCOVERY_FILE)))
                .filter(|st| st.st_mode & libc_s_ifmt() == libc_s_ifreg())
                .map(|st| {
                    SystemTime::UNIX_EPOCH
                        + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32)
                });
            out.push(Session {
                root: root.clone(),
                name: text,
                owner: st.st_uid,
                written,
            });
        }
    }
    out.sort_by(|a, b| (&a.root, &a.name).cmp(&(&b.root, &b.name)));
    out
}

fn libc_s_ifmt() -> u32 {
    nix::sys::stat::SFlag::S_IFMT.bits()
}
fn libc_s_ifreg() -> u32 {
    nix::sys::stat::SFlag::S_IFREG.bits()
}

fn show(p: &Path) -> String {
    crate::escape::path(p).into_owned()
}

/// Runs every check.
pub fn run(scope: &Scope) -> Vec<Finding> {
    let sessions = sessions(&scope.roots);
    let procs = Procs::read();
    let home = Home::resolve(Some(scope.home.clone())).ok();
    vec![
        shared_temp_dir(&sessions),
        fixed_ports(&sessions),
        foreign_servers(home.as_ref(), &procs),
        stale_discovery_files(&sessions),
        inotify_limits(&procs, read_limit("max_user_instances")),
        home_permissions(&scope.home),
    ]
}

/// Several live sessions in one temp dir, or session folders of several owners.
pub fn shared_temp_dir_check(roots: &[PathBuf]) -> Finding {
    shared_temp_dir(&sessions(roots))
}

fn shared_temp_dir(sessions: &[Session]) -> Finding {
    const CHECK: &str = "shared_temp_dir";
    let mut by_root: BTreeMap<&Path, Vec<&Session>> = BTreeMap::new();
    for s in sessions {
        by_root.entry(&s.root).or_default().push(s);
    }
    let mut evidence = Vec::new();
    for (root, list) in &by_root {
        let live: Vec<&&Session> = list.iter().filter(|s| s.live()).collect();
        let owners: BTreeSet<u32> = list.iter().map(|s| s.owner).collect();
        if live.len() > 1 {
            evidence.push(format!(
                "{} holds {} live Ray sessions: {}",
                show(root),
                live.len(),
                live.iter()
                    .map(|s| crate::escape::text(&s.name).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if owners.len() > 1 {
            evidence.push(format!(
                "{} holds session folders of {} users: {}",
                show(root),
                owners.len(),
                owners
                    .iter()
                    .map(|u| crate::process::user_name(*u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if evidence.is_empty() {
        return Finding::ok(
            CHECK,
            "every Ray temp dir holds at most one live session of one user",
        );
    }
    Finding {
        check: CHECK,
        status: Status::Problem,
        summary: "clusters share a Ray temp dir: their metrics and dashboards get mixed up".into(),
        evidence,
        fix: Some(
            "give each cluster its own temp dir: run `eval \"$(raywatch env)\"` before each `ray start`"
                .into(),
        ),
    }
}

/// Live clusters listing Ray's fixed ports 44217 / 44227, and who listens there.
fn fixed_ports(sessions: &[Session]) -> Finding {
    const CHECK: &str = "fixed_ports";
    let listeners = crate::process::Listeners::read();
    let mut evidence = Vec::new();
    for s in sessions.iter().filter(|s| s.live()) {
        let Ok(Some(listing)) = discovery::read_listing(&s.file(), |_| true) else {
            continue;
        };
        for t in &listing.targets {
            let Ok(addr) = t.parse::<SocketAddr>() else {
                continue;
            };
            if !FIXED_PORTS.contains(&addr.port()) {
                continue;
            }
            let owner = listeners
                .holder(addr.ip(), addr.port())
                .map(|l| crate::process::user_name(l.uid))
                .unwrap_or_else(|| "nobody listens".into());
            evidence.push(format!(
                "session {} in {} (of {}) lists {} — port held by {}",
                crate::escape::text(&s.name),
                show(&s.root),
                crate::process::user_name(s.owner),
                crate::escape::text(t),
                owner
            ));
        }
    }
    if evidence.is_empty() {
        return Finding::ok(
            CHECK,
            "no live cluster uses Ray's fixed metrics ports 44217/44227",
        );
    }
    Finding {
        check: CHECK,
        status: Status::Warning,
        summary:
            "a cluster uses Ray's fixed metrics ports; a second cluster on this machine collides"
                .into(),
        evidence,
        fix: Some(
            "start clusters with free metrics ports: `eval \"$(raywatch env)\"` before `ray start`"
                .into(),
        ),
    }
}

/// This machine's processes as far as /proc shows them: socket inodes to PIDs,
/// and this user's inotify instances.
pub struct Procs {
    sockets: HashMap<u64, u32>,
    pub inotify_instances: usize,
}

impl Procs {
    pub fn read() -> Procs {
        let me = nix::unistd::getuid().as_raw();
        let mut sockets = HashMap::new();
        let mut inotify_instances = 0;
        if let Ok(all) = ::procfs::process::all_processes() {
            for p in all.flatten() {
                let Ok(fds) = p.fd() else { continue };
                let mine = p.uid().is_ok_and(|u| u == me);
                for fd in fds.flatten() {
                    match fd.target {
                        ::procfs::process::FDTarget::Socket(inode) => {
                            sockets.insert(inode, p.pid as u32);
                        }
                        ::procfs::process::FDTarget::AnonInode(ref k) if mine && k == "inotify" => {
                            inotify_instances += 1;
                        }
                        _ => {}
                    }
                }
            }
        }
        Procs {
            sockets,
            inotify_instances,
        }
    }
}

/// Other Prometheus or Grafana servers listening on this machine; a Prometheus
/// whose lifecycle API answers without credentials is a problem.
fn foreign_servers(home: Option<&Home>, procs: &Procs) -> Finding {
    const CHECK: &str = "foreign_prometheus";
    let ours: BTreeSet<u32> = home
        .map(|h| {
            [h.prometheus_pid(), h.grafana_pid()]
                .iter()
                .filter_map(|p| crate::process::read_pid(p))
                .collect()
        })
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut evidence = Vec::new();
    let mut worst = Status::Ok;
    let listeners = crate::process::Listeners::read();
    for l in listeners.all() {
        let ip = l.addr.ip();
        if !(ip.is_loopback() || ip.is_unspecified()) {
            continue;
        }
        let pid = procs.sockets.get(&l.inode).copied();
        let Some(pid) = pid else { continue };
        if ours.contains(&pid) || !seen.insert((pid, l.addr.port())) {
            continue;
        }
        let Some(cmd) = crate::process::cmdline(pid) else {
            continue;
        };
        let exe = cmd
            .first()
            .and_then(|c| Path::new(c).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if exe.starts_with("prometheus") {
            "Prometheus"
        } else if exe.starts_with("grafana") {
            "Grafana"
        } else {
            continue;
        };
        let who = crate::process::user_name(l.uid);
        let port = l.addr.port();
        let mut line = format!("{kind} pid {pid} of {who} listens on {}", l.addr);
        if kind == "Prometheus" {
            match lifecycle_open(port) {
                Some(true) => {
                    worst = Status::Problem;
                    line.push_str(
                        ": its lifecycle API answers without credentials — anyone on this machine can stop it",
                    );
                }
                Some(false) => line.push_str(": its lifecycle API is off"),
                None => line.push_str(": it did not answer"),
            }
        }
        if worst == Status::Ok {
            worst = Status::Warning;
        }
        evidence.push(crate::escape::text(&line).into_owned());
    }
    if evidence.is_empty() {
        return Finding::ok(
            CHECK,
            "no other Prometheus or Grafana listens on this machine",
        );
    }
    Finding {
        check: CHECK,
        status: worst,
        summary: "other Prometheus or Grafana servers run on this machine".into(),
        evidence,
        fix: Some(if worst == Status::Problem {
            "restart that Prometheus without --web.enable-lifecycle (or behind --web.config.file with basic auth); point Ray at this stack with `eval \"$(raywatch env)\"`".into()
        } else {
            "point Ray's Dashboard at this stack, not at them: `eval \"$(raywatch env)\"` before `ray start`".into()
        }),
    }
}

/// Whether the Prometheus on `127.0.0.1:port` has its lifecycle API on without
/// auth: a GET of `/api/v1/status/flags` (harmless, read-only) answered without
/// credentials shows `web.enable-lifecycle`. A GET of `/-/quit` cannot tell: its
/// router answers 405 to a GET whether the API is on or off. `Some(false)`: the
/// flag is off or the API wants credentials; `None`: no answer within 2 s.
pub fn lifecycle_open(port: u16) -> Option<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        let mut r = client
            .get(format!("http://127.0.0.1:{port}/api/v1/status/flags"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return Some(false);
        }
        // Another user's server: read at most 1 MiB of its answer.
        let mut bytes = Vec::new();
        while let Some(chunk) = r.chunk().await.ok()? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > 1 << 20 {
                return None;
            }
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        Some(body["data"]["web.enable-lifecycle"] == "true")
    })
}

/// Discovery files of dead clusters: not rewritten for over a minute.
fn stale_discovery_files(sessions: &[Session]) -> Finding {
    const CHECK: &str = "stale_discovery_files";
    let evidence: Vec<String> = sessions
        .iter()
        .filter(|s| s.age().is_some_and(|a| a > STALE_AFTER))
        .map(|s| {
            format!(
                "{} (not rewritten for {} s)",
                show(&s.file()),
                s.age().unwrap_or_default().as_secs()
            )
        })
        .collect();
    if evidence.is_empty() {
        return Finding::ok(CHECK, "no discovery file of a dead cluster");
    }
    Finding {
        check: CHECK,
        status: Status::Warning,
        summary: format!(
            "{} discovery file(s) of dead clusters (raywatch ignores them; a plain file_sd setup scrapes dead targets)",
            evidence.len()
        ),
        evidence,
        fix: Some("delete the dead sessions' discovery files (rm the paths above)".into()),
    }
}

fn read_limit(name: &str) -> Option<u64> {
    fs_err::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// This user's inotify instances against the per-user limit.
pub fn inotify_limits(procs: &Procs, max_instances: Option<u64>) -> Finding {
    const CHECK: &str = "inotify_limits";
    let Some(max) = max_instances else {
        return Finding {
            check: CHECK,
            status: Status::Skipped,
            summary: "cannot read /proc/sys/fs/inotify/max_user_instances".into(),
            evidence: Vec::new(),
            fix: None,
        };
    };
    let used = procs.inotify_instances as u64;
    let summary = format!("this user holds {used} of {max} inotify instances");
    if used * 100 <= max * 80 {
        return Finding::ok(CHECK, summary);
    }
    Finding {
        check: CHECK,
        status: Status::Warning,
        summary,
        evidence: vec![format!("/proc/sys/fs/inotify/max_user_instances = {max}")],
        fix: Some(format!(
            "raise the limit: sudo sysctl fs.inotify.max_user_instances={}",
            (max * 4).max(1024)
        )),
    }
}

/// The home and its secrets: owned by this user, not writable (secrets: not
/// readable) by others.
pub fn home_permissions(home: &Path) -> Finding {
    use std::os::unix::fs::MetadataExt;
    const CHECK: &str = "home_permissions";
    let me = nix::unistd::getuid().as_raw();
    let mut evidence = Vec::new();
    let mut fixes = Vec::new();
    let secrets = home.join("secrets");
    for (path, bad_bits, mode) in [(home, 0o022, "go-w"), (secrets.as_path(), 0o077, "go-rwx")] {
        let Ok(meta) = fs_err::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            evidence.push(format!("{} is a symlink", show(path)));
            fixes.push(format!("replace the link {} with a folder", show(path)));
            continue;
        }
        if meta.uid() != me {
            evidence.push(format!(
                "{} is owned by {}",
                show(path),
                crate::process::user_name(meta.uid())
            ));
            fixes.push(format!(
                "use a home of your own (--home), not {}",
                show(path)
            ));
        }
        if meta.mode() & bad_bits != 0 {
            evidence.push(format!("{} has mode {:o}", show(path), meta.mode() & 0o777));
            fixes.push(format!("chmod {mode} {}", show(path)));
        }
    }
    if evidence.is_empty() {
        return Finding::ok(CHECK, format!("{} and its secrets are private", show(home)));
    }
    Finding {
        check: CHECK,
        status: Status::Problem,
        summary: "the stack's home or secrets are open to other users".into(),
        evidence,
        fix: Some(fixes.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn procs(instances: usize) -> Procs {
        Procs {
            sockets: HashMap::new(),
            inotify_instances: instances,
        }
    }

    #[test]
    fn inotify_warns_above_80_percent_with_the_sysctl() {
        assert_eq!(inotify_limits(&procs(80), Some(100)).status, Status::Ok);
        let f = inotify_limits(&procs(81), Some(100));
        assert_eq!(f.status, Status::Warning);
        assert_eq!(
            f.fix.as_deref(),
            Some("raise the limit: sudo sysctl fs.inotify.max_user_instances=1024")
        );
        assert_eq!(inotify_limits(&procs(1), None).status, Status::Skipped);
    }

    #[test]
    fn this_process_inotify_instance_is_counted() {
        let before = Procs::read().inotify_instances;
        let fd = inotify::Inotify::init();
        assert!(fd.is_ok());
        assert_eq!(Procs::read().inotify_instances, before + 1);
    }
}
