//! The file_sd folder Prometheus reads: every live cluster's target group, in a few shard files.
//!
//! Prometheus' file discovery re-reads every file matching its glob on each
//! file event, so one file per cluster costs it N × N reads when N clusters
//! join (measured: ~125 % of a core for 30 s at 1000). Groups are therefore
//! kept in [`SHARDS`] files, `shard-NN.json`, a cluster's shard chosen by a
//! stable hash of its name. A change re-serialises only the changed group and
//! rewrites only the shards it touched (concatenating the other groups'
//! cached JSON), once per publish, atomically (temp file in `targets.tmp/`,
//! rename). A cluster that leaves disappears from its shard on the next write.
//!
//! Per-cluster files an older raywatch left (`<cluster>.json`) are read once
//! for the names they give, emptied (some Prometheus releases keep a deleted
//! file's targets as down) and deleted after a grace period.

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::registry::TargetGroup;

const EMPTY: &[u8] = b"[]\n";

/// How many files the groups are spread over.
pub const SHARDS: usize = 16;

/// Shard writes are paced beyond a burst: Prometheus re-reads every file of its
/// glob on each file event, so a thousand clusters joining at once must not
/// cost it a thousand re-reads. A lone change is written at once (it finds the
/// bucket full); a burst costs at most this many writes a second.
pub const WRITES_PER_SECOND: u32 = 16;
/// The bucket's size: one write of every shard.
const BURST: f64 = SHARDS as f64;

/// The shard a cluster's group lives in (FNV-1a of its name: stable across
/// runs and releases, unlike the standard library's hasher).
pub fn shard_of(name: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

/// The file name of shard `i`.
pub fn shard_file(i: usize) -> String {
    format!("shard-{i:02}.json")
}

/// One cluster's group as published: the group and its JSON.
struct Published {
    group: TargetGroup,
    json: Vec<u8>,
}

/// Owns `<home>/targets/`. Writes only what changed.
pub struct TargetsDir {
    dir: PathBuf,
    tmp: PathBuf,
    groups: HashMap<String, Published>,
    /// The names in each shard, in order.
    members: Vec<BTreeSet<String>>,
    /// What each shard file holds on disk (None: not written by this daemon yet).
    on_disk: Vec<Option<Vec<u8>>>,
    /// Shards whose content changed since they were last written, with when
    /// they first changed (written oldest first).
    dirty: BTreeMap<usize, Instant>,
    /// Writes allowed now (see [`WRITES_PER_SECOND`]), as of `refilled`.
    tokens: f64,
    refilled: Instant,
    /// Clusters whose group changed and is not on disk yet.
    pending: BTreeSet<String>,
    /// When each cluster's current group reached the disk.
    written_at: HashMap<String, Instant>,
    /// Files found at open that are not shards (an older layout), by name.
    leftovers: BTreeMap<String, Vec<u8>>,
    delete_at: HashMap<String, Instant>,
    grace: Duration,
    /// The last write error, shown in `status` until a write succeeds.
    pub last_error: Option<String>,
}

impl TargetsDir {
    /// Takes over the folder, including files a previous daemon left.
    pub fn open(dir: PathBuf, tmp: PathBuf) -> Result<TargetsDir> {
        let mut on_disk = vec![None; SHARDS];
        let mut leftovers = BTreeMap::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let content = fs::read(entry.path()).unwrap_or_default();
            match (0..SHARDS).find(|i| shard_file(*i) == name) {
                Some(i) => on_disk[i] = Some(content),
                None => {
                    leftovers.insert(name, content);
                }
            }
        }
        Ok(TargetsDir {
            dir,
            tmp,
            groups: HashMap::new(),
            members: vec![BTreeSet::new(); SHARDS],
            // Shards a previous daemon wrote are rewritten on the first sync.
            dirty: (0..SHARDS)
                .filter(|i| on_disk[*i].is_some())
                .map(|i| (i, Instant::now()))
                .collect(),
            tokens: BURST,
            refilled: Instant::now(),
            on_disk,
            pending: BTreeSet::new(),
            written_at: HashMap::new(),
            leftovers,
            delete_at: HashMap::new(),
            grace: Duration::from_secs(15),
            last_error: None,
        })
    }

    /// (temp dir, session, name) of every group found at open, so that the
    /// registry can give the same clusters the same names again.
    pub fn previous_names(&self) -> Vec<(PathBuf, String, String)> {
        #[derive(serde::Deserialize)]
        struct Group {
            labels: BTreeMap<String, String>,
        }
        let files = self.on_disk.iter().flatten().chain(self.leftovers.values());
        let mut out = Vec::new();
        for bytes in files {
            let Ok(groups) = serde_json::from_slice::<Vec<Group>>(bytes) else {
                continue;
            };
            for g in groups {
                if let (Some(t), Some(s), Some(n)) = (
                    g.labels.get("ray_temp_dir"),
                    g.labels.get("ray_session"),
                    g.labels.get("ray_io_cluster"),
                ) {
                    out.push((PathBuf::from(t), s.clone(), n.clone()));
                }
            }
        }
        out
    }

    /// How long ago this daemon wrote a cluster's current group (None: not yet).
    pub fn age(&self, name: &str) -> Option<Duration> {
        self.written_at.get(name).map(|t| t.elapsed())
    }

    /// Makes the folder match `desired`. Only changed groups are serialised and
    /// only the shards they live in are written. Returns how many files were written.
    pub fn sync(&mut self, desired: &BTreeMap<String, TargetGroup>, now: Instant) -> usize {
        for (name, group) in desired {
            self.upsert(name, group);
        }
        if self.groups.len() > desired.len() {
            let leaving: Vec<String> = self
                .groups
                .keys()
                .filter(|n| !desired.contains_key(*n))
                .cloned()
                .collect();
            for name in leaving {
                self.remove(&name);
            }
        }
        self.flush(now)
    }

    /// Sets one cluster's group (written at the next [`TargetsDir::flush`]);
    /// the same group again costs a comparison.
    pub fn upsert(&mut self, name: &str, group: &TargetGroup) {
        if self.groups.get(name).is_some_and(|p| p.group == *group) {
            return;
        }
        let json = serde_json::to_vec_pretty(group).expect("target groups serialise");
        let shard = shard_of(name);
        self.members[shard].insert(name.to_string());
        self.groups.insert(
            name.to_string(),
            Published {
                group: group.clone(),
                json,
            },
        );
        self.dirty.entry(shard).or_insert_with(Instant::now);
        self.pending.insert(name.to_string());
    }

    /// Removes one cluster's group (at the next [`TargetsDir::flush`]).
    pub fn remove(&mut self, name: &str) {
        if self.groups.remove(name).is_none() {
            return;
        }
        let shard = shard_of(name);
        self.members[shard].remove(name);
        self.written_at.remove(name);
        self.pending.remove(name);
        self.dirty.entry(shard).or_insert_with(Instant::now);
    }

    /// The groups as last set, by name.
    pub fn groups(&self) -> BTreeMap<&str, &TargetGroup> {
        self.groups
            .iter()
            .map(|(n, p)| (n.as_str(), &p.group))
            .collect()
    }

    /// When shards wait for the pace (see [`WRITES_PER_SECOND`]): the time to
    /// call [`TargetsDir::flush`] again.
    pub fn next_write(&self) -> Option<Instant> {
        if self.dirty.is_empty() || self.tokens >= 1.0 {
            return None;
        }
        let wait = (1.0 - self.tokens) / f64::from(WRITES_PER_SECOND);
        Some(self.refilled + Duration::from_secs_f64(wait))
    }

    /// Writes the shards whose groups changed (and those a failed write left),
    /// oldest change first, as the pace allows; returns how many files were written.
    pub fn flush(&mut self, now: Instant) -> usize {
        if self.dirty.is_empty() && self.leftovers.len() == self.delete_at.len() {
            return 0;
        }
        let mut attempted = false;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(WRITES_PER_SECOND)).min(BURST);
        self.refilled = now;
        let mut order: Vec<(Instant, usize)> = self.dirty.iter().map(|(s, t)| (*t, *s)).collect();
        order.sort();
        let allowed = self.tokens.floor().max(0.0) as usize;
        let mut writes = 0;
        let mut ok = true;
        for (since, shard) in order.into_iter().take(allowed) {
            attempted = true;
            self.dirty.remove(&shard);
            let bytes = self.render(shard);
            let on_disk = if self.on_disk[shard].as_deref() == Some(bytes.as_slice()) {
                Ok(())
            } else {
                let path = self.dir.join(shard_file(shard));
                self.tokens -= 1.0;
                crate::atomic::replace_via(&self.tmp, &path, &bytes, 0o644).map(|()| {
                    self.on_disk[shard] = Some(bytes);
                    writes += 1;
                })
            };
            match on_disk {
                Ok(()) => {
                    let done: Vec<String> = self
                        .pending
                        .iter()
                        .filter(|n| shard_of(n) == shard)
                        .cloned()
                        .collect();
                    for n in done {
                        self.pending.remove(&n);
                        self.written_at.insert(n, now);
                    }
                }
                Err(e) => {
                    let path = self.dir.join(shard_file(shard));
                    ok = false;
                    self.dirty.insert(shard, since);
                    let msg = format!("{e:#}");
                    if self.last_error.as_deref() != Some(&msg) {
                        tracing::error!("cannot write {}: {msg}", path.display());
                    }
                    self.last_error = Some(msg);
                }
            }
        }
        self.retire_leftovers(now);
        if ok && attempted {
            self.last_error = None;
        }
        writes
    }

    /// A shard's file content: its groups' cached JSON, in name order.
    fn render(&self, shard: usize) -> Vec<u8> {
        let members = &self.members[shard];
        if members.is_empty() {
            return EMPTY.to_vec();
        }
        let mut out = Vec::with_capacity(members.len() * 320);
        out.extend_from_slice(b"[\n");
        for (i, name) in members.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",\n");
            }
            out.extend_from_slice(&self.groups[name].json);
        }
        out.extend_from_slice(b"\n]\n");
        out
    }

    /// Empties the files of an older layout (once), then deletes them after the grace.
    fn retire_leftovers(&mut self, now: Instant) {
        let names: Vec<String> = self
            .leftovers
            .keys()
            .filter(|n| !self.delete_at.contains_key(*n))
            .cloned()
            .collect();
        for name in names {
            let path = self.dir.join(&name);
            if self.leftovers[&name] != EMPTY
                && crate::atomic::replace_via(&self.tmp, &path, EMPTY, 0o644).is_err()
            {
                continue;
            }
            self.leftovers.insert(name.clone(), EMPTY.to_vec());
            self.delete_at.insert(name, now + self.grace);
        }
    }

    /// Deletes emptied leftover files whose grace period is over.
    pub fn collect(&mut self, now: Instant) {
        let due: Vec<String> = self
            .delete_at
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let path = self.dir.join(&name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("cannot delete {}: {e}", path.display());
                    continue;
                }
            }
            self.delete_at.remove(&name);
            self.leftovers.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, target: &str) -> TargetGroup {
        TargetGroup {
            targets: vec![target.into()],
            labels: BTreeMap::from([
                ("ray_io_cluster", name.to_string()),
                ("ray_session", "session_1".to_string()),
                ("ray_temp_dir", "/tmp/ray_x".to_string()),
            ]),
        }
    }

    fn shards(dir: &std::path::Path) -> Vec<serde_json::Value> {
        (0..SHARDS)
            .filter_map(|i| fs::read(dir.join(shard_file(i))).ok())
            .flat_map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(&b).unwrap())
            .collect()
    }

    #[test]
    fn groups_live_in_shards_and_a_change_rewrites_one_file() {
        let home = tempfile::tempdir().unwrap();
        let (dir, tmp) = (home.path().join("targets"), home.path().join("targets.tmp"));
        fs::create_dir(&dir).unwrap();
        fs::create_dir(&tmp).unwrap();
        let mut t = TargetsDir::open(dir.clone(), tmp).unwrap();
        let mut now = Instant::now();
        let mut desired: BTreeMap<String, TargetGroup> = (0..100)
            .map(|i| {
                (
                    format!("c{i}"),
                    group(&format!("c{i}"), &format!("127.0.0.1:{}", i + 1)),
                )
            })
            .collect();
        assert!(t.sync(&desired, now) <= SHARDS);
        assert_eq!(shards(&dir).len(), 100);
        assert_eq!(
            t.sync(&desired, now),
            0,
            "unchanged content is not rewritten"
        );
        assert!(t.age("c1").is_some());

        desired.insert("c1".into(), group("c1", "127.0.0.1:999"));
        now += Duration::from_secs(1);
        assert_eq!(t.sync(&desired, now), 1, "one changed group, one file");
        let text = fs::read_to_string(dir.join(shard_file(shard_of("c1")))).unwrap();
        assert!(text.contains("127.0.0.1:999"), "{text}");

        desired.remove("c2");
        now += Duration::from_secs(1);
        assert_eq!(t.sync(&desired, now), 1);
        let all = shards(&dir);
        assert_eq!(all.len(), 99);
        assert!(all.iter().all(|g| g["labels"]["ray_io_cluster"] != "c2"));

        // A new daemon reads the names back from the shards.
        let t2 = TargetsDir::open(dir.clone(), home.path().join("targets.tmp")).unwrap();
        assert_eq!(t2.previous_names().len(), 99);
    }

    #[test]
    fn files_of_the_old_layout_are_emptied_then_deleted() {
        let home = tempfile::tempdir().unwrap();
        let (dir, tmp) = (home.path().join("targets"), home.path().join("targets.tmp"));
        fs::create_dir(&dir).unwrap();
        fs::create_dir(&tmp).unwrap();
        let old = serde_json::to_vec(&[group("old-one", "127.0.0.1:1")]).unwrap();
        fs::write(dir.join("old-one.json"), &old).unwrap();
        let mut t = TargetsDir::open(dir.clone(), tmp).unwrap();
        assert_eq!(t.previous_names()[0].2, "old-one");
        let now = Instant::now();
        t.sync(&BTreeMap::new(), now);
        assert_eq!(fs::read(dir.join("old-one.json")).unwrap(), EMPTY);
        t.collect(now);
        assert!(
            dir.join("old-one.json").exists(),
            "deleted before its grace period"
        );
        t.collect(now + Duration::from_secs(16));
        assert!(!dir.join("old-one.json").exists());
    }

    #[test]
    fn writes_beyond_a_burst_are_paced() {
        let home = tempfile::tempdir().unwrap();
        let (dir, tmp) = (home.path().join("targets"), home.path().join("targets.tmp"));
        fs::create_dir(&dir).unwrap();
        fs::create_dir(&tmp).unwrap();
        let mut t = TargetsDir::open(dir.clone(), tmp).unwrap();
        let start = Instant::now();
        // A burst: every shard changes, again and again, within a second.
        let mut writes = 0;
        for round in 0..10u32 {
            let now = start + Duration::from_millis(u64::from(round) * 50);
            for i in 0..100 {
                let name = format!("c{i}");
                t.upsert(
                    &name,
                    &group(&name, &format!("127.0.0.1:{}", 1 + i + 100 * round)),
                );
            }
            writes += t.flush(now);
        }
        // 16 at once, then 16 a second for the 450 ms that followed.
        assert!(writes <= SHARDS + 8, "{writes} writes");
        let next = t.next_write().expect("shards wait");
        assert!(next > start + Duration::from_millis(450));
        // Once the pace allows, everything is written.
        t.flush(start + Duration::from_secs(2));
        assert!(t.next_write().is_none());
        assert_eq!(shards(&dir).len(), 100);
        // A lone change later is written at once.
        let later = start + Duration::from_secs(5);
        t.upsert("c1", &group("c1", "127.0.0.1:9"));
        assert_eq!(t.flush(later), 1);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("alice-ray_alice"), shard_of("alice-ray_alice"));
        let used: BTreeSet<usize> = (0..200).map(|i| shard_of(&format!("u-ray_{i}"))).collect();
        assert_eq!(used.len(), SHARDS);
    }
}
