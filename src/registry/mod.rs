//! The cluster registry: which Ray clusters exist, their names, liveness and targets.
//!
//! Pure state: the daemon feeds it what it read from disk and the clock, and asks
//! it which target groups should exist. One cluster per discovery file (that is,
//! per Ray session for Ray ≥ 2.5x, per temp dir before).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::discovery::{Found, Listing, Rejection};

mod cluster;
mod naming;

pub use cluster::{Cluster, MAX_LOST, Origin, RejectionRecord, State};
use naming::{base_name, short_hash};
pub use naming::{labels, sanitize_name, validate_name};

/// At most this many dead clusters are remembered for `status`.
pub const MAX_DEAD: usize = 200;

/// One file_sd target group, as written to `<home>/targets/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<&'static str, String>,
}

/// Who owns an endpoint that several live clusters list: the session found in
/// its series, or `None` when that could not be read.
pub type Owners = HashMap<String, Option<String>>;

/// What changed in one observation, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Joined(String),
    Revived(String),
    Died(String, String),
    Rejected(String),
}

pub struct Registry {
    /// Keyed by the discovery file's bytes: ordered and compared as bytes, not
    /// path components (a component-wise compare per lookup was a fifth of an
    /// idle daemon's time with 1000 clusters).
    clusters: BTreeMap<OsString, Cluster>,
    /// Names a previous daemon gave, by (temp dir, session): kept across restarts.
    preferred: HashMap<(PathBuf, String), String>,
    rejections: BTreeMap<PathBuf, RejectionRecord>,
    liveness: Duration,
    /// How long a dead cluster stays visible in `status`.
    keep_dead: Duration,
    /// Bumped whenever what [`Registry::desired`] depends on changes: a rewrite
    /// with the same content (Ray's idle heartbeat) leaves it alone.
    generation: u64,
    /// The live clusters listing each endpoint, kept as clusters change (so a
    /// join or leave costs what it touches, not a pass over every cluster).
    claims: HashMap<String, BTreeSet<PathBuf>>,
    /// Endpoints listed by more than one live cluster.
    contested: BTreeSet<String>,
    /// Files whose published group may have changed since [`Registry::take_changes`].
    changed_files: BTreeSet<PathBuf>,
    /// Endpoints whose set of live claimants changed since [`Registry::take_changes`].
    changed_endpoints: BTreeSet<String>,
}

/// What a cluster contributes to the published groups: its name and targets, while live.
type Contribution = Option<(String, Vec<String>)>;

impl Registry {
    pub fn new(liveness: Duration) -> Registry {
        Registry {
            clusters: BTreeMap::new(),
            preferred: HashMap::new(),
            rejections: BTreeMap::new(),
            liveness,
            keep_dead: Duration::from_secs(600),
            generation: 0,
            claims: HashMap::new(),
            contested: BTreeSet::new(),
            changed_files: BTreeSet::new(),
            changed_endpoints: BTreeSet::new(),
        }
    }

    fn contribution(&self, file: &Path) -> Contribution {
        self.clusters
            .get(file.as_os_str())
            .filter(|c| c.is_live())
            .map(|c| (c.name.clone(), c.targets.clone()))
    }

    /// Records what a change of the cluster at `file` did to the published
    /// groups, given its contribution before: the file is marked changed, and
    /// the claims of the endpoints it added or dropped are updated.
    fn settle(&mut self, file: &Path, before: Contribution) {
        let after = self.contribution(file);
        if after == before {
            return;
        }
        self.changed_files.insert(file.to_path_buf());
        let old = before.map(|(_, t)| t).unwrap_or_default();
        let new = after.map(|(_, t)| t).unwrap_or_default();
        for ep in old.iter().filter(|t| !new.contains(t)) {
            if let Some(files) = self.claims.get_mut(ep) {
                files.remove(file);
                if files.is_empty() {
                    self.claims.remove(ep);
                }
            }
            self.claims_changed(ep);
        }
        for ep in new.iter().filter(|t| !old.contains(t)) {
            self.claims
                .entry(ep.clone())
                .or_default()
                .insert(file.to_path_buf());
            self.claims_changed(ep);
        }
    }

    fn claims_changed(&mut self, ep: &str) {
        if self.claims.get(ep).is_some_and(|f| f.len() > 1) {
            self.contested.insert(ep.to_string());
        } else {
            self.contested.remove(ep);
        }
        self.changed_endpoints.insert(ep.to_string());
    }

    /// The files whose published group may have changed, and the endpoints
    /// whose claimants changed, since the last call.
    pub fn take_changes(&mut self) -> (BTreeSet<PathBuf>, BTreeSet<String>) {
        (
            std::mem::take(&mut self.changed_files),
            std::mem::take(&mut self.changed_endpoints),
        )
    }

    /// The live clusters (their files) that list `endpoint`.
    pub fn claimants(&self, endpoint: &str) -> impl Iterator<Item = &PathBuf> {
        self.claims.get(endpoint).into_iter().flatten()
    }

    /// Whether a live cluster lists `endpoint`.
    pub fn is_listed(&self, endpoint: &str) -> bool {
        self.claims.contains_key(endpoint)
    }

    /// Remembers the name a previous daemon gave to a session, so that a restart
    /// of raywatch does not rename clusters (and so split their series).
    pub fn prefer(&mut self, temp_dir: PathBuf, session: String, name: String) {
        self.preferred.insert((temp_dir, session), name);
    }

    /// Changes whenever the published target groups may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn set_liveness(&mut self, bound: Duration) {
        self.liveness = bound;
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.values()
    }

    pub fn get(&self, file: &Path) -> Option<&Cluster> {
        self.clusters.get(file.as_os_str())
    }

    pub fn rejections(&self) -> &BTreeMap<PathBuf, RejectionRecord> {
        &self.rejections
    }

    pub fn by_name(&self, name: &str) -> Option<&Cluster> {
        self.clusters.values().find(|c| c.name == name)
    }

    /// Records what reading `found.file` gave.
    pub fn observe(
        &mut self,
        found: &Found,
        origin: Origin,
        read: Result<Option<Listing>, Rejection>,
        now: Instant,
        wall: SystemTime,
    ) -> Change {
        // Ray's idle heartbeat: a live cluster rewrote the same targets. Only
        // its clock moves, and nothing published can change (the common case:
        // 200 a second with 1000 clusters, so no copies of its targets here).
        if let Ok(Some(listing)) = &read
            && let Some(c) = self.clusters.get_mut(found.file.as_os_str())
            && c.is_live()
            && c.origin == origin
            && c.targets == listing.targets
        {
            if c.mtime != listing.mtime {
                c.mtime = listing.mtime;
                c.last_change = now;
                c.last_change_wall = wall;
            }
            c.file_gone = None;
            if !self.rejections.is_empty() {
                self.rejections.remove(&found.file);
            }
            return Change::None;
        }
        let file = found.file.clone();
        let before = self.contribution(&file);
        let change = self.observe_inner(found, origin, read, now, wall);
        self.settle(&file, before);
        change
    }

    fn observe_inner(
        &mut self,
        found: &Found,
        origin: Origin,
        read: Result<Option<Listing>, Rejection>,
        now: Instant,
        wall: SystemTime,
    ) -> Change {
        let file = found.file.clone();
        match read {
            Ok(None) => {
                self.rejections.remove(&file);
                self.mark_dead(&file, wall, "its discovery file is gone".into())
            }
            Err(rejection) => {
                let transient = rejection.is_transient();
                let reason = rejection.to_string();
                let fresh = self
                    .rejections
                    .get(&file)
                    .is_none_or(|r| r.reason != reason);
                if fresh {
                    self.rejections.insert(
                        file.clone(),
                        RejectionRecord {
                            reason: reason.clone(),
                            since: wall,
                            transient,
                        },
                    );
                    Change::Rejected(reason)
                } else {
                    Change::None
                }
            }
            Ok(Some(listing)) => {
                self.rejections.remove(&file);
                self.accept(found, origin, listing, now, wall)
            }
        }
    }

    fn accept(
        &mut self,
        found: &Found,
        origin: Origin,
        listing: Listing,
        now: Instant,
        wall: SystemTime,
    ) -> Change {
        let stale_on_disk = wall
            .duration_since(listing.mtime)
            .is_ok_and(|age| age > self.liveness);
        if self.clusters.contains_key(found.file.as_os_str()) {
            return self.refresh(found, origin, listing, now, wall, stale_on_disk);
        }
        let state = if stale_on_disk {
            State::Dead {
                since: wall,
                reason: format!(
                    "its discovery file was last written {} ago (a cluster rewrites it every 5 s)",
                    humantime::format_duration(Duration::from_secs(
                        wall.duration_since(listing.mtime)
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                    ))
                ),
            }
        } else {
            State::Live
        };
        let cluster = Cluster {
            name: String::new(),
            found: found.clone(),
            origin,
            uid: listing.uid,
            user: crate::process::user_name(listing.uid),
            targets: listing.targets,
            mtime: listing.mtime,
            last_change: now,
            last_change_wall: wall,
            state,
            slurm: None,
            gcs_port: None,
            gcs_seen: None,
            file_gone: None,
            lost: Vec::new(),
        };
        let live = cluster.is_live();
        self.generation += 1;
        self.clusters
            .insert(found.file.clone().into_os_string(), cluster);
        self.rename(&found.file);
        let name = self.clusters[found.file.as_os_str()].name.clone();
        if live {
            Change::Joined(name)
        } else {
            Change::None
        }
    }

    /// A known cluster's file read again: its targets and times follow the file,
    /// and a dead cluster whose file changed (freshly) is live again.
    fn refresh(
        &mut self,
        found: &Found,
        origin: Origin,
        listing: Listing,
        now: Instant,
        wall: SystemTime,
        stale_on_disk: bool,
    ) -> Change {
        let c = self
            .clusters
            .get_mut(found.file.as_os_str())
            .expect("present");
        let changed = c.mtime != listing.mtime || c.targets != listing.targets;
        if c.targets != listing.targets {
            self.generation += 1;
        }
        let before = std::mem::replace(&mut c.targets, listing.targets);
        if c.is_live() {
            c.note_losses(&before, wall);
        }
        c.file_gone = None;
        if changed {
            c.mtime = listing.mtime;
            c.last_change = now;
            c.last_change_wall = wall;
        }
        let origin_changed = c.origin != origin;
        c.origin = origin;
        if origin_changed {
            let file = found.file.clone();
            self.rename(&file);
        }
        let c = self
            .clusters
            .get_mut(found.file.as_os_str())
            .expect("present");
        if !c.is_live() && changed && !stale_on_disk {
            c.state = State::Live;
            // A temp-dir-level file revived by a new session: its GCS is learnt again.
            c.gcs_seen = None;
            c.gcs_port = None;
            self.generation += 1;
            return Change::Revived(c.name.clone());
        }
        Change::None
    }

    /// Gives the cluster at `file` its base name, or a suffixed one when a live
    /// cluster already holds it. A dead holder yields its name (and its entry).
    fn rename(&mut self, file: &Path) {
        self.generation += 1;
        let c = &self.clusters[file.as_os_str()];
        let remembered = match c.origin {
            Origin::Attached { name: Some(_) } => None,
            _ => self
                .preferred
                .get(&(c.found.temp_dir.clone(), c.found.session.clone()))
                .cloned(),
        };
        let base = base_name(c);
        if let Some(name) = remembered
            && self
                .clusters
                .iter()
                .all(|(f, o)| f == file.as_os_str() || o.name != name || !o.is_live())
        {
            self.clusters
                .retain(|f, o| f == file.as_os_str() || o.name != name);
            self.clusters
                .get_mut(file.as_os_str())
                .expect("present")
                .name = name;
            return;
        }
        let holder = self
            .clusters
            .iter()
            .find(|(f, o)| *f != file.as_os_str() && o.name == base)
            .map(|(f, o)| (f.clone(), o.is_live()));
        let name = match holder {
            None => base,
            Some((f, false)) => {
                self.clusters.remove(&f);
                base
            }
            Some((_, true)) => {
                let c = &self.clusters[file.as_os_str()];
                let pid = crate::ray::session_pid(&c.found.session).to_string();
                let candidate = format!("{base}-{pid}");
                if !pid.is_empty() && self.clusters.values().all(|o| o.name != candidate) {
                    candidate
                } else {
                    format!("{base}-{}", short_hash(&file.to_string_lossy()))
                }
            }
        };
        self.clusters
            .get_mut(file.as_os_str())
            .expect("present")
            .name = name;
    }

    fn mark_dead(&mut self, file: &Path, wall: SystemTime, reason: String) -> Change {
        match self.clusters.get_mut(file.as_os_str()) {
            Some(c) if c.is_live() => {
                c.state = State::Dead {
                    since: wall,
                    reason: reason.clone(),
                };
                let name = c.name.clone();
                self.generation += 1;
                Change::Died(name, reason)
            }
            _ => Change::None,
        }
    }

    /// Live clusters whose Slurm job was not looked up yet.
    pub fn slurm_unknown(&self) -> Vec<(PathBuf, String, u32)> {
        self.clusters
            .values()
            .filter(|c| c.is_live() && c.slurm.is_none())
            .map(|c| (c.found.file.clone(), c.found.session.clone(), c.uid))
            .collect()
    }

    /// Records a cluster's Slurm job (once per session).
    pub fn set_slurm(&mut self, file: &Path, job: Option<crate::slurm::SlurmJob>) {
        if let Some(c) = self.clusters.get_mut(file.as_os_str()) {
            c.slurm = Some(job);
            self.generation += 1;
        }
    }

    /// Records the GCS port learnt for the cluster at `file`.
    pub fn set_gcs_port(&mut self, file: &Path, port: u16) {
        if let Some(c) = self.clusters.get_mut(file.as_os_str()) {
            c.gcs_port = Some(port);
        }
    }

    /// Records that a process of the live cluster at `file` listens on its GCS port.
    pub fn gcs_seen(&mut self, file: &Path, now: Instant) {
        if let Some(c) = self.clusters.get_mut(file.as_os_str())
            && c.is_live()
        {
            c.gcs_seen = Some(now);
        }
    }

    /// Records that the live cluster at `file` lost its discovery file (moved or
    /// deleted by someone) without being declared dead: the liveness bound and
    /// its GCS decide.
    pub fn file_gone(&mut self, file: &Path, wall: SystemTime) {
        if let Some(c) = self.clusters.get_mut(file.as_os_str())
            && c.is_live()
            && c.file_gone.is_none()
        {
            c.file_gone = Some(wall);
        }
    }

    /// Declares a live cluster dead for a reason found elsewhere (its GCS refused).
    pub fn declare_dead(&mut self, file: &Path, wall: SystemTime, reason: String) -> Change {
        let before = self.contribution(file);
        let change = self.mark_dead(file, wall, reason);
        self.settle(file, before);
        change
    }

    /// Stops following a file (detached, or its root is no longer watched).
    pub fn forget(&mut self, file: &Path) -> Option<Cluster> {
        self.rejections.remove(file);
        self.generation += 1;
        let before = self.contribution(file);
        let gone = self.clusters.remove(file.as_os_str());
        self.settle(file, before);
        gone
    }

    /// Forgets a rejection whose file is no longer looked at.
    pub fn forget_rejection(&mut self, file: &Path) {
        self.rejections.remove(file);
    }

    /// Applies the liveness bound; returns what died. Also drops long-dead entries.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) -> Vec<Change> {
        let mut changes = Vec::new();
        let bound = self.liveness;
        // A cluster whose file raywatch cannot read for want of its own
        // resources is not known to be dead: its liveness waits for a read.
        let unread = |f: &OsString| {
            !self.rejections.is_empty()
                && self
                    .rejections
                    .get(Path::new(f))
                    .is_some_and(|r| r.transient)
        };
        let files: Vec<OsString> = self
            .clusters
            .iter()
            .filter(|(f, c)| c.is_live() && now.duration_since(c.last_sign()) > bound && !unread(f))
            .map(|(f, _)| f.clone())
            .collect();
        for f in files {
            let reason = silence_reason(&self.clusters[&f], now, bound);
            let f = Path::new(&f);
            let before = self.contribution(f);
            changes.push(self.mark_dead(f, wall, reason));
            self.settle(f, before);
        }
        // Dead clusters stay visible for a while, but a bounded number of them:
        // under heavy churn memory stays flat.
        let dead_count = self.clusters.values().filter(|c| !c.is_live()).count();
        if dead_count > MAX_DEAD {
            let mut dead: Vec<(SystemTime, OsString)> = self
                .clusters
                .iter()
                .filter_map(|(f, c)| match &c.state {
                    State::Dead { since, .. } => Some((*since, f.clone())),
                    State::Live => None,
                })
                .collect();
            dead.sort();
            for (_, f) in dead.iter().take(dead.len() - MAX_DEAD) {
                self.clusters.remove(f);
            }
        }
        let keep = self.keep_dead;
        self.clusters.retain(|_, c| match &c.state {
            State::Live => true,
            State::Dead { since, .. } => wall
                .duration_since(*since)
                .map(|d| d < keep)
                .unwrap_or(true),
        });
        changes
    }

    /// Live clusters that missed at least one rewrite, oldest first: the daemon
    /// re-reads their files and asks their GCS whether they are still there.
    pub fn overdue(&self, now: Instant, after: Duration) -> Vec<&Cluster> {
        self.clusters
            .values()
            .filter(|c| c.is_live() && now.duration_since(c.last_change) > after)
            .collect()
    }

    /// Endpoints listed by more than one live cluster, with the claimants' sessions.
    pub fn contested(&self) -> BTreeMap<String, Vec<String>> {
        self.contested
            .iter()
            .map(|ep| {
                let sessions = self
                    .claimants(ep)
                    .filter_map(|f| self.clusters.get(f.as_os_str()))
                    .map(|c| c.found.session.clone())
                    .collect();
                (ep.clone(), sessions)
            })
            .collect()
    }

    /// Whether more than one live cluster lists `endpoint`.
    pub fn is_contested(&self, endpoint: &str) -> bool {
        self.contested.contains(endpoint)
    }

    /// Whether a live cluster may publish `target`: it lists it alone, or its
    /// session was found to own it.
    fn publishable<'o>(
        &self,
        c: &Cluster,
        target: &str,
        owner: &dyn Fn(&str) -> Option<&'o str>,
    ) -> bool {
        !self.is_contested(target) || owner(target) == Some(c.found.session.as_str())
    }

    /// The target group the cluster at `file` should publish now (with its
    /// name), when it is live: its targets less contested ones it does not own
    /// and those `admitted` refuses.
    pub fn group_for<'o>(
        &self,
        file: &Path,
        owner: &dyn Fn(&str) -> Option<&'o str>,
        admitted: &dyn Fn(&str) -> bool,
    ) -> Option<(String, TargetGroup)> {
        let c = self
            .clusters
            .get(file.as_os_str())
            .filter(|c| c.is_live())?;
        let targets = c
            .targets
            .iter()
            .filter(|t| self.publishable(c, t, owner) && admitted(t))
            .cloned()
            .collect();
        Some((
            c.name.clone(),
            TargetGroup {
                targets,
                labels: labels(c),
            },
        ))
    }

    /// The target groups that should exist now, by cluster name. An endpoint
    /// listed by several live clusters goes only to the one whose session owns it,
    /// and to none while that is unknown.
    pub fn desired(&self, owners: &Owners) -> BTreeMap<String, TargetGroup> {
        let owner = |t: &str| owners.get(t).and_then(|o| o.as_deref());
        self.clusters
            .keys()
            .filter_map(|f| self.group_for(Path::new(f), &owner, &|_| true))
            .collect()
    }
}

/// Why a live cluster's silence outlasted the liveness bound.
fn silence_reason(c: &Cluster, now: Instant, bound: Duration) -> String {
    let ago = |t: Instant| {
        humantime::format_duration(Duration::from_secs(now.duration_since(t).as_secs()))
    };
    let file = match c.file_gone {
        Some(_) => format!(
            "its discovery file is gone from {} and was last rewritten {} ago",
            c.found.file.display(),
            ago(c.last_change)
        ),
        None => format!(
            "its discovery file was not rewritten for {}",
            ago(c.last_change)
        ),
    };
    let gcs = match (c.gcs_port, c.gcs_seen) {
        (Some(port), Some(seen)) => format!(
            ", and its GCS (port {port}) was last found {} ago",
            ago(seen)
        ),
        (Some(port), None) => format!(", and its GCS (port {port}) was not found listening"),
        (None, _) => String::new(),
    };
    format!(
        "{file}{gcs} (the bound is {})",
        humantime::format_duration(bound)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(temp: &str, session: &str) -> Found {
        Found::for_file(&PathBuf::from(format!(
            "{temp}/{session}/prom_metrics_service_discovery.json"
        )))
    }

    fn listing(targets: &[&str], mtime: SystemTime) -> Result<Option<Listing>, Rejection> {
        Ok(Some(Listing {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            mtime,
            uid: nix::unistd::geteuid().as_raw(),
        }))
    }

    #[test]
    fn a_worker_a_live_cluster_stops_listing_is_lost_until_listed_again() {
        let mut r = Registry::new(Duration::from_secs(20));
        let t0 = SystemTime::now();
        let now = Instant::now();
        let a = found("/tmp/ray_a", "session_x_111");
        let (head, b, c) = ("10.213.1.1:8080", "10.213.2.1:8080", "10.213.3.1:8080");
        // Ray lists the nodes, then the head's autoscaler and dashboard.
        let (auto, dash) = ("10.213.1.1:44217", "10.213.1.1:44227");
        let see = |r: &mut Registry, targets: &[&str], secs: u64| {
            let wall = t0 + Duration::from_secs(secs);
            r.observe(&a, Origin::Watched, listing(targets, wall), now, wall);
        };
        see(&mut r, &[head, b, c, auto, dash], 0);
        see(&mut r, &[head, b, auto, dash], 5);
        see(&mut r, &[head, b, auto, dash], 10);
        let lost = |r: &Registry| {
            r.get(&a.file)
                .unwrap()
                .still_lost()
                .iter()
                .map(|l| {
                    (
                        l.endpoint.clone(),
                        l.at.duration_since(t0).unwrap().as_secs(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(lost(&r), [(c.to_string(), 5)]);
        // A worker back on the same address is listed, not lost; its loss stays recorded.
        see(&mut r, &[head, b, c, auto, dash], 15);
        assert!(lost(&r).is_empty());
        assert_eq!(r.get(&a.file).unwrap().lost.len(), 1);
        see(&mut r, &[head, auto, dash], 20);
        assert_eq!(lost(&r), [(b.to_string(), 20), (c.to_string(), 20)]);
    }

    #[test]
    fn a_dead_clusters_targets_are_no_loss_and_losses_are_bounded() {
        let mut r = Registry::new(Duration::from_secs(20));
        let t0 = SystemTime::now();
        let now = Instant::now();
        let a = found("/tmp/ray_a", "session_x_111");
        for i in 0..(MAX_LOST as u64 + 10) {
            let wall = t0 + Duration::from_secs(i);
            let (keep, gone) = ("127.0.0.1:1".to_string(), format!("10.0.0.2:{}", 1000 + i));
            r.observe(
                &a,
                Origin::Watched,
                listing(&[&gone, &keep], wall),
                now,
                wall,
            );
        }
        let c = r.get(&a.file).unwrap();
        assert_eq!(c.lost.len(), MAX_LOST);
        assert_eq!(
            c.lost.last().unwrap().endpoint,
            format!("10.0.0.2:{}", 1000 + MAX_LOST as u64 + 8)
        );
        // Dead (its file stale), then rewritten with fewer targets: a revival, not a loss.
        let late = t0 + Duration::from_secs(500);
        r.declare_dead(&a.file, late, "test".into());
        let before = r.get(&a.file).unwrap().lost.len();
        r.observe(
            &a,
            Origin::Watched,
            listing(&["127.0.0.1:1"], late),
            now,
            late,
        );
        assert_eq!(r.get(&a.file).unwrap().lost.len(), before);
    }

    #[test]
    fn names_are_readable_unique_and_reused_after_death() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let a = found("/tmp/ray_a", "session_x_111");
        let b = found("/tmp/ray_a", "session_y_222");
        r.observe(
            &a,
            Origin::Watched,
            listing(&["127.0.0.1:1"], wall),
            now,
            wall,
        );
        r.observe(
            &b,
            Origin::Watched,
            listing(&["127.0.0.1:2"], wall),
            now,
            wall,
        );
        let user = crate::process::user_name(nix::unistd::geteuid().as_raw());
        assert_eq!(r.get(&a.file).unwrap().name, format!("{user}-ray_a"));
        assert_eq!(r.get(&b.file).unwrap().name, format!("{user}-ray_a-222"));

        // The first dies; a restart of the same temp dir takes the plain name again.
        r.observe(&a, Origin::Watched, Ok(None), now, wall);
        let c = found("/tmp/ray_a", "session_z_333");
        r.observe(
            &c,
            Origin::Watched,
            listing(&["127.0.0.1:3"], wall),
            now,
            wall,
        );
        assert_eq!(r.get(&c.file).unwrap().name, format!("{user}-ray_a"));
        assert!(
            r.get(&a.file).is_none(),
            "the dead holder of the name is dropped"
        );
    }

    #[test]
    fn names_a_previous_daemon_gave_are_kept() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let a = found("/tmp/ray_a", "session_a_1");
        let b = found("/tmp/ray_a", "session_b_2");
        r.prefer(b.temp_dir.clone(), b.session.clone(), "x-ray_a".into());
        r.prefer(a.temp_dir.clone(), a.session.clone(), "x-ray_a-1".into());
        r.observe(
            &a,
            Origin::Watched,
            listing(&["127.0.0.1:1"], wall),
            now,
            wall,
        );
        r.observe(
            &b,
            Origin::Watched,
            listing(&["127.0.0.1:2"], wall),
            now,
            wall,
        );
        assert_eq!(r.get(&a.file).unwrap().name, "x-ray_a-1");
        assert_eq!(r.get(&b.file).unwrap().name, "x-ray_a");
    }

    #[test]
    fn an_idle_rewrite_does_not_change_what_is_published() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let a = found("/tmp/ray_a", "session_1");
        r.observe(
            &a,
            Origin::Watched,
            listing(&["127.0.0.1:1"], wall),
            now,
            wall,
        );
        let g = r.generation();
        let later = wall + Duration::from_secs(5);
        r.observe(
            &a,
            Origin::Watched,
            listing(&["127.0.0.1:1"], later),
            now,
            later,
        );
        assert_eq!(r.generation(), g, "same targets, new mtime");
        r.observe(
            &a,
            Origin::Watched,
            listing(&["127.0.0.1:2"], later),
            now,
            later,
        );
        assert_ne!(r.generation(), g, "new targets");
    }

    #[test]
    fn stale_files_are_dead_and_idle_live_ones_are_not() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let old = found("/tmp/ray_old", "session_1");
        r.observe(
            &old,
            Origin::Watched,
            listing(&["127.0.0.1:1"], wall - Duration::from_secs(60)),
            now,
            wall,
        );
        assert!(!r.get(&old.file).unwrap().is_live());

        let live = found("/tmp/ray_live", "session_2");
        r.observe(
            &live,
            Origin::Watched,
            listing(&["127.0.0.1:2"], wall),
            now,
            wall,
        );
        // Rewritten every 5 s with the same content: stays live past the bound.
        for i in 1..=10u64 {
            let t = now + Duration::from_secs(5 * i);
            let w = wall + Duration::from_secs(5 * i);
            r.observe(&live, Origin::Watched, listing(&["127.0.0.1:2"], w), t, w);
            assert!(r.tick(t, w).iter().all(|c| *c == Change::None));
        }
        assert!(r.get(&live.file).unwrap().is_live());
        // Then the writer stops.
        let later = now + Duration::from_secs(50 + 21);
        let changes = r.tick(later, wall + Duration::from_secs(71));
        assert!(matches!(changes[0], Change::Died(..)), "{changes:?}");
    }

    #[test]
    fn a_read_that_fails_for_want_of_descriptors_is_not_a_death() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let starved = found("/tmp/ray_a", "session_1");
        let broken = found("/tmp/ray_b", "session_2");
        for (f, t) in [(&starved, "127.0.0.1:1"), (&broken, "127.0.0.1:2")] {
            r.observe(f, Origin::Watched, listing(&[t], wall), now, wall);
        }
        // Past the liveness bound, every read of the one fails with EMFILE;
        // of the other, with an error about the file.
        let (t, w) = (
            now + Duration::from_secs(30),
            wall + Duration::from_secs(30),
        );
        let emfile = Rejection::Read(crate::untrusted::Rejection::Exhausted(
            "Too many open files".into(),
        ));
        let change = r.observe(&starved, Origin::Watched, Err(emfile), t, w);
        assert!(matches!(change, Change::Rejected(ref why) if why.contains("not declared dead")));
        r.observe(
            &broken,
            Origin::Watched,
            Err(Rejection::Read(crate::untrusted::Rejection::Io(
                "Input/output error".into(),
            ))),
            t,
            w,
        );
        let changes = r.tick(t, w);
        assert!(r.get(&starved.file).unwrap().is_live(), "{changes:?}");
        assert!(!r.get(&broken.file).unwrap().is_live());
        assert!(r.rejections()[&starved.file].transient);
        // Read again (rewritten meanwhile): live, and the refusal is gone.
        let (t, w) = (t + Duration::from_secs(1), w + Duration::from_secs(1));
        r.observe(
            &starved,
            Origin::Watched,
            listing(&["127.0.0.1:1"], w),
            t,
            w,
        );
        assert!(r.tick(t, w).is_empty());
        assert!(r.get(&starved.file).unwrap().is_live());
        assert!(!r.rejections().contains_key(&starved.file));
        // A file that was not rewritten while it could not be read: its cluster
        // ended meanwhile, and the next read that succeeds says so.
        r.observe(
            &starved,
            Origin::Watched,
            Err(Rejection::Read(crate::untrusted::Rejection::Exhausted(
                "Too many open files".into(),
            ))),
            t + Duration::from_secs(30),
            w + Duration::from_secs(30),
        );
        r.observe(
            &starved,
            Origin::Watched,
            listing(&["127.0.0.1:1"], w),
            t + Duration::from_secs(31),
            w + Duration::from_secs(31),
        );
        let changes = r.tick(t + Duration::from_secs(31), w + Duration::from_secs(31));
        assert!(matches!(changes[..], [Change::Died(..)]), "{changes:?}");
    }

    #[test]
    fn a_listening_gcs_keeps_a_cluster_without_rewrites_live_within_the_bound() {
        let bound = Duration::from_secs(20);
        let mut r = Registry::new(bound);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let f = found("/tmp/ray_moved", "session_1");
        r.observe(
            &f,
            Origin::Watched,
            listing(&["127.0.0.1:1"], wall),
            now,
            wall,
        );
        r.set_gcs_port(&f.file, 6379);
        r.file_gone(&f.file, wall);
        assert!(r.get(&f.file).unwrap().file_gone.is_some());
        // Its file is gone; its GCS is found every 3 s for a minute.
        for i in 1..=20u64 {
            let t = now + Duration::from_secs(3 * i);
            r.gcs_seen(&f.file, t);
            assert!(r.tick(t, wall).iter().all(|c| *c == Change::None));
        }
        assert!(r.get(&f.file).unwrap().is_live());
        // The GCS goes: dead once the bound passes since it was last found.
        let last = now + Duration::from_secs(60);
        assert!(
            r.tick(last + bound, wall)
                .iter()
                .all(|c| *c == Change::None)
        );
        let changes = r.tick(last + bound + Duration::from_secs(1), wall);
        let Change::Died(_, reason) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert!(
            reason.contains("is gone from /tmp/ray_moved/session_1/"),
            "{reason}"
        );
        assert!(
            reason.contains("GCS (port 6379) was last found"),
            "{reason}"
        );
        // A file written again clears the note.
        let later = wall + Duration::from_secs(90);
        r.observe(
            &f,
            Origin::Watched,
            listing(&["127.0.0.1:1"], later),
            last + bound,
            later,
        );
        let c = r.get(&f.file).unwrap();
        assert!(c.is_live() && c.file_gone.is_none() && c.gcs_seen.is_none());
    }

    #[test]
    fn only_the_newest_dead_clusters_are_remembered() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        for i in 0..(MAX_DEAD + 50) {
            let f = found(&format!("/tmp/ray_churn_{i}"), "session_1");
            let w = wall + Duration::from_millis(i as u64);
            r.observe(&f, Origin::Watched, listing(&["127.0.0.1:1"], w), now, w);
            r.observe(&f, Origin::Watched, Ok(None), now, w);
        }
        r.tick(now, wall + Duration::from_secs(1));
        assert_eq!(r.clusters().count(), MAX_DEAD);
        assert!(
            r.get(Path::new(
                "/tmp/ray_churn_0/session_1/prom_metrics_service_discovery.json"
            ))
            .is_none()
        );
        assert!(
            r.get(Path::new(
                "/tmp/ray_churn_249/session_1/prom_metrics_service_discovery.json"
            ))
            .is_some()
        );
    }

    #[test]
    fn future_mtimes_do_not_keep_a_dead_cluster_alive() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let f = found("/tmp/ray_f", "session_1");
        let future = wall + Duration::from_secs(3600);
        r.observe(
            &f,
            Origin::Watched,
            listing(&["127.0.0.1:1"], future),
            now,
            wall,
        );
        assert!(r.get(&f.file).unwrap().is_live());
        let t = now + Duration::from_secs(21);
        r.observe(
            &f,
            Origin::Watched,
            listing(&["127.0.0.1:1"], future),
            t,
            wall,
        );
        assert!(matches!(r.tick(t, wall)[0], Change::Died(..)));
    }

    #[test]
    fn shared_endpoints_go_to_their_owner_only() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let a = found("/tmp/ray_a", "session_a");
        let b = found("/tmp/ray_b", "session_b");
        r.observe(
            &a,
            Origin::Watched,
            listing(&["127.0.0.1:1", "127.0.0.1:44217"], wall),
            now,
            wall,
        );
        r.observe(
            &b,
            Origin::Watched,
            listing(&["127.0.0.1:2", "127.0.0.1:44217"], wall),
            now,
            wall,
        );
        assert_eq!(r.contested().len(), 1);
        let name_a = r.get(&a.file).unwrap().name.clone();
        let name_b = r.get(&b.file).unwrap().name.clone();

        let unresolved = r.desired(&Owners::new());
        assert_eq!(unresolved[&name_a].targets, vec!["127.0.0.1:1"]);
        assert_eq!(unresolved[&name_b].targets, vec!["127.0.0.1:2"]);

        let owners = Owners::from([("127.0.0.1:44217".to_string(), Some("session_b".to_string()))]);
        let d = r.desired(&owners);
        assert_eq!(d[&name_a].targets, vec!["127.0.0.1:1"]);
        assert_eq!(d[&name_b].targets, vec!["127.0.0.1:2", "127.0.0.1:44217"]);
        assert_eq!(d[&name_b].labels["ray_session"], "session_b");
    }

    #[test]
    fn attach_name_renames_and_is_validated() {
        let mut r = Registry::new(Duration::from_secs(20));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let a = found("/nfs/x", "session_a");
        r.observe(
            &a,
            Origin::Attached {
                name: Some("train".into()),
            },
            listing(&["h:1"], wall),
            now,
            wall,
        );
        assert_eq!(r.get(&a.file).unwrap().name, "train");
        assert!(validate_name("ok-name_1.2").is_ok());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("").is_err());
    }
}
