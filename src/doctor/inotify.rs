//! The `inotify_limits` check: this user's inotify instances and watches against the kernel's per-user limits.
//!
//! Both limits are per user and shared by all of that user's processes; past
//! them, file watching (Prometheus' file_sd, raywatch's discovery, editors)
//! silently stops. Counted from this user's processes' fds and fdinfo.

use std::io::BufRead;

use super::{Finding, Machine, Status};

/// A warning from this share of a limit on.
const WARN_PERCENT: u64 = 80;

/// The kernel's per-user limits (`/proc/sys/fs/inotify/*`).
#[derive(Debug, Clone, Copy, Default)]
pub struct InotifyLimits {
    pub max_user_instances: Option<u64>,
    pub max_user_watches: Option<u64>,
}

impl InotifyLimits {
    pub fn read() -> InotifyLimits {
        InotifyLimits {
            max_user_instances: read_limit("max_user_instances"),
            max_user_watches: read_limit("max_user_watches"),
        }
    }
}

fn read_limit(name: &str) -> Option<u64> {
    fs_err::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The watches of one inotify fd: the `inotify wd:` lines of its fdinfo.
pub(super) fn watches_of(pid: u32, fd: i32) -> u64 {
    let Ok(f) = fs_err::File::open(format!("/proc/{pid}/fdinfo/{fd}")) else {
        return 0;
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("inotify wd:"))
        .count() as u64
}

pub(super) fn inotify_check(m: &Machine) -> Finding {
    inotify_limits(
        m.procs.inotify_instances,
        m.procs.inotify_watches,
        m.inotify,
    )
}

/// This user's inotify instances and watches against the limits.
pub fn inotify_limits(instances: u64, watches: u64, limits: InotifyLimits) -> Finding {
    const CHECK: &str = "inotify_limits";
    let (Some(max_i), Some(max_w)) = (limits.max_user_instances, limits.max_user_watches) else {
        return Finding::skipped(
            CHECK,
            "cannot read /proc/sys/fs/inotify/max_user_instances and max_user_watches",
        );
    };
    let summary = format!(
        "this user holds {instances} of {max_i} inotify instances and {watches} of {max_w} watches"
    );
    let mut evidence = Vec::new();
    let mut fixes = Vec::new();
    for (used, max, name, floor) in [
        (instances, max_i, "max_user_instances", 1024),
        (watches, max_w, "max_user_watches", 524288),
    ] {
        if used * 100 > max * WARN_PERCENT {
            evidence.push(format!(
                "{used} in use, /proc/sys/fs/inotify/{name} = {max}"
            ));
            fixes.push(format!(
                "sudo sysctl fs.inotify.{name}={}",
                (max * 4).max(floor)
            ));
        }
    }
    if evidence.is_empty() {
        return Finding::ok(CHECK, summary);
    }
    Finding::new(CHECK, Status::Warning, summary).with(
        evidence,
        format!(
            "raise the limit: {} (add it to /etc/sysctl.d/ to keep it), or close watchers you do not need",
            fixes.join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(i: u64, w: u64) -> InotifyLimits {
        InotifyLimits {
            max_user_instances: Some(i),
            max_user_watches: Some(w),
        }
    }

    #[test]
    fn warns_above_80_percent_of_either_limit_with_the_sysctl() {
        assert_eq!(inotify_limits(80, 10, limits(100, 1000)).status, Status::Ok);
        let f = inotify_limits(81, 10, limits(100, 1000));
        assert_eq!(f.status, Status::Warning);
        assert_eq!(
            f.fix.as_deref(),
            Some(
                "raise the limit: sudo sysctl fs.inotify.max_user_instances=1024 (add it to /etc/sysctl.d/ to keep it), or close watchers you do not need"
            )
        );
        let f = inotify_limits(1, 801, limits(100, 1000));
        assert_eq!(f.status, Status::Warning);
        assert!(
            f.fix
                .unwrap()
                .contains("fs.inotify.max_user_watches=524288")
        );
        let f = inotify_limits(1, 900_000, limits(100, 1_000_000));
        assert!(
            f.fix
                .unwrap()
                .contains("fs.inotify.max_user_watches=4000000")
        );
        let unknown = InotifyLimits::default();
        assert_eq!(inotify_limits(1, 1, unknown).status, Status::Skipped);
    }

    #[test]
    fn this_process_inotify_instance_and_its_watches_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let before = super::super::Procs::read();
        let fd = ::inotify::Inotify::init().unwrap();
        for name in ["a", "b", "c"] {
            let p = dir.path().join(name);
            fs_err::create_dir(&p).unwrap();
            fd.watches().add(&p, ::inotify::WatchMask::CREATE).unwrap();
        }
        let after = super::super::Procs::read();
        // nextest runs each test in a process of its own: only ours changed.
        assert_eq!(after.inotify_instances, before.inotify_instances + 1);
        assert_eq!(after.inotify_watches, before.inotify_watches + 3);
    }
}
