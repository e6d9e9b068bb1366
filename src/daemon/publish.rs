//! Publishing: the cluster core keeps each cluster's target group current in the
//! target files, recomputing only the groups a change touched, and checks them
//! against a full recomputation now and then.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use super::clusters::Core;
use crate::registry::TargetGroup;

impl Core {
    /// The target groups to publish: what the registry wants, less every
    /// endpoint whose listener belongs to an untrusted uid.
    pub fn desired(&self) -> BTreeMap<String, TargetGroup> {
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
        let verdicts = self.check_endpoints(&touched, now);
        let answered = self.attribution.take_changed();
        for ep in verdicts.iter().chain(&answered) {
            dirty.extend(self.registry.claimants(ep).cloned());
        }
        let due = self.contested_due(now, !touched.is_empty() || !verdicts.is_empty());
        for file in &dirty {
            self.republish(file);
        }
        if self.chores.reconcile(now) {
            self.reconcile_published();
        } else {
            #[cfg(debug_assertions)]
            self.assert_published();
        }
        self.targets.flush(now);
        due
    }

    /// Judges the `touched` endpoints (every one when the periodic check is
    /// due) against the socket table; returns those whose verdict changed.
    fn check_endpoints(&mut self, touched: &BTreeSet<String>, now: Instant) -> Vec<String> {
        let recheck = self.chores.verify(now);
        let registry = &self.registry;
        self.endpoints.update(
            touched,
            &|ep| registry.is_listed(ep),
            recheck,
            self.trust.locals(),
            &self.trust.trusted(),
        )
    }

    /// Contested endpoints to (re)resolve: when claims or verdicts `changed`,
    /// and every 10 s for answers that aged. A foreign endpoint is never
    /// scraped, not even to read its session.
    fn contested_due(&mut self, now: Instant, changed: bool) -> Vec<(String, Vec<String>)> {
        if !self.chores.contest_check(now, changed) {
            return Vec::new();
        }
        let contested: BTreeMap<String, Vec<String>> = self
            .registry
            .contested()
            .into_iter()
            .filter(|(ep, _)| self.endpoints.admitted(ep))
            .collect();
        self.attribution.due(&contested, now)
    }

    /// The safety net: the published groups against a full recomputation.
    fn reconcile_published(&mut self) {
        let desired = self.desired();
        let current: BTreeMap<String, TargetGroup> = self
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
        let current: BTreeMap<&str, &TargetGroup> = self.targets.groups();
        let wanted: BTreeMap<&str, &TargetGroup> =
            desired.iter().map(|(n, g)| (n.as_str(), g)).collect();
        assert_eq!(current, wanted, "incremental publishing diverged");
    }

    /// When the event loop must run again without an event: target files
    /// waiting for the write pace.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.targets.next_write()
    }
}
