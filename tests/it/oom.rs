//! Ray's memory monitor killing a worker fires `RayWorkersOOMKilled`: a real
//! cluster started with a low memory-usage threshold, a task that allocates
//! past it, and the alert in `raywatch alerts --json`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// A driver whose one task (never retried) allocates 100 MB a step, each page
/// touched, up to 4 GiB: Ray's memory monitor kills it at the threshold. The
/// driver prints how the task ended and waits to be killed.
const HOG: &str = r#"
import sys, time, ray
ray.init(address=open(sys.argv[1]).read().strip())
@ray.remote(max_retries=0)
def hog():
    chunks = []
    for _ in range(40):
        chunks.append(bytearray(100 << 20))
        time.sleep(0.1)
    return len(chunks)
try:
    print("finished", ray.get(hog.remote()), flush=True)
except Exception as e:
    print("failed", type(e).__name__, flush=True)
time.sleep(3600)
"#;

/// The machine's memory in use now (MemTotal - MemAvailable) and in all, in bytes.
fn memory() -> (u64, u64) {
    let info = fs_err::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/meminfo"))
            * 1024
    };
    let total = field("MemTotal:");
    (total - field("MemAvailable:"), total)
}

/// A threshold 2 GiB above what the machine uses now (Ray's own processes take
/// about 1 GiB of it): the task's 4 GiB crosses it without exhausting the machine.
fn threshold() -> String {
    let (used, total) = memory();
    let fraction = (used + (2 << 30)) as f64 / total as f64;
    assert!(
        fraction < 0.8,
        "the machine uses {used} of {total} bytes: too little room to provoke an OOM kill safely"
    );
    format!("{fraction:.3}")
}

/// Kills the driver (its own process) on every way out of the test.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One worker killed by Ray's memory monitor (its first and only kill: the
/// counter's series appears at 1 with it) fires the OOM alert naming the cluster.
#[test]
fn ray_a_worker_killed_by_the_memory_monitor_fires_the_oom_alert() {
    let (stack, root) = Stack::watching("ray_oom", &[]);
    let name = format!("{}-ray_oom", user());
    let env = [
        ("RAY_memory_usage_threshold".to_string(), threshold()),
        (
            "RAY_memory_monitor_refresh_ms".to_string(),
            "100".to_string(),
        ),
    ];
    let mut cluster = RayCluster::start_with(&ray_bin(), &root, false, &env);
    cluster.wait_discovery(Duration::from_secs(120));
    let address = root.join("ray_current_cluster");
    cluster.wait(
        "the cluster's GCS address",
        Duration::from_secs(120),
        || {
            fs_err::read_to_string(&address)
                .ok()
                .filter(|s| !s.trim().is_empty())
        },
    );
    // Scraped before the kill: the counter's series is new, not merely unseen.
    wait_for("the cluster scraped", Duration::from_secs(120), || {
        (!stack
            .query(&format!(r#"up{{ray_io_cluster="{name}"}} == 1"#))
            .is_empty())
        .then_some(())
    });

    let script = root.join("hog.py");
    fs_err::write(&script, HOG).unwrap();
    let log = root.join("hog.out");
    let driver = Driver(
        Command::new(ray_bin().with_file_name("python"))
            .arg(&script)
            .arg(&address)
            .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .env("RAY_AUTH_MODE", "disabled")
            .stdin(Stdio::null())
            .stdout(fs_err::File::create(&log).unwrap().into_parts().0)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let said = cluster.wait("the task's end", Duration::from_secs(120), || {
        let out = fs_err::read_to_string(&log).unwrap_or_default();
        out.lines()
            .find(|l| l.starts_with("finished") || l.starts_with("failed"))
            .map(str::to_string)
    });
    assert_eq!(
        said, "failed OutOfMemoryError",
        "the task was not OOM-killed"
    );
    let killed = Instant::now();
    drop(driver);

    // Prometheus has Ray's count of the kill ...
    cluster.wait("Ray's eviction counter", Duration::from_secs(60), || {
        (!stack
            .query(&format!(
                r#"ray_memory_manager_worker_eviction_total{{ray_io_cluster="{name}"}} > 0"#
            ))
            .is_empty())
        .then_some(())
    });
    // ... and the rule fires on it.
    let alert = wait_explained(
        "RayWorkersOOMKilled firing",
        Duration::from_secs(60),
        || {
            let out = stack.run(&["alerts", "--json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            v["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "RayWorkersOOMKilled" && a["state"] == "firing"
                })
                .cloned()
        },
        || {
            format!(
                "alerts: {}\nevictions: {:?}",
                String::from_utf8_lossy(&stack.run(&["alerts", "--json"]).stdout),
                stack.query("ray_memory_manager_worker_eviction_total")
            )
        },
    );
    eprintln!(
        "kill -> alert firing: {:.1}s",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(alert["labels"]["ray_io_cluster"], name.as_str(), "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!(
            "Ray's memory monitor killed 1 worker(s) of {name} (user {} on ",
            user()
        )),
        "{summary}"
    );
}

/// The rule's arithmetic in Prometheus' own engine (`promtool test rules` on
/// the rules `raywatch alerts rules` prints): a counter series born with its
/// first kill counts 1, later kills count by the difference, kills leave the
/// count after 5 minutes, and a cluster found with kills from before it was
/// watched (its counter there from its first scrape) raises nothing.
#[test]
fn the_oom_rule_counts_a_first_kill_and_not_the_old_kills_of_a_cluster_found_late() {
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
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let expr = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["alert"] == "RayWorkersOOMKilled")
        .and_then(|r| r["expr"].as_str())
        .unwrap()
        .to_string();
    assert!(!expr.contains('\''), "{expr}");
    fs_err::write(dir.path().join("alerts.yml"), &out.stdout).unwrap();

    let target = |c: &str| {
        format!(
            r#"ray_host="h",ray_io_cluster="{c}",ray_user="u",ray_session="s_{c}",job="ray",instance="127.0.0.1:{c}""#
        )
    };
    let kills = "ray_memory_manager_worker_eviction_total";
    let alerts = r#"ALERTS{alertname="RayWorkersOOMKilled",alertstate="firing"}"#;
    let count = |at: &str, c: &str, v: u32| {
        format!(
            "  - {{expr: '{expr}', eval_time: {at}, exp_samples: [{{labels: '{{ray_host=\"h\",ray_io_cluster=\"{c}\",ray_user=\"u\"}}', value: {v}}}]}}\n"
        )
    };
    let none = |at: &str| format!("  - {{expr: '{alerts}', eval_time: {at}, exp_samples: []}}\n");
    let test = format!(
        "rule_files: [alerts.yml]\nevaluation_interval: 1m\ntests:\n- interval: 1m\n  input_series:\n\
         \x20 - {{series: 'up{{{new}}}', values: '1x30'}}\n\
         \x20 - {{series: '{kills}{{{new},Name=\"hog\",Type=\"MemoryManager.TaskEviction.Total\"}}', values: '_ _ 1 1 1 1 1 1 1 1 1 1 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3'}}\n\
         \x20 - {{series: 'up{{{old}}}', values: '1x30'}}\n\
         \x20 - {{series: '{kills}{{{old},Name=\"hog\",Type=\"MemoryManager.TaskEviction.Total\"}}', values: '4x30'}}\n\
         \x20 promql_expr_test:\n{}{}{}{}{}{}",
        none("1m"),
        count("3m", "c", 1),
        count("6m", "c", 1),
        none("8m"),
        count("14m", "c", 2),
        none("18m"),
        new = target("c"),
        old = target("o"),
    );
    let file = dir.path().join("test.yml");
    fs_err::write(&file, &test).unwrap();
    let check = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian's prometheus package carries it)");
    assert!(
        check.status.success(),
        "{test}\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
