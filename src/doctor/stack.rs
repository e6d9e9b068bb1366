//! Checks of this stack: Prometheus' disk against free space and retention, targets down,
//! remote writes failing (from the daemon's status report), and the home's and secrets' permissions.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Finding, Machine, Status, show};
use crate::status::{StatusReport, human_bytes};

/// Prometheus is short of disk below this much free space (or a fifth of its data, if more).
pub const MIN_FREE_BYTES: u64 = 256 << 20;
/// Growth is projected only from data at least this old (younger: the head and WAL alone).
const PROJECT_AFTER: Duration = Duration::from_secs(2 * 3600);

/// Prometheus' data on disk.
#[derive(Debug, Clone)]
pub struct DiskUse {
    pub dir: PathBuf,
    pub data_bytes: u64,
    pub free_bytes: u64,
    pub retention: Option<Duration>,
    /// How old the oldest stored sample is (from the blocks' meta.json).
    pub oldest: Option<Duration>,
}

/// The age of the oldest sample in a Prometheus data folder: the smallest
/// `minTime` of its blocks' meta.json (this stack's own folder).
fn oldest_sample(dir: &Path) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "minTime")]
        min_time: i64,
    }
    let min_ms = fs_err::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let bytes = fs_err::read(e.path().join("meta.json")).ok()?;
            serde_json::from_slice::<Meta>(&bytes).ok()
        })
        .map(|m| m.min_time)
        .min()?;
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(min_ms.max(0) as u64);
    SystemTime::now().duration_since(t).ok()
}

pub(super) fn prometheus_disk(m: &Machine) -> Finding {
    const CHECK: &str = "prometheus_disk";
    let dir = match &m.report {
        Ok(r) => r.prometheus.data_dir.clone(),
        Err(_) => None,
    }
    .unwrap_or_else(|| m.home.prometheus_data());
    if !dir.is_dir() {
        return Finding::skipped(CHECK, format!("no Prometheus data in {} yet", show(&dir)));
    }
    let (data_bytes, free) = crate::prometheus::disk_use(&dir);
    let Some(free_bytes) = free else {
        return Finding::skipped(
            CHECK,
            format!("cannot read the free space of {}", show(&dir)),
        );
    };
    disk_finding(&DiskUse {
        oldest: oldest_sample(&dir),
        dir,
        data_bytes,
        free_bytes,
        retention: m.config.as_ref().map(|c| c.retention),
    })
}

/// The verdict on Prometheus' disk: short of space now (problem), or at the
/// current rate short before the retention is reached (warning).
pub fn disk_finding(d: &DiskUse) -> Finding {
    const CHECK: &str = "prometheus_disk";
    let retention = d
        .retention
        .map(crate::config::prometheus_duration)
        .unwrap_or_else(|| "?".into());
    let summary = format!(
        "Prometheus keeps {} in {} (retention {retention}); {} free on that file system",
        human_bytes(d.data_bytes),
        show(&d.dir),
        human_bytes(d.free_bytes)
    );
    let fix = format!(
        "free space on the file system of {}, keep less (`raywatch up --retention 7d`), or move the stack to a larger disk (`raywatch --home DIR up`)",
        show(&d.dir)
    );
    let need = MIN_FREE_BYTES.max(d.data_bytes / 5);
    if d.free_bytes < need {
        return Finding::new(CHECK, Status::Problem, summary).with(
            vec![format!(
                "{} free is below {}: Prometheus needs room to compact its blocks and stops storing samples when the disk is full",
                human_bytes(d.free_bytes),
                human_bytes(need)
            )],
            fix,
        );
    }
    if let (Some(retention), Some(age)) = (d.retention, d.oldest)
        && age >= PROJECT_AFTER
        && age < retention
    {
        let rate = d.data_bytes as f64 / age.as_secs_f64();
        let growth = (rate * (retention - age).as_secs_f64()) as u64;
        if growth > d.free_bytes {
            return Finding::new(CHECK, Status::Warning, summary).with(
                vec![format!(
                    "{} of data in {:.1} h: at that rate the remaining {:.1} days of the retention need about {} more",
                    human_bytes(d.data_bytes),
                    age.as_secs_f64() / 3600.0,
                    (retention - age).as_secs_f64() / 86400.0,
                    human_bytes(growth)
                )],
                fix,
            );
        }
    }
    Finding::ok(CHECK, summary)
}

pub(super) fn targets_down(m: &Machine) -> Finding {
    const CHECK: &str = "targets_down";
    let r = match m.report_or_skip(CHECK) {
        Ok(r) => r,
        Err(f) => return f,
    };
    if let Some(f) = prometheus_unusable(m, r, CHECK) {
        return f;
    }
    let mut evidence = Vec::new();
    let mut over_limit = false;
    let mut scraped = 0;
    for c in r
        .clusters
        .iter()
        .filter(|c| c.state == crate::status::ClusterState::Live)
    {
        for t in &c.targets {
            scraped += 1;
            if t.health != crate::status::Health::Down {
                continue;
            }
            let mut line = format!(
                "cluster {}: {} is down",
                crate::escape::text(&c.name),
                crate::escape::text(&t.address)
            );
            if let Some(why) = &t.sample_limit_exceeded {
                over_limit = true;
                line.push_str(&format!(" ({})", crate::escape::text(why)));
            }
            evidence.push(line);
        }
    }
    if evidence.is_empty() {
        return Finding::ok(
            CHECK,
            format!(
                "every target of the live clusters is up or not yet scraped ({scraped} targets)"
            ),
        );
    }
    let mut fix = "`raywatch status` shows each target; a target down means Prometheus cannot scrape that Ray process: it exited, or its port is not reachable".to_string();
    if over_limit {
        fix.push_str("; a target over the sample limit: raise it with `raywatch up --sample-limit N` or drop a label with `raywatch up --drop-label NAME`");
    }
    Finding::new(
        CHECK,
        Status::Warning,
        format!("{} target(s) of live clusters are down", evidence.len()),
    )
    .with(evidence, fix)
}

/// A Prometheus whose targets cannot be judged: not ready (other users holding
/// its connections, or else its log says why), or answering what raywatch cannot read.
fn prometheus_unusable(m: &Machine, r: &StatusReport, check: &'static str) -> Option<Finding> {
    let restart =
        "read Prometheus' log for why; `raywatch down` then `raywatch up` restarts the stack";
    if !r.prometheus.ready {
        if let Some(held) = &r.prometheus.connections_held {
            return Some(
                Finding::new(
                    check,
                    Status::Problem,
                    format!(
                        "the stack's Prometheus ({}) is not ready: other users hold its connections",
                        r.prometheus.url
                    ),
                )
                .with(
                    vec![crate::escape::text(held).into_owned()],
                    "ask that user (or the administrators) to stop the process holding them; \
                     Prometheus closes idle connections by itself within a minute",
                ),
            );
        }
        return Some(
            Finding::new(
                check,
                Status::Problem,
                format!("the stack's Prometheus ({}) is not ready", r.prometheus.url),
            )
            .with(
                vec![format!("its log: {}", show(&m.home.prometheus_log()))],
                restart,
            ),
        );
    }
    let e = r.prometheus.read_error.as_ref()?;
    Some(
        Finding::new(
            check,
            Status::Problem,
            format!(
                "the stack's Prometheus ({}) answers, but raywatch cannot read its answers",
                r.prometheus.url
            ),
        )
        .with(vec![crate::escape::text(e).into_owned()], restart),
    )
}

pub(super) fn remote_write(m: &Machine) -> Finding {
    const CHECK: &str = "remote_write";
    let r = match m.report_or_skip(CHECK) {
        Ok(r) => r,
        Err(f) => return f,
    };
    if r.remote_write.is_empty() {
        return Finding::ok(CHECK, "no remote write configured");
    }
    let failing: Vec<String> = r
        .remote_write
        .iter()
        .filter_map(|w| {
            let err = w.last_error.as_ref()?;
            Some(format!(
                "{}: {} ({} samples sent, {} failed)",
                crate::escape::text(&w.url),
                crate::escape::text(err),
                w.samples_sent,
                w.samples_failed
            ))
        })
        .collect();
    if failing.is_empty() {
        return Finding::ok(
            CHECK,
            format!("{} remote write(s), none failing", r.remote_write.len()),
        );
    }
    Finding::new(
        CHECK,
        Status::Problem,
        format!(
            "{} of {} remote write(s) are failing: samples do not reach the central store",
            failing.len(),
            r.remote_write.len()
        ),
    )
    .with(
        failing,
        "check the URL, the receiver and the credentials file, then apply them with `raywatch up --remote-write URL [--remote-write-bearer-file F]`; `raywatch up --no-remote-write` stops sending",
    )
}

pub(super) fn home_check(m: &Machine) -> Finding {
    home_permissions(m.home.root())
}

/// The home and its secrets: owned by this user, not writable (secrets: not
/// readable) by others.
pub fn home_permissions(home: &Path) -> Finding {
    use std::os::unix::fs::MetadataExt;
    const CHECK: &str = "home_permissions";
    if fs_err::symlink_metadata(home).is_err() {
        return Finding::skipped(CHECK, format!("no home at {} yet", show(home)));
    }
    let me = nix::unistd::getuid().as_raw();
    let mut evidence = Vec::new();
    let mut fixes = Vec::new();
    let secrets = home.join("secrets");
    let mut paths = vec![
        (home.to_path_buf(), 0o022, "go-w"),
        (secrets.clone(), 0o077, "go-rwx"),
    ];
    // The secret files themselves (the home's own folder: no link is followed).
    if let Ok(entries) = fs_err::read_dir(&secrets) {
        for e in entries.flatten() {
            paths.push((e.path(), 0o077, "go-rwx"));
        }
    }
    for (path, bad_bits, mode) in &paths {
        let Ok(meta) = fs_err::symlink_metadata(path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            evidence.push(format!("{} is a symlink", show(path)));
            fixes.push(format!(
                "replace the link {} with what it points to",
                show(path)
            ));
            continue;
        }
        if meta.uid() != me {
            evidence.push(format!(
                "{} is owned by {}",
                show(path),
                crate::process::user_name(meta.uid())
            ));
            fixes.push(format!(
                "use a home of your own (--home), not {}",
                show(home)
            ));
        }
        if meta.mode() & bad_bits != 0 {
            evidence.push(format!("{} has mode {:o}", show(path), meta.mode() & 0o777));
            fixes.push(format!("chmod {mode} {}", show(path)));
        }
    }
    if evidence.is_empty() {
        return Finding::ok(CHECK, format!("{} and its secrets are private", show(home)));
    }
    fixes.dedup();
    Finding::new(
        CHECK,
        Status::Problem,
        "the stack's home or secrets are open to other users",
    )
    .with(evidence, fixes.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(data: u64, free: u64, oldest_h: Option<u64>) -> DiskUse {
        DiskUse {
            dir: PathBuf::from("/h/prometheus/data"),
            data_bytes: data,
            free_bytes: free,
            retention: Some(Duration::from_secs(30 * 86400)),
            oldest: oldest_h.map(|h| Duration::from_secs(h * 3600)),
        }
    }

    #[test]
    fn short_of_space_now_is_a_problem_short_by_the_retention_a_warning() {
        const MIB: u64 = 1 << 20;
        assert_eq!(
            disk_finding(&disk(10 * MIB, 100 * MIB, None)).status,
            Status::Problem
        );
        // A fifth of the data, when that is more than the floor.
        assert_eq!(
            disk_finding(&disk(10_000 * MIB, 1_900 * MIB, None)).status,
            Status::Problem
        );
        assert_eq!(
            disk_finding(&disk(10 * MIB, 300 * MIB, None)).status,
            Status::Ok
        );
        // 1 GiB in a day: 29 more days need 29 GiB.
        let f = disk_finding(&disk(1024 * MIB, 20 * 1024 * MIB, Some(24)));
        assert_eq!(f.status, Status::Warning, "{f:?}");
        assert!(f.fix.unwrap().contains("--retention"));
        assert_eq!(
            disk_finding(&disk(1024 * MIB, 40 * 1024 * MIB, Some(24))).status,
            Status::Ok
        );
        // Too young to project from.
        assert_eq!(
            disk_finding(&disk(1024 * MIB, 1024 * MIB, Some(1))).status,
            Status::Ok
        );
    }
}
