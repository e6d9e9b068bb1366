//! The `dashboard_auth` and `ray_token_file` checks: can another local user run code as you through a Ray Dashboard's job API?
//!
//! Ray's Dashboard runs any entrypoint POSTed to `/api/jobs/` as the
//! cluster's user unless Ray's token auth is on (Ray ≥ 2.52, `RAY_AUTH_MODE=token`),
//! and the token protects only while other users cannot read its file. Only
//! this user's Dashboards are asked, with a read-only `GET /api/jobs/` without
//! a credential (see [`crate::ray_dashboard`]).

use std::path::PathBuf;

use super::{Finding, Machine, Status};
use crate::escape;
use crate::ray_dashboard::{Dashboard, JobApi};

/// The fix for an open job API.
const ENV_FIX: &str = "stop the cluster (by its PID, not `ray stop`) and start it again after `eval \"$(raywatch env)\"`: with Ray ≥ 2.52 that turns Ray's token auth on (a private token file of raywatch's); older Ray has no token auth: upgrade it";

/// This user's Dashboards in doctor's scope, with their command lines' Ray version.
fn my_dashboards(m: &Machine) -> Vec<Dashboard> {
    m.procs
        .list
        .iter()
        .filter(|p| p.uid == m.me)
        .filter(|p| super::dashboard::in_scope(m, p))
        .filter_map(|p| Dashboard::from_cmdline(p.pid, p.uid, &p.cmdline))
        .collect()
}

fn describe(d: &Dashboard) -> String {
    let session = d
        .session_dir
        .as_deref()
        .and_then(crate::ray::session_in_path)
        .unwrap_or_else(|| "?".into());
    format!(
        "session {} (Ray {}, dashboard {}, pid {})",
        escape::text(&session),
        escape::text(d.version.as_deref().unwrap_or("?")),
        d.url(),
        d.pid
    )
}

pub(super) fn dashboard_auth(m: &Machine) -> Finding {
    const CHECK: &str = "dashboard_auth";
    let dashboards = my_dashboards(m);
    if dashboards.is_empty() {
        return Finding::ok(CHECK, "no live Ray Dashboard of yours");
    }
    let answers = crate::ray_dashboard::probe_all_blocking(&dashboards);
    let (mut open, mut unknown, mut token) = (Vec::new(), Vec::new(), 0);
    for (d, a) in dashboards.iter().zip(&answers) {
        match a {
            JobApi::Token => token += 1,
            JobApi::Open => open.push(format!(
                "{}: its job API needs no token: every local user can run code as you through port {}",
                describe(d),
                d.addr.port()
            )),
            JobApi::Unknown(why) => unknown.push(format!(
                "{}: {}",
                describe(d),
                escape::text(why)
            )),
        }
    }
    let n = dashboards.len();
    if !open.is_empty() {
        let summary = format!(
            "{} of {n} live Ray Dashboard(s) of yours run any local user's code: their job API needs no token",
            open.len()
        );
        open.extend(unknown);
        return Finding::new(CHECK, Status::Problem, summary).with(open, ENV_FIX);
    }
    if !unknown.is_empty() {
        return Finding::new(
            CHECK,
            Status::Warning,
            format!(
                "{} of {n} live Ray Dashboard(s) of yours could not be asked whether their job API needs a token",
                unknown.len()
            ),
        )
        .with(unknown, "run `raywatch doctor` again; a Dashboard still starting answers late");
    }
    Finding::ok(
        CHECK,
        format!("{token} live Ray Dashboard(s) of yours demand Ray's token for jobs"),
    )
}

pub(super) fn ray_token_file(m: &Machine) -> Finding {
    const CHECK: &str = "ray_token_file";
    // Ray's default file, raywatch's own, and every file a Dashboard of yours reads.
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let mut add = |p: PathBuf, why: String| {
        if !files.iter().any(|(f, _)| *f == p) && p.exists() {
            files.push((p, why));
        }
    };
    if let Some(p) = crate::ray_auth::ray_default_token_file() {
        add(p, "Ray's default token file".into());
    }
    add(
        crate::ray_auth::token_path(&m.home),
        "raywatch's token for Ray".into(),
    );
    for d in my_dashboards(m) {
        if let Some(p) = crate::ray_dashboard::token_source(d.pid) {
            add(p, format!("read by the Dashboard with pid {}", d.pid));
        }
    }
    let exposed: Vec<(PathBuf, String)> = files
        .iter()
        .filter_map(|(p, why)| {
            let how = crate::ray_auth::readable_by_others(p)?;
            Some((p.clone(), format!("{} ({why}): {how}", escape::path(p))))
        })
        .collect();
    if exposed.is_empty() {
        return Finding::ok(
            CHECK,
            match files.len() {
                0 => "no Ray token file".to_string(),
                n => format!("{n} Ray token file(s), readable by you only"),
            },
        );
    }
    let fix = exposed
        .iter()
        .map(|(p, _)| crate::ray_auth::chmod_fix(p))
        .collect::<Vec<_>>()
        .join("; ");
    Finding::new(
        CHECK,
        Status::Problem,
        format!(
            "{} Ray token file(s) other users can read: whoever reads it can run code as you through your clusters' job API",
            exposed.len()
        ),
    )
    .with(exposed.into_iter().map(|(_, e)| e).collect(), fix)
}
