//! Finding Ray sessions and reading their discovery files, which are untrusted input.
//!
//! Ray ≥ 2.5x writes `<session_dir>/prom_metrics_service_discovery.json` and a
//! symlink at `<temp_dir>/prom_metrics_service_discovery.json` that follows the
//! last writer; older Ray writes a regular file at the temp-dir level. raywatch
//! reads the session-scoped file whenever there is one and never follows the
//! temp-dir symlink, so two clusters sharing a temp dir stay two clusters.

use fs_err as fs;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

pub use crate::ray::DISCOVERY_FILE;
use crate::ray::is_session_name;
/// A discovery file lists one endpoint per node plus two; nothing legitimate is this large.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// More targets than any Ray cluster has nodes.
pub const MAX_TARGETS: usize = 4096;

use crate::untrusted::{Folder, Kind};

/// Why a discovery file (or the folder on its way) was not read. Shown in
/// `status` and the log, with what to do when the user can do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Refused by the reader for untrusted files.
    #[error("{}", read_advice(.0))]
    Read(crate::untrusted::Rejection),
    #[error("is not valid discovery JSON ({0})")]
    Parse(String),
    #[error("lists target {target:?}, which is not host:port ({why})")]
    BadTarget { target: String, why: String },
    #[error("lists {count} targets, over the limit of {max}")]
    TooManyTargets { count: usize, max: usize },
}

impl Rejection {
    /// Whether the refusal is about raywatch's own resources, not the file.
    pub fn is_transient(&self) -> bool {
        matches!(self, Rejection::Read(r) if r.is_transient())
    }
}

impl From<crate::untrusted::Rejection> for Rejection {
    fn from(r: crate::untrusted::Rejection) -> Rejection {
        Rejection::Read(r)
    }
}

/// The reader's refusal, with the advice that holds for a Ray folder or file.
fn read_advice(r: &crate::untrusted::Rejection) -> String {
    use crate::untrusted::Rejection as R;
    match r {
        R::Symlink => format!("{r} (attach the target if you trust it)"),
        R::Untrusted { uid, .. } => {
            format!("{r}; run `raywatch up --trust-uid {uid}` to follow it")
        }
        r => r.to_string(),
    }
}

/// The useful content of a valid discovery file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Distinct `host:port` endpoints, in file order.
    pub targets: Vec<String>,
    pub mtime: SystemTime,
    pub uid: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    targets: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
}

/// Reads a discovery file the safe way (see [`crate::untrusted`]): no symlinks,
/// regular files only, bounded size, owner checked, strict JSON, every target
/// `host:port`. A session-scoped file is read through its session folder, which
/// must be a real folder owned by a trusted uid. `Ok(None)`: the file (or its
/// session folder) does not exist.
pub fn read_listing(
    path: &Path,
    trusted: impl Fn(u32) -> bool,
) -> Result<Option<Listing>, Rejection> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(crate::untrusted::Rejection::Io("not a file path".into()).into());
    };
    let Some(folder) = Folder::open(parent)? else {
        return Ok(None);
    };
    if is_session_dir_name(parent) && !trusted(folder.uid) {
        return Err(crate::untrusted::Rejection::Untrusted {
            uid: folder.uid,
            user: crate::process::user_name(folder.uid),
        }
        .into());
    }
    let Some(contents) = folder.read(name, MAX_FILE_BYTES, &trusted)? else {
        return Ok(None);
    };
    let targets = parse_listing(&contents.bytes)?;
    Ok(Some(Listing {
        targets,
        mtime: contents.mtime,
        uid: contents.uid,
    }))
}

fn is_session_dir_name(dir: &Path) -> bool {
    dir.file_name()
        .is_some_and(|n| is_session_name(&n.to_string_lossy()))
}

/// Parses file_sd JSON strictly and returns its distinct targets.
pub fn parse_listing(bytes: &[u8]) -> Result<Vec<String>, Rejection> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| Rejection::Parse(format!("not UTF-8: {e}")))?;
    let groups: Vec<Group> =
        serde_json::from_str(text).map_err(|e| Rejection::Parse(e.to_string()))?;
    let mut targets: Vec<String> = Vec::new();
    let total: usize = groups.iter().map(|g| g.targets.len()).sum();
    if total > MAX_TARGETS {
        return Err(Rejection::TooManyTargets {
            count: total,
            max: MAX_TARGETS,
        });
    }
    for group in groups {
        for target in group.targets {
            validate_target(&target).map_err(|why| Rejection::BadTarget {
                target: target.clone(),
                why,
            })?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    Ok(targets)
}

/// Accepts `host:port` (IPv4, hostname, or `[IPv6]`), port 1–65535, nothing else.
pub fn validate_target(t: &str) -> Result<(), String> {
    if t.len() > 300 {
        return Err("longer than 300 characters".into());
    }
    if t.contains("://") {
        return Err("has a URL scheme".into());
    }
    if t.contains('/') || t.contains('?') || t.contains('#') {
        return Err("has a path".into());
    }
    let (host, port) = t.rsplit_once(':').ok_or("has no :port")?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("port {port:?} is not a number in 1-65535")),
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or("unclosed [ in IPv6 address")?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("{inner:?} is not an IPv6 address"))?;
        return Ok(());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid_name {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(())
}

/// One discovery file found on disk, with what it says about its cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub file: PathBuf,
    /// The session folder, when the file is session-scoped (Ray ≥ 2.5x).
    pub session_dir: Option<PathBuf>,
    pub temp_dir: PathBuf,
    /// The session name (`session_<date>_<pid>`), as Ray puts in `SessionName`; may be empty.
    pub session: String,
}

impl Found {
    /// Describes a discovery file at `file`, wherever it is.
    pub fn for_file(file: &Path) -> Found {
        let parent = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let parent_name = parent
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_session_name(&parent_name) {
            Found {
                file: file.to_path_buf(),
                temp_dir: parent.parent().unwrap_or(Path::new("/")).to_path_buf(),
                session_dir: Some(parent),
                session: parent_name,
            }
        } else {
            let session = fs::read_link(parent.join(crate::ray::SESSION_LATEST))
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            Found {
                file: file.to_path_buf(),
                session_dir: None,
                temp_dir: parent,
                session,
            }
        }
    }
}

/// What a scan of one temp-dir root saw.
#[derive(Debug, Default)]
pub struct RootScan {
    pub found: Vec<Found>,
    /// Session folders to watch for their discovery file appearing or changing.
    pub session_dirs: Vec<PathBuf>,
    /// Session folders of untrusted owners, left alone (neither read nor watched).
    pub foreign: usize,
    /// Why the root itself was not scanned (a symlink, not a folder).
    pub refused: Option<Rejection>,
}

/// Whether the entry `name` of an open root is a session folder raywatch
/// follows: a real folder (not a link) owned by a trusted uid.
pub fn trusted_session(
    root: &Folder,
    name: &OsStr,
    kind: Kind,
    trusted: &dyn Fn(u32) -> bool,
) -> bool {
    if !matches!(kind, Kind::Dir | Kind::Unknown) || !is_session_name(&name.to_string_lossy()) {
        return false;
    }
    root.stat(name)
        .is_some_and(|st| crate::untrusted::is_dir(&st) && trusted(st.st_uid))
}

/// Scans one Ray temp dir: every `session_*` folder that is a real folder of a
/// trusted owner (not the `session_latest` link) and, for older Ray, a discovery
/// file at the top. The root itself may be shared (a common `/tmp/ray`), but is
/// never entered through a link.
pub fn scan_root(root: &Path, trusted: &dyn Fn(u32) -> bool) -> RootScan {
    let mut scan = RootScan::default();
    let folder = match Folder::open(root) {
        Ok(Some(f)) => f,
        Ok(None) => return scan,
        Err(r) => {
            scan.refused = Some(r.into());
            return scan;
        }
    };
    for (name, kind) in folder.entries() {
        if name == DISCOVERY_FILE {
            // A symlink here is Ray ≥ 2.5x pointing at the last writer's session file.
            if kind != Kind::Symlink {
                scan.found.push(Found::for_file(&root.join(&name)));
            }
            continue;
        }
        if !is_session_name(&name.to_string_lossy()) {
            continue;
        }
        if !trusted_session(&folder, &name, kind, trusted) {
            scan.foreign += 1;
            continue;
        }
        let dir = root.join(&name);
        let file = dir.join(DISCOVERY_FILE);
        if fs::symlink_metadata(&file).is_ok() {
            scan.found.push(Found::for_file(&file));
        }
        scan.session_dirs.push(dir);
    }
    scan.found.sort();
    scan.session_dirs.sort();
    scan
}

/// Whether the entry `name` of a default root parent is a Ray temp dir to watch:
/// a real folder named `ray*` owned by a trusted uid, or Ray's own default
/// `ray` (commonly shared by everyone on a machine). Other users' `ray*` folders
/// cost nothing: they are neither watched nor scanned.
pub fn is_default_root(parent: &Folder, name: &OsStr, trusted: &dyn Fn(u32) -> bool) -> bool {
    let text = name.to_string_lossy();
    if !crate::ray::is_temp_dir_name(&text) {
        return false;
    }
    parent.stat(name).is_some_and(|st| {
        crate::untrusted::is_dir(&st)
            && (trusted(st.st_uid) || text == crate::ray::DEFAULT_TEMP_DIR_NAME)
    })
}

/// The Ray temp dirs directly inside `parent` (see [`is_default_root`]).
pub fn roots_in(parent: &Path, trusted: &dyn Fn(u32) -> bool) -> Vec<PathBuf> {
    let Ok(Some(folder)) = Folder::open(parent) else {
        return Vec::new();
    };
    let mut roots: Vec<PathBuf> = folder
        .entries()
        .into_iter()
        .filter(|(n, k)| {
            matches!(k, Kind::Dir | Kind::Unknown) && is_default_root(&folder, n, trusted)
        })
        .map(|(n, _)| parent.join(n))
        .collect();
    roots.sort();
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_discovery_refusal_advises_trusting_the_owner() {
        use crate::untrusted::Rejection as Read;
        let foreign = Read::Untrusted {
            uid: 1234,
            user: "someone".into(),
        };
        // The generic reader's words hold for a credential file too: no --trust-uid.
        assert!(!foreign.to_string().contains("--trust-uid"), "{foreign}");
        let discovery = Rejection::from(foreign).to_string();
        assert_eq!(
            discovery,
            "is owned by uid 1234 (someone), not by this stack's user; run `raywatch up --trust-uid 1234` to follow it"
        );
        assert!(!Read::Symlink.to_string().contains("attach"));
        assert!(
            Rejection::from(Read::Symlink)
                .to_string()
                .contains("attach the target")
        );
        assert!(Rejection::from(Read::Exhausted("EMFILE".into())).is_transient());
    }

    #[test]
    fn targets_must_be_host_port() {
        for ok in ["127.0.0.1:8080", "node-1.example:9", "[::1]:44217", "a_b:1"] {
            assert_eq!(validate_target(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "http://127.0.0.1:80",
            "file:///etc/passwd",
            "127.0.0.1:80/metrics",
            ":80",
            "[::1:80",
            "ho st:80",
        ] {
            assert!(validate_target(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parses_ray_format_and_dedupes() {
        let json = br#"[{"labels": {"job": "ray"}, "targets": ["127.0.0.1:1", "127.0.0.1:2"]},
                        {"labels": {"job": "ray"}, "targets": ["127.0.0.1:2"]}]"#;
        assert_eq!(
            parse_listing(json).unwrap(),
            vec!["127.0.0.1:1", "127.0.0.1:2"]
        );
        assert_eq!(parse_listing(b"[]").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn rejects_garbage_strictly() {
        for bad in [
            &b"[{\"targets\": [\"127.0.0.1:1\"]"[..],
            b"hello",
            b"{}",
            b"[{\"targets\": [], \"extra\": 1}]",
            b"[\xff]",
        ] {
            assert!(
                matches!(parse_listing(bad), Err(Rejection::Parse(_))),
                "{bad:?}"
            );
        }
        let deep = "[".repeat(10_000);
        assert!(parse_listing(deep.as_bytes()).is_err());
    }

    #[test]
    fn session_comes_from_the_folder() {
        let f = Found::for_file(Path::new(
            "/tmp/ray_a/session_2026_1/prom_metrics_service_discovery.json",
        ));
        assert_eq!(f.session, "session_2026_1");
        assert_eq!(f.temp_dir, Path::new("/tmp/ray_a"));
        assert_eq!(
            f.session_dir.as_deref(),
            Some(Path::new("/tmp/ray_a/session_2026_1"))
        );
    }
}
