//! Filesystem events for the discovery roots: one inotify instance for all of them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc::UnboundedSender;

/// Watches a set of folders (never recursively) and sends the paths of events.
/// When inotify cannot be had (instance or watch limit), it says so and the
/// daemon falls back to frequent rescans.
pub struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    /// Why events are not (fully) available, if they are not.
    pub degraded: Option<String>,
}

const LIMIT_HINT: &str = "raise fs.inotify.max_user_instances / fs.inotify.max_user_watches (sysctl), or stop other watchers of this user";

/// Whether an event can change what raywatch discovers. Reads (open, access,
/// close without writing) and metadata changes do not, and must be ignored:
/// raywatch's own reads of a folder or file would otherwise wake it again, forever.
pub fn relevant(kind: &notify::EventKind) -> bool {
    use notify::EventKind::*;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        Create(_) | Remove(_) => true,
        Modify(ModifyKind::Metadata(_)) => false,
        Modify(_) => true,
        Access(AccessKind::Close(AccessMode::Write)) => true,
        Access(_) => false,
        Any | Other => true,
    }
}

impl Watcher {
    pub fn new(tx: UnboundedSender<PathBuf>) -> Watcher {
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if relevant(&ev.kind) => {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("filesystem watch error: {e}"),
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => Watcher {
                inner: Some(w),
                watched: BTreeSet::new(),
                degraded: None,
            },
            Err(e) => {
                let msg = format!(
                    "cannot create an inotify instance ({e}); rescanning every 2 s instead; {LIMIT_HINT}"
                );
                tracing::warn!("{msg}");
                Watcher {
                    inner: None,
                    watched: BTreeSet::new(),
                    degraded: Some(msg),
                }
            }
        }
    }

    /// Whether the daemon must rescan often because events may be missing.
    pub fn needs_rescan(&self) -> bool {
        self.degraded.is_some()
    }

    pub fn watched(&self) -> &BTreeSet<PathBuf> {
        &self.watched
    }

    /// Adds one folder to the watched set (a new session folder).
    pub fn add(&mut self, path: &std::path::Path) {
        let mut desired = self.watched.clone();
        desired.insert(path.to_path_buf());
        self.set(&desired);
    }

    /// Makes the watched set equal to `desired`.
    pub fn set(&mut self, desired: &BTreeSet<PathBuf>) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        let gone: Vec<PathBuf> = self.watched.difference(desired).cloned().collect();
        for p in gone {
            let _ = inner.unwatch(&p);
            self.watched.remove(&p);
        }
        let mut limit_hit = None;
        for p in desired.difference(&self.watched.clone()) {
            match inner.watch(p, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(p.clone());
                }
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                    limit_hit = Some(format!(
                        "the inotify watch limit was reached at {} folders; rescanning every 2 s instead; {LIMIT_HINT}",
                        self.watched.len()
                    ));
                    break;
                }
                // Gone between the scan and now, or not ours to read: the rescan covers it.
                Err(e) => tracing::debug!("cannot watch {}: {e}", p.display()),
            }
        }
        if let Some(msg) = limit_hit {
            if self.degraded.is_none() {
                tracing::warn!("{msg}");
            }
            self.degraded = Some(msg);
        } else if self
            .degraded
            .as_deref()
            .is_some_and(|d| d.contains("watch limit"))
        {
            self.degraded = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::EventKind;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RenameMode,
    };

    #[test]
    fn reads_do_not_wake_the_daemon() {
        assert!(!relevant(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!relevant(&EventKind::Access(AccessKind::Read)));
        assert!(!relevant(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::AccessTime
        ))));
        assert!(relevant(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(relevant(&EventKind::Create(CreateKind::File)));
        assert!(relevant(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(relevant(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
    }
}
