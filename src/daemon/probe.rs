//! Asking a cluster's GCS whether it still runs: the port Ray recorded, and a connect that is refused.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::untrusted::Folder;

/// Where a cluster's GCS should answer: the port Ray recorded in the session dir
/// (a `gcs_server_port_*` file, read like every file of Ray's folders: see
/// [`crate::untrusted`]), on loopback and on the hosts of its targets.
pub fn gcs_addresses(
    c: &crate::registry::Cluster,
    trusted: &dyn Fn(u32) -> bool,
    warned: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let folder = Folder::open(c.found.session_dir.as_ref()?).ok()??;
    let name = folder
        .entries()
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| crate::ray::is_gcs_port_file(&n.to_string_lossy()))?;
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
