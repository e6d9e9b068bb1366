//! Alert rules: the built-in set passes promtool, fires on real series in a real
//! Prometheus, shows in `alerts` and `status`, and follows `up`'s settings.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A node holding two GPUs that do nothing (Ray's GPU series, 2.60 names).
fn idle_gpu_node(session: &str) -> String {
    let node = format!(r#"SessionName="{session}",ip="127.0.0.1""#);
    let mut text = String::from("# TYPE ray_node_cpu_utilization gauge\n");
    text += &format!("ray_node_cpu_utilization{{{node}}} 3\n");
    text += "# TYPE ray_node_gpus_utilization gauge\n";
    for gpu in ["0", "1"] {
        text += &format!("ray_node_gpus_utilization{{{node},GpuIndex=\"{gpu}\"}} 0\n");
    }
    text += "# TYPE ray_resources gauge\n";
    text += &format!("ray_resources{{{node},Name=\"GPU\",State=\"USED\"}} 2\n");
    text += &format!("ray_resources{{{node},Name=\"GPU\",State=\"AVAILABLE\"}} 0\n");
    text
}

#[test]
fn the_built_in_rules_pass_promtool() {
    let dir = scratch();
    let out = raywatch(&[
        "--home",
        dir.path().join("home").to_str().unwrap(),
        "alerts",
        "rules",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("alerts.yml");
    fs_err::write(&file, &out.stdout).unwrap();
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian's prometheus package carries it)");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(said.contains("SUCCESS: 11 rules found"), "{said}");
}

#[test]
fn idle_gpus_fire_their_alert_which_alerts_and_status_show_and_up_turns_off() {
    let (stack, root) = Stack::watching(
        "ray_idle",
        &["--gpu-idle-for", "1s", "--gpu-idle-below", "5"],
    );
    let endpoint = MetricsEndpoint::serve(&idle_gpu_node("session_idle_1"));
    let _head = FakeHead::start(&root, "session_idle_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_idle", user());
    let alerts = || -> Vec<Value> {
        let out = stack.run(&["alerts", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["schema"], 1);
        v["alerts"].as_array().unwrap().clone()
    };
    let idle = wait_for("RayGpusIdle firing", Duration::from_secs(90), || {
        alerts()
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "RayGpusIdle" && a["state"] == "firing")
    });
    assert_eq!(idle["labels"]["ray_io_cluster"], name.as_str(), "{idle}");
    assert_eq!(idle["labels"]["severity"], "warning", "{idle}");
    let summary = idle["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("GPUs held by {name} (user {} on ", user())),
        "{summary}"
    );
    // status counts it; `alerts` shows it for people.
    let st = stack.status();
    assert!(
        st["alerts"]["firing"].as_u64() >= Some(1),
        "{}",
        st["alerts"]
    );
    let text = String::from_utf8(stack.run(&["alerts"]).stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("firing   RayGpusIdle  ") && l.contains(&name)),
        "{text}"
    );

    // Thresholds follow `up`: below 0 % nothing is idle, and the alert resolves.
    let out = stack.run(&["up", "--gpu-idle-below", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("RayGpusIdle resolved", Duration::from_secs(60), || {
        (!alerts()
            .iter()
            .any(|a| a["labels"]["alertname"] == "RayGpusIdle"))
        .then_some(())
    });
    // Without the built-in rules, Prometheus evaluates none and status counts none.
    let out = stack.run(&["up", "--no-default-alerts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stack.home.join("prometheus/alerts.yml").exists());
    wait_for("no alert rules loaded", Duration::from_secs(30), || {
        let r = stack.query("count(ALERTS)");
        r.is_empty().then_some(())
    });
    assert_eq!(stack.status()["alerts"]["firing"], 0);
}

#[test]
fn a_threshold_that_is_no_percentage_is_refused_and_the_stack_keeps_its_rules() {
    let (stack, _root) = Stack::watching("ray_bad", &[]);
    let before = fs_err::read_to_string(stack.home.join("prometheus/alerts.yml")).unwrap();
    let out = stack.run(&["up", "--gpu-idle-below", "200"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--gpu-idle-below 200 is not a percentage"),
        "{err}"
    );
    assert_eq!(
        fs_err::read_to_string(stack.home.join("prometheus/alerts.yml")).unwrap(),
        before
    );
}
