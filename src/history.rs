//! The cluster history: every cluster's life (first seen, last seen, who, where,
//! why it ended) in `<home>/history.jsonl`, for `raywatch history`, `open` and `export`.
//!
//! The file is append-only JSON lines, one [`Record`] per line, written by the
//! daemon alone (it holds the home's daemon lock) with `O_APPEND` and an fsync
//! per batch. A line a `kill -9` tore is cut off when the daemon opens the file
//! again, and skipped by readers meanwhile. While clusters live, an
//! [`Record::Alive`] heartbeat every [`HEARTBEAT`] keeps their last-seen time
//! within that bound across a `kill -9` of the daemon. At [`FILE_LIMIT`] the
//! file is rotated: the old one becomes `history.jsonl.1` (one previous file is
//! kept) and the new one starts with one [`Record::Entry`] per cluster, so no
//! cluster is lost by rotation; ended clusters older than the retention, or
//! beyond [`MAX_ENDED`], are dropped then.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The file is rotated when an append would take it past this size.
pub const FILE_LIMIT: u64 = 8 << 20;
/// How often live clusters are recorded as still alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// At most this many ended clusters survive a rotation (the newest).
pub const MAX_ENDED: usize = 10_000;
/// Readers refuse files larger than this (a file raywatch did not write).
const READ_LIMIT: u64 = 4 * FILE_LIMIT;

/// Who and where a cluster is: what `history` shows besides the times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable per cluster (discovery file and session): the key of its records.
    pub id: String,
    /// Its `ray_io_cluster` label.
    pub name: String,
    pub session: String,
    #[serde(default)]
    pub session_dir: Option<PathBuf>,
    pub temp_dir: PathBuf,
    pub discovery_file: PathBuf,
    pub user: String,
    /// The `ray_host` label of this stack.
    pub host: String,
    /// "watch" or "attach".
    pub source: String,
    #[serde(default)]
    pub slurm_job_id: Option<String>,
    #[serde(default)]
    pub slurm_job_name: Option<String>,
}

/// One cluster's whole history, as `raywatch history --json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub cluster: Identity,
    pub first_seen_unix: f64,
    pub last_seen_unix: f64,
    /// When raywatch found it ended (None while it lives, or was live when
    /// raywatch last looked).
    #[serde(default)]
    pub ended_unix: Option<f64>,
    #[serde(default)]
    pub end_reason: Option<String>,
    /// Nodes (metrics endpoints) the cluster stopped listing while it lived,
    /// oldest first, at most [`crate::registry::MAX_LOST`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes_lost: Vec<NodeLost>,
}

/// A node a live cluster lost: its endpoint, and when raywatch saw it go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeLost {
    pub node: String,
    pub at_unix: f64,
}

impl Entry {
    pub fn ended(&self) -> bool {
        self.ended_unix.is_some()
    }

    /// Whether the loss of `node` at `t` (to the millisecond) is recorded.
    pub fn knows_loss(&self, node: &str, t: f64) -> bool {
        self.nodes_lost
            .iter()
            .any(|l| l.node == node && (l.at_unix - t).abs() < 1e-3)
    }
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    /// A cluster seen live: for the first time, again after it ended, or with
    /// a changed identity (renamed, its Slurm job found).
    Seen {
        t: f64,
        #[serde(flatten)]
        cluster: Identity,
    },
    /// Heartbeat: these clusters were live at `t`.
    Alive { t: f64, ids: Vec<String> },
    /// A cluster ended at `t`; it was last seen alive at `last_seen`.
    Ended {
        t: f64,
        id: String,
        last_seen: f64,
        reason: String,
    },
    /// A live cluster stopped listing `node` at `t` (a worker died or left).
    NodeLost { t: f64, id: String, node: String },
    /// A cluster's whole entry, written when the file is rotated.
    Entry(Entry),
}

/// Every cluster the history knows, by id, with how the reading went.
#[derive(Debug, Default)]
pub struct History {
    pub entries: BTreeMap<String, Entry>,
    /// Lines that did not parse (a torn last line, or damage): skipped.
    pub skipped_lines: usize,
}

impl History {
    /// Applies one record.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Seen { t, cluster } => match self.entries.get_mut(&cluster.id) {
                Some(e) => {
                    if e.ended() {
                        // Live again (raywatch had lost it, e.g. while paused).
                        e.ended_unix = None;
                        e.end_reason = None;
                    }
                    e.last_seen_unix = e.last_seen_unix.max(t);
                    e.cluster = cluster;
                }
                None => {
                    self.entries.insert(
                        cluster.id.clone(),
                        Entry {
                            cluster,
                            first_seen_unix: t,
                            last_seen_unix: t,
                            ended_unix: None,
                            end_reason: None,
                            nodes_lost: Vec::new(),
                        },
                    );
                }
            },
            Record::Alive { t, ids } => {
                for id in ids {
                    if let Some(e) = self.entries.get_mut(&id)
                        && !e.ended()
                    {
                        e.last_seen_unix = e.last_seen_unix.max(t);
                    }
                }
            }
            Record::Ended {
                t,
                id,
                last_seen,
                reason,
            } => {
                if let Some(e) = self.entries.get_mut(&id) {
                    e.ended_unix = Some(t);
                    e.end_reason = Some(reason);
                    e.last_seen_unix = last_seen.max(e.first_seen_unix);
                }
            }
            Record::NodeLost { t, id, node } => {
                if let Some(e) = self.entries.get_mut(&id)
                    && !e.knows_loss(&node, t)
                {
                    e.nodes_lost.push(NodeLost { node, at_unix: t });
                    let excess = e.nodes_lost.len().saturating_sub(crate::registry::MAX_LOST);
                    e.nodes_lost.drain(..excess);
                }
            }
            Record::Entry(e) => {
                self.entries.insert(e.cluster.id.clone(), e);
            }
        }
    }

    /// Reads `history.jsonl.1`, then `history.jsonl`, of `home`'s history
    /// file `path`; missing files are an empty history.
    pub fn load(path: &Path) -> Result<History> {
        let mut h = History::default();
        for p in [previous(path), path.to_path_buf()] {
            let bytes = match read_bounded(&p)? {
                Some(b) => b,
                None => continue,
            };
            for line in bytes.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<Record>(line) {
                    Ok(r) => h.apply(r),
                    Err(_) => h.skipped_lines += 1,
                }
            }
        }
        Ok(h)
    }

    /// The entries, oldest first.
    pub fn sorted(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by(|a, b| {
            a.first_seen_unix
                .total_cmp(&b.first_seen_unix)
                .then_with(|| a.cluster.id.cmp(&b.cluster.id))
        });
        v
    }

    /// The newest entry named `name` (names are reused by later clusters of
    /// the same temp dir), or the one of that `session` when given.
    pub fn find(&self, name: &str, session: Option<&str>) -> Option<&Entry> {
        self.sorted()
            .into_iter()
            .rev()
            .find(|e| e.cluster.name == name && session.is_none_or(|s| e.cluster.session == s))
    }

    /// What a rotation keeps: every unended entry, and the newest
    /// [`MAX_ENDED`] ended ones last seen within `keep`.
    fn compacted(&self, now: f64, keep: Duration) -> Vec<&Entry> {
        let mut ended: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| e.ended() && now - e.last_seen_unix <= keep.as_secs_f64())
            .collect();
        ended.sort_by(|a, b| b.last_seen_unix.total_cmp(&a.last_seen_unix));
        ended.truncate(MAX_ENDED);
        let mut kept: Vec<&Entry> = self.entries.values().filter(|e| !e.ended()).collect();
        kept.extend(ended);
        kept.sort_by(|a, b| a.first_seen_unix.total_cmp(&b.first_seen_unix));
        kept
    }
}

/// Where the previous (rotated) file is.
pub fn previous(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Reads a history file without following a symlink, up to [`READ_LIMIT`].
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot inspect {}", path.display()))?;
    anyhow::ensure!(
        meta.is_file(),
        "{} is not a regular file; move it away",
        path.display()
    );
    anyhow::ensure!(
        meta.len() <= READ_LIMIT,
        "{} is {} bytes, more than raywatch ever writes ({READ_LIMIT}); move it away",
        path.display(),
        meta.len()
    );
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(READ_LIMIT)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(bytes))
}

pub use crate::clock::unix;

/// The daemon's writer: the history as read at start, kept current, and the
/// file appended to.
pub struct HistoryLog {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    limit: u64,
    /// Ended clusters last seen longer ago than this are dropped at rotation.
    pub keep: Duration,
    pub history: History,
}

impl HistoryLog {
    /// Opens (or creates, 0600) the history file, reads it, and cuts off a
    /// line a killed writer left unfinished, so the next append starts on a
    /// line of its own.
    pub fn open(path: &Path, keep: Duration) -> Result<HistoryLog> {
        HistoryLog::open_with_limit(path, keep, FILE_LIMIT)
    }

    pub fn open_with_limit(path: &Path, keep: Duration, limit: u64) -> Result<HistoryLog> {
        let history = History::load(path)?;
        let file = open_append(path)?;
        let mut size = file
            .metadata()
            .with_context(|| format!("cannot inspect {}", path.display()))?
            .len();
        if size > 0 {
            let bytes = read_bounded(path)?.unwrap_or_default();
            let keep_len = bytes
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i as u64 + 1)
                .unwrap_or(0);
            if keep_len < size {
                tracing::warn!(
                    "{}: cutting off an unfinished last line ({} bytes) a killed daemon left",
                    path.display(),
                    size - keep_len
                );
                file.set_len(keep_len)
                    .and_then(|()| file.sync_data())
                    .with_context(|| format!("cannot truncate {}", path.display()))?;
                size = keep_len;
            }
        }
        Ok(HistoryLog {
            path: path.to_path_buf(),
            file,
            size,
            limit,
            keep,
            history,
        })
    }

    /// Applies `records` and appends them in one write and one fsync; rotates
    /// first when they would take the file past its limit.
    pub fn append(&mut self, records: Vec<Record>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in &records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        for r in records {
            self.history.apply(r);
        }
        if self.size + buf.len() as u64 > self.limit {
            // The compacted file holds these records' effect already.
            return self.rotate();
        }
        self.file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot append to {}", self.path.display()))?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Starts a new file holding one entry per kept cluster; the old one
    /// becomes the previous file. A kill at any point leaves a readable pair.
    fn rotate(&mut self) -> Result<()> {
        let now = unix(SystemTime::now());
        let mut buf = Vec::new();
        for e in self.history.compacted(now, self.keep) {
            serde_json::to_writer(&mut buf, &Record::Entry(e.clone()))?;
            buf.push(b'\n');
        }
        let dir = self
            .path
            .parent()
            .with_context(|| format!("{} has no folder", self.path.display()))?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staged = crate::atomic::stage(dir, &name, &buf, 0o600)?;
        fs_err::rename(&self.path, previous(&self.path))?;
        staged.commit(&self.path)?;
        self.file = open_append(&self.path)?;
        self.size = buf.len() as u64;
        // What was dropped is gone from memory too.
        let kept: std::collections::BTreeSet<String> = self
            .history
            .compacted(now, self.keep)
            .iter()
            .map(|e| e.cluster.id.clone())
            .collect();
        self.history.entries.retain(|id, _| kept.contains(id));
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open {} for appending", path.display()))
}

/// A cluster's history id: a short hash of its discovery file and session.
pub fn cluster_id(discovery_file: &Path, session: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(discovery_file.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(session.as_bytes());
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Unix time as `2026-11-27T13:26:35Z`.
pub fn when(t: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses `--since` (a duration back from now: `7d`, `12h`), into a Unix time.
pub fn since(d: Duration) -> f64 {
    unix(SystemTime::now()) - d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: &str, name: &str) -> Identity {
        Identity {
            id: id.into(),
            name: name.into(),
            session: format!("session_{id}"),
            session_dir: None,
            temp_dir: "/tmp/ray_x".into(),
            discovery_file: "/tmp/ray_x/f.json".into(),
            user: "alice".into(),
            host: "node-a".into(),
            source: "watch".into(),
            slurm_job_id: None,
            slurm_job_name: None,
        }
    }

    fn seen(t: f64, id: &str) -> Record {
        Record::Seen {
            t,
            cluster: ident(id, &format!("c-{id}")),
        }
    }

    #[test]
    fn a_cluster_is_listed_once_with_its_first_and_last_seen_and_end() {
        let mut h = History::default();
        h.apply(seen(100.0, "a"));
        h.apply(Record::Alive {
            t: 110.0,
            ids: vec!["a".into()],
        });
        h.apply(seen(115.0, "a"));
        h.apply(Record::Ended {
            t: 140.0,
            id: "a".into(),
            last_seen: 118.0,
            reason: "gone".into(),
        });
        // A heartbeat after the end does not move last seen.
        h.apply(Record::Alive {
            t: 150.0,
            ids: vec!["a".into()],
        });
        assert_eq!(h.entries.len(), 1);
        let e = &h.entries["a"];
        assert_eq!(
            (e.first_seen_unix, e.last_seen_unix, e.ended_unix),
            (100.0, 118.0, Some(140.0))
        );
        assert_eq!(e.end_reason.as_deref(), Some("gone"));
    }

    #[test]
    fn records_round_trip_as_one_json_object_per_line() {
        for r in [
            seen(1.5, "a"),
            Record::Alive {
                t: 2.0,
                ids: vec!["a".into(), "b".into()],
            },
            Record::Ended {
                t: 3.0,
                id: "a".into(),
                last_seen: 2.5,
                reason: "its GCS refuses connections".into(),
            },
            Record::Entry(Entry {
                cluster: ident("b", "x"),
                first_seen_unix: 1.0,
                last_seen_unix: 2.0,
                ended_unix: None,
                end_reason: None,
                nodes_lost: Vec::new(),
            }),
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn a_torn_last_line_is_skipped_by_readers_and_cut_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut log = HistoryLog::open(&path, Duration::from_secs(86400)).unwrap();
        log.append(vec![seen(1.0, "a")]).unwrap();
        drop(log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"event":"seen","t":2.0,"id":"b","na"#)
            .unwrap();
        let h = History::load(&path).unwrap();
        assert_eq!((h.entries.len(), h.skipped_lines), (1, 1));
        let mut log = HistoryLog::open(&path, Duration::from_secs(86400)).unwrap();
        log.append(vec![seen(3.0, "c")]).unwrap();
        let h = History::load(&path).unwrap();
        assert_eq!((h.entries.len(), h.skipped_lines), (2, 0));
    }

    #[test]
    fn rotation_keeps_every_cluster_and_bounds_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let limit = 4096;
        let mut log =
            HistoryLog::open_with_limit(&path, Duration::from_secs(1 << 40), limit).unwrap();
        let now = unix(SystemTime::now());
        for i in 0..5 {
            log.append(vec![seen(now + i as f64, &format!("c{i}"))])
                .unwrap();
        }
        for i in 0..500 {
            log.append(vec![Record::Alive {
                t: now + 10.0 + i as f64,
                ids: (0..5).map(|j| format!("c{j}")).collect(),
            }])
            .unwrap();
        }
        assert!(previous(&path).exists(), "rotated at least once");
        for p in [&path, &previous(&path)] {
            assert!(fs_err::metadata(p).unwrap().len() <= limit);
        }
        let h = History::load(&path).unwrap();
        assert_eq!(h.entries.len(), 5);
        assert_eq!(h.entries["c0"].first_seen_unix, now);
        assert_eq!(h.entries["c0"].last_seen_unix, now + 509.0);
        assert_eq!(h.entries, log.history.entries);
    }

    #[test]
    fn rotation_drops_ended_clusters_past_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut log = HistoryLog::open_with_limit(&path, Duration::from_secs(3600), 2048).unwrap();
        let now = unix(SystemTime::now());
        log.append(vec![
            seen(now - 9000.0, "old"),
            Record::Ended {
                t: now - 8000.0,
                id: "old".into(),
                last_seen: now - 8000.0,
                reason: "x".into(),
            },
            seen(now - 10.0, "new"),
        ])
        .unwrap();
        for i in 0..100 {
            log.append(vec![Record::Alive {
                t: now + i as f64,
                ids: vec!["new".into()],
            }])
            .unwrap();
        }
        let h = History::load(&path).unwrap();
        assert!(h.entries.contains_key("new"));
        assert!(!log.history.entries.contains_key("old"));
    }

    #[test]
    fn the_newest_cluster_of_a_reused_name_is_found() {
        let mut h = History::default();
        h.apply(Record::Seen {
            t: 1.0,
            cluster: ident("a", "alice-ray"),
        });
        h.apply(Record::Seen {
            t: 5.0,
            cluster: ident("b", "alice-ray"),
        });
        assert_eq!(h.find("alice-ray", None).unwrap().cluster.id, "b");
        assert_eq!(
            h.find("alice-ray", Some("session_a")).unwrap().cluster.id,
            "a"
        );
        assert!(h.find("bob", None).is_none());
    }
}
