//! Finding Ray sessions and reading their discovery files, which are untrusted input.
//!
//! Ray ≥ 2.5x writes `<session_dir>/prom_metrics_service_discovery.json` and a
//! symlink at `<temp_dir>/prom_metrics_service_discovery.json` that follows the
//! last writer; older Ray writes a regular file at the temp-dir level. raywatch
//! reads the session-scoped file whenever there is one and never follows the
//! temp-dir symlink, so two clusters sharing a temp dir stay two clusters.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

/// The file Ray's head rewrites every 5 s.
pub const DISCOVERY_FILE: &str = "prom_metrics_service_discovery.json";
/// A discovery file lists one endpoint per node plus two; nothing legitimate is this large.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// More targets than any Ray cluster has nodes.
pub const MAX_TARGETS: usize = 4096;

/// Why a discovery file was not followed. Shown in `status` and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "is a symbolic link; raywatch reads only regular files (attach the file it points to if you trust it)"
    )]
    Symlink,
    #[error("is a directory where a regular file was expected")]
    Directory,
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error(
        "is owned by uid {uid} ({user}), not by this stack's user; run `raywatch up --trust-uid {uid}` to follow it"
    )]
    Untrusted { uid: u32, user: String },
    #[error("is not valid discovery JSON ({0})")]
    Parse(String),
    #[error("lists target {target:?}, which is not host:port ({why})")]
    BadTarget { target: String, why: String },
    #[error("lists {0} targets, over the limit of {MAX_TARGETS}")]
    TooManyTargets(usize),
    #[error("cannot be read ({0})")]
    Io(String),
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

/// Reads a discovery file the safe way: no symlinks, regular files only, bounded
/// size, owner checked, strict JSON, every target `host:port`.
/// `Ok(None)` means the file does not exist (any more).
pub fn read_listing(
    path: &Path,
    trusted: impl Fn(u32) -> bool,
) -> Result<Option<Listing>, Rejection> {
    let Some((bytes, meta)) = read_checked(path, MAX_FILE_BYTES, &trusted)? else {
        return Ok(None);
    };
    let targets = parse_listing(&bytes)?;
    Ok(Some(Listing {
        targets,
        mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        uid: meta.uid(),
    }))
}

/// Reads an untrusted file with the same checks as a discovery file (regular,
/// not a symlink, owner trusted, at most `max` bytes), returning its bytes.
pub fn read_bounded(
    path: &Path,
    max: u64,
    trusted: impl Fn(u32) -> bool,
) -> Result<Option<Vec<u8>>, Rejection> {
    Ok(read_checked(path, max, &trusted)?.map(|(b, _)| b))
}

fn read_checked(
    path: &Path,
    max: u64,
    trusted: &dyn Fn(u32) -> bool,
) -> Result<Option<(Vec<u8>, fs::Metadata)>, Rejection> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Err(Rejection::Symlink),
        Err(e) => return Err(Rejection::Io(e.to_string())),
    };
    let meta = file.metadata().map_err(|e| Rejection::Io(e.to_string()))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(Rejection::Directory);
    }
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "a special file"
        };
        return Err(Rejection::NotRegular(kind));
    }
    if !trusted(meta.uid()) {
        return Err(Rejection::Untrusted {
            uid: meta.uid(),
            user: crate::procfs::user_name(meta.uid()),
        });
    }
    if meta.len() > max {
        return Err(Rejection::TooLarge {
            size: meta.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Rejection::Io(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(Rejection::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(Some((bytes, meta)))
}

fn libc_flags() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC
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
        return Err(Rejection::TooManyTargets(total));
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
        if parent_name.starts_with("session_") {
            Found {
                file: file.to_path_buf(),
                temp_dir: parent.parent().unwrap_or(Path::new("/")).to_path_buf(),
                session_dir: Some(parent),
                session: parent_name,
            }
        } else {
            let session = fs::read_link(parent.join("session_latest"))
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
}

fn is_session_name(name: &str) -> bool {
    name.starts_with("session_") && name != "session_latest"
}

/// Scans one Ray temp dir: every `session_*` folder (not the `session_latest`
/// link) and, for older Ray, a regular discovery file at the top.
pub fn scan_root(root: &Path) -> RootScan {
    let mut scan = RootScan::default();
    let Ok(entries) = fs::read_dir(root) else {
        return scan;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !is_session_name(&name) {
            continue;
        }
        let Ok(ft) = entry.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let dir = entry.path();
        let file = dir.join(DISCOVERY_FILE);
        if fs::symlink_metadata(&file).is_ok() {
            scan.found.push(Found::for_file(&file));
        }
        scan.session_dirs.push(dir);
    }
    let legacy = root.join(DISCOVERY_FILE);
    if let Ok(meta) = fs::symlink_metadata(&legacy) {
        // A symlink here is Ray ≥ 2.5x pointing at the last writer's session file.
        if !meta.file_type().is_symlink() {
            scan.found.push(Found::for_file(&legacy));
        }
    }
    scan.found.sort();
    scan.session_dirs.sort();
    scan
}

/// Folders whose `ray*` children are Ray temp dirs by default: /tmp and `$RAY_TMPDIR`.
pub fn default_root_parents() -> Vec<PathBuf> {
    let mut parents = vec![PathBuf::from("/tmp")];
    if let Some(dir) = std::env::var_os("RAY_TMPDIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if !parents.contains(&dir) {
            parents.push(dir);
        }
    }
    parents
}

/// The `ray*` folders directly inside `parent`.
pub fn roots_in(parent: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(entries) = fs::read_dir(parent) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("ray") && entry.path().is_dir() {
                roots.push(entry.path());
            }
        }
    }
    roots.sort();
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

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
