//! `raywatch env`: shell exports that wire the next `ray start` to this stack
//! (gateway, Grafana, free metrics ports, the cluster's name), and the attachment of its temp dir.

use std::path::PathBuf;

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
    let temp_dir = choose_temp_dir(home, temp_dir, &report)?;
    if let Some(n) = &name {
        crate::registry::validate_name(n).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(c) = report
        .clusters
        .iter()
        .find(|c| c.state == crate::status::ClusterState::Live && c.temp_dir == temp_dir)
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
    let (chosen, default_name) = choose_name(&report, &temp_dir, name)?;
    // Attaching makes the temp dir followed wherever it is, under the announced name.
    fs_err::create_dir_all(&temp_dir)
        .with_context(|| format!("cannot create {}", escape::path(&temp_dir)))?;
    let req = AttachRequest {
        path: temp_dir.clone(),
        name: chosen.clone(),
    };
    let _: AttachResponse = rt.block_on(call_daemon(home, &req))?;
    let announced = chosen.unwrap_or(default_name);

    let mut vars = wiring(&report, &temp_dir, &announced)?;
    let auth_note = auth_vars(home, ray_auth, &announced, &mut vars)?;
    println!("# raywatch: environment for the next `ray start` (cluster {announced})");
    if ray_auth {
        // Ray prefers RAY_AUTH_TOKEN to the file: a token from elsewhere must not win.
        println!("unset RAY_AUTH_TOKEN");
    }
    for (k, v) in vars {
        println!("export {k}={}", sh_quote(&v));
    }
    println!("{auth_note}");
    println!(
        "# then: ray start --head --temp-dir=\"$RAYWATCH_TEMP_DIR\" --metrics-export-port=\"$RAYWATCH_METRICS_EXPORT_PORT\" --dashboard-port=\"$RAYWATCH_DASHBOARD_PORT\""
    );
    Ok(Exit::Success)
}

/// The name to ask the daemon for (`None`: its default), and that default
/// (`<user>-<temp dir name>`); a name a live cluster holds is refused, a
/// default it holds gets a suffix.
fn choose_name(
    report: &crate::status::StatusReport,
    temp_dir: &std::path::Path,
    name: Option<String>,
) -> Result<(Option<String>, String)> {
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
            .any(|c| c.state == crate::status::ClusterState::Live && c.name == n)
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
    Ok((chosen, default_name))
}

/// What wires the cluster to this stack: the gateway (Ray gets no credential:
/// it copies whatever it is given into world-readable files; the gateway
/// serves this user's connections only), Grafana, free ports, its name.
fn wiring(
    report: &crate::status::StatusReport,
    temp_dir: &std::path::Path,
    announced: &str,
) -> Result<Vec<(&'static str, String)>> {
    let grafana = report
        .grafana
        .url
        .clone()
        .unwrap_or_else(|| "DISABLED".into());
    let mut ports = Vec::new();
    while ports.len() < 4 {
        let p = crate::ports::free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    Ok(vec![
        ("RAY_PROMETHEUS_HOST", report.gateway.url.clone()),
        (
            "RAY_PROMETHEUS_NAME",
            report.prometheus.datasource_name.clone(),
        ),
        ("RAY_GRAFANA_HOST", grafana.clone()),
        ("RAY_GRAFANA_IFRAME_HOST", grafana),
        ("RAY_GRAFANA_CLUSTER_FILTER", announced.to_string()),
        ("AUTOSCALER_METRIC_PORT", ports[0].to_string()),
        ("DASHBOARD_METRIC_PORT", ports[1].to_string()),
        ("RAYWATCH_METRICS_EXPORT_PORT", ports[2].to_string()),
        // A free Dashboard port, and Ray's job CLI pointed at it: its default
        // (127.0.0.1:8265) may be another user's listener, which would get the token.
        ("RAYWATCH_DASHBOARD_PORT", ports[3].to_string()),
        (
            "RAY_API_SERVER_ADDRESS",
            format!("http://127.0.0.1:{}", ports[3]),
        ),
        ("RAYWATCH_TEMP_DIR", temp_dir.display().to_string()),
        ("RAYWATCH_CLUSTER", announced.to_string()),
    ])
}

/// Ray's token auth: on (raywatch's private token file) or, with
/// `--no-ray-auth`, explicitly off; returns the comment line that says which.
fn auth_vars(
    home: &Home,
    ray_auth: bool,
    announced: &str,
    vars: &mut Vec<(&'static str, String)>,
) -> Result<String> {
    if !ray_auth {
        vars.push((crate::ray_auth::MODE_VAR, "disabled".into()));
        eprintln!(
            "warning: --no-ray-auth: the cluster's Dashboard will run any local user's code as you (its job API needs no token)"
        );
        return Ok("# Ray's token auth is off (--no-ray-auth): every local user can submit jobs to this cluster".into());
    }
    let (token, replaced) = crate::ray_auth::ensure_token(home)?;
    if replaced {
        eprintln!(
            "warning: {} was readable by other users: raywatch wrote a new token; clusters started with the old one keep it until they restart",
            escape::path(&token)
        );
    }
    vars.push((crate::ray_auth::MODE_VAR, "token".into()));
    vars.push((crate::ray_auth::TOKEN_PATH_VAR, token.display().to_string()));
    warn_if_ray_lacks_token_auth();
    Ok(format!(
        "# Ray's token auth is on: its Dashboard and job API want the token in {} (sign in with it; `raywatch open {announced}` says how)",
        escape::path(&token)
    ))
}

/// The temp dir for the next cluster: the one named, checked (refused when
/// another user could redirect or replace it, a warning when others can reach
/// it), else the first of `ray`, `ray_2`, … without a live cluster in this
/// user's private folder.
fn choose_temp_dir(
    home: &Home,
    named: Option<PathBuf>,
    report: &crate::status::StatusReport,
) -> Result<PathBuf> {
    let refused = |e: crate::temp_dir::Refused| {
        let hint = e.hint();
        Hint::attach(anyhow!(e), hint)
    };
    let Some(named) = named else {
        let base = crate::temp_dir::private_base().map_err(refused)?;
        let busy = |p: &std::path::Path| {
            report
                .clusters
                .iter()
                .any(|c| c.state == crate::status::ClusterState::Live && c.temp_dir == p)
        };
        let dir = std::iter::once(base.join("ray"))
            .chain((2..).map(|i| base.join(format!("ray_{i}"))))
            .find(|p| !busy(p))
            .expect("an unbounded sequence has a free entry");
        return Ok(dir);
    };
    let path = crate::temp_dir::normalize(&std::path::absolute(named)?);
    let trust = crate::config::StackConfig::load(&home.config())
        .ok()
        .flatten()
        .map(|c| c.trust_uids)
        .unwrap_or_default();
    let reach = crate::temp_dir::check(&path, &|uid| trust.contains(&uid)).map_err(refused)?;
    if reach == crate::temp_dir::Reach::Open {
        eprintln!(
            "warning: other users can reach {}: Ray makes its temp and session folders writable by everyone, so they can replace the Dashboard's sockets (and catch Ray's token), read its logs and plant links; `raywatch env` without --temp-dir uses a private folder",
            escape::path(&path)
        );
    }
    Ok(path)
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
