//! `raywatch alerts`: the alerts the stack's Prometheus fires and holds pending, and its built-in rules.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use super::{Exit, runtime, unless_stack_down};
use crate::config::StackConfig;
use crate::escape;
use crate::home::Home;
use crate::prometheus::ActiveAlert;

/// The schema of `alerts --json`.
const SCHEMA: u32 = 1;

#[derive(Serialize)]
struct Listing<'a> {
    schema: u32,
    alerts: &'a [ActiveAlert],
}

pub(super) fn alerts(home: &Home, json: bool) -> Result<Exit> {
    let rt = runtime()?;
    let answer = match crate::prometheus::Client::for_home(home) {
        Ok(api) => rt.block_on(api.alerts()),
        Err(e) => Err(e),
    };
    let mut alerts = match answer {
        Ok(a) => a,
        Err(e) => return Err(rt.block_on(unless_stack_down(home, e))),
    };
    // Firing first, then by name and cluster.
    alerts.sort_by(|a, b| {
        (
            b.state == "firing",
            label(a, "alertname"),
            label(a, "ray_io_cluster"),
        )
            .cmp(&(
                a.state == "firing",
                label(b, "alertname"),
                label(b, "ray_io_cluster"),
            ))
    });
    if json {
        let listing = Listing {
            schema: SCHEMA,
            alerts: &alerts,
        };
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        print!("{}", render(&alerts));
    }
    Ok(Exit::Success)
}

/// The built-in rules with this stack's thresholds (the defaults without a stack).
pub(super) fn rules(home: &Home) -> Result<Exit> {
    let cfg = StackConfig::load(&home.config())?.unwrap_or_default();
    print!("{}", crate::alerts::yaml(&cfg.alerts)?);
    Ok(Exit::Success)
}

/// Silences the notifications of cluster `name` for `duration`, through the
/// stack's Alertmanager (its listener verified first, like Prometheus').
pub(super) fn silence(
    home: &Home,
    name: &str,
    duration: std::time::Duration,
    comment: Option<String>,
) -> Result<Exit> {
    anyhow::ensure!(
        !name.is_empty(),
        "name the cluster to silence (see `raywatch status`)"
    );
    let client = crate::prometheus::Client::alertmanager(home)?;
    let now = std::time::SystemTime::now();
    let ends = now + duration;
    let who = crate::process::user_name(nix::unistd::geteuid().as_raw());
    let body = serde_json::json!({
        "matchers": [{"name": "ray_io_cluster", "value": name, "isRegex": false, "isEqual": true}],
        "startsAt": humantime::format_rfc3339(now).to_string(),
        "endsAt": humantime::format_rfc3339(ends).to_string(),
        "createdBy": who,
        "comment": comment.unwrap_or_else(|| "raywatch alerts silence".into()),
    });
    let rt = runtime()?;
    let (status, _, answer) = rt.block_on(client.forward(
        reqwest::Method::POST,
        "/api/v2/silences",
        None,
        Some(reqwest::header::HeaderValue::from_static(
            "application/json",
        )),
        serde_json::to_vec(&body)?.into(),
    ))?;
    let text = String::from_utf8_lossy(&answer);
    anyhow::ensure!(
        status == 200,
        "Alertmanager refused the silence (HTTP {status}): {}",
        escape::text(text.trim())
    );
    let id: serde_json::Value = serde_json::from_slice(&answer)?;
    println!(
        "silenced the notifications of {} until {} (silence {})",
        escape::text(name),
        humantime::format_rfc3339_seconds(ends),
        escape::text(id["silenceID"].as_str().unwrap_or("?"))
    );
    Ok(Exit::Success)
}

fn label<'a>(a: &'a ActiveAlert, name: &str) -> &'a str {
    a.labels.get(name).map_or("", String::as_str)
}

/// One block per alert: state, name, cluster and since when; its summary; what to do.
/// Everything shown came from Prometheus, so it is escaped.
fn render(alerts: &[ActiveAlert]) -> String {
    let mut out = String::new();
    if alerts.is_empty() {
        out.push_str("no alerts firing or pending\n");
    }
    for a in alerts {
        let cluster = match label(a, "ray_io_cluster") {
            "" => String::new(),
            c => format!("  {}", escape::text(c)),
        };
        let _ = writeln!(
            out,
            "{:<8} {}{cluster}  since {}  [{}]",
            escape::text(&a.state),
            escape::text(label(a, "alertname")),
            escape::text(a.active_at.as_deref().unwrap_or("?")),
            escape::text(label(a, "severity")),
        );
        for key in ["summary", "description"] {
            if let Some(text) = a.annotations.get(key) {
                let _ = writeln!(out, "    {}", escape::text(text));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_show_state_name_cluster_and_what_to_do_escaped() {
        let alert = |state: &str, name: &str, cluster: &str| ActiveAlert {
            labels: [
                ("alertname", name),
                ("ray_io_cluster", cluster),
                ("severity", "warning"),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            annotations: [
                ("summary".to_string(), format!("{name} of {cluster}")),
                ("description".to_string(), "do this".to_string()),
            ]
            .into(),
            state: state.into(),
            active_at: Some("2026-12-07T10:00:00Z".into()),
            value: "1".into(),
        };
        let text = render(&[
            alert("firing", "RayGpusIdle", "alice-ray_\u{1b}[2J"),
            alert("pending", "RayRemoteWriteFailing", ""),
        ]);
        assert_eq!(
            text,
            "firing   RayGpusIdle  alice-ray_\\e[2J  since 2026-12-07T10:00:00Z  [warning]\n    RayGpusIdle of alice-ray_\\e[2J\n    do this\n\
             pending  RayRemoteWriteFailing  since 2026-12-07T10:00:00Z  [warning]\n    RayRemoteWriteFailing of \n    do this\n"
        );
        assert_eq!(render(&[]), "no alerts firing or pending\n");
    }
}
