//! A cluster's names and labels: the name it gets (`<user>-<temp dir name>`, or the
//! one given at attach), the checks on a name, and the labels its targets carry.

use std::collections::BTreeMap;

use super::{Cluster, Origin};

/// The labels every target of a cluster carries.
pub fn labels(c: &Cluster) -> BTreeMap<&'static str, String> {
    let mut labels = BTreeMap::from([
        ("ray_io_cluster", c.name.clone()),
        ("ray_session", c.found.session.clone()),
        (
            "ray_temp_dir",
            c.found.temp_dir.to_string_lossy().into_owned(),
        ),
        ("ray_user", c.user.clone()),
    ]);
    if let Some(Some(job)) = &c.slurm {
        labels.insert("slurm_job_id", job.id.clone());
        if let Some(name) = &job.name {
            labels.insert("slurm_job_name", name.clone());
        }
    }
    labels
}

/// `<user>-<temp dir name>` (`alice-ray_alice`), or the name given at attach.
pub(super) fn base_name(c: &Cluster) -> String {
    let raw = match &c.origin {
        Origin::Attached { name: Some(n) } => n.clone(),
        _ => {
            let dir = c
                .found
                .temp_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "root".into());
            format!("{}-{}", c.user, dir)
        }
    };
    sanitize_name(&raw)
}

/// Cluster names become file names and label values: keep them tame.
pub fn sanitize_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, 'c');
    }
    s
}

/// Checks a name given with `--name`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err(format!("cluster name {name:?} must be 1 to 100 characters"));
    }
    if sanitize_name(name) != name {
        return Err(format!(
            "cluster name {name:?} may hold only letters, digits, '-', '_' and '.', and may not start with '.'"
        ));
    }
    Ok(())
}

pub(super) fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    d.iter().take(3).map(|b| format!("{b:02x}")).collect()
}
