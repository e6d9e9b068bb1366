//! What the daemon looks up about a cluster beyond its discovery file
//! ([`Lookups`]): a new cluster's Slurm job and GCS port, and whether the GCS of
//! a cluster that missed its rewrites still listens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::OVERDUE;
use super::clusters::Core;
use super::probe::{self, PortLooks};

/// How many times raywatch looks for a new cluster's process.
const SLURM_TRIES: u32 = 10;
/// The GCS of an overdue cluster is probed at most once in this long.
const PROBE_PAUSE: Duration = Duration::from_secs(3);

/// The lookups under way, per discovery file: when each overdue cluster's GCS
/// was last probed and which process held it, how many times a new cluster's
/// process was looked for (for its Slurm job), and the new clusters whose GCS
/// port was not found yet.
#[derive(Debug, Default)]
pub struct Lookups {
    probing: HashMap<PathBuf, Instant>,
    /// The GCS process (pid, listening socket) last found for each cluster.
    gcs_holders: HashMap<PathBuf, (u32, u64)>,
    slurm_tries: HashMap<PathBuf, u32>,
    /// When to look again for a new cluster's GCS port, and how many looks are left.
    pub(super) gcs_unknown: PortLooks,
}

impl Lookups {
    /// `file`'s Slurm job (or its absence) is known: no more looks.
    fn slurm_found(&mut self, file: &Path) {
        self.slurm_tries.remove(file);
    }

    /// A look for `file`'s process found none: whether that was the last of
    /// [`SLURM_TRIES`] (the cluster then has no Slurm job).
    fn slurm_missed(&mut self, file: &Path) -> bool {
        let tries = self.slurm_tries.entry(file.to_path_buf()).or_default();
        *tries += 1;
        if *tries >= SLURM_TRIES {
            self.slurm_tries.remove(file);
            return true;
        }
        false
    }

    /// Whether `file`'s GCS may be probed at `now`: not within [`PROBE_PAUSE`]
    /// of its last probe.
    fn probe_due(&self, file: &Path, now: Instant) -> bool {
        self.probing
            .get(file)
            .is_none_or(|t| now.duration_since(*t) >= PROBE_PAUSE)
    }

    /// `file`'s GCS is probed at `now`.
    fn probed(&mut self, file: &Path, now: Instant) {
        self.probing.insert(file.to_path_buf(), now);
    }

    /// The process (pid, listening socket) last found holding `file`'s GCS:
    /// asked first at the next probe.
    fn holder(&self, file: &Path) -> Option<(u32, u64)> {
        self.gcs_holders.get(file).copied()
    }

    fn set_holder(&mut self, file: &Path, holder: Option<(u32, u64)>) {
        match holder {
            Some(h) => self.gcs_holders.insert(file.to_path_buf(), h),
            None => self.gcs_holders.remove(file),
        };
    }

    /// Forgets the probes of clusters that are no longer `live`.
    pub fn keep_live(&mut self, live: impl Fn(&Path) -> bool) {
        self.probing.retain(|f, _| live(f));
        self.gcs_holders.retain(|f, _| live(f));
    }
}

impl Core {
    /// The Slurm job of new live clusters, from a process of their session (one
    /// pass over /proc for all of them); a cluster whose head is not found
    /// after [`SLURM_TRIES`] looks (a remote head, a synthetic file) gets none.
    pub(super) fn look_up_slurm(&mut self) {
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
                    self.lookups.slurm_found(&file);
                    self.registry.set_slurm(&file, job.clone());
                }
                None => {
                    if self.lookups.slurm_missed(&file) {
                        self.registry.set_slurm(&file, None);
                    }
                }
            }
        }
    }

    /// Looks for the GCS port of the cluster at `file` while Ray's files are in
    /// place; a cluster whose port is not there yet is looked at again later.
    pub(super) fn learn_gcs_port(&mut self, file: &Path, now: Instant) {
        let Some(c) = self.registry.get(file) else {
            self.lookups.gcs_unknown.stop(file);
            return;
        };
        if c.gcs_port.is_some() || !c.is_live() {
            self.lookups.gcs_unknown.stop(file);
            return;
        }
        match self.trust.gcs_port(&c.found) {
            Some(port) => {
                self.registry.set_gcs_port(file, port);
                self.lookups.gcs_unknown.stop(file);
            }
            None => self.lookups.gcs_unknown.missed(file, now),
        }
    }

    /// A live cluster that missed its rewrites (re-read just now): its GCS port,
    /// whether a process of its session still listens there (a sign of life), and
    /// the addresses to probe; None when it is not due (not overdue, or probed
    /// within [`PROBE_PAUSE`]) or its GCS port is unknown.
    pub(super) fn probe_overdue(
        &mut self,
        file: &Path,
        now: Instant,
    ) -> Option<(PathBuf, Vec<String>)> {
        let c = self.registry.get(file)?;
        if !c.is_live() || now.duration_since(c.last_change) <= OVERDUE {
            return None;
        }
        if !self.lookups.probe_due(file, now) {
            return None;
        }
        let port = self.gcs_port_to_probe(file)?;
        let c = self.registry.get(file)?;
        self.lookups.probed(file, now);
        // A process of its session still listening on the GCS port is a
        // sign of life, however its files were moved or removed.
        let mut holder = self.lookups.holder(file);
        let listening =
            probe::gcs_listening(port, &c.found.session, &self.trust.trusted(), &mut holder);
        self.lookups.set_holder(file, holder);
        let probe = (
            file.to_path_buf(),
            probe::gcs_addresses(c, port, self.trust.locals()),
        );
        if listening {
            self.registry.gcs_seen(file, now);
        }
        Some(probe)
    }

    /// The GCS port of the cluster at `file`, to probe. A session keeps its GCS
    /// port for life: the one learnt is kept, whatever is planted where its files
    /// were. A temp-dir-level file (older Ray) outlives sessions, so its port is
    /// read again while it can be.
    fn gcs_port_to_probe(&mut self, file: &Path) -> Option<u16> {
        let c = self.registry.get(file)?;
        match c.gcs_port {
            Some(p) if c.found.session_dir.is_some() => Some(p),
            known => {
                let fresh = self.trust.gcs_port(&c.found);
                if let Some(p) = fresh
                    && known != fresh
                {
                    self.registry.set_gcs_port(file, p);
                }
                fresh.or(known)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_new_clusters_process_is_looked_for_ten_times_then_given_up() {
        let (mut l, file) = (Lookups::default(), Path::new("/d.json"));
        let looks = (1..=20).take_while(|_| !l.slurm_missed(file)).count();
        assert_eq!(
            looks + 1,
            SLURM_TRIES as usize,
            "the tenth miss is the last"
        );
        assert!(l.slurm_tries.is_empty(), "nothing kept after giving up");
        l.slurm_missed(file);
        l.slurm_found(file);
        assert!(l.slurm_tries.is_empty());
        let missed_again = (1..SLURM_TRIES).any(|_| l.slurm_missed(file));
        assert!(!missed_again, "found, then lost: the count starts over");
    }

    #[test]
    fn an_overdue_gcs_is_probed_at_most_every_3_s() {
        let (mut l, file, t0) = (Lookups::default(), Path::new("/d.json"), Instant::now());
        assert!(l.probe_due(file, t0));
        l.probed(file, t0);
        assert!(!l.probe_due(file, t0 + 2 * S));
        assert!(l.probe_due(file, t0 + 3 * S));
        assert!(l.probe_due(Path::new("/other.json"), t0), "per cluster");
    }

    #[test]
    fn the_probes_of_clusters_no_longer_live_are_forgotten() {
        let (mut l, t0) = (Lookups::default(), Instant::now());
        for f in ["/live.json", "/dead.json"] {
            l.probed(Path::new(f), t0);
            l.set_holder(Path::new(f), Some((7, 8)));
        }
        l.keep_live(|f| f == Path::new("/live.json"));
        assert!(l.probe_due(Path::new("/dead.json"), t0));
        assert!(!l.probe_due(Path::new("/live.json"), t0));
        assert_eq!(l.holder(Path::new("/dead.json")), None);
        assert_eq!(l.holder(Path::new("/live.json")), Some((7, 8)));
        l.set_holder(Path::new("/live.json"), None);
        assert_eq!(l.holder(Path::new("/live.json")), None);
    }
}
