//! The cluster core: reads what [`Follow`] finds, keeps the registry's clusters
//! live or dead, verifies their endpoints, and publishes their target groups.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::every::Every;
use super::follow::{Follow, Scope};
use super::harvest::Harvest;
use super::probe::{self, PortLooks};
use super::published::Published;
use super::{OVERDUE, RESCAN, RESCAN_DEGRADED};
use crate::attribution::Attribution;
use crate::config::StackConfig;
use crate::discovery::{self, DISCOVERY_FILE, Found};
use crate::endpoints::Endpoints;
use crate::home::Home;
use crate::registry::{Change, Origin, Registry};
use crate::targets::TargetsDir;

/// Endpoints are checked against the socket table this often.
const VERIFY: Duration = Duration::from_secs(1);
/// Aged attribution answers are looked at this often, even when nothing changed.
const CONTEST_CHECK: Duration = Duration::from_secs(10);
/// The published groups are compared with a full recomputation this often
/// (a safety net: the groups are kept current incrementally).
const RECONCILE: Duration = Duration::from_secs(60);

/// Everything the event loop and the API share, behind one lock.
pub struct Core {
    pub(super) home: Home,
    /// The live settings: owned by the daemon's `watch` channel, read here.
    pub(super) settings: watch::Receiver<StackConfig>,
    pub(super) registry: Registry,
    pub(super) targets: TargetsDir,
    pub(super) follow: Follow,
    pub(super) attribution: Attribution,
    probing: HashMap<PathBuf, Instant>,
    trusted: BTreeSet<u32>,
    /// Session dirs whose Grafana dashboards were copied, or are to be looked at again.
    harvest: Harvest,
    /// The registry generation the per-cluster bookkeeping of `tick` last saw.
    bookkept_generation: Option<u64>,
    /// The name each file's group is published under, and back.
    published: Published,
    /// The published groups are compared with a full recomputation.
    reconcile: Every,
    /// Who holds each listed endpoint; foreign ones are never published.
    pub(super) endpoints: Endpoints,
    /// Every endpoint is checked against the socket table.
    verify: Every,
    /// This machine's addresses (refreshed by full scans).
    locals: BTreeSet<std::net::IpAddr>,
    /// Warnings about files in Ray's folders already logged (each is logged once).
    warned: BTreeSet<String>,
    /// Aged attribution answers are re-checked at this pace even when nothing changed.
    contest_check: Every,
    /// Ticks spent looking for a new cluster's process (for its Slurm job).
    slurm_tries: HashMap<PathBuf, u32>,
    /// The cluster history (None when its file could not be opened: logged).
    pub(super) history: Option<crate::history::HistoryLog>,
    /// Live clusters are recorded alive in the history.
    pub(super) heartbeat: Every,
    /// Whether the history was reconciled with the clusters found at start.
    pub(super) history_reconciled: bool,
    /// The registry generation the history last caught up with.
    pub(super) history_generation: Option<u64>,
    /// New clusters whose GCS port was not found yet: when to look again, and
    /// how many looks are left.
    gcs_unknown: PortLooks,
    /// The GCS process (pid, listening socket) last found for each cluster.
    gcs_holders: HashMap<PathBuf, (u32, u64)>,
}

/// The owners whose discovery files are followed: the trusted uids and this user.
fn trusted_uids(settings: &StackConfig) -> BTreeSet<u32> {
    let mut trusted: BTreeSet<u32> = settings.trust_uids.iter().copied().collect();
    trusted.insert(nix::unistd::geteuid().as_raw());
    trusted
}

/// How many times raywatch looks for a new cluster's process.
const SLURM_TRIES: u32 = 10;

impl Core {
    pub(super) fn trusted(&self) -> impl Fn(u32) -> bool + '_ {
        |uid| self.trusted.contains(&uid)
    }

    /// Follows changed settings: the liveness, the trusted owners, the folders (a
    /// full scan).
    pub fn follow_settings(&mut self, settings: &StackConfig) {
        self.registry.set_liveness(settings.liveness);
        self.trusted = trusted_uids(settings);
        self.full_scan();
    }

    /// Builds the core; nothing is read until the first [`Core::full_scan`].
    pub fn new(
        home: Home,
        settings: watch::Receiver<StackConfig>,
        registry: Registry,
        targets: TargetsDir,
        follow: Follow,
    ) -> Core {
        let trusted = trusted_uids(&settings.borrow());
        Core {
            home,
            settings,
            registry,
            targets,
            follow,
            attribution: Attribution::default(),
            probing: HashMap::new(),
            trusted,
            harvest: Harvest::default(),
            bookkept_generation: None,
            published: Published::default(),
            reconcile: Every::new(RECONCILE, Instant::now()),
            endpoints: Endpoints::default(),
            verify: Every::new(VERIFY, Instant::now()),
            locals: crate::ports::local_addresses(),
            warned: BTreeSet::new(),
            contest_check: Every::new(CONTEST_CHECK, Instant::now()),
            slurm_tries: HashMap::new(),
            history: None,
            heartbeat: Every::new(crate::history::HEARTBEAT, Instant::now()),
            history_reconciled: false,
            history_generation: None,
            gcs_unknown: PortLooks::default(),
            gcs_holders: HashMap::new(),
        }
    }

    /// The Slurm job of new live clusters, from a process of their session (one
    /// pass over /proc for all of them); a cluster whose head is not found
    /// after [`SLURM_TRIES`] looks (a remote head, a synthetic file) gets none.
    fn look_up_slurm(&mut self) {
        let unknown = self.registry.slurm_unknown();
        if unknown.is_empty() {
            return;
        }
        let wanted: std::collections::HashSet<(String, u32)> =
            unknown.iter().map(|(_, s, u)| (s.clone(), *u)).collect();
        let found = crate::slurm::lookup_many(&wanted);
        for (file, session, _) in unknown {
            match found.get(&session) {
                Some(job) => {
                    self.slurm_tries.remove(&file);
                    self.registry.set_slurm(&file, job.clone());
                }
                None => {
                    let tries = self.slurm_tries.entry(file.clone()).or_default();
                    *tries += 1;
                    if *tries >= SLURM_TRIES {
                        self.slurm_tries.remove(&file);
                        self.registry.set_slurm(&file, None);
                    }
                }
            }
        }
    }

    /// What to follow, from the live settings.
    fn scope<'a>(&self, settings: &'a StackConfig, trusted: &'a dyn Fn(u32) -> bool) -> Scope<'a> {
        Scope {
            default_roots: settings.default_roots,
            watch: &settings.watch,
            trusted,
        }
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
        if matches!(change, Change::Joined(_) | Change::Revived(_)) {
            self.learn_gcs_port(&found.file, now);
        }
        self.log_change(&found.file, change);
    }

    /// Looks for the GCS port of the cluster at `file` while Ray's files are in
    /// place; a cluster whose port is not there yet is looked at again later.
    fn learn_gcs_port(&mut self, file: &Path, now: Instant) {
        let Some(c) = self.registry.get(file) else {
            self.gcs_unknown.stop(file);
            return;
        };
        if c.gcs_port.is_some() || !c.is_live() {
            self.gcs_unknown.stop(file);
            return;
        }
        let trusted = &self.trusted;
        match probe::gcs_port(&c.found, &|uid| trusted.contains(&uid), &mut self.warned) {
            Some(port) => {
                self.registry.set_gcs_port(file, port);
                self.gcs_unknown.stop(file);
            }
            None => self.gcs_unknown.missed(file, now),
        }
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
        self.locals = crate::ports::local_addresses();
        // The addresses or the trusted uids may have changed: every endpoint is judged again.
        self.endpoints.invalidate();
        for _ in 0..4 {
            let before = self.follow.watcher.watched().clone();
            let settings = self.settings.borrow().clone();
            let trusted = self.trusted.clone();
            let is_trusted = |uid: u32| trusted.contains(&uid);
            // A scan cut short changes nothing: nothing it missed is taken for gone.
            let Some(found) = self.follow.scan(&self.scope(&settings, &is_trusted)) else {
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
            if found.contains_key(&file) {
                continue;
            }
            if fs_err::symlink_metadata(&file).is_ok() && self.follow.origin_for(&file).is_none() {
                if let Some(c) = self.registry.forget(&file) {
                    tracing::info!(
                        "no longer following cluster {} ({})",
                        c.name,
                        file.display()
                    );
                }
            } else if let Some(c) = self.registry.get(&file) {
                let (f, o) = (c.found.clone(), c.origin.clone());
                let now_a_link = f.session_dir.is_none()
                    && fs_err::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink());
                if now_a_link {
                    // Ray ≥ 2.5x replaced the temp-dir file with a link to its
                    // session's file, which is followed in its own right.
                    let change = self.registry.declare_dead(
                        &file,
                        SystemTime::now(),
                        "the temp-dir discovery file became a link to a session's file (Ray ≥ 2.5x)".into(),
                    );
                    self.log_change(&file, change);
                } else {
                    self.read_and_observe(&f, o);
                }
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

    /// Handles a batch of filesystem event paths (see [`Follow::classify`]).
    pub fn handle_events(&mut self, paths: Vec<PathBuf>) {
        let settings = self.settings.borrow().clone();
        let trusted = self.trusted.clone();
        let is_trusted = |uid: u32| trusted.contains(&uid);
        let registry = &self.registry;
        let followed_legacy = |p: &Path| registry.get(p).is_some_and(|c| c.is_live());
        let scope = Scope {
            default_roots: settings.default_roots,
            watch: &settings.watch,
            trusted: &is_trusted,
        };
        let wanted = self.follow.classify(paths, &scope, &followed_legacy);
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
        for f in self.gcs_unknown.due(now) {
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
        probes
    }

    /// A live cluster that missed its rewrites (re-read just now): its GCS port,
    /// whether a process of its session still listens there (a sign of life), and
    /// the addresses to probe; None when it is not due (not overdue, or probed
    /// within 3 s) or its GCS port is unknown.
    fn probe_overdue(&mut self, file: &Path, now: Instant) -> Option<(PathBuf, Vec<String>)> {
        let c = self.registry.get(file)?;
        if !c.is_live() || now.duration_since(c.last_change) <= OVERDUE {
            return None;
        }
        if self
            .probing
            .get(file)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(3))
        {
            return None;
        }
        let trusted = &self.trusted;
        // A session keeps its GCS port for life: the one learnt is kept,
        // whatever is planted where its files were. A temp-dir-level file
        // (older Ray) outlives sessions, so its port is read again while
        // it can be.
        let port = match c.gcs_port {
            Some(p) if c.found.session_dir.is_some() => Some(p),
            known => {
                let fresh =
                    probe::gcs_port(&c.found, &|uid| trusted.contains(&uid), &mut self.warned);
                if let Some(p) = fresh
                    && known != fresh
                {
                    self.registry.set_gcs_port(file, p);
                }
                fresh.or(known)
            }
        }?;
        let c = self.registry.get(file)?;
        self.probing.insert(file.to_path_buf(), now);
        // A process of its session still listening on the GCS port is a
        // sign of life, however its files were moved or removed.
        let mut holder = self.gcs_holders.get(file).copied();
        let listening = probe::gcs_listening(
            port,
            &c.found.session,
            &|uid| trusted.contains(&uid),
            &mut holder,
        );
        match holder {
            Some(h) => self.gcs_holders.insert(file.to_path_buf(), h),
            None => self.gcs_holders.remove(file),
        };
        let probe = (file.to_path_buf(), probe::gcs_addresses(c, port));
        if listening {
            self.registry.gcs_seen(file, now);
        }
        Some(probe)
    }

    /// Bookkeeping only for clusters that are still known, redone only when the
    /// clusters changed (an idle tick costs no walk of them all); the target files'
    /// collection and the dashboards' harvest when due.
    fn bookkeep(&mut self, now: Instant) {
        let registry = &self.registry;
        self.probing
            .retain(|f, _| registry.get(f).is_some_and(|c| c.is_live()));
        self.gcs_holders
            .retain(|f, _| registry.get(f).is_some_and(|c| c.is_live()));
        let generation = registry.generation();
        let changed = self.bookkept_generation != Some(generation);
        if changed {
            self.bookkept_generation = Some(generation);
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
            match crate::grafana::harvest(&self.home, &dir, |uid| self.trusted.contains(&uid)) {
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

    /// The target groups to publish: what the registry wants, less every
    /// endpoint whose listener belongs to an untrusted uid.
    pub fn desired(&self) -> BTreeMap<String, crate::registry::TargetGroup> {
        let mut desired = self.registry.desired(&self.attribution.owners());
        for g in desired.values_mut() {
            g.targets.retain(|t| self.endpoints.admitted(t));
        }
        desired
    }

    /// Recomputes the group of the cluster at `file` and hands it to `targets`.
    fn republish(&mut self, file: &Path) {
        let attribution = &self.attribution;
        let endpoints = &self.endpoints;
        let owner = |t: &str| attribution.owner(t);
        let admitted = |t: &str| endpoints.admitted(t);
        let group = self.registry.group_for(file, &owner, &admitted);
        let name = group.as_ref().map(|(name, _)| name.as_str());
        if let Some(old) = self.published.set(file, name) {
            self.targets.remove(&old);
        }
        if let Some((name, group)) = group {
            self.targets.upsert(&name, &group);
        }
    }

    /// Writes the target files when anything they depend on changed (or a
    /// previous write failed); returns contested endpoints to resolve.
    ///
    /// The work is proportional to what changed: the registry reports the
    /// clusters and endpoints a change touched, the endpoint check the
    /// verdicts that changed, attribution the answers it recorded; only the
    /// groups of the clusters concerned are recomputed, and only their shards
    /// written.
    pub fn publish(&mut self) -> Vec<(String, Vec<String>)> {
        // Before a new cluster is first published, so its series carry the
        // Slurm labels from their first sample.
        self.look_up_slurm();
        let now = Instant::now();
        let (mut dirty, touched) = self.registry.take_changes();
        if self.published.take_all() {
            dirty.extend(self.registry.clusters().map(|c| c.found.file.clone()));
        }
        // An endpoint whose claimants changed: each claimant's group may change
        // (it became contested, or stopped being).
        for ep in &touched {
            dirty.extend(self.registry.claimants(ep).cloned());
        }
        let recheck = self.verify.take(now);
        let trusted = &self.trusted;
        let registry = &self.registry;
        let verdicts = self.endpoints.update(
            &touched,
            &|ep| registry.is_listed(ep),
            recheck,
            &self.locals,
            &|uid| trusted.contains(&uid),
        );
        let answered = self.attribution.take_changed();
        for ep in verdicts.iter().chain(&answered) {
            dirty.extend(self.registry.claimants(ep).cloned());
        }
        // Contested endpoints to (re)resolve: when claims or verdicts changed,
        // and every 10 s for answers that aged. A foreign endpoint is never
        // scraped, not even to read its session.
        let contest_check = self.contest_check.is_due(now);
        let due = if contest_check || !touched.is_empty() || !verdicts.is_empty() {
            self.contest_check.done(now);
            let contested: BTreeMap<String, Vec<String>> = self
                .registry
                .contested()
                .into_iter()
                .filter(|(ep, _)| self.endpoints.admitted(ep))
                .collect();
            self.attribution.due(&contested, now)
        } else {
            Vec::new()
        };
        for file in &dirty {
            self.republish(file);
        }
        if self.reconcile.take(now) {
            self.reconcile_published();
        } else {
            #[cfg(debug_assertions)]
            self.assert_published();
        }
        self.targets.flush(now);
        due
    }

    /// The safety net: the published groups against a full recomputation.
    fn reconcile_published(&mut self) {
        let desired = self.desired();
        let current: BTreeMap<String, crate::registry::TargetGroup> = self
            .targets
            .groups()
            .into_iter()
            .map(|(n, g)| (n.to_string(), g.clone()))
            .collect();
        if current != desired {
            tracing::error!(
                "the published target groups differed from the clusters' (a raywatch bug): rewriting them"
            );
            self.published.reset();
            self.targets.sync(&desired, Instant::now());
        }
    }

    /// In debug builds (the tests), every publish checks the incremental groups.
    #[cfg(debug_assertions)]
    fn assert_published(&self) {
        let desired = self.desired();
        let current: BTreeMap<&str, &crate::registry::TargetGroup> = self.targets.groups();
        let wanted: BTreeMap<&str, &crate::registry::TargetGroup> =
            desired.iter().map(|(n, g)| (n.as_str(), g)).collect();
        assert_eq!(current, wanted, "incremental publishing diverged");
    }

    /// When the event loop must run again without an event: target files
    /// waiting for the write pace.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.targets.next_write()
    }
}
