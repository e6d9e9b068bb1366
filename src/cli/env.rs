//! `raywatch env`: shell exports that wire the next `ray start` to this stack
//! (gateway, Grafana, free metrics ports, the cluster's name), and the attachment of its temp dir.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::api::Method;
use anyhow::{Context, Result, anyhow};

use super::{Exit, Hint, call_daemon, fetch_status, runtime};
use crate::api::{AttachRequest, AttachResponse};
use crate::escape;
use crate::home::Home;

pub(super) fn env(
    home: &Home,
    temp_dir: Option<PathBuf>,
    name: Option<String>,
    ray_auth: bool,
) -> Result<Exit> {
    let rt = runtime()?;
    let report = rt.block_on(fetch_status(home))?;
    let temp_dir = std::path::absolute(temp_dir.unwrap_or_else(crate::ray::default_temp_dir))?;
    check_temp_dir_owner(home, &temp_dir)?;
    if let Some(n) = &name {
        crate::registry::validate_name(n).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(c) = report
        .clusters
        .iter()
        .find(|c| c.state == "live" && c.temp_dir == temp_dir)
    {
        return Err(Hint::attach(
            anyhow!(
                "a Ray cluster ({}) is already running in {}; give the next cluster its own temp dir",
                escape::text(&c.name),
                escape::path(&temp_dir)
            ),
            format!("raywatch env --temp-dir {}_2", escape::path(&temp_dir)),
        ));
    }
    let user = crate::process::user_name(nix::unistd::geteuid().as_raw());
    let default_name = crate::registry::sanitize_name(&format!(
        "{user}-{}",
        temp_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let taken = |n: &str| {
        report
            .clusters
            .iter()
            .any(|c| c.state == "live" && c.name == n)
    };
    let chosen = match name {
        Some(n) if taken(&n) => {
            return Err(Hint::attach(
                anyhow!("the name {n:?} is already used by a live cluster"),
                "choose another --name",
            ));
        }
        Some(n) => Some(n),
        None if taken(&default_name) => (2..)
            .map(|i| format!("{default_name}-{i}"))
            .find(|n| !taken(n)),
        None => None,
    };
    // Attaching makes the temp dir followed wherever it is, under the announced name.
    std::fs::create_dir_all(&temp_dir)
        .with_context(|| format!("cannot create {}", escape::path(&temp_dir)))?;
    let req = AttachRequest {
        path: temp_dir.clone(),
        name: chosen.clone(),
    };
    let _: AttachResponse =
        rt.block_on(call_daemon(home, Method::POST, "/v1/attach", Some(&req)))?;
    let announced = chosen.unwrap_or(default_name);

    // Ray gets no credential: it copies whatever it is given into
    // world-readable files. The gateway serves this user's connections only.
    let grafana = report
        .grafana
        .url
        .clone()
        .unwrap_or_else(|| "DISABLED".into());
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let p = crate::ports::free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let mut vars: Vec<(&str, String)> = vec![
        ("RAY_PROMETHEUS_HOST", report.gateway.url.clone()),
        (
            "RAY_PROMETHEUS_NAME",
            report.prometheus.datasource_name.clone(),
        ),
        ("RAY_GRAFANA_HOST", grafana.clone()),
        ("RAY_GRAFANA_IFRAME_HOST", grafana),
        ("RAY_GRAFANA_CLUSTER_FILTER", announced.clone()),
        ("AUTOSCALER_METRIC_PORT", ports[0].to_string()),
        ("DASHBOARD_METRIC_PORT", ports[1].to_string()),
        ("RAYWATCH_METRICS_EXPORT_PORT", ports[2].to_string()),
        ("RAYWATCH_TEMP_DIR", temp_dir.display().to_string()),
        ("RAYWATCH_CLUSTER", announced.clone()),
    ];
    let auth_note = if ray_auth {
        let token = crate::ray_auth::ensure_token(home)?;
        vars.push((crate::ray_auth::MODE_VAR, "token".into()));
        vars.push((crate::ray_auth::TOKEN_PATH_VAR, token.display().to_string()));
        warn_if_ray_lacks_token_auth();
        format!(
            "# Ray's token auth is on: its Dashboard and job API want the token in {} (sign in with it; `raywatch open {announced}` says how)",
            escape::path(&token)
        )
    } else {
        vars.push((crate::ray_auth::MODE_VAR, "disabled".into()));
        eprintln!(
            "warning: --no-ray-auth: the cluster's Dashboard will run any local user's code as you (its job API needs no token)"
        );
        "# Ray's token auth is off (--no-ray-auth): every local user can submit jobs to this cluster".into()
    };
    println!("# raywatch: environment for the next `ray start` (cluster {announced})");
    for (k, v) in vars {
        println!("export {k}={}", sh_quote(&v));
    }
    println!("{auth_note}");
    println!(
        "# then: ray start --head --temp-dir=\"$RAYWATCH_TEMP_DIR\" --metrics-export-port=\"$RAYWATCH_METRICS_EXPORT_PORT\""
    );
    Ok(Exit::Success)
}

/// Refuses a temp dir that is a link, or a folder another user made (they
/// could then move or replace the sessions Ray writes into it), unless the
/// stack trusts its owner (`up --trust-uid`).
fn check_temp_dir_owner(home: &Home, temp_dir: &std::path::Path) -> Result<()> {
    let Ok(m) = std::fs::symlink_metadata(temp_dir) else {
        return Ok(());
    };
    let shown = escape::path(temp_dir);
    if m.file_type().is_symlink() {
        return Err(Hint::attach(
            anyhow!("{shown} is a symbolic link; Ray's temp dir must be a real folder"),
            format!(
                "give the cluster a folder of its own: raywatch env --temp-dir {shown}_{}",
                user_suffix()
            ),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    let owner = m.uid();
    let trusted = crate::config::StackConfig::load(&home.config())
        .ok()
        .flatten()
        .is_some_and(|c| c.trust_uids.contains(&owner));
    if owner == me || owner == 0 || trusted {
        return Ok(());
    }
    Err(Hint::attach(
        anyhow!(
            "{shown} belongs to {} (uid {owner}), not to you: they could move, replace or read what Ray writes there",
            escape::text(&crate::process::user_name(owner))
        ),
        format!(
            "give the cluster a folder of its own: raywatch env --temp-dir {shown}_{}; or, if you trust that user, `raywatch up --trust-uid {owner}`",
            user_suffix()
        ),
    ))
}

fn user_suffix() -> String {
    crate::registry::sanitize_name(&crate::process::user_name(nix::unistd::geteuid().as_raw()))
}

/// Says on stderr when the `ray` on PATH cannot use a token (or cannot be found).
fn warn_if_ray_lacks_token_auth() {
    let (min_major, min_minor) = crate::ray_auth::MIN_VERSION;
    match crate::ray_auth::ray_on_path() {
        Some((ray, Some(v))) => {
            if crate::ray_auth::parse_version(&v)
                .is_some_and(|p| !crate::ray_auth::has_token_auth(p))
            {
                eprintln!(
                    "warning: Ray {} ({}) has no token auth: its Dashboard's job API will run any local user's code as you; upgrade to Ray >= {min_major}.{min_minor}",
                    escape::text(&v),
                    escape::path(&ray)
                );
            }
        }
        Some((ray, None)) => eprintln!(
            "note: cannot tell the version of {}: Ray's token auth needs Ray >= {min_major}.{min_minor} (older Ray leaves its Dashboard's job API open to every local user)",
            escape::path(&ray)
        ),
        None => eprintln!(
            "note: no `ray` on PATH: Ray's token auth needs Ray >= {min_major}.{min_minor} (older Ray leaves its Dashboard's job API open to every local user)"
        ),
    }
}

/// Quotes a value for POSIX sh.
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}
