//! The per-stack daemon: discovers clusters, keeps their targets current, runs Prometheus,
//! and answers the control API.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::api::{ApiError, AttachRequest, AttachResponse, DetachRequest, Refusal};
use crate::attribution::Attribution;
use crate::config::StackConfig;
use crate::discovery::{self, DISCOVERY_FILE, Found};
use crate::endpoints::Endpoints;
use crate::home::Home;
use crate::registry::{Change, Origin, Registry, State};
use crate::status::{self, StatusReport};
use crate::supervisor::{Spec, Supervisor};
use crate::targets::TargetsDir;
use crate::untrusted::{Folder, Kind};
use crate::watch::Watcher;

/// A live cluster that missed one rewrite is re-read and its GCS asked.
const OVERDUE: Duration = Duration::from_secs(7);
/// The safety-net rescan, when inotify works.
const RESCAN: Duration = Duration::from_secs(30);
/// The rescan when inotify is unavailable.
const RESCAN_DEGRADED: Duration = Duration::from_secs(2);
/// Coalesces a writer's burst (temp file, write, rename) into one batch.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// A path `raywatch attach` asked to follow; persisted in `<home>/attachments.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub path: PathBuf,
    pub name: Option<String>,
}

impl Attachment {
    fn is_root(&self) -> bool {
        self.path.is_dir()
    }

    /// Whether a discovery file comes through this attachment.
    fn covers(&self, file: &Path) -> bool {
        if self.path == file {
            return true;
        }
        let parent = file.parent();
        parent == Some(&self.path) || parent.and_then(Path::parent) == Some(&self.path)
    }
}

/// Everything the event loop and the API share, behind one lock.
pub struct Core {
    home: Home,
    config: StackConfig,
    registry: Registry,
    targets: TargetsDir,
    attachments: Vec<Attachment>,
    attribution: Attribution,
    watcher: Watcher,
    roots: BTreeSet<PathBuf>,
    /// Folders whose new `ray*` children become roots (/tmp, $RAY_TMPDIR).
    root_parents: BTreeSet<PathBuf>,
    session_dirs: BTreeSet<PathBuf>,
    last_scan: Instant,
    probing: HashMap<PathBuf, Instant>,
    trusted: BTreeSet<u32>,
    /// Session dirs whose Grafana dashboards were copied.
    harvested: BTreeSet<PathBuf>,
    /// (registry, attribution, endpoints) generations last written to `targets/`.
    published: (u64, u64, u64),
    /// Who holds each listed endpoint; foreign ones are never published.
    endpoints: Endpoints,
    last_verify: Instant,
    /// This machine's addresses (refreshed by full scans).
    locals: BTreeSet<std::net::IpAddr>,
    /// Roots that were not scanned (a symlink, not a folder), with the reason.
    refused_roots: BTreeMap<PathBuf, String>,
    /// Session folders of untrusted owners seen in the roots (left alone).
    foreign_sessions: usize,
    /// Warnings about files in Ray's folders already logged (each is logged once).
    warned: BTreeSet<String>,
    /// Aged attribution answers are re-checked at this pace even when nothing changed.
    last_contest_check: Instant,
}

impl Core {
    fn trusted(&self) -> impl Fn(u32) -> bool + '_ {
        |uid| self.trusted.contains(&uid)
    }

    fn read_and_observe(&mut self, found: &Found, origin: Origin) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let read = discovery::read_listing(&found.file, self.trusted());
        if matches!(read, Ok(None))
            && self.registry.get(&found.file).is_some_and(|c| c.is_live())
            && found
                .session_dir
                .as_ref()
                .is_some_and(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()))
        {
            // The file went (moved or deleted by someone) while its session
            // folder stays: Ray rewrites it every 5 s, so the liveness bound and
            // the GCS decide, not whoever removed it.
            return;
        }
        let change = self.registry.observe(found, origin, read, now, wall);
        self.log_change(&found.file, change);
    }

    fn log_change(&self, file: &Path, change: Change) {
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

    /// Where a file comes from, if raywatch still follows it.
    fn origin_for(&self, file: &Path) -> Option<Origin> {
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

    /// Rescans every root and attachment and reconciles the registry with disk.
    /// A folder is watched only after it was first listed, so whatever appeared in
    /// a newly watched folder meanwhile is caught by scanning again until no new
    /// folder turns up.
    fn full_scan(&mut self) {
        for _ in 0..4 {
            let before = self.watcher.watched().clone();
            self.scan_once();
            if self.watcher.watched().is_subset(&before) {
                break;
            }
        }
    }

    fn scan_once(&mut self) {
        self.last_scan = Instant::now();
        self.locals = crate::ports::local_addresses();
        let trusted = self.trusted.clone();
        let is_trusted = |uid: u32| trusted.contains(&uid);
        let mut roots: BTreeSet<PathBuf> = BTreeSet::new();
        let mut parents: BTreeSet<PathBuf> = BTreeSet::new();
        self.root_parents.clear();
        if self.config.default_roots {
            for parent in discovery::default_root_parents() {
                roots.extend(discovery::roots_in(&parent, &is_trusted));
                parents.insert(parent.clone());
                self.root_parents.insert(parent);
            }
        }
        roots.extend(self.config.watch.iter().cloned());
        parents.extend(
            self.config
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

        let mut found: BTreeMap<PathBuf, Found> = BTreeMap::new();
        let mut session_dirs = BTreeSet::new();
        let mut refused = BTreeMap::new();
        let mut foreign = 0;
        let mut scanned = BTreeSet::new();
        for root in &roots {
            let scan = discovery::scan_root(root, &is_trusted);
            if let Some(r) = scan.refused {
                refused.insert(root.clone(), r.to_string());
                continue;
            }
            if std::fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
                scanned.insert(root.clone());
            }
            foreign += scan.foreign;
            session_dirs.extend(scan.session_dirs);
            for f in scan.found {
                found.insert(f.file.clone(), f);
            }
        }
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
        for (file, f) in &found {
            let Some(origin) = self.origin_for(file) else {
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
            if std::fs::symlink_metadata(&file).is_ok() && self.origin_for(&file).is_none() {
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
                    && std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink());
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
        watch_set.extend(self.roots.iter().cloned());
        watch_set.extend(session_dirs.iter().cloned());
        self.session_dirs = session_dirs;
        self.watcher.set(&watch_set);
    }

    /// Handles a batch of filesystem event paths. Each event costs what it
    /// concerns: a session folder's own file is re-read, a new entry of a root
    /// is looked at once (one `stat`); only a root appearing or going (or a
    /// configured folder) rescans. Other users' folders are never entered.
    fn handle_events(&mut self, paths: BTreeSet<PathBuf>) {
        let mut files: BTreeSet<PathBuf> = BTreeSet::new();
        let mut new_sessions: Vec<PathBuf> = Vec::new();
        let mut rescan = false;
        let trusted = self.trusted.clone();
        let is_trusted = |uid: u32| trusted.contains(&uid);
        for p in paths {
            let parent = p.parent().map(Path::to_path_buf);
            let name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            if let Some(parent) = &parent
                && self.session_dirs.contains(parent)
            {
                if name == DISCOVERY_FILE {
                    files.insert(p);
                }
                continue;
            }
            if self.session_dirs.contains(&p) {
                // The folder itself was removed, renamed or replaced.
                if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    self.session_dirs.remove(&p);
                }
                files.insert(p.join(DISCOVERY_FILE));
                continue;
            }
            // An attached file, or a file beside it (Ray's temp file before its rename).
            let attached: Vec<PathBuf> = self
                .attachments
                .iter()
                .filter(|a| a.path == p || (a.path.parent() == parent.as_deref() && !a.is_root()))
                .map(|a| a.path.clone())
                .collect();
            if !attached.is_empty() {
                files.extend(attached);
                continue;
            }
            if let Some(root) = parent.as_ref().filter(|d| self.roots.contains(*d)) {
                if name == DISCOVERY_FILE {
                    // Ray ≥ 2.5x keeps a link here to the last writer's session
                    // file: not a cluster of its own; the scan settles a legacy
                    // file that became one.
                    if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                        rescan |= self.registry.get(&p).is_some_and(|c| c.is_live());
                    } else {
                        files.insert(p);
                    }
                } else if discovery::is_session_name(&name.to_string_lossy())
                    && let Ok(Some(folder)) = Folder::open(root)
                    && discovery::trusted_session(&folder, &name, Kind::Unknown, &is_trusted)
                {
                    new_sessions.push(p);
                }
                continue;
            }
            if self.roots.contains(&p) || self.config.watch.contains(&p) {
                rescan = true;
                continue;
            }
            if let Some(parent) = parent.as_ref().filter(|d| self.root_parents.contains(*d)) {
                if name.to_string_lossy().starts_with("ray")
                    && let Ok(Some(folder)) = Folder::open(parent)
                    && discovery::is_default_root(&folder, &name, &is_trusted)
                {
                    rescan = true;
                }
                continue;
            }
            if self
                .attachments
                .iter()
                .any(|a| parent.as_deref() == Some(a.path.as_path()) || p == a.path)
            {
                rescan = true;
            }
        }
        if rescan {
            self.full_scan();
            return;
        }
        if !new_sessions.is_empty() {
            for d in new_sessions {
                self.watcher.add(&d);
                files.insert(d.join(DISCOVERY_FILE));
                self.session_dirs.insert(d);
            }
        }
        for file in files {
            let existing = self
                .registry
                .get(&file)
                .map(|c| (c.found.clone(), c.origin.clone()));
            match existing {
                Some((f, o)) => self.read_and_observe(&f, o),
                None => {
                    if let Some(origin) = self.origin_for(&file) {
                        self.read_and_observe(&Found::for_file(&file), origin);
                    }
                }
            }
        }
    }

    /// Periodic work: liveness, overdue re-reads, deletions, safety-net rescans.
    /// Returns GCS addresses to probe for clusters that missed a rewrite.
    fn tick(&mut self) -> Vec<(PathBuf, Vec<String>)> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let every = if self.watcher.needs_rescan() {
            RESCAN_DEGRADED
        } else {
            RESCAN
        };
        if now.duration_since(self.last_scan) >= every {
            self.full_scan();
        }
        let overdue: Vec<(Found, Origin)> = self
            .registry
            .overdue(now, OVERDUE)
            .into_iter()
            .map(|c| (c.found.clone(), c.origin.clone()))
            .collect();
        let mut probes = Vec::new();
        for (f, o) in overdue {
            self.read_and_observe(&f, o);
            let Some(c) = self.registry.get(&f.file) else {
                continue;
            };
            if !c.is_live() || now.duration_since(c.last_change) <= OVERDUE {
                continue;
            }
            if self
                .probing
                .get(&f.file)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(3))
            {
                continue;
            }
            let trusted = &self.trusted;
            if let Some(addrs) = gcs_addresses(c, &|uid| trusted.contains(&uid), &mut self.warned) {
                self.probing.insert(f.file.clone(), now);
                probes.push((f.file.clone(), addrs));
            }
        }
        for change in self.registry.tick(now, wall) {
            self.log_change(Path::new(""), change);
        }
        // Bookkeeping only for clusters that are still known.
        let registry = &self.registry;
        self.probing
            .retain(|f, _| registry.get(f).is_some_and(|c| c.is_live()));
        let sessions: BTreeSet<&PathBuf> = registry
            .clusters()
            .filter_map(|c| c.found.session_dir.as_ref())
            .collect();
        self.harvested.retain(|d| sessions.contains(d));
        self.targets.collect(now);
        self.harvest_dashboards();
        probes
    }

    /// Copies the Grafana dashboards Ray generated in each live session, once.
    fn harvest_dashboards(&mut self) {
        let dirs: Vec<PathBuf> = self
            .registry
            .clusters()
            .filter(|c| c.is_live())
            .filter_map(|c| c.found.session_dir.clone())
            .filter(|d| !self.harvested.contains(d))
            .collect();
        let mut changed = false;
        for dir in dirs {
            match crate::grafana::harvest(&self.home, &dir, |uid| self.trusted.contains(&uid)) {
                Ok((any, new)) => {
                    changed |= new;
                    if any {
                        self.harvested.insert(dir);
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot copy Ray's dashboards from {}: {e:#}", dir.display())
                }
            }
        }
        if changed
            && let Err(e) =
                crate::grafana::render_ray_dashboards(&self.home, &self.config.prometheus_name)
        {
            tracing::warn!("cannot write Ray's dashboards: {e:#}");
        }
    }

    /// Looks up who holds every endpoint of the live clusters.
    fn verify_endpoints(&mut self) {
        let trusted = &self.trusted;
        let listed = self
            .registry
            .clusters()
            .filter(|c| c.is_live())
            .flat_map(|c| c.targets.iter());
        self.endpoints
            .refresh(listed, &self.locals, &|uid| trusted.contains(&uid));
        self.last_verify = Instant::now();
    }

    /// The target groups to publish: what the registry wants, less every
    /// endpoint whose listener belongs to an untrusted uid.
    fn desired(&self) -> BTreeMap<String, crate::registry::TargetGroup> {
        let mut desired = self.registry.desired(&self.attribution.owners());
        for g in desired.values_mut() {
            g.targets.retain(|t| self.endpoints.admitted(t));
        }
        desired
    }

    /// Writes the target files when anything they depend on changed (or a
    /// previous write failed); returns contested endpoints to resolve.
    fn publish(&mut self) -> Vec<(String, Vec<String>)> {
        let now = Instant::now();
        if self.registry.generation() != self.published.0
            || now.duration_since(self.last_verify) >= Duration::from_secs(1)
        {
            self.verify_endpoints();
        }
        let stamp = (
            self.registry.generation(),
            self.attribution.generation,
            self.endpoints.generation,
        );
        let recheck = now.duration_since(self.last_contest_check) >= Duration::from_secs(10);
        if stamp == self.published && self.targets.last_error.is_none() && !recheck {
            return Vec::new();
        }
        self.last_contest_check = now;
        // A foreign endpoint is never scraped, not even to read its session.
        let contested: BTreeMap<String, Vec<String>> = self
            .registry
            .contested()
            .into_iter()
            .filter(|(ep, _)| self.endpoints.admitted(ep))
            .collect();
        let due = self.attribution.due(&contested, now);
        let desired = self.desired();
        self.targets.sync(&desired, now);
        self.published = stamp;
        due
    }

    fn save_attachments(&self) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(&self.attachments)?;
        bytes.push(b'\n');
        crate::atomic::write(&self.home.attachments(), &bytes, 0o600)
    }

    fn attach(&mut self, req: AttachRequest) -> Result<AttachResponse, Refusal> {
        if let Some(n) = &req.name {
            crate::registry::validate_name(n)?;
        }
        let path = std::fs::canonicalize(&req.path).map_err(|e| {
            format!(
                "cannot attach {}: {e}; pass a Ray temp dir, a session dir or a discovery file",
                req.path.display()
            )
        })?;
        let path = if path.is_dir()
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("session_"))
        {
            path.join(DISCOVERY_FILE)
        } else {
            path
        };
        if let Some(n) = &req.name {
            let taken = self.registry.clusters().any(|c| {
                c.name == *n
                    && c.is_live()
                    && !(c.found.file == path || path.is_dir() && c.found.file.starts_with(&path))
            }) || self
                .attachments
                .iter()
                .any(|a| a.name.as_deref() == Some(n) && a.path != path);
            if taken {
                return Err(Refusal::Invalid(format!(
                    "the name {n:?} is already used by another cluster; choose another --name"
                )));
            }
        }
        if !path.is_dir() {
            discovery::read_listing(&path, self.trusted())
                .map_err(|r| format!("cannot attach {}: it {r}", path.display()))?;
        }
        self.attachments.retain(|a| a.path != path);
        self.attachments.push(Attachment {
            path: path.clone(),
            name: req.name,
        });
        self.save_attachments()
            .map_err(|e| Refusal::Internal(format!("cannot save the attachments: {e:#}")))?;
        self.full_scan();
        let clusters = self
            .registry
            .clusters()
            .filter(|c| c.found.file == path || c.found.file.starts_with(&path))
            .map(|c| c.name.clone())
            .collect();
        Ok(AttachResponse { clusters })
    }

    fn detach(&mut self, name: &str) -> Result<(), Refusal> {
        let by_cluster = self
            .registry
            .by_name(name)
            .filter(|c| matches!(c.origin, Origin::Attached { .. }))
            .map(|c| c.found.file.clone());
        let before = self.attachments.len();
        self.attachments.retain(|a| {
            let named = a.name.as_deref() == Some(name);
            let covers = by_cluster.as_ref().is_some_and(|f| a.covers(f));
            !(named || covers)
        });
        if self.attachments.len() == before {
            return Err(Refusal::NotFound(format!(
                "no attached cluster is named {name:?}; `raywatch status` lists clusters and their source"
            )));
        }
        self.save_attachments()
            .map_err(|e| Refusal::Internal(format!("cannot save the attachments: {e:#}")))?;
        self.full_scan();
        Ok(())
    }

    fn report(
        &self,
        shared: &Shared,
        ready: bool,
        grafana_ready: bool,
        health: &HashMap<(String, String), f64>,
    ) -> StatusReport {
        let owners = self.attribution.owners();
        let contested = self.registry.contested();
        let locals = crate::ports::local_addresses();
        let desired = self.desired();
        // Past discovery (two 5 s ticks), the first scrape and a margin, every
        // published target should have an `up` series; say so when not.
        let grace =
            Duration::from_secs(30).max(self.config.scrape_interval * 3 + Duration::from_secs(10));
        let unscraped_targets: Vec<String> = if ready {
            desired
                .iter()
                .filter(|(name, _)| self.targets.age(name).is_some_and(|a| a > grace))
                .flat_map(|(name, g)| {
                    g.targets
                        .iter()
                        .filter(|t| !health.contains_key(&(name.clone(), (*t).clone())))
                        .map(move |t| format!("{name}/{t}"))
                })
                .collect()
        } else {
            Vec::new()
        };
        let clusters = self
            .registry
            .clusters()
            .map(|c| {
                let published: Vec<String> = desired.get(&c.name).map(|g| g.targets.clone()).unwrap_or_default();
                let targets = published
                    .iter()
                    .map(|t| status::TargetStatus {
                        address: t.clone(),
                        health: match health.get(&(c.name.clone(), t.clone())) {
                            Some(v) if *v >= 1.0 => "up",
                            Some(_) => "down",
                            None => "unknown",
                        }
                        .into(),
                    })
                    .collect();
                let withheld = if c.is_live() {
                    c.targets
                        .iter()
                        .filter(|t| !published.contains(t))
                        .map(|t| status::WithheldTarget {
                            address: t.clone(),
                            reason: match (self.endpoints.foreign(t), owners.get(t)) {
                                (Some((uid, user)), _) => format!("its port is held by uid {uid} ({user}), not by a trusted user: never scraped"),
                                (None, Some(Some(s))) => format!("also listed by another cluster; its series carry session {s}"),
                                (None, Some(None)) => "also listed by another cluster, and no claimant's session could be read from it".into(),
                                (None, None) if contested.contains_key(t) => "also listed by another cluster; checking which one serves it".into(),
                                (None, None) => "not published".into(),
                            },
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let grafana_url = (self.config.grafana_bin.is_some() && c.is_live())
                    .then(|| crate::grafana::cluster_url(self.config.grafana_port, &c.name, &c.found.session));
                let (state, dead_reason) = match &c.state {
                    State::Live => ("live".to_string(), None),
                    State::Dead { reason, .. } => ("dead".to_string(), Some(reason.clone())),
                };
                status::ClusterStatus {
                    name: c.name.clone(),
                    state,
                    dead_reason,
                    session: c.found.session.clone(),
                    session_dir: c.found.session_dir.clone(),
                    temp_dir: c.found.temp_dir.clone(),
                    discovery_file: c.found.file.clone(),
                    user: c.user.clone(),
                    source: match c.origin {
                        Origin::Watched => "watch".into(),
                        Origin::Attached { .. } => "attach".into(),
                    },
                    last_rewrite_unix: unix(c.last_change_wall),
                    grafana_url,
                    targets,
                    withheld,
                    remote_targets: c
                        .targets
                        .iter()
                        .filter(|t| {
                            t.rsplit_once(':')
                                .is_some_and(|(h, _)| !crate::ports::is_local_host(h, &locals))
                        })
                        .cloned()
                        .collect(),
                }
            })
            .collect();
        let rejected = self
            .registry
            .rejections()
            .iter()
            .map(|(p, r)| status::RejectedInput {
                path: p.clone(),
                reason: r.reason.clone(),
                since_unix: unix(r.since),
            })
            .chain(
                self.refused_roots
                    .iter()
                    .map(|(p, r)| status::RejectedInput {
                        path: p.clone(),
                        reason: format!("(a watched root) {r}"),
                        since_unix: unix(shared.started),
                    }),
            )
            .collect();
        let port = shared.port.lock().unwrap().to_owned();
        StatusReport {
            schema: status::SCHEMA,
            home: self.home.root().to_path_buf(),
            daemon: status::DaemonStatus {
                pid: std::process::id(),
                started_unix: unix(shared.started),
                socket: self.home.socket(),
            },
            prometheus: status::PrometheusStatus {
                url: format!("http://127.0.0.1:{port}"),
                port,
                binary: self.config.prometheus_bin.clone(),
                ready,
                user: crate::prometheus::USER.into(),
                password_file: self.home.prometheus_password(),
                datasource_name: self.config.prometheus_name.clone(),
                sd_watcher_errors: 0.0,
                unscraped_targets,
                listener_problem: None,
                port_note: shared.port_note.lock().unwrap().clone(),
                child: shared.prometheus.lock().unwrap().clone(),
            },
            grafana: status::GrafanaStatus {
                installed: self.config.grafana_bin.is_some(),
                binary: self.config.grafana_bin.clone(),
                url: self
                    .config
                    .grafana_bin
                    .as_ref()
                    .map(|_| format!("http://127.0.0.1:{}", self.config.grafana_port)),
                port: self.config.grafana_port,
                ready: grafana_ready,
                admin_password_file: self.home.grafana_password(),
                provisioning_dir: self.home.grafana_dir().join("provisioning"),
                anonymous: self.config.grafana_anonymous,
                child: shared.grafana.lock().unwrap().clone(),
            },
            watch: status::WatchStatus {
                mode: if self.watcher.needs_rescan() {
                    "rescan".into()
                } else {
                    "inotify".into()
                },
                roots: self.roots.iter().cloned().collect(),
                degraded: self.watcher.degraded.clone(),
                foreign_session_dirs: self.foreign_sessions,
            },
            gateway: status::GatewayStatus {
                url: format!("http://127.0.0.1:{}", shared.gateway.port),
                port: shared.gateway.port,
                refused_connections: shared
                    .gateway
                    .counters
                    .refused_connections
                    .load(std::sync::atomic::Ordering::Relaxed),
                refused_requests: shared
                    .gateway
                    .counters
                    .refused_requests
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
            clusters,
            rejected,
            targets_error: self.targets.last_error.clone(),
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Where a cluster's GCS should answer: the port Ray recorded in the session dir
/// (a `gcs_server_port_*` file, read like every file of Ray's folders: see
/// [`crate::untrusted`]), on loopback and on the hosts of its targets.
fn gcs_addresses(
    c: &crate::registry::Cluster,
    trusted: &dyn Fn(u32) -> bool,
    warned: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let folder = Folder::open(c.found.session_dir.as_ref()?).ok()??;
    let name = folder
        .entries()
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| n.to_string_lossy().starts_with("gcs_server_port_"))?;
    let contents = match folder.read(&name, 64, trusted) {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(r) => {
            let msg = format!("not reading {}: it {r}", folder.path.join(&name).display());
            if warned.insert(msg.clone()) {
                tracing::warn!("{msg}");
            }
            return None;
        }
    };
    let port = std::str::from_utf8(&contents.bytes)
        .ok()?
        .trim()
        .parse::<u16>()
        .ok()?;
    let mut hosts: Vec<String> = vec!["127.0.0.1".into()];
    for t in &c.targets {
        if let Some((h, _)) = t.rsplit_once(':')
            && !hosts.iter().any(|x| x == h)
            && hosts.len() < 4
        {
            hosts.push(h.to_string());
        }
    }
    Some(hosts.into_iter().map(|h| format!("{h}:{port}")).collect())
}

/// Whether every address refuses connections outright (the GCS is gone).
async fn all_refused(addrs: &[String]) -> bool {
    for a in addrs {
        match tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(a.as_str()),
        )
        .await
        {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            _ => return false,
        }
    }
    true
}

/// The gateway's port and counters, for `status`.
pub struct GatewayInfo {
    port: u16,
    counters: Arc<crate::gateway::Counters>,
}

/// Binds the gateway's port: the one in the config when it is still free (so
/// Ray clusters started earlier keep reaching the stack), else a fresh one.
fn bind_gateway(
    home: &Home,
    mut config: StackConfig,
) -> Result<(tokio::net::TcpListener, StackConfig)> {
    let bind = |port: u16| {
        let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))?;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    let listener = match (config.gateway_port != 0).then(|| bind(config.gateway_port)) {
        Some(Ok(l)) => l,
        other => {
            if let Some(Err(e)) = other {
                tracing::warn!(
                    "the gateway's port {} is not available ({e}; {}); Ray clusters started with the old RAY_PROMETHEUS_HOST reach nothing of this stack: run `eval \"$(raywatch env)\"` before their next start",
                    config.gateway_port,
                    crate::process::describe_holder(config.gateway_port)
                );
            }
            bind(0).context("cannot listen on 127.0.0.1 for the gateway")?
        }
    };
    let port = listener.local_addr()?.port();
    if port != config.gateway_port {
        config.gateway_port = port;
        config.save(&home.config())?;
    }
    Ok((listener, config))
}

pub struct Shared {
    core: Mutex<Core>,
    wake: tokio::sync::Notify,
    shutdown: tokio::sync::watch::Sender<bool>,
    prometheus: Arc<Mutex<crate::supervisor::ChildStatus>>,
    grafana: Arc<Mutex<crate::supervisor::ChildStatus>>,
    prometheus_sup: Arc<Supervisor>,
    grafana_sup: Option<Arc<Supervisor>>,
    live_config: Arc<Mutex<StackConfig>>,
    grafana_port: u16,
    port: Arc<Mutex<u16>>,
    client: Mutex<crate::prometheus::Client>,
    /// Why Prometheus last moved to another port, if it did.
    port_note: Arc<Mutex<Option<String>>>,
    gateway: GatewayInfo,
    started: SystemTime,
}

/// Runs the daemon for `home` until it is told to stop. Blocks.
pub fn run(home: Home) -> Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    home.ensure()?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(home.daemon_lock())
        .with_context(|| format!("cannot open {}", home.daemon_lock().display()))?;
    let _lock =
        match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err(_) => {
                let pid = std::fs::read_to_string(home.daemon_pid()).unwrap_or_default();
                bail!(
                    "another raywatch daemon (pid {}) already runs the stack in {}",
                    pid.trim(),
                    home.root().display()
                );
            }
        };
    let config = StackConfig::load(&home.config())?.with_context(|| {
        format!(
            "{} is missing; start the stack with `raywatch up`",
            home.config().display()
        )
    })?;
    crate::atomic::write(
        &home.daemon_pid(),
        format!("{}\n", std::process::id()).as_bytes(),
        0o600,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(home.clone(), config));
    let _ = std::fs::remove_file(home.socket());
    let _ = std::fs::remove_file(home.daemon_pid());
    result
}

/// Stops a child a previous daemon left running (it was killed before it could),
/// identified by its recorded PID and a command line naming this home.
fn reap_stale_child(pid_file: &Path, marker: &str, what: &str) {
    if let Some(pid) = crate::process::read_pid(pid_file) {
        let ours = |cmd: &[String]| cmd.iter().any(|a| a.contains(marker));
        if crate::process::alive(pid) && crate::process::cmdline(pid).is_some_and(|c| ours(&c)) {
            tracing::warn!("stopping the {what} a previous daemon left running (pid {pid})");
            crate::process::stop(pid, ours, Duration::ZERO);
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Removes temp files a killed writer left behind (`.<name>.<pid>.tmp`, and
/// anything in `targets.tmp/`), outside the data folders.
fn sweep_temp_files(home: &Home) {
    fn walk(dir: &Path, skip: &[PathBuf], depth: u32) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if skip.contains(&p) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 6 => walk(&p, skip, depth + 1),
                Ok(t) if t.is_file() && name.starts_with('.') && name.ends_with(".tmp") => {
                    let _ = std::fs::remove_file(&p);
                }
                _ => {}
            }
        }
    }
    walk(
        home.root(),
        &[home.prometheus_data(), home.grafana_dir().join("data")],
        0,
    );
    if let Ok(entries) = std::fs::read_dir(home.targets_tmp()) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

async fn serve(home: Home, config: StackConfig) -> Result<()> {
    sweep_temp_files(&home);
    let yml = home.prometheus_yml().display().to_string();
    reap_stale_child(&home.prometheus_pid(), &yml, "Prometheus");
    let ini = home.grafana_dir().join("grafana.ini").display().to_string();
    reap_stale_child(&home.grafana_pid(), &ini, "Grafana");
    // A new password at every start: one that leaked (an old Ray file, a
    // squatter before this fix) stops working with the next `up`.
    let password = crate::prometheus::rotate_password(&home)?;
    crate::prometheus::write_files(&home, &config)?;
    crate::grafana::write_files(&home, &config)?;
    let port = Arc::new(Mutex::new(config.prometheus_port));

    // The gateway for Ray: held by the daemon for its whole life.
    let (gateway_listener, config) = bind_gateway(&home, config)?;
    crate::prometheus::Ports {
        prometheus: config.prometheus_port,
        gateway: config.gateway_port,
    }
    .save(&home)?;
    let port_note: Arc<Mutex<Option<String>>> = Arc::default();

    // Prometheus, restarted with backoff. A port chosen by raywatch that someone
    // took meanwhile is replaced by a fresh one.
    let live_config = Arc::new(Mutex::new(config.clone()));
    let supervisor = {
        let (home, live, port, note) = (
            home.clone(),
            live_config.clone(),
            port.clone(),
            port_note.clone(),
        );
        Supervisor::start("prometheus", move || {
            let mut config = live.lock().unwrap().clone();
            if config.prometheus_port_auto && !crate::ports::is_free(config.prometheus_port) {
                let fresh = crate::ports::free_port()?;
                let msg = format!(
                    "Prometheus moved from port {} to {fresh}: the old port was {}",
                    config.prometheus_port,
                    crate::process::describe_holder(config.prometheus_port)
                );
                tracing::warn!("{msg}");
                *note.lock().unwrap() = Some(msg);
                config.prometheus_port = fresh;
                config.save(&home.config())?;
                crate::prometheus::write_files(&home, &config)?;
                crate::prometheus::Ports {
                    prometheus: fresh,
                    gateway: config.gateway_port,
                }
                .save(&home)?;
                crate::grafana::write_files(&home, &config)?;
                *live.lock().unwrap() = config.clone();
                *port.lock().unwrap() = fresh;
            }
            Ok(Spec {
                program: config.prometheus_bin.clone(),
                args: crate::prometheus::args(&home, &config),
                log: home.prometheus_log(),
                pid_file: home.prometheus_pid(),
            })
        })
    };

    // Grafana, when a binary was found at `up`; supervised like Prometheus.
    let supervisor = Arc::new(supervisor);
    let grafana = config.grafana_bin.clone().map(|bin| {
        let home = home.clone();
        Supervisor::start("grafana", move || {
            Ok(Spec {
                program: bin.clone(),
                args: crate::grafana::command(&bin, &home),
                log: home.grafana_log(),
                pid_file: home.grafana_pid(),
            })
        })
    });
    let grafana = grafana.map(Arc::new);

    let (fs_tx, mut fs_rx) = unbounded_channel::<PathBuf>();
    let attachments: Vec<Attachment> = match std::fs::read(home.attachments()) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::error!(
                "{} is not valid ({e}); starting with no attachments",
                home.attachments().display()
            );
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    let mut trusted: BTreeSet<u32> = config.trust_uids.iter().copied().collect();
    trusted.insert(nix::unistd::geteuid().as_raw());
    let targets = TargetsDir::open(home.targets_dir(), home.targets_tmp())?;
    let mut registry = Registry::new(config.liveness);
    for (temp_dir, session, name) in targets.previous_names() {
        registry.prefer(temp_dir, session, name);
    }
    let core = Core {
        targets,
        registry,
        attachments,
        attribution: Attribution::default(),
        watcher: Watcher::new(fs_tx.clone()),
        roots: BTreeSet::new(),
        root_parents: BTreeSet::new(),
        session_dirs: BTreeSet::new(),
        last_scan: Instant::now(),
        probing: HashMap::new(),
        trusted,
        harvested: BTreeSet::new(),
        published: (u64::MAX, u64::MAX, u64::MAX),
        endpoints: Endpoints::default(),
        last_verify: Instant::now(),
        locals: crate::ports::local_addresses(),
        refused_roots: BTreeMap::new(),
        foreign_sessions: 0,
        warned: BTreeSet::new(),
        last_contest_check: Instant::now(),
        home: home.clone(),
        config: config.clone(),
    };
    let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        wake: tokio::sync::Notify::new(),
        shutdown,
        prometheus: supervisor.status.clone(),
        grafana: grafana
            .as_ref()
            .map(|g| g.status.clone())
            .unwrap_or_default(),
        prometheus_sup: supervisor.clone(),
        grafana_sup: grafana.clone(),
        live_config: live_config.clone(),
        grafana_port: config.grafana_port,
        port: port.clone(),
        client: Mutex::new(crate::prometheus::Client::new(
            config.prometheus_port,
            password.clone(),
            Some(home.prometheus_pid()),
        )),
        port_note: port_note.clone(),
        gateway: GatewayInfo {
            port: config.gateway_port,
            counters: Arc::default(),
        },
        started: SystemTime::now(),
    });

    // The control socket: created under umask 077, then checked to be 0600.
    let _ = std::fs::remove_file(home.socket());
    let listener = tokio::net::UnixListener::bind(home.socket())
        .with_context(|| format!("cannot listen on {}", home.socket().display()))?;
    std::fs::set_permissions(home.socket(), std::fs::Permissions::from_mode(0o600))?;
    let app = axum::Router::new()
        .route("/v1/status", get(status_handler))
        .route("/v1/attach", post(attach_handler))
        .route("/v1/detach", post(detach_handler))
        .route("/v1/shutdown", post(shutdown_handler))
        .route("/v1/config", post(config_handler))
        .with_state(shared.clone());
    let gateway = {
        let upstream = Arc::new(crate::gateway::Upstream {
            client: {
                let shared = shared.clone();
                Box::new(move || shared.client.lock().unwrap().clone())
            },
            counters: shared.gateway.counters.clone(),
        });
        let listener = crate::gateway::OwnerOnly::new(
            gateway_listener,
            nix::unistd::geteuid().as_raw(),
            shared.gateway.counters.clone(),
        );
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, crate::gateway::router(upstream))
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
        })
    };
    let mut api_shutdown = shutdown_rx.clone();
    let api = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_shutdown.changed().await;
            })
            .await;
    });

    let (owner_tx, mut owner_rx) = unbounded_channel::<(String, Option<String>)>();
    let (dead_tx, mut dead_rx) = unbounded_channel::<(PathBuf, String)>();
    let http = reqwest::Client::builder().no_proxy().build()?;
    {
        let mut core = shared.core.lock().unwrap();
        core.full_scan();
        let due = core.publish();
        drop(core);
        spawn_resolves(&http, due, &owner_tx);
    }
    tracing::info!(
        "raywatch daemon up for {} (pid {})",
        home.root().display(),
        std::process::id()
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut probes = Vec::new();
        tokio::select! {
            Some(p) = fs_rx.recv() => {
                let mut batch = BTreeSet::from([p]);
                tokio::time::sleep(DEBOUNCE).await;
                while let Ok(p) = fs_rx.try_recv() {
                    batch.insert(p);
                }
                shared.core.lock().unwrap().handle_events(batch);
            }
            _ = tick.tick() => {
                probes = shared.core.lock().unwrap().tick();
                let p = *port.lock().unwrap();
                let mut client = shared.client.lock().unwrap();
                if client.port != p {
                    *client = crate::prometheus::Client::new(p, password.clone(), Some(home.prometheus_pid()));
                }
            }
            Some((ep, owner)) = owner_rx.recv() => {
                shared.core.lock().unwrap().attribution.record(ep, owner, Instant::now());
            }
            Some((file, reason)) = dead_rx.recv() => {
                let mut core = shared.core.lock().unwrap();
                let change = core.registry.declare_dead(&file, SystemTime::now(), reason);
                core.log_change(&file, change);
            }
            _ = shared.wake.notified() => {}
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = shutdown_rx.changed() => { tracing::info!("stop requested"); break; }
        }
        for (file, addrs) in probes {
            let tx = dead_tx.clone();
            tokio::spawn(async move {
                if all_refused(&addrs).await {
                    let _ = tx.send((
                        file,
                        format!("its GCS refuses connections ({})", addrs.join(", ")),
                    ));
                }
            });
        }
        let due = shared.core.lock().unwrap().publish();
        spawn_resolves(&http, due, &owner_tx);
    }
    let _ = shared.shutdown.send(true);
    let _ = api.await;
    gateway.abort();
    if let Some(g) = &grafana {
        g.stop().await;
    }
    supervisor.stop().await;
    drop(fs_tx);
    Ok(())
}

fn spawn_resolves(
    http: &reqwest::Client,
    due: Vec<(String, Vec<String>)>,
    tx: &UnboundedSender<(String, Option<String>)>,
) {
    for (ep, claimants) in due {
        let (http, tx) = (http.clone(), tx.clone());
        tokio::spawn(async move {
            let owner = crate::attribution::resolve(&http, &ep, &claimants).await;
            match &owner {
                Some(s) => tracing::info!(
                    "{ep} is listed by {} clusters; it serves session {s}",
                    claimants.len()
                ),
                None => tracing::warn!(
                    "{ep} is listed by {} clusters; none could be confirmed as its owner",
                    claimants.len()
                ),
            }
            let _ = tx.send((ep, owner));
        });
    }
}

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<ApiError>)>;

fn api_error(code: StatusCode, error: String) -> (StatusCode, Json<ApiError>) {
    (code, Json(ApiError { error }))
}

async fn status_handler(AxState(shared): AxState<Arc<Shared>>) -> ApiResult<StatusReport> {
    let client = shared.client.lock().unwrap().clone();
    let readiness = client.readiness().await;
    let ready = readiness == crate::prometheus::Readiness::Ready;
    let listener_problem = match readiness {
        crate::prometheus::Readiness::Refused(e) => Some(e.to_string()),
        _ => None,
    };
    let mut health = HashMap::new();
    let mut sd_errors = 0.0;
    if ready {
        let up = format!("up{{job=\"{}\"}}", crate::prometheus::RAY_JOB);
        if let Ok(samples) = client.query(&up).await {
            for s in samples {
                let (Some(c), Some(i)) = (s.metric.get("ray_io_cluster"), s.metric.get("instance"))
                else {
                    continue;
                };
                health.insert(
                    (c.clone(), i.clone()),
                    s.value.1.parse::<f64>().unwrap_or(0.0),
                );
            }
        }
        if let Ok(samples) = client
            .query("sum(prometheus_sd_file_watcher_errors_total)")
            .await
        {
            sd_errors = samples
                .first()
                .and_then(|s| s.value.1.parse().ok())
                .unwrap_or(0.0);
        }
    }
    let grafana_ready = shared.grafana.lock().unwrap().pid.is_some()
        && reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client")
            .get(format!(
                "http://127.0.0.1:{}/api/health",
                shared.grafana_port
            ))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
    let core = shared.core.lock().unwrap();
    let mut report = core.report(&shared, ready, grafana_ready, &health);
    report.prometheus.sd_watcher_errors = sd_errors;
    report.prometheus.listener_problem = listener_problem;
    Ok(Json(report))
}

async fn attach_handler(
    AxState(shared): AxState<Arc<Shared>>,
    Json(req): Json<AttachRequest>,
) -> ApiResult<AttachResponse> {
    let result = shared.core.lock().unwrap().attach(req);
    shared.wake.notify_one();
    result.map(Json).map_err(refused)
}

async fn detach_handler(
    AxState(shared): AxState<Arc<Shared>>,
    Json(req): Json<DetachRequest>,
) -> ApiResult<serde_json::Value> {
    let result = shared.core.lock().unwrap().detach(&req.name);
    shared.wake.notify_one();
    result
        .map(|()| Json(serde_json::json!({})))
        .map_err(refused)
}

/// An error answer whose HTTP status comes from the refusal's kind.
fn refused(r: Refusal) -> (StatusCode, Json<ApiError>) {
    let code = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    api_error(code, r.to_string())
}

async fn shutdown_handler(AxState(shared): AxState<Arc<Shared>>) -> Json<serde_json::Value> {
    let _ = shared.shutdown.send(true);
    Json(serde_json::json!({}))
}

async fn config_handler(
    AxState(shared): AxState<Arc<Shared>>,
    Json(wanted): Json<StackConfig>,
) -> ApiResult<crate::api::ReconfigureResponse> {
    let bad = |e: String| api_error(StatusCode::BAD_REQUEST, e);
    let mut core = shared.core.lock().unwrap();
    // The live settings, which include a port the supervisor moved Prometheus to.
    let old = shared.live_config.lock().unwrap().clone();
    if wanted.prometheus_port != old.prometheus_port
        || wanted.prometheus_bin != old.prometheus_bin
        || wanted.grafana_port != old.grafana_port
        || wanted.grafana_bin != old.grafana_bin
    {
        return Err(bad(
            "ports and binaries change only on a fresh start (raywatch down, then up)".into(),
        ));
    }
    // Validated before anything is replaced: a bad config keeps the last good one.
    crate::prometheus::write_files(&core.home, &wanted).map_err(|e| bad(format!("{e:#}")))?;
    crate::grafana::write_files(&core.home, &wanted).map_err(|e| bad(format!("{e:#}")))?;
    wanted
        .save(&core.home.config())
        .map_err(|e| bad(format!("{e:#}")))?;
    let mut changes = Vec::new();
    let mut note = |what: &str, from: String, to: String| {
        if from != to {
            changes.push(format!("{what} {from} -> {to}"));
        }
    };
    let d = |d: Duration| humantime::format_duration(d).to_string();
    note(
        "scrape interval",
        d(old.scrape_interval),
        d(wanted.scrape_interval),
    );
    note("retention", d(old.retention), d(wanted.retention));
    note("liveness", d(old.liveness), d(wanted.liveness));
    note(
        "default roots",
        old.default_roots.to_string(),
        wanted.default_roots.to_string(),
    );
    note(
        "watch",
        format!("{:?}", old.watch),
        format!("{:?}", wanted.watch),
    );
    note(
        "trusted uids",
        format!("{:?}", old.trust_uids),
        format!("{:?}", wanted.trust_uids),
    );
    note(
        "grafana anonymous",
        old.grafana_anonymous.to_string(),
        wanted.grafana_anonymous.to_string(),
    );

    *shared.live_config.lock().unwrap() = wanted.clone();
    core.registry.set_liveness(wanted.liveness);
    core.trusted = wanted
        .trust_uids
        .iter()
        .copied()
        .chain([nix::unistd::geteuid().as_raw()])
        .collect();
    core.config = wanted.clone();
    core.full_scan();
    drop(core);
    if wanted.retention != old.retention {
        shared.prometheus_sup.restart();
        changes.push("Prometheus restarted (retention is a flag)".into());
    } else if wanted.scrape_interval != old.scrape_interval {
        shared
            .prometheus_sup
            .signal(nix::sys::signal::Signal::SIGHUP);
        changes.push("Prometheus reloaded (SIGHUP)".into());
    }
    if (wanted.grafana_anonymous != old.grafana_anonymous
        || wanted.scrape_interval != old.scrape_interval)
        && let Some(g) = &shared.grafana_sup
    {
        g.restart();
    }
    tracing::info!("configuration changed: {}", changes.join("; "));
    shared.wake.notify_one();
    Ok(Json(crate::api::ReconfigureResponse { changes }))
}
