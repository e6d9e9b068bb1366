//! Following roots and attachments: which folders are watched, and which discovery files they hold.
//!
//! A root is a Ray temp dir: found under /tmp and `$RAY_TMPDIR` (`ray*`),
//! configured with `up --watch`, or attached. Its session folders of trusted
//! owners are watched for their discovery file; other users' folders are left
//! alone (neither watched nor read). This module only finds files: reading them
//! and deciding what they mean is the cluster core's job.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::discovery::{self, Found};
use crate::ray::{self, DISCOVERY_FILE};
use crate::registry::Origin;
use crate::untrusted::{Folder, Kind};
use crate::watch::Watcher;

/// A path `raywatch attach` asked to follow; persisted in `<home>/attachments.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub path: PathBuf,
    pub name: Option<String>,
}

impl Attachment {
    pub fn is_root(&self) -> bool {
        self.path.is_dir()
    }

    /// Whether a discovery file comes through this attachment.
    pub fn covers(&self, file: &Path) -> bool {
        if self.path == file {
            return true;
        }
        let parent = file.parent();
        parent == Some(&self.path) || parent.and_then(Path::parent) == Some(&self.path)
    }
}

/// What to follow, from the live settings.
pub struct Scope<'a> {
    /// Watch /tmp/ray* and `$RAY_TMPDIR`/ray*.
    pub default_roots: bool,
    /// `up --watch` folders.
    pub watch: &'a [PathBuf],
    pub trusted: &'a dyn Fn(u32) -> bool,
}

/// What a batch of filesystem events asks the cluster core to do.
#[derive(Debug, Default)]
pub struct Wanted {
    /// Discovery files to read again, each once, in byte order.
    pub files: Vec<PathBuf>,
    /// A root appeared or went: list everything again.
    pub rescan: bool,
}

/// What listing the roots found.
struct Listing {
    found: BTreeMap<PathBuf, Found>,
    /// Session folders of trusted owners.
    session_dirs: HashSet<PathBuf>,
    /// Roots refused, with the reason.
    refused: BTreeMap<PathBuf, String>,
    /// Session folders of untrusted owners seen.
    foreign: usize,
    /// The roots listed that are real folders.
    scanned: BTreeSet<PathBuf>,
}

impl Listing {
    /// Lists every root (see [`discovery::scan_root`]).
    fn of(roots: &BTreeSet<PathBuf>, trusted: &dyn Fn(u32) -> bool) -> Listing {
        let mut l = Listing {
            found: BTreeMap::new(),
            session_dirs: HashSet::new(),
            refused: BTreeMap::new(),
            foreign: 0,
            scanned: BTreeSet::new(),
        };
        for root in roots {
            let scan = discovery::scan_root(root, trusted);
            if let Some(r) = scan.refused {
                l.refused.insert(root.clone(), r.to_string());
                continue;
            }
            if fs_err::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
                l.scanned.insert(root.clone());
            }
            l.foreign += scan.foreign;
            l.session_dirs.extend(scan.session_dirs);
            for f in scan.found {
                l.found.insert(f.file.clone(), f);
            }
        }
        l
    }
}

/// The followed folders and the watch on them.
pub struct Follow {
    pub attachments: Vec<Attachment>,
    pub watcher: Watcher,
    /// Real folders (never links) scanned as Ray temp dirs.
    pub roots: BTreeSet<PathBuf>,
    /// Folders whose new `ray*` children become roots (/tmp, $RAY_TMPDIR).
    root_parents: BTreeSet<PathBuf>,
    /// Session folders of trusted owners, watched for their discovery file.
    session_dirs: HashSet<PathBuf>,
    /// Roots that were not scanned (a symlink, not a folder), with the reason.
    pub refused_roots: BTreeMap<PathBuf, String>,
    /// Session folders of untrusted owners seen in the roots (left alone).
    pub foreign_sessions: usize,
    pub last_scan: Instant,
    /// Why the last scan was discarded, when it was (see [`Follow::scan`]).
    pub incomplete: Option<String>,
}

impl Follow {
    pub fn new(watcher: Watcher, attachments: Vec<Attachment>) -> Follow {
        Follow {
            attachments,
            watcher,
            roots: BTreeSet::new(),
            root_parents: BTreeSet::new(),
            session_dirs: HashSet::new(),
            refused_roots: BTreeMap::new(),
            foreign_sessions: 0,
            last_scan: Instant::now(),
            incomplete: None,
        }
    }

    /// Where a file comes from, if raywatch follows it.
    pub fn origin_for(&self, file: &Path) -> Option<Origin> {
        if let Some(a) = self.attachments.iter().find(|a| a.covers(file)) {
            return Some(Origin::Attached {
                name: a.name.clone(),
            });
        }
        let parent = file.parent()?;
        let covered =
            self.roots.contains(parent) || parent.parent().is_some_and(|g| self.roots.contains(g));
        covered.then_some(Origin::Watched)
    }

    /// Lists every root and attachment, watches what should be watched, and
    /// returns every discovery file found (one [`Found`] each).
    ///
    /// A scan during which a folder could not be opened or listed for want of
    /// descriptors or memory may have missed what is there: it changes nothing
    /// (what is followed and watched stays as it was), sets
    /// [`Follow::incomplete`], and returns None.
    pub fn scan(&mut self, scope: &Scope) -> Option<BTreeMap<PathBuf, Found>> {
        self.last_scan = Instant::now();
        let exhaustion = crate::untrusted::exhaustion_count();
        let (roots, parents, root_parents) = self.roots_to_scan(scope);
        let Listing {
            mut found,
            session_dirs,
            refused,
            foreign,
            scanned,
        } = Listing::of(&roots, scope.trusted);
        if crate::untrusted::exhaustion_count() != exhaustion {
            let msg = "the last scan of Ray's folders was cut short: raywatch is short of file descriptors or memory; the clusters found before are kept as they were, and the scan is retried every 2 s".to_string();
            if self.incomplete.is_none() {
                tracing::warn!("{msg}");
            }
            self.incomplete = Some(msg);
            return None;
        }
        if self.incomplete.take().is_some() {
            tracing::info!("a scan of Ray's folders completed again");
        }
        self.root_parents = root_parents;
        // Only real folders are roots: a link is never followed into or out of one.
        self.roots = scanned;
        self.refused_roots = refused;
        self.foreign_sessions = foreign;
        let mut watch_set: BTreeSet<PathBuf> = parents;
        for a in self.attachments.iter().filter(|a| !a.is_root()) {
            found.insert(a.path.clone(), Found::for_file(&a.path));
            if let Some(p) = a.path.parent() {
                watch_set.insert(p.to_path_buf());
            }
        }
        watch_set.extend(self.roots.iter().cloned());
        watch_set.extend(session_dirs.iter().cloned());
        self.session_dirs = session_dirs;
        self.watcher.set(&watch_set);
        Some(found)
    }

    /// The roots to scan (the default ones, `up --watch` folders, attached
    /// folders), the folders watched for roots that come and go (their
    /// parents), and among those the ones whose new `ray*` children are roots.
    fn roots_to_scan(
        &self,
        scope: &Scope,
    ) -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>, BTreeSet<PathBuf>) {
        let mut roots: BTreeSet<PathBuf> = BTreeSet::new();
        let mut parents: BTreeSet<PathBuf> = BTreeSet::new();
        let mut root_parents = BTreeSet::new();
        if scope.default_roots {
            for parent in ray::default_temp_dir_parents() {
                roots.extend(discovery::roots_in(&parent, scope.trusted));
                parents.insert(parent.clone());
                root_parents.insert(parent);
            }
        }
        roots.extend(scope.watch.iter().cloned());
        parents.extend(
            scope
                .watch
                .iter()
                .filter_map(|p| p.parent().map(Path::to_path_buf)),
        );
        roots.extend(
            self.attachments
                .iter()
                .filter(|a| a.is_root())
                .map(|a| a.path.clone()),
        );
        (roots, parents, root_parents)
    }

    /// Sorts a batch of event paths. Each event costs what it concerns: a
    /// session folder's own file is read again, a new entry of a root is looked
    /// at once (one `stat`, and a watch when it is a session of a trusted
    /// owner); only a root appearing or going, or a configured folder, asks for
    /// a rescan. Other users' folders are never entered. `followed_legacy` tells
    /// whether a temp-dir-level discovery file is a live cluster's.
    pub fn classify(
        &mut self,
        paths: Vec<PathBuf>,
        scope: &Scope,
        followed_legacy: &dyn Fn(&Path) -> bool,
    ) -> Wanted {
        let mut wanted = Wanted::default();
        for p in paths {
            self.classify_one(p, scope, followed_legacy, &mut wanted);
        }
        wanted
            .files
            .sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
        wanted.files.dedup();
        wanted
    }

    /// What one event path asks for (see [`Follow::classify`]).
    fn classify_one(
        &mut self,
        p: PathBuf,
        scope: &Scope,
        followed_legacy: &dyn Fn(&Path) -> bool,
        wanted: &mut Wanted,
    ) {
        if p.as_os_str().is_empty() {
            // Events were lost: everything is looked at again.
            wanted.rescan = true;
            return;
        }
        let parent = p.parent().map(Path::to_path_buf);
        let name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        if let Some(parent) = &parent
            && self.session_dirs.contains(parent)
        {
            if name == DISCOVERY_FILE {
                wanted.files.push(p);
            }
            return;
        }
        if self.session_dirs.contains(&p) {
            // The folder itself was removed, renamed or replaced.
            if !fs_err::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                self.session_dirs.remove(&p);
            }
            wanted.files.push(p.join(DISCOVERY_FILE));
            return;
        }
        // An attached file, or a file beside it (Ray's temp file before its rename).
        let attached: Vec<PathBuf> = self
            .attachments
            .iter()
            .filter(|a| a.path == p || (a.path.parent() == parent.as_deref() && !a.is_root()))
            .map(|a| a.path.clone())
            .collect();
        if !attached.is_empty() {
            wanted.files.extend(attached);
            return;
        }
        if let Some(root) = parent.as_ref().filter(|d| self.roots.contains(*d)) {
            self.root_entry(root, &name, &p, scope, followed_legacy, wanted);
            return;
        }
        wanted.rescan |= self.asks_rescan(&p, parent.as_deref(), &name, scope);
    }

    /// Whether an event at `p` (in `parent`, named `name`) outside the session
    /// folders, attachments' files and roots' entries asks for a rescan: a root
    /// or a configured folder itself, a new root in /tmp or `$RAY_TMPDIR`, or an
    /// attached folder's entry.
    fn asks_rescan(&self, p: &Path, parent: Option<&Path>, name: &OsStr, scope: &Scope) -> bool {
        if self.roots.contains(p) || scope.watch.iter().any(|w| w == p) {
            return true;
        }
        if let Some(parent) = parent.filter(|d| self.root_parents.contains(*d)) {
            return ray::is_temp_dir_name(&name.to_string_lossy())
                && Folder::open(parent)
                    .ok()
                    .flatten()
                    .is_some_and(|f| discovery::is_default_root(&f, name, scope.trusted));
        }
        self.attachments
            .iter()
            .any(|a| parent == Some(a.path.as_path()) || p == a.path)
    }

    /// An event for the entry `name` of a root.
    fn root_entry(
        &mut self,
        root: &Path,
        name: &OsStr,
        path: &Path,
        scope: &Scope,
        followed_legacy: &dyn Fn(&Path) -> bool,
        wanted: &mut Wanted,
    ) {
        if name == DISCOVERY_FILE {
            // Ray ≥ 2.5x keeps a link here to the last writer's session file:
            // not a cluster of its own; the scan settles a legacy file that
            // became one.
            if fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                wanted.rescan |= followed_legacy(path);
            } else {
                wanted.files.push(path.to_path_buf());
            }
            return;
        }
        if ray::is_session_name(&name.to_string_lossy())
            && let Ok(Some(folder)) = Folder::open(root)
            && discovery::trusted_session(&folder, name, Kind::Unknown, scope.trusted)
        {
            // Watched before it is read, so a file written meanwhile is not missed.
            self.watcher.add(path);
            self.session_dirs.insert(path.to_path_buf());
            wanted.files.push(path.join(DISCOVERY_FILE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "session_2026-11-27_13-26-35_555015_2972";

    /// A Ray temp dir in a fresh folder (configured as with `up --watch`),
    /// with one session holding its discovery file.
    fn temp_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs_err::canonicalize(dir.path()).unwrap().join("ray_t");
        let session = root.join(SESSION);
        fs_err::create_dir_all(&session).unwrap();
        fs_err::write(session.join(DISCOVERY_FILE), "[]").unwrap();
        (dir, root, session)
    }

    fn follow(attachments: Vec<Attachment>) -> Follow {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Follow::new(Watcher::new(tx), attachments)
    }

    fn me(uid: u32) -> bool {
        uid == nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_scan_finds_the_sessions_files_and_watches_their_folders() {
        let (_dir, root, session) = temp_dir();
        let mut f = follow(Vec::new());
        let watch = [root.clone()];
        let scope = Scope {
            default_roots: false,
            watch: &watch,
            trusted: &me,
        };
        let found = f.scan(&scope).unwrap();
        let file = session.join(DISCOVERY_FILE);
        assert_eq!(found.keys().collect::<Vec<_>>(), [&file]);
        assert_eq!(found[&file].session_dir.as_deref(), Some(session.as_path()));
        assert_eq!(f.origin_for(&file), Some(Origin::Watched));
        assert_eq!(f.origin_for(Path::new("/elsewhere/x.json")), None);
        assert!(f.watcher.watched().contains(&root) && f.watcher.watched().contains(&session));
        assert_eq!(f.foreign_sessions, 0);
    }

    #[test]
    fn each_event_asks_for_what_it_concerns() {
        let (_dir, root, session) = temp_dir();
        let mut f = follow(Vec::new());
        let watch = [root.clone()];
        let scope = Scope {
            default_roots: false,
            watch: &watch,
            trusted: &me,
        };
        f.scan(&scope).unwrap();
        let never = |_: &Path| false;
        let file = session.join(DISCOVERY_FILE);
        let mut classify = |paths: Vec<PathBuf>| {
            let w = f.classify(paths, &scope, &never);
            (w.files, w.rescan)
        };
        // The session's file (twice in a batch: read once); its temp file: nothing.
        let batch = vec![file.clone(), session.join("x.tmp"), file.clone()];
        assert_eq!(classify(batch), (vec![file.clone()], false));
        // Lost events, or the root itself: a rescan.
        assert_eq!(classify(vec![PathBuf::new()]), (vec![], true));
        assert_eq!(classify(vec![root.clone()]), (vec![], true));
        // A new session of this user in the root: its file is read, its folder watched.
        let new = root.join("session_2026-11-28_09-00-00_000001_1");
        fs_err::create_dir(&new).unwrap();
        assert_eq!(
            classify(vec![new.clone()]),
            (vec![new.join(DISCOVERY_FILE)], false)
        );
        assert!(f.watcher.watched().contains(&new));
        // Something else in the root, or outside every followed folder: nothing.
        let other = vec![root.join("logs"), PathBuf::from("/elsewhere/x")];
        assert_eq!(
            f.classify(other, &scope, &never).files,
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn an_attached_file_and_its_neighbours_events_read_it() {
        let (_dir, _root, session) = temp_dir();
        let file = session.join(DISCOVERY_FILE);
        let attached = Attachment {
            path: file.clone(),
            name: Some("train".into()),
        };
        let mut f = follow(vec![attached]);
        let scope = Scope {
            default_roots: false,
            watch: &[],
            trusted: &me,
        };
        let found = f.scan(&scope).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), [&file]);
        assert_eq!(
            f.origin_for(&file),
            Some(Origin::Attached {
                name: Some("train".into())
            })
        );
        let never = |_: &Path| false;
        let wanted = f.classify(vec![session.join("x.tmp")], &scope, &never);
        assert_eq!((wanted.files, wanted.rescan), (vec![file], false));
    }
}
