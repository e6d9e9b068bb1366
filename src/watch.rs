//! Filesystem events for the discovery roots: one inotify instance for all of them.
//!
//! The kernel is asked only for what can change what raywatch discovers: an
//! entry created, deleted, renamed in or out, or closed after writing, and a
//! watched folder itself deleted or moved. Opens, reads, closes without
//! writing, in-place writes and metadata changes are never asked for, so
//! raywatch's own reads of a folder or a discovery file (hundreds a second at
//! a thousand clusters) queue no event and wake nothing; a writer's in-place
//! writes cost one event, when it closes the file.
//!
//! Two instances share the folders. The *prompt* one is read on a thread of
//! its own, which hands each event's path to the daemon's event loop at once:
//! roots, their parents, attachments' folders and the session folders of
//! clusters not (yet) live, so a new session's first discovery file is read
//! within milliseconds. The *quiet* one holds the session folders of live
//! clusters, whose events are Ray's rewrite every 5 s; they queue in the
//! kernel, and the daemon drains them once a second ([`Watcher::drain_quiet`]), so a thousand idle clusters cost
//! one wake-up a second instead of two hundred.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc::UnboundedSender;

const LIMIT_HINT: &str = "raise fs.inotify.max_user_instances / fs.inotify.max_user_watches (sysctl), or stop other watchers of this user";

/// The events raywatch asks the kernel for, on folders only, never through a link.
pub fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
}

/// The path sent when the kernel's event queue overflowed: events were lost,
/// and everything must be looked at again.
pub fn overflow_marker() -> PathBuf {
    PathBuf::new()
}

/// Watches a set of folders (never recursively) and sends the paths of events.
/// When inotify cannot be had (instance or watch limit), it says so and the
/// daemon falls back to frequent rescans.
pub struct Watcher {
    inner: Option<Inner>,
    quiet: Option<Quiet>,
    watched: BTreeSet<PathBuf>,
    /// Why events are not (fully) available, if they are not.
    pub degraded: Option<String>,
}

struct Inner {
    watches: Watches,
    /// Each watched folder by its descriptor, shared with the reading thread.
    by_wd: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    /// Set when the reading thread stopped (a read error): events are gone.
    failed: Arc<AtomicBool>,
}

/// The quiet instance: read without blocking, when the daemon asks.
struct Quiet {
    inotify: Inotify,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    buffer: Vec<u8>,
}

impl Quiet {
    fn new() -> Option<Quiet> {
        match Inotify::init() {
            Ok(inotify) => Some(Quiet {
                inotify,
                by_wd: HashMap::new(),
                by_path: HashMap::new(),
                buffer: vec![0u8; 64 * 1024],
            }),
            Err(e) => {
                // Live clusters' folders then stay with the prompt instance.
                tracing::warn!("cannot create a second inotify instance ({e}); {LIMIT_HINT}");
                None
            }
        }
    }
}

impl Watcher {
    pub fn new(tx: UnboundedSender<PathBuf>) -> Watcher {
        match Inotify::init() {
            Ok(inotify) => {
                let by_wd = Arc::new(Mutex::new(HashMap::new()));
                let failed = Arc::new(AtomicBool::new(false));
                let watches = inotify.watches();
                let (map, flag) = (by_wd.clone(), failed.clone());
                let spawned = std::thread::Builder::new()
                    .name("inotify".into())
                    .spawn(move || read_loop(inotify, map, flag, tx));
                if let Err(e) = spawned {
                    return Watcher::without(format!("cannot start the inotify reader ({e})"));
                }
                Watcher {
                    inner: Some(Inner {
                        watches,
                        by_wd,
                        by_path: HashMap::new(),
                        failed,
                    }),
                    quiet: Quiet::new(),
                    watched: BTreeSet::new(),
                    degraded: None,
                }
            }
            Err(e) => Watcher::without(format!("cannot create an inotify instance ({e})")),
        }
    }

    fn without(why: String) -> Watcher {
        let msg = format!("{why}; rescanning every 2 s instead; {LIMIT_HINT}");
        tracing::warn!("{msg}");
        Watcher {
            inner: None,
            quiet: None,
            watched: BTreeSet::new(),
            degraded: Some(msg),
        }
    }

    /// Whether the daemon must rescan often because events may be missing.
    pub fn needs_rescan(&self) -> bool {
        self.degraded.is_some()
            || self
                .inner
                .as_ref()
                .is_some_and(|i| i.failed.load(Ordering::Relaxed))
    }

    pub fn watched(&self) -> &BTreeSet<PathBuf> {
        &self.watched
    }

    /// Adds one folder to the watched set (a new session folder).
    pub fn add(&mut self, path: &Path) {
        if self.watched.contains(path) && !self.dropped(path) {
            return;
        }
        if let Err(msg) = self.watch(path) {
            self.limit_hit(msg);
        }
    }

    /// Makes the watched set equal to `desired`.
    pub fn set(&mut self, desired: &BTreeSet<PathBuf>) {
        if self.inner.is_none() {
            return;
        }
        // Folders whose watch the kernel dropped (they went away) are watched
        // again if they are back.
        let dropped: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|p| self.dropped(p))
            .cloned()
            .collect();
        for p in dropped {
            self.unwatch(&p);
        }
        let gone: Vec<PathBuf> = self.watched.difference(desired).cloned().collect();
        for p in gone {
            self.unwatch(&p);
        }
        let new: Vec<PathBuf> = desired.difference(&self.watched).cloned().collect();
        for p in new {
            if let Err(msg) = self.watch(&p) {
                self.limit_hit(msg);
                return;
            }
        }
        if self
            .degraded
            .as_deref()
            .is_some_and(|d| d.contains("watch limit"))
        {
            self.degraded = None;
        }
    }

    /// Whether the kernel dropped the prompt watch of `path` (the folder went away).
    fn dropped(&self, path: &Path) -> bool {
        if self
            .quiet
            .as_ref()
            .is_some_and(|q| q.by_path.contains_key(path))
        {
            return false;
        }
        let Some(inner) = self.inner.as_ref() else {
            return false;
        };
        match inner.by_path.get(path) {
            Some(wd) => !inner.by_wd.lock().unwrap().contains_key(wd),
            None => true,
        }
    }

    /// Watches one folder; `Err` carries the message when the watch limit was reached.
    fn watch(&mut self, path: &Path) -> Result<(), String> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(());
        };
        let mut by_wd = inner.by_wd.lock().unwrap();
        match inner.watches.add(path, mask()) {
            Ok(wd) => {
                // The kernel gives the same descriptor for a folder watched
                // under two names (a hard-linked path cannot happen for
                // folders, but a re-add after a replace can): the last name wins.
                by_wd.insert(wd.clone(), path.to_path_buf());
                inner.by_path.insert(path.to_path_buf(), wd);
                self.watched.insert(path.to_path_buf());
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => Err(format!(
                "the inotify watch limit was reached at {} folders; rescanning every 2 s instead; {LIMIT_HINT}",
                self.watched.len()
            )),
            // Gone between the scan and now, a link, or not ours to read: the rescan covers it.
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}", path.display());
                Ok(())
            }
        }
    }

    fn unwatch(&mut self, path: &Path) {
        self.watched.remove(path);
        self.unwatch_quiet(path);
        self.unwatch_prompt(path);
    }

    fn unwatch_quiet(&mut self, path: &Path) {
        if let Some(q) = self.quiet.as_mut()
            && let Some(wd) = q.by_path.remove(path)
        {
            if q.by_wd.get(&wd).is_some_and(|p| p == path) {
                q.by_wd.remove(&wd);
            }
            let _ = q.inotify.watches().remove(wd);
        }
    }

    fn unwatch_prompt(&mut self, path: &Path) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        if let Some(wd) = inner.by_path.remove(path) {
            let mut by_wd = inner.by_wd.lock().unwrap();
            if by_wd.get(&wd).is_some_and(|p| p == path) {
                by_wd.remove(&wd);
            }
            // Fails when the folder is already gone (the kernel dropped the watch).
            let _ = inner.watches.remove(wd);
        }
    }

    /// Makes the watched folders in `quiet` (the session folders of live
    /// clusters) quiet, and every other watched folder prompt. A folder is
    /// watched by its new instance before the old one lets it go.
    pub fn set_quiet(&mut self, quiet: &BTreeSet<PathBuf>) {
        let Some(q) = self.quiet.as_ref() else {
            return;
        };
        let to_prompt: Vec<PathBuf> = q
            .by_path
            .keys()
            .filter(|p| !quiet.contains(*p))
            .cloned()
            .collect();
        let to_quiet: Vec<PathBuf> = quiet
            .intersection(&self.watched)
            .filter(|p| !q.by_path.contains_key(*p))
            .cloned()
            .collect();
        for p in to_prompt {
            self.unwatch_quiet(&p);
            if let Err(msg) = self.watch(&p) {
                self.limit_hit(msg);
            }
        }
        for p in to_quiet {
            let q = self.quiet.as_mut().unwrap();
            match q.inotify.watches().add(&p, mask()) {
                Ok(wd) => {
                    q.by_wd.insert(wd.clone(), p.clone());
                    q.by_path.insert(p.clone(), wd);
                    self.unwatch_prompt(&p);
                }
                // Stays prompt: it is still watched, only sooner.
                Err(e) => tracing::debug!("cannot watch {} quietly: {e}", p.display()),
            }
        }
    }

    /// The paths of the quiet folders' events since the last call (without
    /// waiting): events about the folders themselves, and about the entries
    /// whose name is `wanted` (the others, such as a writer's temp file, are
    /// dropped before any path is made).
    /// A path can come more than once; the daemon folds them.
    pub fn drain_quiet(&mut self, wanted: &OsStr) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        let Some(q) = self.quiet.as_mut() else {
            return paths;
        };
        // Bounded: a writer faster than this loop cannot hold the daemon here.
        for _ in 0..64 {
            let events = match q.inotify.read_events(&mut q.buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("cannot read filesystem events ({e}): rescanning");
                    paths.push(overflow_marker());
                    break;
                }
            };
            let mut ignored = Vec::new();
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    paths.push(overflow_marker());
                    continue;
                }
                if event.mask.contains(EventMask::IGNORED) {
                    ignored.push(event.wd.clone());
                }
                if event.name.is_some_and(|n| n != wanted) {
                    continue;
                }
                let Some(dir) = q.by_wd.get(&event.wd) else {
                    continue;
                };
                paths.push(match event.name {
                    Some(name) => dir.join(name),
                    None => dir.clone(),
                });
            }
            for wd in ignored {
                if let Some(p) = q.by_wd.remove(&wd) {
                    q.by_path.remove(&p);
                    self.watched.remove(&p);
                }
            }
        }
        paths
    }

    fn limit_hit(&mut self, msg: String) {
        if self.degraded.is_none() {
            tracing::warn!("{msg}");
        }
        self.degraded = Some(msg);
    }
}

/// Reads events until the daemon stops listening, sending each one's path: the
/// entry's path, or the folder's own for events about the folder.
fn read_loop(
    mut inotify: Inotify,
    by_wd: Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>,
    failed: Arc<AtomicBool>,
    tx: UnboundedSender<PathBuf>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let events = match inotify.read_events_blocking(&mut buffer) {
            Ok(events) => events,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(
                    "filesystem events stopped ({e}); rescanning every 2 s instead; {LIMIT_HINT}"
                );
                failed.store(true, Ordering::Relaxed);
                let _ = tx.send(overflow_marker());
                return;
            }
        };
        let mut paths = Vec::new();
        {
            let mut by_wd = by_wd.lock().unwrap();
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    tracing::debug!("the inotify queue overflowed: rescanning");
                    paths.push(overflow_marker());
                    continue;
                }
                let Some(dir) = by_wd.get(&event.wd) else {
                    continue;
                };
                paths.push(match event.name {
                    Some(name) => dir.join(name),
                    None => dir.clone(),
                });
                // The kernel dropped this watch (the folder went away).
                if event.mask.contains(EventMask::IGNORED) {
                    by_wd.remove(&event.wd);
                }
            }
        }
        for p in paths {
            if tx.send(p).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv_within(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
        ms: u64,
    ) -> Vec<PathBuf> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        let mut got = Vec::new();
        while std::time::Instant::now() < deadline {
            while let Ok(p) = rx.try_recv() {
                got.push(p);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        got
    }

    /// Reads of a watched folder and its files queue nothing; a rename into
    /// place, a close after writing and a deletion each report the entry.
    #[test]
    fn reads_do_not_wake_the_daemon_changes_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.json");
        fs_err::write(&file, b"[]").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = Watcher::new(tx);
        w.add(dir.path());
        assert!(w.watched().contains(dir.path()));

        for _ in 0..20 {
            fs_err::read(&file).unwrap();
            fs_err::read_dir(dir.path()).unwrap().for_each(drop);
        }
        fs_err::metadata(&file).unwrap();
        // The change after the reads is the only thing reported: a read
        // event would arrive first.
        let tmp = dir.path().join("f.json.tmp");
        fs_err::write(&tmp, b"[1]").unwrap();
        fs_err::rename(&tmp, &file).unwrap();
        let got = recv_within(&mut rx, 300);
        assert!(
            got.contains(&file),
            "no event for the rename into place: {got:?}"
        );
        assert!(got.iter().all(|p| p == &file || p == &tmp), "{got:?}");

        fs_err::remove_file(&file).unwrap();
        let got = recv_within(&mut rx, 300);
        assert_eq!(got, vec![file.clone()]);
    }

    /// A link is never followed into the folder it points at.
    #[test]
    fn a_link_is_not_watched_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs_err::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = Watcher::new(tx);
        w.add(&link);
        assert!(!w.watched().contains(&link));
        fs_err::write(real.join("x"), b"").unwrap();
        assert!(recv_within(&mut rx, 200).is_empty());
    }

    /// A watched folder that goes away is reported, and can be watched again.
    #[test]
    fn a_removed_folder_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("session_x");
        fs_err::create_dir(&sub).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = Watcher::new(tx);
        w.add(&sub);
        fs_err::remove_dir(&sub).unwrap();
        let got = recv_within(&mut rx, 300);
        assert!(got.contains(&sub), "{got:?}");
        fs_err::create_dir(&sub).unwrap();
        w.set(&BTreeSet::new());
        w.add(&sub);
        fs_err::write(sub.join("a"), b"").unwrap();
        assert!(recv_within(&mut rx, 300).contains(&sub.join("a")));
    }
}
