//! Checks of the Ray temp dirs' session folders: shared temp dirs, Ray's fixed ports, stale discovery files.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Finding, Machine, Status, show};
use crate::discovery::{self, DISCOVERY_FILE};
use crate::ray::is_session_name;
use crate::untrusted::Folder;

/// A discovery file rewritten this recently belongs to a live cluster (Ray: every 5 s).
pub const LIVE_WITHIN: Duration = Duration::from_secs(30);
/// A discovery file not rewritten for this long belongs to a dead cluster.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// Ray's fixed default metrics ports (autoscaler, dashboard).
pub const FIXED_PORTS: [u16; 2] = [44217, 44227];

/// One session folder seen in a root.
#[derive(Debug, Clone)]
pub struct Session {
    pub root: PathBuf,
    pub name: String,
    pub owner: u32,
    /// The discovery file's mtime, if it is a regular file.
    pub written: Option<SystemTime>,
}

impl Session {
    fn age(&self) -> Option<Duration> {
        self.written
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }
    pub fn live(&self) -> bool {
        self.age().is_some_and(|a| a <= LIVE_WITHIN)
    }
    fn file(&self) -> PathBuf {
        self.root.join(&self.name).join(DISCOVERY_FILE)
    }
}

/// The session folders of every root (stat only: nothing is opened but folders).
pub fn sessions(roots: &[PathBuf]) -> Vec<Session> {
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
            let regular = nix::sys::stat::SFlag::S_IFREG.bits();
            let kind = nix::sys::stat::SFlag::S_IFMT.bits();
            let written = folder
                .child(&name)
                .ok()
                .flatten()
                .and_then(|s| s.stat(OsStr::new(DISCOVERY_FILE)))
                .filter(|st| st.st_mode & kind == regular)
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

/// Several live sessions in one temp dir, or session folders of several owners.
pub(super) fn shared_temp_dir(m: &Machine) -> Finding {
    const CHECK: &str = "shared_temp_dir";
    let mut by_root: BTreeMap<&Path, Vec<&Session>> = BTreeMap::new();
    for s in &m.sessions {
        by_root.entry(&s.root).or_default().push(s);
    }
    let mut evidence = Vec::new();
    let mut crowded = Vec::new();
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
        if live.len() > 1 || owners.len() > 1 {
            crowded.push(show(root));
        }
    }
    if evidence.is_empty() {
        return Finding::ok(
            CHECK,
            "every Ray temp dir holds at most one live session of one user",
        );
    }
    let next = crowded
        .first()
        .map(|r| format!("{r}_2"))
        .unwrap_or_default();
    Finding::new(
        CHECK,
        Status::Problem,
        "clusters share a Ray temp dir: their discovery files, ports and dashboards get mixed up",
    )
    .with(
        evidence,
        format!(
            "give each cluster its own temp dir: before each `ray start`, run `eval \"$(raywatch env --temp-dir {next})\"` (a fresh folder per cluster), then `ray start --head --temp-dir=\"$RAYWATCH_TEMP_DIR\" --metrics-export-port=\"$RAYWATCH_METRICS_EXPORT_PORT\" --dashboard-port=\"$RAYWATCH_DASHBOARD_PORT\"`"
        ),
    )
}

/// Live clusters listing Ray's fixed ports 44217 / 44227, and who listens there.
pub(super) fn fixed_ports(m: &Machine) -> Finding {
    const CHECK: &str = "fixed_ports";
    let mut evidence = Vec::new();
    for s in m.sessions.iter().filter(|s| s.live()) {
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
            let owner = match m.listeners.holder(addr.ip(), addr.port()) {
                Some(l) => {
                    let session = m
                        .procs
                        .socket_owner(l.inode)
                        .and_then(crate::process::ray_session_of)
                        .map(|s| format!(", session {}", crate::escape::text(&s)))
                        .unwrap_or_default();
                    format!("{}{session}", crate::process::user_name(l.uid))
                }
                None => "nobody listens".into(),
            };
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
    Finding::new(
        CHECK,
        Status::Warning,
        "a cluster uses Ray's fixed metrics ports; a second cluster on this machine collides",
    )
    .with(
        evidence,
        "start clusters with free metrics ports: `eval \"$(raywatch env)\"` before `ray start` (it sets AUTOSCALER_METRIC_PORT and DASHBOARD_METRIC_PORT)",
    )
}

/// Discovery files of dead clusters: not rewritten for over a minute.
pub(super) fn stale_discovery_files(m: &Machine) -> Finding {
    const CHECK: &str = "stale_discovery_files";
    let evidence: Vec<String> = m
        .sessions
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
    Finding::new(
        CHECK,
        Status::Warning,
        format!(
            "{} discovery file(s) of dead clusters (raywatch ignores them; a plain file_sd setup scrapes dead targets)",
            evidence.len()
        ),
    )
    .with(
        evidence,
        "delete the dead sessions' discovery files (rm the paths above)",
    )
}
