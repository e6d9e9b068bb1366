//! Asking a cluster's GCS whether it still runs: the port Ray recorded, a process of its
//! session listening on it (a sign of life), and a connect that is refused (its end).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::untrusted::Folder;

/// The GCS port in a session folder's `gcs_server_port_*` file (Ray ≥ 2.5x),
/// read like every file of Ray's folders (see [`crate::untrusted`]).
fn session_gcs_port(
    dir: &std::path::Path,
    trusted: &dyn Fn(u32) -> bool,
    warned: &mut BTreeSet<String>,
) -> Option<u16> {
    let folder = Folder::open(dir).ok()??;
    let name = folder
        .entries()
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| crate::ray::is_gcs_port_file(&n.to_string_lossy()))?;
    let text = read_small(&folder, &name, trusted, warned)?;
    text.trim().parse().ok()
}

/// The GCS port in `<temp dir>/ray_current_cluster` (`host:port`, older Ray).
fn temp_dir_gcs_port(
    temp_dir: &std::path::Path,
    trusted: &dyn Fn(u32) -> bool,
    warned: &mut BTreeSet<String>,
) -> Option<u16> {
    let folder = Folder::open(temp_dir).ok()??;
    let text = read_small(
        &folder,
        std::ffi::OsStr::new(crate::ray::CURRENT_CLUSTER),
        trusted,
        warned,
    )?;
    text.trim().rsplit_once(':')?.1.parse().ok()
}

/// A small text file of Ray's folders, through the untrusted reader; a refusal is logged once.
fn read_small(
    folder: &Folder,
    name: &std::ffi::OsStr,
    trusted: &dyn Fn(u32) -> bool,
    warned: &mut BTreeSet<String>,
) -> Option<String> {
    match folder.read(name, 64, trusted) {
        Ok(Some(c)) => String::from_utf8(c.bytes).ok(),
        Ok(None) => None,
        Err(r) => {
            let msg = format!("not reading {}: it {r}", folder.path.join(name).display());
            if warned.insert(msg.clone()) {
                tracing::warn!("{msg}");
            }
            None
        }
    }
}

/// The GCS port Ray recorded for the cluster found at `found`: in its session
/// folder, or for older Ray at its temp dir's level.
pub fn gcs_port(
    found: &crate::discovery::Found,
    trusted: &dyn Fn(u32) -> bool,
    warned: &mut BTreeSet<String>,
) -> Option<u16> {
    match &found.session_dir {
        Some(dir) => session_gcs_port(dir, trusted, warned),
        // Older Ray (temp-dir-level discovery file, one cluster per temp dir)
        // records `host:port` of its GCS in `<temp dir>/ray_current_cluster`.
        None => temp_dir_gcs_port(&found.temp_dir, trusted, warned),
    }
}

/// Where the GCS on `port` of cluster `c` answers while it lives: loopback
/// (the head is usually this machine), and the head's own address when that is
/// another machine's (a cluster attached from a shared file system). Ray lists
/// its nodes' endpoints first and the head's autoscaler and dashboard endpoints
/// last, so the last target's host is the head's. Workers' hosts are not asked:
/// one that is unreachable would leave a dead head's end unconfirmed until the
/// liveness bound.
pub fn gcs_addresses(
    c: &crate::registry::Cluster,
    port: u16,
    locals: &std::collections::BTreeSet<std::net::IpAddr>,
) -> Vec<String> {
    let mut hosts: Vec<&str> = vec!["127.0.0.1"];
    if let Some((head, _)) = c.targets.last().and_then(|t| t.rsplit_once(':'))
        && !crate::ports::is_local_host(head, locals)
    {
        hosts.push(head);
    }
    hosts.into_iter().map(|h| format!("{h}:{port}")).collect()
}

/// The process of a trusted uid that listens on `port` here and belongs to
/// Ray session `session` (its command line names the session): the cluster's
/// GCS, alive. A port another cluster's GCS reuses, or another user holds,
/// is no sign of this cluster's life. `known` remembers the (pid, socket) last
/// found, so that a check usually costs one read of the listening sockets and
/// of one process' descriptors.
pub fn gcs_listening(
    port: u16,
    session: &str,
    trusted: &dyn Fn(u32) -> bool,
    known: &mut Option<(u32, u64)>,
) -> bool {
    let listeners = crate::process::Listeners::read();
    let candidates: Vec<&crate::process::Listener> = listeners
        .all()
        .filter(|l| l.addr.port() == port && trusted(l.uid))
        .collect();
    if let Some((pid, inode)) = *known
        && candidates.iter().any(|l| l.inode == inode)
        && crate::process::holds_socket(pid, inode)
    {
        return true;
    }
    *known = None;
    for l in candidates {
        if let Some(pid) = crate::process::socket_owner(l.inode)
            && crate::process::ray_session_of(pid).as_deref() == Some(session)
        {
            *known = Some((pid, l.inode));
            return true;
        }
    }
    false
}

/// Whether every address refuses connections outright (the GCS is gone).
pub async fn all_refused(addrs: &[String]) -> bool {
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

/// How many times, and how often, raywatch looks for a new cluster's GCS port.
const GCS_PORT_TRIES: u32 = 6;
const GCS_PORT_RETRY: Duration = Duration::from_secs(5);

/// New clusters whose GCS port was not found yet: when to look again, and how
/// many looks are left.
#[derive(Debug, Default)]
pub struct PortLooks(HashMap<PathBuf, (Instant, u32)>);

impl PortLooks {
    /// No more looks for `file` (its port was found, or it is gone or dead).
    pub fn stop(&mut self, file: &Path) {
        self.0.remove(file);
    }

    /// A look at `now` found no port: the next one is [`GCS_PORT_RETRY`] later,
    /// until [`GCS_PORT_TRIES`] looks were made.
    pub fn missed(&mut self, file: &Path, now: Instant) {
        let left = self
            .0
            .get(file)
            .map_or(GCS_PORT_TRIES, |(_, n)| *n)
            .saturating_sub(1);
        if left == 0 {
            self.0.remove(file);
        } else {
            self.0
                .insert(file.to_path_buf(), (now + GCS_PORT_RETRY, left));
        }
    }

    /// The files to look at again at `now`.
    pub fn due(&self, now: Instant) -> Vec<PathBuf> {
        self.0
            .iter()
            .filter(|(_, (at, _))| now >= *at)
            .map(|(f, _)| f.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_looks_5s_apart_then_none() {
        let (mut looks, file, t0) = (PortLooks::default(), Path::new("/d.json"), Instant::now());
        let mut at = t0;
        let mut made = 1;
        looks.missed(file, at);
        while let Some((next, _)) = looks.0.get(file).copied() {
            assert_eq!(next - at, GCS_PORT_RETRY);
            assert!(looks.due(next - Duration::from_millis(1)).is_empty());
            assert_eq!(looks.due(next), [file.to_path_buf()]);
            at = next;
            made += 1;
            looks.missed(file, at);
        }
        assert_eq!(made, GCS_PORT_TRIES);
        assert!(looks.due(at + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn the_gcs_is_asked_on_loopback_and_a_remote_heads_address_never_on_workers() {
        use crate::discovery::{Found, Listing};
        use crate::registry::{Origin, Registry};
        use std::time::SystemTime;
        let found = Found::for_file(Path::new(
            "/tmp/ray_a/session_x_1/prom_metrics_service_discovery.json",
        ));
        let addresses = |targets: &[&str], locals: &[&str]| {
            let mut r = Registry::new(Duration::from_secs(20));
            let listing = Listing {
                targets: targets.iter().map(|t| t.to_string()).collect(),
                mtime: SystemTime::now(),
                uid: nix::unistd::geteuid().as_raw(),
            };
            r.observe(
                &found,
                Origin::Watched,
                Ok(Some(listing)),
                Instant::now(),
                SystemTime::now(),
            );
            let locals = locals.iter().map(|a| a.parse().unwrap()).collect();
            gcs_addresses(r.get(&found.file).unwrap(), 6379, &locals)
        };
        // Head here (its autoscaler and dashboard endpoints last), workers elsewhere.
        let nodes = [
            "10.213.1.1:8080",
            "10.213.2.1:8080",
            "10.213.3.1:8080",
            "10.213.1.1:44217",
            "10.213.1.1:44227",
        ];
        assert_eq!(addresses(&nodes, &["10.213.1.1"]), ["127.0.0.1:6379"]);
        // Seen from a worker host (attached over a shared file system): the head too.
        assert_eq!(
            addresses(&nodes, &["10.213.2.1"]),
            ["127.0.0.1:6379", "10.213.1.1:6379"]
        );
        assert_eq!(addresses(&["127.0.0.1:8080"], &[]), ["127.0.0.1:6379"]);
    }

    #[test]
    fn a_found_port_ends_the_looks() {
        let (mut looks, file, t0) = (PortLooks::default(), Path::new("/d.json"), Instant::now());
        looks.missed(file, t0);
        looks.stop(file);
        assert!(looks.due(t0 + GCS_PORT_RETRY).is_empty());
    }
}
