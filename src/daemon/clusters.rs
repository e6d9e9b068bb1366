//! The cluster core: reads what [`Follow`] finds, keeps the registry's clusters
//! live or dead, and hands their target groups to [`publish`](super::publish).
//!
//! [`Core`] is the daemon's state, in parts that own their fields: the
//! registry, the target files and the followed folders; [`Trust`] (whom to
//! trust, this machine's addresses); [`Endpoints`] (who holds each endpoint) and
//! [`Attribution`] (which cluster serves a contested one); [`Published`] (which
//! group each target file holds); [`Chores`] (the periodic checks);
//! [`Lookups`] (a new cluster's Slurm job and GCS port, an overdue cluster's GCS
//! probes); [`Harvest`] (Ray's Grafana dashboards); [`HistoryBook`] (the
//! cluster history). Its methods are spread by concern: this file (scans,
//! events, ticks), `publish.rs`, `lookups.rs`, `lifecycle.rs`, `attach.rs`,
//! `report.rs`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::every::Chores;
use super::follow::{Follow, Scope};
use super::harvest::Harvest;
use super::lifecycle::HistoryBook;
use super::lookups::Lookups;
use super::published::Published;
use super::trust::Trust;
use super::{OVERDUE, RESCAN, RESCAN_DEGRADED};
use crate::attribution::Attribution;
use crate::config::StackConfig;
use crate::discovery::{self, DISCOVERY_FILE, Found};
use crate::endpoints::Endpoints;
use crate::home::Home;
use crate::registry::{Change, Origin, Registry};
use crate::targets::TargetsDir;

/// Everything the event loop and the API share, behind one lock (see the
/// module's doc for its parts).
pub struct Core {
    pub(super) home: Home,
    /// The live settings: owned by the daemon's `watch` channel, read here.
    pub(super) settings: watch::Receiver<StackConfig>,
    pub(super) registry: Registry,
    pub(super) targets: TargetsDir,
    pub(super) follow: Follow,
    pub(super) attribution: Attribution,
    pub(super) trust: Trust,
    /// Who holds each listed endpoint; foreign ones are never published.
    pub(super) endpoints: Endpoints,
    /// The name each file's group is published under, and back.
    pub(super) published: Published,
    pub(super) chores: Chores,
    pub(super) lookups: Lookups,
    /// Session dirs whose Grafana dashboards were copied, or are to be looked at again.
    pub(super) harvest: Harvest,
    pub(super) history: HistoryBook,
    /// raywatch's own metrics of the clusters (see [`super::metrics`]).
    pub(super) metrics: super::metrics::Book,
}

/// What to follow, from the live settings.
fn scope<'a>(settings: &'a StackConfig, trusted: &'a dyn Fn(u32) -> bool) -> Scope<'a> {
    Scope {
        default_roots: settings.default_roots,
        watch: &settings.watch,
        trusted,
    }
}

impl Core {
    /// Builds the core; nothing is read until the first [`Core::full_scan`].
    pub fn new(
        home: Home,
        settings: watch::Receiver<StackConfig>,
        registry: Registry,
        targets: TargetsDir,
        follow: Follow,
    ) -> Core {
        let trust = Trust::new(&settings.borrow());
        let now = Instant::now();
        Core {
            home,
            settings,
            registry,
            targets,
            follow,
            attribution: Attribution::default(),
            trust,
            endpoints: Endpoints::default(),
            published: Published::default(),
            chores: Chores::new(now),
            lookups: Lookups::default(),
            harvest: Harvest::default(),
            history: HistoryBook::new(now),
            metrics: super::metrics::Book::default(),
        }
    }

    pub(super) fn trusted(&self) -> impl Fn(u32) -> bool + '_ {
        self.trust.trusted()
    }

    /// Follows changed settings: the liveness, the trusted owners, the folders (a
    /// full scan).
    pub fn follow_settings(&mut self, settings: &StackConfig) {
        self.registry.set_liveness(settings.liveness);
        self.trust.follow_settings(settings);
        self.full_scan();
    }

    fn read_and_observe(&mut self, found: &Found, origin: Origin) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let read = discovery::read_listing(&found.file, self.trusted());
        if matches!(read, Ok(None))
            && let Some(c) = self.registry.get(&found.file)
            && c.is_live()
            && (c.gcs_port.is_some()
                || found
                    .session_dir
                    .as_ref()
                    .is_some_and(|d| fs_err::symlink_metadata(d).is_ok_and(|m| m.is_dir())))
        {
            // The file went (moved or deleted by someone, maybe with its whole
            // session folder) while the cluster may well run: Ray rewrites it
            // every 5 s where it was, and its GCS still answers. So the liveness
            // bound and the GCS decide, not whoever removed it.
            if c.file_gone.is_none() {
                tracing::warn!(
                    "the discovery file of cluster {} is gone from {}: it stays live while its GCS listens (or Ray writes the file again), within the liveness bound",
                    c.name,
                    found.file.display()
                );
            }
            self.registry.file_gone(&found.file, wall);
            return;
        }
        let change = self.registry.observe(found, origin, read, now, wall);
        if matches!(change, Change::Died(..)) {
            // Its file went with its session folder (the one death a read finds).
            self.metrics
                .note_end(found.file.clone(), super::metrics::EndReason::Removed);
        }
        if matches!(change, Change::Joined(_) | Change::Revived(_)) {
            self.learn_gcs_port(&found.file, now);
        }
        self.log_change(&found.file, change);
    }

    pub fn log_change(&self, file: &Path, change: Change) {
        match change {
            Change::None => {}
            Change::Joined(name) | Change::Revived(name) => {
                let c = self.registry.by_name(&name);
                tracing::info!(
                    "cluster {name} is live: {} targets, session {}, from {}",
                    c.map(|c| c.targets.len()).unwrap_or(0),
                    c.map(|c| c.found.session.as_str()).unwrap_or(""),
                    file.display()
                );
            }
            Change::Died(name, reason) => tracing::info!("cluster {name} is dead: {reason}"),
            Change::Rejected(reason) => tracing::warn!("rejected {}: {reason}", file.display()),
        }
    }

    /// Rescans every root and attachment and reconciles the registry with disk.
    /// A folder is watched only after it was first listed, so whatever appeared in
    /// a newly watched folder meanwhile is caught by scanning again until no new
    /// folder turns up.
    pub fn full_scan(&mut self) {
        self.trust.refresh_locals();
        // The addresses or the trusted uids may have changed: every endpoint is judged again.
        self.endpoints.invalidate();
        for _ in 0..4 {
            let before = self.follow.watcher.watched().clone();
            let settings = self.settings.borrow().clone();
            let found = {
                let is_trusted = self.trust.trusted();
                self.follow.scan(&scope(&settings, &is_trusted))
            };
            // A scan cut short changes nothing: nothing it missed is taken for gone.
            let Some(found) = found else {
                break;
            };
            self.reconcile(&found);
            if self.follow.watcher.watched().is_subset(&before) {
                break;
            }
        }
    }

    /// Brings the registry in line with the files a scan found.
    fn reconcile(&mut self, found: &BTreeMap<PathBuf, Found>) {
        for (file, f) in found {
            let Some(origin) = self.follow.origin_for(file) else {
                continue;
            };
            // A live cluster's file is re-read on its own events and when it is
            // overdue; a scan reads only what is new, dead, or now comes
            // through another origin. So a new session costs O(1), not O(clusters).
            let settled = self
                .registry
                .get(file)
                .is_some_and(|c| c.is_live() && c.origin == origin);
            if !settled {
                self.read_and_observe(f, origin);
            }
        }
        let known: Vec<PathBuf> = self
            .registry
            .clusters()
            .map(|c| c.found.file.clone())
            .collect();
        for file in known {
            if !found.contains_key(&file) {
                self.not_found(&file);
            }
        }
        let stale: Vec<PathBuf> = self
            .registry
            .rejections()
            .keys()
            .filter(|p| !found.contains_key(*p))
            .cloned()
            .collect();
        for p in stale {
            self.registry.forget_rejection(&p);
        }
    }

    /// A known cluster whose file a scan did not find: forgotten when its file
    /// is there but no longer followed; else read again, or declared dead when
    /// its temp-dir file became a link.
    fn not_found(&mut self, file: &Path) {
        if fs_err::symlink_metadata(file).is_ok() && self.follow.origin_for(file).is_none() {
            if let Some(c) = self.registry.forget(file) {
                tracing::info!(
                    "no longer following cluster {} ({})",
                    c.name,
                    file.display()
                );
            }
        } else if let Some(c) = self.registry.get(file) {
            let (f, o) = (c.found.clone(), c.origin.clone());
            let now_a_link = f.session_dir.is_none()
                && fs_err::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
            if now_a_link {
                // Ray ≥ 2.5x replaced the temp-dir file with a link to its
                // session's file, which is followed in its own right.
                self.metrics
                    .note_end(file.to_path_buf(), super::metrics::EndReason::Superseded);
                let change = self.registry.declare_dead(
                    file,
                    SystemTime::now(),
                    "the temp-dir discovery file became a link to a session's file (Ray ≥ 2.5x)"
                        .into(),
                );
                self.log_change(file, change);
            } else {
                self.read_and_observe(&f, o);
            }
        }
    }

    /// Handles a batch of filesystem event paths (see [`Follow::classify`]).
    pub fn handle_events(&mut self, paths: Vec<PathBuf>) {
        let settings = self.settings.borrow().clone();
        let wanted = {
            let is_trusted = self.trust.trusted();
            let registry = &self.registry;
            let followed_legacy = |p: &Path| registry.get(p).is_some_and(|c| c.is_live());
            let scope = scope(&settings, &is_trusted);
            self.follow.classify(paths, &scope, &followed_legacy)
        };
        if wanted.rescan {
            self.full_scan();
            return;
        }
        for file in wanted.files {
            let existing = self
                .registry
                .get(&file)
                .map(|c| (c.found.clone(), c.origin.clone()));
            match existing {
                Some((f, o)) => self.read_and_observe(&f, o),
                None => {
                    if let Some(origin) = self.follow.origin_for(&file) {
                        self.read_and_observe(&Found::for_file(&file), origin);
                    }
                }
            }
        }
    }

    /// Periodic work: liveness, overdue re-reads, deletions, safety-net rescans.
    /// Returns GCS addresses to probe for clusters that missed a rewrite.
    pub fn tick(&mut self) -> Vec<(PathBuf, Vec<String>)> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let every = if self.follow.watcher.needs_rescan() || self.follow.incomplete.is_some() {
            RESCAN_DEGRADED
        } else {
            RESCAN
        };
        if now.duration_since(self.follow.last_scan) >= every {
            self.full_scan();
        }
        // Live clusters' rewrites, gathered by the quiet watch since the last tick.
        let quiet = self
            .follow
            .watcher
            .drain_quiet(std::ffi::OsStr::new(DISCOVERY_FILE));
        if !quiet.is_empty() {
            self.handle_events(quiet);
        }
        let overdue: Vec<(Found, Origin)> = self
            .registry
            .overdue(now, OVERDUE)
            .into_iter()
            .map(|c| (c.found.clone(), c.origin.clone()))
            .collect();
        for f in self.lookups.gcs_unknown.due(now) {
            self.learn_gcs_port(&f, now);
        }
        let mut probes = Vec::new();
        for (f, o) in overdue {
            self.read_and_observe(&f, o);
            probes.extend(self.probe_overdue(&f.file, now));
        }
        for change in self.registry.tick(now, wall) {
            self.log_change(Path::new(""), change);
        }
        self.bookkeep(now);
        self.record_history();
        self.sync_metrics();
        probes
    }

    /// Bookkeeping only for clusters that are still known, redone only when the
    /// clusters changed (an idle tick costs no walk of them all); the target files'
    /// collection and the dashboards' harvest when due.
    fn bookkeep(&mut self, now: Instant) {
        let registry = &self.registry;
        self.lookups
            .keep_live(|f| registry.get(f).is_some_and(|c| c.is_live()));
        let changed = self.chores.clusters_changed(registry.generation());
        if changed {
            let sessions: HashSet<&PathBuf> = registry
                .clusters()
                .filter_map(|c| c.found.session_dir.as_ref())
                .collect();
            let live: BTreeSet<PathBuf> = registry
                .clusters()
                .filter(|c| c.is_live())
                .filter_map(|c| c.found.session_dir.clone())
                .collect();
            self.follow.watcher.set_quiet(&live);
            self.harvest.keep_only(&sessions);
        }
        self.targets.collect(now);
        if changed || self.harvest.retry_due(now) {
            self.harvest_dashboards();
        }
    }

    /// Copies the Grafana dashboards Ray generated in each live session, once.
    fn harvest_dashboards(&mut self) {
        let now = Instant::now();
        let dirs: Vec<PathBuf> = self
            .registry
            .clusters()
            .filter(|c| c.is_live())
            .filter_map(|c| c.found.session_dir.as_ref())
            .filter(|d| self.harvest.wants(d, now))
            .cloned()
            .collect();
        let mut changed = false;
        for dir in dirs {
            match crate::grafana::harvest(&self.home, &dir, self.trust.trusted()) {
                Ok((any, new)) => {
                    changed |= new;
                    if any {
                        self.harvest.copied(dir);
                    } else {
                        self.harvest.later(dir, now);
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot copy Ray's dashboards from {}: {e:#}", dir.display());
                    self.harvest.later(dir, now);
                }
            }
        }
        if changed
            && let Err(e) = crate::grafana::render_ray_dashboards(
                &self.home,
                &self.settings.borrow().prometheus_name,
            )
        {
            tracing::warn!("cannot write Ray's dashboards: {e:#}");
        }
    }
}
