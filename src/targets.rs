//! The file_sd folder Prometheus reads: one atomically written file per live cluster.

use fs_err as fs;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::registry::TargetGroup;

const EMPTY: &[u8] = b"[]\n";

/// Owns `<home>/targets/`. Writes only what changed; a cluster that leaves has its
/// file emptied first (some Prometheus releases keep a deleted file's targets as
/// down) and deleted a little later.
pub struct TargetsDir {
    dir: PathBuf,
    tmp: PathBuf,
    written: HashMap<String, Vec<u8>>,
    /// The group behind each file this daemon wrote: equal groups are not
    /// serialised again, so one cluster's change costs O(1), not O(clusters).
    groups: HashMap<String, TargetGroup>,
    /// When each file was last written by this daemon.
    written_at: HashMap<String, Instant>,
    delete_at: HashMap<String, Instant>,
    grace: Duration,
    /// The last write error, shown in `status` until a write succeeds.
    pub last_error: Option<String>,
}

impl TargetsDir {
    /// Takes over the folder, including files a previous daemon left.
    pub fn open(dir: PathBuf, tmp: PathBuf) -> Result<TargetsDir> {
        let mut written = HashMap::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".json") {
                let content = fs::read(entry.path()).unwrap_or_default();
                written.insert(stem.to_string(), content);
            }
        }
        Ok(TargetsDir {
            dir,
            tmp,
            written,
            groups: HashMap::new(),
            written_at: HashMap::new(),
            delete_at: HashMap::new(),
            grace: Duration::from_secs(15),
            last_error: None,
        })
    }

    /// (temp dir, session, name) of every non-empty file found at open, so that
    /// the registry can give the same clusters the same names again.
    pub fn previous_names(&self) -> Vec<(PathBuf, String, String)> {
        #[derive(serde::Deserialize)]
        struct Group {
            labels: BTreeMap<String, String>,
        }
        let mut out = Vec::new();
        for (name, bytes) in &self.written {
            let Ok(groups) = serde_json::from_slice::<Vec<Group>>(bytes) else {
                continue;
            };
            for g in groups {
                if let (Some(t), Some(s)) =
                    (g.labels.get("ray_temp_dir"), g.labels.get("ray_session"))
                {
                    out.push((PathBuf::from(t), s.clone(), name.clone()));
                }
            }
        }
        out
    }

    /// How long ago this daemon last wrote a cluster's file (None: not by it).
    pub fn age(&self, name: &str) -> Option<std::time::Duration> {
        self.written_at.get(name).map(|t| t.elapsed())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn write(&mut self, name: &str, bytes: Vec<u8>) -> bool {
        match crate::atomic::write_via(&self.tmp, &self.path(name), &bytes, 0o644) {
            Ok(()) => {
                self.written.insert(name.to_string(), bytes);
                self.written_at.insert(name.to_string(), Instant::now());
                true
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if self.last_error.as_deref() != Some(&msg) {
                    tracing::error!("cannot write targets for cluster {name}: {msg}");
                }
                self.last_error = Some(msg);
                false
            }
        }
    }

    /// Makes the folder match `desired`. Returns how many files were written.
    pub fn sync(&mut self, desired: &BTreeMap<String, TargetGroup>, now: Instant) -> usize {
        let mut writes = 0;
        let mut ok = true;
        for (name, group) in desired {
            self.delete_at.remove(name);
            if self.groups.get(name) == Some(group) && self.written.contains_key(name) {
                continue;
            }
            let mut bytes = serde_json::to_vec_pretty(&[group]).expect("target groups serialise");
            bytes.push(b'\n');
            if self.written.get(name) != Some(&bytes) {
                if !self.write(name, bytes) {
                    ok = false;
                    continue;
                }
                writes += 1;
            }
            self.groups.insert(name.clone(), group.clone());
        }
        let leaving: Vec<String> = self
            .written
            .keys()
            .filter(|n| !desired.contains_key(*n))
            .cloned()
            .collect();
        for name in leaving {
            self.groups.remove(&name);
            if self.written.get(&name).map(Vec::as_slice) != Some(EMPTY) {
                ok &= self.write(&name, EMPTY.to_vec());
                writes += 1;
            }
            self.delete_at.entry(name).or_insert(now + self.grace);
        }
        if ok && writes > 0 {
            self.last_error = None;
        }
        writes
    }

    /// Deletes emptied files whose grace period is over.
    pub fn collect(&mut self, now: Instant) {
        let due: Vec<String> = self
            .delete_at
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.delete_at.remove(&name);
            match fs::remove_file(self.path(&name)) {
                Ok(()) => {
                    self.written.remove(&name);
                    self.written_at.remove(&name);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.written.remove(&name);
                    self.written_at.remove(&name);
                }
                Err(e) => tracing::warn!("cannot delete {}: {e}", self.path(&name).display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_cluster_is_emptied_then_deleted() {
        let home = tempfile::tempdir().unwrap();
        let (dir, tmp) = (home.path().join("targets"), home.path().join("targets.tmp"));
        fs::create_dir(&dir).unwrap();
        fs::create_dir(&tmp).unwrap();
        let mut t = TargetsDir::open(dir.clone(), tmp).unwrap();
        let group = TargetGroup {
            targets: vec!["127.0.0.1:1".into()],
            labels: BTreeMap::from([("ray_io_cluster", "a".to_string())]),
        };
        let now = Instant::now();
        let mut desired = BTreeMap::from([("a".to_string(), group)]);
        assert_eq!(t.sync(&desired, now), 1);
        assert_eq!(
            t.sync(&desired, now),
            0,
            "unchanged content is not rewritten"
        );
        let text = fs::read_to_string(dir.join("a.json")).unwrap();
        assert!(text.contains("\"ray_io_cluster\": \"a\""), "{text}");

        desired.clear();
        t.sync(&desired, now);
        assert_eq!(fs::read(dir.join("a.json")).unwrap(), EMPTY);
        t.collect(now);
        assert!(
            dir.join("a.json").exists(),
            "deleted before its grace period"
        );
        t.collect(now + Duration::from_secs(16));
        assert!(!dir.join("a.json").exists());
    }
}
