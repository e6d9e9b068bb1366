//! Slurm labels: the job a cluster's head runs in, read from the head's own environment.
//!
//! A Ray cluster started inside a Slurm job inherits `SLURM_JOB_ID` (and
//! `SLURM_JOB_NAME`). raywatch finds a process of the cluster's session (a
//! `session_*` component on its command line) owned by the cluster's uid —
//! never another user's process — and reads those two variables from its
//! `/proc/<pid>/environ` (a bounded part of it), once per session. Values are checked: a job id is
//! digits (array jobs: digits, `_` and digits), a name is printable and short.

const JOB_ID: &str = "SLURM_JOB_ID";
const JOB_NAME: &str = "SLURM_JOB_NAME";

/// The Slurm job of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    pub id: String,
    pub name: Option<String>,
}

/// The Slurm jobs of several sessions `(session, uid)`, in one pass over
/// /proc: for each session a process of that uid was found for, its job (None
/// outside Slurm). A session missing from the answer had no process yet.
pub fn lookup_many(
    wanted: &std::collections::HashSet<(String, u32)>,
) -> std::collections::HashMap<String, Option<SlurmJob>> {
    let mut out = std::collections::HashMap::new();
    let Ok(all) = ::procfs::process::all_processes() else {
        return out;
    };
    for p in all.flatten() {
        let Ok(uid) = p.uid() else { continue };
        let Some(session) = crate::process::ray_session_of(p.pid as u32) else {
            continue;
        };
        if out.contains_key(&session) || !wanted.contains(&(session.clone(), uid)) {
            continue;
        }
        let Ok(env) = crate::process::env_vars(p.pid as u32, &[JOB_ID, JOB_NAME]) else {
            continue;
        };
        let job = env.get(JOB_ID).filter(|v| valid_id(v)).map(|id| SlurmJob {
            id: id.clone(),
            name: env.get(JOB_NAME).filter(|v| valid_name(v)).cloned(),
        });
        out.insert(session, job);
    }
    out
}

/// `4242`, or an array task's `4242_7`.
pub fn valid_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.chars().all(|c| c.is_ascii_digit() || c == '_')
        && v.starts_with(|c: char| c.is_ascii_digit())
}

/// Printable, at most 128 characters.
pub fn valid_name(v: &str) -> bool {
    !v.is_empty() && v.chars().count() <= 128 && !v.chars().any(crate::escape::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_job_of_a_session_from_its_process() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "--session-name=session_unit_4242"])
            .env("SLURM_JOB_ID", "4242")
            .env("SLURM_JOB_NAME", "train")
            .spawn()
            .unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let ask = |uid: u32| {
            let wanted = std::collections::HashSet::from([("session_unit_4242".to_string(), uid)]);
            lookup_many(&wanted).remove("session_unit_4242")
        };
        let mut job = None;
        for _ in 0..50 {
            job = ask(me);
            if job.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let other = ask(me + 1);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(other, None, "other uids' processes are not read");
        assert_eq!(
            job,
            Some(Some(SlurmJob {
                id: "4242".into(),
                name: Some("train".into())
            }))
        );
        assert!(valid_id("4242_7") && !valid_id("42; rm") && !valid_id(""));
        assert!(!valid_name("a\u{1b}]0;x"));
    }
}
