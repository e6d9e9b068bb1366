//! Asking a cluster's GCS whether it still runs: the port Ray recorded, and a connect that is refused.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::untrusted::Folder;

/// Where a cluster's GCS should answer: the port Ray recorded in the session dir
/// (a `gcs_server_port_*` file, read like every file of Ray's folders: see
/// [`crate::untrusted`]), on loopback and on the hosts of its targets.
/// The GCS port in a session folder's `gcs_server_port_*` file (Ray ≥ 2.5x).
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

pub fn gcs_addresses(
    c: &crate::registry::Cluster,
    trusted: &dyn Fn(u32) -> bool,
    warned: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let port = match &c.found.session_dir {
        Some(dir) => session_gcs_port(dir, trusted, warned)?,
        // Older Ray (temp-dir-level discovery file, one cluster per temp dir)
        // records `host:port` of its GCS in `<temp dir>/ray_current_cluster`.
        None => temp_dir_gcs_port(&c.found.temp_dir, trusted, warned)?,
    };
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
