//! `raywatch-bench alert-cost`: what the built-in alert rules cost Prometheus
//! with N synthetic clusters (top's benchmark clusters: a Ray 2.60 head's
//! per-node series, every tenth with GPUs): its CPU with the rules and, on the
//! same stack, without them (`up --no-default-alerts`), in alternating windows,
//! and the rule group's own evaluation time as Prometheus reports it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::fleet::{Endpoints, FleetStack, heads, wait_for};
use crate::prometheus::Client;

/// One measured window: Prometheus' CPU seconds per minute, and the alert
/// group's mean evaluation time (ms) when it was loaded.
struct Window {
    cpu_per_minute: f64,
    eval_ms: Option<f64>,
    /// Each rule's mean evaluation time (ms), slowest first.
    rules_ms: Vec<(String, f64)>,
}

/// CPU with and without the default alert rules, `rounds` windows of each.
pub fn alert_cost(clusters: usize, seconds: u64, rounds: usize) -> Result<()> {
    let stack = FleetStack::up(&["--scrape-interval", "5s"])?;
    let endpoints = Endpoints::serve(clusters, Arc::new(super::top::node_metrics))?;
    let _heads = heads(
        &stack.root,
        endpoints.addrs.iter().map(|a| vec![a.clone()]).collect(),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let api = Client::for_home(&stack.home)?;
    let query = r#"count(up{job="ray"} == 1)"#;
    wait_for(
        "every cluster scraped",
        Duration::from_secs(600),
        Duration::from_secs(2),
        || {
            let v = rt.block_on(api.instant(query)).ok()?;
            (v.first()?.value.1.parse::<f64>().ok()? >= clusters as f64).then_some(())
        },
    )?;
    println!(
        "| clusters | window | built-in alert rules | Prometheus CPU s/min | alert group evaluation ms |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut slowest = Vec::new();
    for round in 0..rounds * 2 {
        let on = round % 2 == 0;
        set_rules(&stack, on)?;
        let w = window(&stack, &rt, on, seconds)?;
        let eval = w.eval_ms.map_or("-".into(), |m| format!("{m:.1}"));
        println!(
            "| {clusters} | {seconds} s | {} | {:.2} | {eval} |",
            if on { "on" } else { "off" },
            w.cpu_per_minute
        );
        if on { &mut with } else { &mut without }.push(w.cpu_per_minute);
        if on {
            slowest = w.rules_ms;
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!();
    println!(
        "mean: with the rules {:.2} CPU s/min, without {:.2}: the rules cost {:+.2} CPU s/min",
        mean(&with),
        mean(&without),
        mean(&with) - mean(&without)
    );
    println!();
    println!("| rule (last window with the rules) | mean evaluation ms |");
    println!("| --- | --- |");
    for (rule, ms) in slowest {
        println!("| `{rule}` | {ms:.1} |");
    }
    Ok(())
}

/// `raywatch up --default-alerts` or `up --no-default-alerts` on the running stack.
fn set_rules(stack: &FleetStack, on: bool) -> Result<()> {
    let mut cmd = std::process::Command::new(super::raywatch_exe()?);
    cmd.arg("--home").arg(stack.home.root()).arg("up");
    cmd.arg(if on {
        "--default-alerts"
    } else {
        "--no-default-alerts"
    });
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "raywatch up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        stack.home.alert_rules().exists() == on,
        "alerts.yml should {}exist",
        if on { "" } else { "not " }
    );
    Ok(())
}

/// Waits until Prometheus has (or has not) loaded the alert group, lets it
/// settle 30 s, then measures its CPU over `seconds` and samples the group's
/// evaluation time every 5 s.
fn window(
    stack: &FleetStack,
    rt: &tokio::runtime::Runtime,
    on: bool,
    seconds: u64,
) -> Result<Window> {
    let api = Client::for_home(&stack.home)?;
    wait_for(
        "the alert rules (un)loaded",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || (rt.block_on(alert_group_ms(&api)).ok()?.is_some() == on).then_some(()),
    )?;
    std::thread::sleep(Duration::from_secs(30));
    let prometheus = stack.prometheus_pid()?;
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let (cpu0, t0) = (super::local::sample(prometheus)?.0, Instant::now());
    let mut evals = Vec::new();
    let mut rules = std::collections::BTreeMap::<String, f64>::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(5));
        // A failed sample (a connection Prometheus closed) is left out.
        if let Ok(Some((ms, each))) = rt.block_on(alert_group_ms(&api)) {
            evals.push(ms);
            for (name, ms) in each {
                *rules.entry(name).or_default() += ms;
            }
        }
    }
    let used = super::local::sample(prometheus)?.0 - cpu0;
    let n = evals.len().max(1) as f64;
    let mut rules_ms: Vec<(String, f64)> = rules.into_iter().map(|(r, ms)| (r, ms / n)).collect();
    rules_ms.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Window {
        cpu_per_minute: used as f64 / tick / t0.elapsed().as_secs_f64() * 60.0,
        eval_ms: (!evals.is_empty()).then(|| evals.iter().sum::<f64>() / n),
        rules_ms,
    })
}

/// The built-in alert group's last evaluation time (ms) and each rule's, from
/// `/api/v1/rules`; `None` when Prometheus has no such group.
async fn alert_group_ms(api: &Client) -> Result<Option<(f64, Vec<(String, f64)>)>> {
    let body = api.get_text("/api/v1/rules?type=alert").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let groups = v["data"]["groups"].as_array().context("no rule groups")?;
    let Some(g) = groups.iter().find(|g| g["name"] == crate::alerts::GROUP) else {
        return Ok(None);
    };
    let ms = |v: &serde_json::Value| v["evaluationTime"].as_f64().unwrap_or(0.0) * 1000.0;
    let rules = g["rules"].as_array().context("no rules in the group")?;
    let each = rules
        .iter()
        .filter_map(|r| Some((r["name"].as_str()?.to_string(), ms(r))))
        .collect();
    Ok(Some((ms(g), each)))
}
