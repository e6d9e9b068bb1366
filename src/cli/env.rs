//! `raywatch env`: shell exports that wire the next `ray start` to this stack
//! (gateway, Grafana, free metrics ports, the cluster's name), and the attachment of its temp dir.

use std::path::PathBuf;

use crate::api::Method;
use anyhow::{Context, Result, anyhow};

use super::{Exit, Hint, call_daemon, fetch_status, runtime};
use crate::api::{AttachRequest, AttachResponse};
use crate::escape;
use crate::home::Home;

pub(super) fn env(home: &Home, temp_dir: Option<PathBuf>, name: Option<String>) -> Result<Exit> {
    let rt = runtime()?;
    let report = rt.block_on(fetch_status(home))?;
    let temp_dir = std::path::absolute(temp_dir.unwrap_or_else(crate::ray::default_temp_dir))?;
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
    let vars: Vec<(&str, String)> = vec![
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
    println!("# raywatch: environment for the next `ray start` (cluster {announced})");
    for (k, v) in vars {
        println!("export {k}={}", sh_quote(&v));
    }
    println!(
        "# then: ray start --head --temp-dir=\"$RAYWATCH_TEMP_DIR\" --metrics-export-port=\"$RAYWATCH_METRICS_EXPORT_PORT\""
    );
    Ok(Exit::Success)
}

/// Quotes a value for POSIX sh.
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}
