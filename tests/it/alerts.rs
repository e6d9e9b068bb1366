//! Alert rules: the built-in set passes promtool, fires on real series in a real
//! Prometheus, shows in `alerts` and `status`, and follows `up`'s settings.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::security::other_user;
use crate::support::*;
use raywatch::testkit::HttpSink;

/// A node holding two GPUs that do nothing (Ray's GPU series, 2.60 names).
pub(crate) fn idle_gpu_node(session: &str) -> String {
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
    let alerts = || stack.alerts();
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
    // top marks the cluster (its recorded values follow within an evaluation).
    wait_for("top to count the alert", Duration::from_secs(30), || {
        let top = stack.run(&["top", "--once", "--json"]);
        let v: Value = serde_json::from_slice(&top.stdout).unwrap();
        v["clusters"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name.as_str() && c["alerts_firing"].as_u64() >= Some(1))
            .map(|_| ())
    });
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

/// A loopback webhook receiver (at `/hook` of an [`HttpSink`]).
pub(crate) struct Webhook {
    pub(crate) url: String,
    sink: HttpSink,
}

impl Webhook {
    pub(crate) fn start() -> Webhook {
        let sink = HttpSink::start().unwrap();
        Webhook {
            url: format!("{}/hook", sink.base),
            sink,
        }
    }

    /// The notifications received, parsed.
    pub(crate) fn received(&self) -> Vec<Value> {
        self.sink.json_on("/hook")
    }
}

/// With a webhook, the stack runs Alertmanager (loopback, basic auth): the
/// idle-GPU alert reaches the webhook as Alertmanager's JSON naming the
/// cluster, and neither an anonymous caller nor another user gets in.
#[test]
fn an_alert_reaches_a_webhook_through_alertmanager_which_refuses_anyone_else() {
    if on_path("prometheus-alertmanager").is_none() && on_path("alertmanager").is_none() {
        unmet("alertmanager");
    }
    let other = other_user();
    let hook = Webhook::start();
    let (stack, root) = Stack::watching(
        "ray_notify",
        &["--gpu-idle-for", "1s", "--notify-webhook", &hook.url],
    );
    let endpoint = MetricsEndpoint::serve(&idle_gpu_node("session_notify_1"));
    let _head = FakeHead::start(&root, "session_notify_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_notify", user());
    let note = wait_for(
        "RayGpusIdle at the webhook",
        Duration::from_secs(120),
        || {
            hook.received().into_iter().find(|n| {
                n["status"] == "firing"
                    && n["alerts"].as_array().is_some_and(|a| {
                        a.iter().any(|a| a["labels"]["alertname"] == "RayGpusIdle")
                    })
            })
        },
    );
    assert_eq!(note["receiver"], "raywatch", "{note}");
    assert_eq!(
        note["groupLabels"]["ray_io_cluster"],
        name.as_str(),
        "{note}"
    );
    let summary = note["alerts"][0]["annotations"]["summary"]
        .as_str()
        .unwrap();
    assert!(summary.contains(&name), "{summary}");

    // status shows it; its port answers nobody without the stack's credential.
    let st = stack.status();
    let am = &st["alertmanager"];
    assert_eq!(am["webhooks"], 1, "{st}");
    let url = am["url"].as_str().unwrap().to_string();
    let anonymous = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{url}/api/v2/alerts"))
        .send()
        .unwrap();
    assert_eq!(
        anonymous.status(),
        401,
        "Alertmanager answered without a credential"
    );
    // Another user: no credential to read, and the API refuses them too.
    let home = stack.home.display().to_string();
    let out = command_as(other, "sh")
        .args([
            "-c",
            &format!(
                "cat '{home}/alertmanager/web.yml' '{home}/alertmanager/alertmanager.yml' '{home}/secrets/prometheus-password' 2>&1; \
                 curl -s -o /dev/null -w '%{{http_code}}' '{url}/api/v2/silences' -X POST -H 'content-type: application/json' -d '{{}}'"
            ),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("raywatch:") && !said.contains(&hook.url),
        "{said}"
    );
    assert!(said.ends_with("401"), "another user's silence: {said}");
    // `down` stops Alertmanager with the rest.
    let pid = am["pid"].as_u64().unwrap() as u32;
    drop(stack);
    assert!(
        state(pid).is_none_or(|s| s == 'Z'),
        "Alertmanager left running"
    );
}

/// A Ray driver that keeps one task running (and one pending) on a cluster.
const BUSY: &str = r#"
import sys, time, ray
ray.init(address=open(sys.argv[1]).read().strip())
@ray.remote
def busy():
    while True:
        time.sleep(0.1)
refs = [busy.remote() for _ in range(2)]
print("ready", flush=True)
time.sleep(3600)
"#;

/// The issue's first promise: a real cluster SIGKILLed while a task runs is
/// notified as dead (RayClusterDied, critical) within the liveness bound, the
/// rule's `for`, Alertmanager's group wait and 30 s; an idle cluster stopped
/// cleanly raises nothing.
#[test]
fn ray_a_killed_cluster_with_a_running_task_is_notified_and_an_idle_one_stopped_cleanly_is_not() {
    if on_path("prometheus-alertmanager").is_none() && on_path("alertmanager").is_none() {
        unmet("alertmanager");
    }
    let hook = Webhook::start();
    let base = scratch();
    let (busy_dir, idle_dir) = (base.path().join("ray_busy"), base.path().join("ray_idle"));
    let stack = Stack::up(&[
        "--no-default-watch",
        "--watch",
        busy_dir.to_str().unwrap(),
        "--watch",
        idle_dir.to_str().unwrap(),
        "--notify-webhook",
        &hook.url,
    ]);
    let mut busy = RayCluster::start_with(&ray_bin(), &busy_dir, false, &[]);
    let mut idle = RayCluster::start_with(&ray_bin(), &idle_dir, false, &[]);
    busy.wait_discovery(Duration::from_secs(120));
    idle.wait_discovery(Duration::from_secs(120));
    let (busy_name, idle_name) = (
        format!("{}-ray_busy", user()),
        format!("{}-ray_idle", user()),
    );

    // A task running on the busy cluster, as its series say.
    let script = base.path().join("busy.py");
    fs_err::write(&script, BUSY).unwrap();
    let address = busy.wait(
        "the busy cluster's GCS address",
        Duration::from_secs(120),
        || {
            let f = busy_dir.join("ray_current_cluster");
            fs_err::read_to_string(&f)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|_| f)
        },
    );
    let mut driver = std::process::Command::new(ray_bin().with_file_name("python"))
        .arg(&script)
        .arg(&address)
        .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .env("RAY_AUTH_MODE", "disabled")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    busy.wait(
        "a task running on the busy cluster",
        Duration::from_secs(180),
        || {
            let r = stack.query(&format!(
                r#"sum(ray_tasks{{ray_io_cluster="{busy_name}",State=~"RUNNING.*"}}) > 0"#
            ));
            (!r.is_empty()).then_some(())
        },
    );
    // Both clusters scraped, so both have a history a rule could read.
    wait_for("the idle cluster scraped", Duration::from_secs(120), || {
        (!stack
            .query(&format!(r#"up{{ray_io_cluster="{idle_name}"}} == 1"#))
            .is_empty())
        .then_some(())
    });

    // The idle one stopped the way a user stops it, then the busy one killed.
    idle.terminate();
    busy.kill9();
    let _ = driver.kill();
    let _ = driver.wait();
    let killed = std::time::Instant::now();
    let bound = Duration::from_secs(20 + 60 + 10 + 30);
    let died = |name: &str| {
        hook.received().into_iter().find(|n| {
            n["status"] == "firing"
                && n["alerts"].as_array().is_some_and(|a| {
                    a.iter().any(|a| {
                        a["labels"]["alertname"] == "RayClusterDied"
                            && a["labels"]["ray_io_cluster"] == name
                    })
                })
        })
    };
    let note = wait_explained(
        "RayClusterDied of the killed cluster at the webhook",
        bound,
        || died(&busy_name),
        || format!("received: {:?}\n{}", hook.received(), stack.diagnostics()),
    );
    eprintln!(
        "kill -> notification: {:.1}s",
        killed.elapsed().as_secs_f64()
    );
    let alert = &note["alerts"][0];
    assert_eq!(alert["labels"]["severity"], "critical", "{note}");
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains(&busy_name) && summary.contains("ended with tasks"),
        "{summary}"
    );
    assert!(
        died(&idle_name).is_none(),
        "the idle cluster, stopped cleanly, was notified as dead: {:?}",
        hook.received()
    );
}

/// `alerts silence NAME` stops that cluster's notifications (a planned stop),
/// not the others': both clusters' GPUs sit idle, only the unsilenced one's
/// alert reaches the webhook, while Prometheus fires both.
#[test]
fn a_silenced_cluster_is_not_notified_and_the_others_are() {
    if on_path("prometheus-alertmanager").is_none() && on_path("alertmanager").is_none() {
        unmet("alertmanager");
    }
    let hook = Webhook::start();
    let base = scratch();
    let (quiet, loud) = (base.path().join("ray_quiet"), base.path().join("ray_loud"));
    for d in [&quiet, &loud] {
        fs_err::create_dir(d).unwrap();
    }
    let stack = Stack::up(&[
        "--no-default-watch",
        "--watch",
        quiet.to_str().unwrap(),
        "--watch",
        loud.to_str().unwrap(),
        "--gpu-idle-for",
        "1s",
        "--notify-webhook",
        &hook.url,
    ]);
    let (quiet_name, loud_name) = (
        format!("{}-ray_quiet", user()),
        format!("{}-ray_loud", user()),
    );
    let out = stack.run(&[
        "alerts",
        "silence",
        &quiet_name,
        "--for",
        "2h",
        "--comment",
        "planned stop",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!(
            "silenced the notifications of {quiet_name} until "
        )),
        "{said}"
    );

    let (e1, e2) = (
        MetricsEndpoint::serve(&idle_gpu_node("session_quiet_1")),
        MetricsEndpoint::serve(&idle_gpu_node("session_loud_1")),
    );
    let _h1 = FakeHead::start(&quiet, "session_quiet_1", vec![e1.addr.clone()]);
    let _h2 = FakeHead::start(&loud, "session_loud_1", vec![e2.addr.clone()]);
    let notified = |name: &str| {
        hook.received().iter().any(|n| {
            n["alerts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["labels"]["ray_io_cluster"] == name))
        })
    };
    wait_for(
        "the loud cluster notified",
        Duration::from_secs(120),
        || notified(&loud_name).then_some(()),
    );
    // Prometheus fires both: only the notification is silenced.
    let alerts = stack.alerts();
    let firing: Vec<&str> = alerts
        .iter()
        .filter(|a| a["state"] == "firing" && a["labels"]["alertname"] == "RayGpusIdle")
        .filter_map(|a| a["labels"]["ray_io_cluster"].as_str())
        .collect();
    assert!(firing.contains(&quiet_name.as_str()), "{alerts:#?}");
    // Watched for one more group wait (10 s) and a margin: never notified.
    let watch = std::time::Instant::now();
    while watch.elapsed() < Duration::from_secs(15) {
        assert!(!notified(&quiet_name), "{:?}", hook.received());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn silence_without_alertmanager_says_how_to_get_one() {
    let (stack, _root) = Stack::watching("ray_none", &[]);
    let out = stack.run(&["alerts", "silence", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runs no Alertmanager (it runs with `raywatch up --notify-webhook URL`)"),
        "{err}"
    );
}
