//! What the registry knows of one cluster: how it came to be followed, whether it
//! lives, its targets and signs of life; and a discovery file it refused.

use std::time::{Instant, SystemTime};

use crate::discovery::Found;

/// How a cluster came to be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Found under a watched root.
    Watched,
    /// Followed because of `raywatch attach`, optionally with a chosen name.
    Attached { name: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Live,
    Dead { since: SystemTime, reason: String },
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub found: Found,
    pub origin: Origin,
    pub uid: u32,
    pub user: String,
    pub targets: Vec<String>,
    pub mtime: SystemTime,
    /// When raywatch last saw the file change (its own clock, immune to odd mtimes).
    pub last_change: Instant,
    pub last_change_wall: SystemTime,
    pub state: State,
    /// The Slurm job its head runs in: None until looked up, then Some(None)
    /// when it runs in none.
    pub slurm: Option<Option<crate::slurm::SlurmJob>>,
    /// Its GCS port, learnt from Ray's files while they were in place: a
    /// session folder someone moves away takes them along.
    pub gcs_port: Option<u16>,
    /// When a process of its session, of a trusted uid, was last found
    /// listening on its GCS port: a sign of life, like a rewrite.
    pub gcs_seen: Option<Instant>,
    /// When its discovery file was found gone while the cluster stayed live.
    pub file_gone: Option<SystemTime>,
    /// Endpoints it stopped listing while it lived (Ray lists its alive
    /// nodes only, so a worker that died or left drops out), oldest first, at
    /// most [`MAX_LOST`].
    pub lost: Vec<NodeLoss>,
}

/// How many lost endpoints a cluster remembers (the newest).
pub const MAX_LOST: usize = 64;

/// An endpoint a live cluster stopped listing, and when raywatch saw it go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoss {
    pub endpoint: String,
    pub at: SystemTime,
}

impl Cluster {
    pub fn is_live(&self) -> bool {
        self.state == State::Live
    }

    /// Records the workers' endpoints of `before` that `self.targets` no longer
    /// lists, lost at `at` (a live cluster's new listing). The head's own
    /// endpoints (its autoscaler or dashboard moving to another port) are no
    /// lost node.
    pub(crate) fn note_losses(&mut self, before: &[String], at: SystemTime) {
        let roles = crate::ray::roles(before);
        for (endpoint, _) in before
            .iter()
            .zip(roles)
            .filter(|(t, role)| *role == crate::ray::Role::Worker && !self.targets.contains(t))
        {
            self.lost.push(NodeLoss {
                endpoint: endpoint.clone(),
                at,
            });
        }
        let excess = self.lost.len().saturating_sub(MAX_LOST);
        self.lost.drain(..excess);
    }

    /// The lost endpoints it does not list again (a worker back on the same
    /// address is listed, not lost), each with its newest loss.
    pub fn still_lost(&self) -> Vec<&NodeLoss> {
        let mut v: Vec<&NodeLoss> = Vec::new();
        for l in self.lost.iter().rev() {
            if !self.targets.contains(&l.endpoint) && v.iter().all(|o| o.endpoint != l.endpoint) {
                v.push(l);
            }
        }
        v.reverse();
        v
    }

    /// Its last sign of life: a rewrite of its discovery file, or its GCS found listening.
    pub fn last_sign(&self) -> Instant {
        self.gcs_seen
            .map_or(self.last_change, |g| g.max(self.last_change))
    }
}

/// A discovery file raywatch refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionRecord {
    pub reason: String,
    pub since: SystemTime,
    /// The read failed for want of raywatch's own resources (see
    /// [`crate::discovery::Rejection::is_transient`]): the cluster's liveness is on hold.
    pub transient: bool,
}
