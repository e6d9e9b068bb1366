//! `raywatch top`: snapshots of real Ray clusters, GPU columns from Ray's GPU series, dead clusters
//! greyed then gone, the real screen driven in tmux, and hostile inputs.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::snapshots::{assert_transcript, assert_transcripts, keeping, scratch_filters};
use crate::support::*;

/// `top --once --json` of a stack, parsed.
fn snapshot(stack: &Stack, env: &[(&str, &str)]) -> Value {
    snapshot_with(stack, &[], env)
}

/// `top --once --json` with more arguments, parsed.
fn snapshot_args(stack: &Stack, args: &[&str]) -> Value {
    snapshot_with(stack, args, &[])
}

fn snapshot_with(stack: &Stack, args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = stack
        .cmd()
        .args(["top", "--once", "--json"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "top --once --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cluster<'a>(snap: &'a Value, name: &str) -> Option<&'a Value> {
    snap["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

/// A scalar from `raywatch query` (None when the answer is empty).
fn query_value(stack: &Stack, promql: &str) -> Option<f64> {
    let out = stack.run(&["query", promql, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
}

/// A Ray driver running a workload against a cluster, killed (with its group) on drop.
struct Driver {
    child: Child,
    log: PathBuf,
}

impl Driver {
    fn log(&self) -> String {
        fs_err::read_to_string(&self.log).unwrap_or_default()
    }
}

const WORKLOAD: &str = r#"
import sys, time, ray
ray.init(address=open(sys.argv[1]).read().strip())
@ray.remote
def short():
    return 1
@ray.remote
def busy(seconds):
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        x += 1
    return x
assert sum(ray.get([short.remote() for _ in range(int(sys.argv[2]))])) == int(sys.argv[2])
refs = [busy.remote(600) for _ in range(int(sys.argv[3]))]
print("ready", flush=True)
time.sleep(600)
"#;

impl Driver {
    /// Runs `finished` short tasks, then keeps `long` busy tasks submitted (one
    /// CPU: one runs, the others wait).
    fn start(ray: &Path, temp_dir: &Path, finished: usize, long: usize) -> Driver {
        let script = temp_dir.with_extension("workload.py");
        fs_err::write(&script, WORKLOAD).unwrap();
        let python = ray.with_file_name("python");
        let address = wait_explained(
            "the cluster's GCS address",
            Duration::from_secs(120),
            || {
                let f = temp_dir.join("ray_current_cluster");
                fs_err::read_to_string(&f)
                    .ok()
                    .filter(|s| !s.trim().is_empty())
                    .map(|_| f)
            },
            || ray_diagnostics(temp_dir),
        );
        let child = Command::new(python)
            .arg(&script)
            .arg(&address)
            .arg(finished.to_string())
            .arg(long.to_string())
            .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs_err::File::create(temp_dir.with_extension("driver.log"))
                    .unwrap()
                    .into_parts()
                    .0,
            )
            .process_group(0)
            .spawn()
            .unwrap();
        Driver {
            child,
            log: temp_dir.with_extension("driver.log"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// A tmux session of its own (its own socket), killed on drop.
pub(crate) struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    pub(crate) fn start(width: u16, height: u16) -> Tmux {
        let dir = scratch();
        let t = Tmux {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        };
        let out = t.tmux(&[
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "sh",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    pub(crate) fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap()
    }

    pub(crate) fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).status.success());
    }

    pub(crate) fn literal(&self, text: &str) {
        assert!(
            self.tmux(&["send-keys", "-t", "0", "-l", text])
                .status
                .success()
        );
    }

    pub(crate) fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "0"]).stdout).into_owned()
    }

    pub(crate) fn wait_screen(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = wait_for_opt(Duration::from_secs(30), || {
            last = self.screen();
            f(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("timed out waiting for {what}; the screen:\n{last}"))
    }

    /// `#{alternate_on} #{cursor_flag}` of the pane.
    pub(crate) fn modes(&self) -> String {
        String::from_utf8_lossy(
            &self
                .tmux(&["display", "-p", "-t", "0", "#{alternate_on} #{cursor_flag}"])
                .stdout,
        )
        .trim()
        .to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn wait_for_opt<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two real clusters (Ray 2.60 busy, Ray 2.52.1 with a few finished tasks): the
/// snapshot lists both with their names, one node each, CPU, and task counts equal
/// to Ray's own `ray_tasks`; then the real screen, driven in tmux.
#[test]
fn ray_two_real_clusters_in_top_once_json_and_on_the_screen() {
    let base = scratch();
    let (ta, tb) = (base.path().join("ray_busy"), base.path().join("ray_calm"));
    let stack = Stack::up(&[
        "--no-default-watch",
        "--watch",
        ta.to_str().unwrap(),
        "--watch",
        tb.to_str().unwrap(),
    ]);
    let mut a = RayCluster::start_with(&ray_bin(), &ta, false, &[]);
    let mut b = RayCluster::start_with(&legacy_ray_bin(), &tb, false, &[]);
    a.wait_discovery(Duration::from_secs(120));
    b.wait_discovery(Duration::from_secs(120));
    let _busy = Driver::start(&ray_bin(), &ta, 5, 3);
    let _calm = Driver::start(&legacy_ray_bin(), &tb, 2, 0);
    let (name_a, name_b) = (
        format!("{}-ray_busy", user()),
        format!("{}-ray_calm", user()),
    );

    let mut last = Value::Null;
    let snap = wait_for_opt(Duration::from_secs(180), || {
            let s = snapshot(&stack, &[]);
            last = s.clone();
            let (ca, cb) = (cluster(&s, &name_a)?, cluster(&s, &name_b)?);
            (ca["tasks_finished"] == 5
                && ca["tasks_running"] == 1
                && ca["tasks_pending"] == 2
                && cb["tasks_finished"] == 2
                && ca["nodes_up"] == 1
                && cb["nodes_up"] == 1)
                .then_some(s)
        })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for both clusters with their workloads; last snapshot:\n{last:#}\nbusy driver: {}\ncalm driver: {}\nbusy cluster: {}\ncalm cluster: {}\n{}",
            _busy.log(),
            _calm.log(),
            ray_diagnostics(&ta),
            ray_diagnostics(&tb),
            stack.diagnostics()
        )
    });
    assert_eq!(snap["clusters"].as_array().unwrap().len(), 2, "{snap:#}");
    // Read from the stack's recording rules: four requests, whatever the clusters.
    assert_eq!(snap["values"], "recorded", "{snap:#}");
    assert_eq!(snap["queries"], 4, "{snap:#}");
    let (ca, cb) = (
        cluster(&snap, &name_a).unwrap(),
        cluster(&snap, &name_b).unwrap(),
    );
    for c in [ca, cb] {
        assert_eq!(c["state"], "live");
        assert_eq!(c["user"], user());
        assert_eq!(c["nodes_total"], 1, "{c:#}");
        assert_eq!(c["targets_down"], 0, "{c:#}");
        assert!(c["mem_total_bytes"].as_f64().unwrap() > 0.0, "{c:#}");
        assert!(
            c["object_store_total_bytes"].as_f64().unwrap() > 0.0,
            "{c:#}"
        );
        assert!(c["samples_per_scrape"].as_f64().unwrap() > 0.0, "{c:#}");
        assert!(c["age_seconds"].as_f64().unwrap() > 0.0, "{c:#}");
        // No GPU on this machine: absent, never 0.
        assert!(
            c["gpus"].is_null() && c["gpu_util_percent"].is_null(),
            "{c:#}"
        );
    }
    assert!(ca["cpu_percent"].as_f64().unwrap() > 0.0, "{ca:#}");
    assert_eq!(cb["tasks_running"], 0, "{cb:#}");
    // The same values asked live (both Ray versions' names): the steady ones agree.
    let live = snapshot_args(&stack, &["--live"]);
    assert_eq!(live["values"], "live", "{live:#}");
    for (name, rec) in [(&name_a, ca), (&name_b, cb)] {
        let l = cluster(&live, name).unwrap_or_else(|| panic!("{live:#}"));
        for k in [
            "state",
            "nodes_up",
            "nodes_total",
            "targets",
            "targets_down",
            "mem_total_bytes",
            "object_store_total_bytes",
            "tasks_finished",
            "tasks_running",
            "tasks_pending",
            "gpus",
        ] {
            assert_eq!(rec[k], l[k], "{name} {k}: recorded {rec:#}\nlive {l:#}");
        }
    }
    // The counts are Ray's own ray_tasks series, summed (their newest sample
    // within a minute: Ray 2.52 leaves a gauge out of some scrapes, so a plain
    // instant query can find it stale, as `top` knows).
    for (name, state, want) in [
        (&name_a, "FINISHED", 5.0),
        (&name_a, "RUNNING", 1.0),
        (&name_b, "FINISHED", 2.0),
    ] {
        let got = query_value(
            &stack,
            &format!(
                r#"sum(last_over_time(ray_tasks{{ray_io_cluster="{name}",State="{state}"}}[60s]))"#
            ),
        );
        assert_eq!(got, Some(want), "{name} {state}");
    }

    // The plain table names both.
    let out = stack.run(&["top", "--once"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&name_a) && table.contains(&name_b),
        "{table}"
    );

    // The real screen.
    let tmux = Tmux::start(200, 40);
    let cmd = format!(
        "RAYWATCH_HOME='{}' '{}' top --interval 1s",
        stack.home.display(),
        raywatch_bin().display()
    );
    tmux.literal(&cmd);
    tmux.keys(&["Enter"]);
    tmux.wait_screen("both clusters on the home screen", |s| {
        s.contains(&name_a) && s.contains(&name_b) && s.contains("q quit")
    });
    assert_eq!(
        tmux.modes().split(' ').next(),
        Some("1"),
        "not on the alternate screen"
    );
    // Filter: only the busy one is left.
    tmux.keys(&["/"]);
    tmux.literal("busy");
    tmux.keys(&["Enter"]);
    tmux.wait_screen("the filter to keep only the busy cluster", |s| {
        s.contains(&name_a) && !s.contains(&name_b) && s.contains("filter: busy")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_screen("the filter cleared", |s| {
        s.contains(&name_a) && s.contains(&name_b)
    });
    // Sort: the next column (USER), then reversed.
    tmux.keys(&["s"]);
    tmux.wait_screen("sorting by user", |s| s.contains("sort: USER ▼"));
    tmux.keys(&["S"]);
    tmux.wait_screen("the sort reversed", |s| s.contains("sort: USER ▲"));
    // Into the first row's cluster, then back.
    tmux.keys(&["g", "Enter"]);
    let node = tmux.wait_screen("the cluster view with its node", |s| {
        s.contains("INSTANCE") && s.contains("head") && s.contains("Esc back")
    });
    assert!(
        node.contains(&format!("127.0.0.1:{}", a.metrics_port))
            || node.contains(&format!("127.0.0.1:{}", b.metrics_port)),
        "{node}"
    );
    tmux.keys(&["Escape"]);
    tmux.wait_screen("the clusters view again", |s| {
        s.contains("CLUSTER") && s.contains(&name_b)
    });
    // A resize redraws at the new size: the footer moves to the new last line.
    assert!(
        tmux.tmux(&["resize-window", "-t", "0", "-x", "120", "-y", "20"])
            .status
            .success()
    );
    tmux.wait_screen("a redraw at 120x20", |s| {
        s.lines().nth(19).is_some_and(|l| l.starts_with("q quit"))
    });
    tmux.keys(&["q"]);
    wait_for(
        "the terminal back to normal",
        Duration::from_secs(10),
        || (tmux.modes() == "0 1").then_some(()),
    );
    assert!(
        !tmux.screen().contains("Enter open"),
        "the UI is still on screen"
    );
}

/// Ray 2.40, the oldest release `top` reads (OpenCensus-era metric names, its
/// discovery file at the temp-dir level): a busy cluster fills the same columns
/// as Ray 2.60's, task counts equal to its own `ray_tasks`, and what it lacks
/// (GPUs here) is absent, never 0.
#[test]
fn ray_oldest_supported_ray_2_40_fills_the_same_columns() {
    let base = scratch();
    let root = base.path().join("ray_old");
    let stack = Stack::up(&["--no-default-watch", "--watch", root.to_str().unwrap()]);
    let ray = oldest_ray_bin();
    let mut head = RayCluster::start_with(&ray, &root, false, &[]);
    head.wait_discovery(Duration::from_secs(120));
    let driver = Driver::start(&ray, &root, 3, 2);
    let name = format!("{}-ray_old", user());

    let mut last = Value::Null;
    let snap = wait_for_opt(Duration::from_secs(180), || {
        let s = snapshot(&stack, &[]);
        last = s.clone();
        let c = cluster(&s, &name)?;
        (c["tasks_finished"] == 3
            && c["tasks_running"] == 1
            && c["tasks_pending"] == 1
            && c["nodes_up"] == 1
            && c["cpu_percent"].as_f64().is_some_and(|v| v > 0.0))
        .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for the Ray 2.40 cluster with its workload; last snapshot:\n{last:#}\ndriver: {}\ncluster: {}\n{}",
            driver.log(),
            ray_diagnostics(&root),
            stack.diagnostics()
        )
    });
    let c = cluster(&snap, &name).unwrap();
    assert_eq!(c["state"], "live", "{c:#}");
    assert_eq!(c["nodes_total"], 1, "{c:#}");
    assert_eq!(c["targets_down"], 0, "{c:#}");
    for field in [
        "mem_used_bytes",
        "mem_total_bytes",
        "object_store_total_bytes",
        "samples_per_scrape",
        "age_seconds",
    ] {
        assert!(
            c[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} missing or zero: {c:#}"
        );
    }
    assert!(
        c["gpus"].is_null() && c["gpu_util_percent"].is_null(),
        "{c:#}"
    );
    for (state, want) in [("FINISHED", 3.0), ("RUNNING", 1.0)] {
        let got = query_value(
            &stack,
            &format!(
                r#"sum(last_over_time(ray_tasks{{ray_io_cluster="{name}",State="{state}"}}[60s]))"#
            ),
        );
        assert_eq!(got, Some(want), "{state}");
    }
    // Read from the recording rules; asked live, Ray 2.40's names give the same values.
    assert_eq!(snap["values"], "recorded", "{snap:#}");
    let live = snapshot_args(&stack, &["--live"]);
    let l = cluster(&live, &name).unwrap_or_else(|| panic!("{live:#}"));
    for k in [
        "state",
        "nodes_up",
        "nodes_total",
        "targets",
        "mem_total_bytes",
        "object_store_total_bytes",
        "tasks_finished",
        "tasks_running",
        "tasks_pending",
        "gpus",
    ] {
        assert_eq!(c[k], l[k], "{k}: recorded {c:#}\nlive {l:#}");
    }
}

/// Ray's per-node series as a Ray 2.60 node on a host with two GPUs exports them.
fn gpu_node_metrics(session: &str) -> String {
    let node = format!(
        r#"IsHeadNode="true",RayNodeType="head",SessionName="{session}",Version="2.60.0",ip="127.0.0.1""#
    );
    let mut text = String::new();
    for (metric, v) in [
        ("ray_node_cpu_utilization", "40"),
        ("ray_node_cpu_count", "8"),
        ("ray_node_mem_used", "2147483648"),
        ("ray_node_mem_total", "8589934592"),
    ] {
        text.push_str(&format!("# TYPE {metric} gauge\n{metric}{{{node}}} {v}\n"));
    }
    for metric in [
        "ray_node_gpus_available",
        "ray_node_gpus_utilization",
        "ray_node_gram_used",
    ] {
        text.push_str(&format!("# TYPE {metric} gauge\n"));
        for (idx, util, gram) in [("0", "30", "1024"), ("1", "70", "3072")] {
            let v = match metric {
                "ray_node_gpus_available" => "1",
                "ray_node_gpus_utilization" => util,
                _ => gram,
            };
            text.push_str(&format!(
                r#"{metric}{{{node},GpuIndex="{idx}",GpuDeviceName="NVIDIA A10G",GpuUuid="GPU-{idx}"}} {v}"#
            ));
            text.push('\n');
        }
    }
    text
}

#[test]
fn gpu_columns_show_the_values_of_rays_gpu_series() {
    let (stack, root) = Stack::watching("ray_gpu", &[]);
    let endpoint = MetricsEndpoint::serve(&gpu_node_metrics("session_gpu_1"));
    let _head = FakeHead::start(&root, "session_gpu_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_gpu", user());
    let c = wait_for("the GPU cluster in top", Duration::from_secs(60), || {
        let s = snapshot(&stack, &[]);
        assert_eq!(s["values"], "recorded", "{s:#}");
        cluster(&s, &name).filter(|c| !c["gpus"].is_null()).cloned()
    });
    assert_eq!(c["gpus"], 2.0, "{c:#}");
    assert_eq!(c["gpu_util_percent"], 50.0, "{c:#}");
    assert_eq!(c["gpu_mem_used_bytes"], 4096.0 * 1048576.0, "{c:#}");
    // Ray's gram_available is not served: the total is unknown, not 0.
    assert!(c["gpu_mem_total_bytes"].is_null(), "{c:#}");
    assert_eq!(c["cpu_percent"], 40.0, "{c:#}");
    // Nothing exports object store or task series here: absent, not 0.
    assert!(
        c["object_store_used_bytes"].is_null() && c["tasks_running"].is_null(),
        "{c:#}"
    );
    let out = stack.run(&["top", "--once"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.contains(&name)).unwrap();
    assert!(
        row.contains("–/2") && row.contains(" 50 ") && row.contains("4.0G/–"),
        "{table}"
    );
    // The GPU sparkline is chosen once there is GPU history.
    let c = wait_for("a GPU sparkline", Duration::from_secs(90), || {
        let s = snapshot(&stack, &[]);
        cluster(&s, &name)
            .filter(|c| c["spark_kind"] == "gpu")
            .cloned()
    });
    assert!(
        c["spark"].as_array().unwrap().iter().any(|v| v == 50.0),
        "{c:#}"
    );
}

/// Ray's series with every kind of value `top` shows, constant: a 2.60 node with GPUs,
/// object store, tasks (one failed) and a process start time.
fn every_value_metrics(session: &str) -> String {
    let mut text = gpu_node_metrics(session);
    let s = format!(r#"SessionName="{session}""#);
    text.push_str(&format!(
        "ray_object_store_used_memory{{{s},NodeAddress=\"127.0.0.1\"}} 1000000\n\
         ray_object_store_available_memory{{{s},NodeAddress=\"127.0.0.1\"}} 3000000\n\
         ray_cluster_active_nodes{{{s},node_type=\"head\"}} 1\n\
         ray_resources{{{s},Name=\"GPU\",State=\"USED\"}} 1\n\
         ray_tasks{{{s},State=\"RUNNING\",Name=\"f\"}} 2\n\
         ray_tasks{{{s},State=\"PENDING_NODE_ASSIGNMENT\",Name=\"f\"}} 3\n\
         ray_tasks{{{s},State=\"FINISHED\",Name=\"f\"}} 40\n\
         ray_tasks{{{s},State=\"FAILED\",Name=\"f\"}} 1\n\
         process_start_time_seconds 1700000000\n"
    ));
    text
}

/// The values of [`every_value_metrics`] as `top` shows them.
const EVERY_VALUE: [(&str, f64); 10] = [
    ("cpu_percent", 40.0),
    ("gpus", 2.0),
    ("gpus_used", 1.0),
    ("object_store_used_bytes", 1e6),
    ("object_store_total_bytes", 4e6),
    ("tasks_running", 2.0),
    ("tasks_pending", 3.0),
    ("tasks_finished", 40.0),
    ("tasks_failed_5m", 1.0),
    ("nodes_total", 1.0),
];

/// Whether a row shows every value of [`every_value_metrics`]. Prometheus writes a
/// rule group's series one rule after the other, so a read during the first
/// evaluation can see some fields and not yet others (absent task states read as 0).
fn shows_every_value(c: &Value) -> bool {
    EVERY_VALUE.iter().all(|(k, v)| c[*k] == *v)
}

/// A cluster's row without what moves with the clock.
fn timeless(c: &Value) -> Value {
    let mut c = c.clone();
    for k in ["last_seen_unix", "age_seconds", "spark", "spark_kind"] {
        c.as_object_mut().unwrap().remove(k);
    }
    c
}

#[test]
fn recorded_values_are_the_live_values() {
    let (stack, root) = Stack::watching("ray_rec", &[]);
    let endpoint = MetricsEndpoint::serve(&every_value_metrics("session_rec_1"));
    let _head = FakeHead::start(&root, "session_rec_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_rec", user());
    // Recorded once per scrape interval: polled until every field has its value.
    let recorded = wait_for(
        "the recorded cluster in top",
        Duration::from_secs(60),
        || {
            let s = snapshot(&stack, &[]);
            cluster(&s, &name)
                .filter(|c| shows_every_value(c))
                .map(|c| (s.clone(), c.clone()))
        },
    );
    let (snap, rec) = recorded;
    assert_eq!(snap["values"], "recorded", "{snap:#}");
    assert_eq!(snap["queries"], 4, "{snap:#}");
    let live_snap = snapshot_args(&stack, &["--live"]);
    assert_eq!(live_snap["values"], "live", "{live_snap:#}");
    assert_eq!(live_snap["queries"], 4, "{live_snap:#}");
    let live = cluster(&live_snap, &name).unwrap();
    assert_eq!(timeless(&rec), timeless(live), "recorded vs live");
    // Not a vacuous match: the live values are there, and right.
    assert!(shows_every_value(live), "{live:#}");
    assert!(rec["age_seconds"].as_f64().unwrap() > 0.0, "{rec:#}");
    assert!(rec["gpu_mem_total_bytes"].is_null(), "{rec:#}");
}

#[test]
fn without_the_rules_top_asks_live_and_up_turns_them_back_on() {
    let (stack, root) = Stack::watching("ray_norules", &["--no-top-rules"]);
    let yml = fs_err::read_to_string(stack.home.join("prometheus/prometheus.yml")).unwrap();
    assert!(!yml.contains("top-rules.yml"), "{yml}");
    let endpoint = MetricsEndpoint::serve(&every_value_metrics("session_nr_1"));
    let _head = FakeHead::start(&root, "session_nr_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_norules", user());
    let live = wait_for("the cluster in top, live", Duration::from_secs(60), || {
        let s = snapshot(&stack, &[]);
        assert_eq!(s["values"], "live", "{s:#}");
        cluster(&s, &name).filter(|c| shows_every_value(c)).cloned()
    });
    // `up --top-rules` on the running stack: Prometheus reloads with the rules.
    let out = stack.run(&["up", "--top-rules"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("recording rules"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rec = wait_for(
        "the cluster in top, recorded",
        Duration::from_secs(60),
        || {
            let s = snapshot(&stack, &[]);
            (s["values"] == "recorded")
                .then(|| cluster(&s, &name).cloned())
                .flatten()
                .filter(shows_every_value)
        },
    );
    assert_eq!(timeless(&rec), timeless(&live));
}

#[test]
fn a_dead_cluster_is_shown_dead_then_leaves_after_its_bound() {
    let (stack, root) = Stack::watching("ray_short", &["--liveness", "6s"]);
    let endpoint = MetricsEndpoint::serve(&gpu_node_metrics("session_short_1"));
    let head = FakeHead::start(&root, "session_short_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_short", user());
    let env = [("RAYWATCH_TOP_DEAD_FOR", "20s")];
    wait_for("the cluster live in top", Duration::from_secs(60), || {
        let s = snapshot(&stack, &env);
        cluster(&s, &name)
            .filter(|c| c["state"] == "live")
            .map(|_| ())
    });
    drop(head);
    let dead = wait_for("the cluster dead in top", Duration::from_secs(60), || {
        let s = snapshot(&stack, &env);
        assert_eq!(s["values"], "recorded", "{s:#}");
        cluster(&s, &name).filter(|c| c["state"] == "dead").cloned()
    });
    let died = std::time::Instant::now();
    assert!(dead["last_seen_unix"].as_f64().unwrap() > 0.0, "{dead:#}");
    assert!(
        dead["cpu_percent"].is_null(),
        "a dead cluster shows no live values: {dead:#}"
    );
    let out = stack
        .cmd()
        .args(["top", "--once"])
        .envs(env)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("dead"));
    wait_for(
        "the dead cluster to leave top",
        Duration::from_secs(60),
        || {
            let s = snapshot(&stack, &env);
            cluster(&s, &name).is_none().then_some(())
        },
    );
    assert!(
        died.elapsed() > Duration::from_secs(5),
        "it left {:?} after it was seen dead, well before its 20 s bound",
        died.elapsed()
    );
}

#[test]
fn without_a_stack_top_says_so_instead_of_drawing() {
    let dir = scratch();
    let out = Command::new(raywatch_bin())
        .env("RAYWATCH_HOME", dir.path().join("home"))
        .args(["top", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let remote = Command::new(raywatch_bin())
        .args([
            "top",
            "--once",
            "--prometheus",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(remote.status.code(), Some(1));
    // "raywatch is not running" and how to start it; a remote API it "cannot reach".
    assert_transcripts(
        "top-without-a-stack",
        &[
            ("top --once", &out),
            ("top --once --prometheus <nothing listens>", &remote),
        ],
        [
            // top's own PromQL, which the error's URL carries.
            vec![(
                r"(/api/v1/query\?query=)[^\s)]+".to_string(),
                "$1[top's query]".to_string(),
            )],
            scratch_filters(dir.path()),
        ]
        .concat(),
    );
}

/// A Prometheus-compatible API on loopback that answers every request with `body`
/// and records the requests' headers.
struct FakeApi {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeApi {
    fn serve(body: String) -> FakeApi {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 8192];
                let n = c.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                // A range query gets a matrix, as from any Prometheus-compatible API.
                let body = if request.contains("/api/v1/query_range") {
                    r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#
                } else {
                    body.as_str()
                };
                s.lock().unwrap().push(request);
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    body
                );
            }
        });
        FakeApi { url, seen }
    }
}

#[test]
fn a_central_stores_hostile_labels_are_escaped_and_credentials_come_from_safe_files_only() {
    // A label value with an OSC title sequence and a cursor move, as a hostile host could set.
    let evil = "evil\u{1b}]0;pwned\u{7}\u{1b}[2Jname";
    let body = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"rw_field": "targets", "ray_io_cluster": evil, "ray_user": "mallory", "ray_host": "h\u{1b}[31m"}, "value": [1.0, "1"]},
    ]}})
    .to_string();
    let api = FakeApi::serve(body);
    let dir = scratch();
    let token = dir.path().join("token");
    fs_err::write(&token, "s3cret\n").unwrap();
    let out = Command::new(raywatch_bin())
        .args(["top", "--once", "--prometheus", &api.url, "--bearer-file"])
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains(r"evil\e]0;pwned\a\e[2Jname"), "{text}");
    let seen = api.seen.lock().unwrap().join("\n");
    assert!(
        seen.to_ascii_lowercase()
            .contains("authorization: bearer s3cret"),
        "{seen}"
    );
}

/// A credential file that is a link, a FIFO or too big is refused, naming it
/// (and why: a link, a FIFO); nothing is sent.
#[test]
fn a_credential_file_that_is_a_link_a_fifo_or_too_big_is_refused_and_nothing_is_sent() {
    let api = FakeApi::serve("{}".into());
    let dir = scratch();
    let token = dir.path().join("token");
    fs_err::write(&token, "s3cret\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&token, &link).unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits(0o600).unwrap()).unwrap();
    let huge = dir.path().join("huge");
    fs_err::write(&huge, vec![b'x'; 1 << 20]).unwrap();
    let mut refusals = Vec::new();
    for file in [&link, &fifo, &huge] {
        let out = Command::new(raywatch_bin())
            .args([
                "top",
                "--once",
                "--prometheus",
                &api.url,
                "--basic-auth-file",
            ])
            .arg(file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        refusals.push((format!("--basic-auth-file {}", file.display()), out));
    }
    assert!(api.seen.lock().unwrap().is_empty(), "a request went out");
    assert_transcripts(
        "top-credential-files-refused",
        &refusals,
        scratch_filters(dir.path()),
    );
}

/// A store claiming `top`'s rules gets the recorded queries, and what it answers
/// is escaped like any other answer; a hostile rules answer's own text shows nowhere.
#[test]
fn a_store_claiming_the_rules_is_read_as_recorded_and_still_escaped() {
    let evil = "evil\u{1b}]0;pwned\u{7}name";
    let rules: Vec<Value> = raywatch::top::rules::records()
        .into_iter()
        .map(|r| serde_json::json!({"name": r, "health": "ok\u{1b}[2J", "type": "recording"}))
        .collect();
    // One body for every request: a rules answer and a vector at once (unknown fields are skipped).
    let body = serde_json::json!({"status": "success", "data": {
        "groups": [{"name": raywatch::top::rules::GROUP, "rules": rules}],
        "resultType": "vector", "result": [
            {"metric": {"rw_field": "targets", "ray_io_cluster": evil, "ray_user": "mallory"}, "value": [1.0, "1"]},
            {"metric": {"rw_field": "cpu", "ray_io_cluster": evil, "ray_user": "mallory"}, "value": [1.0, "12"]},
        ]}})
    .to_string();
    let api = FakeApi::serve(body);
    let run = |args: &[&str]| {
        let out = Command::new(raywatch_bin())
            .args(["top", "--once", "--prometheus", &api.url])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let snap: Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(snap["values"], "recorded", "{snap:#}");
    assert_eq!(snap["queries"], 4, "{snap:#}");
    // The same body answered the three instant queries: the values are read, not doubled.
    assert_eq!(snap["clusters"][0]["cpu_percent"], 12.0, "{snap:#}");
    let text = run(&[]);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains(r"evil\e]0;pwned\aname"), "{text}");
    let seen = api.seen.lock().unwrap().join("\n");
    assert!(seen.contains("GET /api/v1/rules?type=record"), "{seen}");
    assert!(seen.contains("raywatch_top"), "{seen}");
}

/// Another local user's token file is not trusted for --bearer-file.
#[test]
fn another_users_credential_file_is_refused() {
    let other = crate::security::other_user();
    let dir = crate::security::open_scratch();
    let token = dir.path().join("token");
    fs_err::write(&token, "planted\n").unwrap();
    nix::unistd::chown(
        &token,
        Some(nix::unistd::Uid::from_raw(other.0)),
        Some(nix::unistd::Gid::from_raw(other.1)),
    )
    .unwrap();
    let api = FakeApi::serve("{}".into());
    let out = Command::new(raywatch_bin())
        .args(["top", "--once", "--prometheus", &api.url, "--bearer-file"])
        .arg(&token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(api.seen.lock().unwrap().is_empty(), "a request went out");
    // The refusal names the file's owner, the other user.
    let mut filters = vec![(format!(r"\buid {}\b", other.0), "uid [uid]".to_string())];
    filters.extend(scratch_filters(dir.path()));
    assert_transcript("top-credential-file-of-another-user", &out, filters);
}

#[test]
fn an_oversized_answer_is_refused_not_held() {
    let body = format!(
        r#"{{"status": "success", "data": {{"resultType": "vector", "result": [], "pad": "{}"}}}}"#,
        "x".repeat(65 << 20)
    );
    let api = FakeApi::serve(body);
    let out = Command::new(raywatch_bin())
        .args(["top", "--once", "--prometheus", &api.url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_transcript(
        "top-an-oversized-answer",
        &out,
        keeping(&["over 64 MiB"], crate::snapshots::filters()),
    );
}

/// Ctrl-C and SIGTERM end the screen as `q` does: the terminal is back to normal.
#[test]
fn ctrl_c_and_sigterm_restore_the_terminal() {
    let (stack, root) = Stack::watching("ray_sig", &[]);
    let endpoint = MetricsEndpoint::serve(&gpu_node_metrics("session_sig_1"));
    let _head = FakeHead::start(&root, "session_sig_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_sig", user());
    wait_for("the cluster in top", Duration::from_secs(60), || {
        cluster(&snapshot(&stack, &[]), &name).map(|_| ())
    });
    let tmux = Tmux::start(160, 30);
    let cmd = format!(
        "'{}' --home '{}' top",
        raywatch_bin().display(),
        stack.home.display()
    );
    for how in ["C-c", "SIGTERM"] {
        tmux.literal(&cmd);
        tmux.keys(&["Enter"]);
        tmux.wait_screen("the screen", |s| s.contains(&name) && s.contains("q quit"));
        assert_eq!(tmux.modes(), "1 0", "the screen is up ({how})");
        if how == "C-c" {
            tmux.keys(&["C-c"]);
        } else {
            let pids: Vec<u32> = processes_mentioning(&stack.home.display().to_string())
                .into_iter()
                .filter(|p| {
                    fs_err::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"top"))
                })
                .collect();
            assert_eq!(pids.len(), 1, "{pids:?}");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pids[0] as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        }
        wait_for(
            &format!("the terminal back to normal after {how}"),
            Duration::from_secs(10),
            || (tmux.modes() == "0 1").then_some(()),
        );
    }
}

/// The cluster view lists the cluster's alerts: a held-idle GPU alert fires
/// (the threshold raised over the endpoint's 50 %) and shows with its severity;
/// the Grafana overview's alert panel and column (their queries, as provisioned)
/// show it too.
#[test]
fn the_cluster_view_and_the_grafana_overview_list_the_alerts_of_the_cluster() {
    let (stack, root) = Stack::watching(
        "ray_alerted",
        &["--gpu-idle-below", "80", "--gpu-idle-for", "1s"],
    );
    let endpoint = MetricsEndpoint::serve(&every_value_metrics("session_al_1"));
    let _head = FakeHead::start(&root, "session_al_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_alerted", user());
    wait_for(
        "an alert firing for the cluster",
        Duration::from_secs(90),
        || {
            cluster(&snapshot(&stack, &[]), &name)
                .filter(|c| c["alerts_firing"].as_u64() >= Some(1))
                .map(|_| ())
        },
    );
    let tmux = Tmux::start(200, 40);
    tmux.literal(&format!(
        "RAYWATCH_HOME='{}' '{}' top --interval 1s",
        stack.home.display(),
        raywatch_bin().display()
    ));
    tmux.keys(&["Enter"]);
    tmux.wait_screen("the cluster on the home screen", |s| {
        s.contains(&name) && s.contains("q quit")
    });
    tmux.keys(&["g", "Enter"]);
    let view = tmux.wait_screen("the cluster view with its alert", |s| {
        s.contains("INSTANCE") && s.contains("RayGpusIdle (firing, warning)")
    });
    assert!(view.contains("alerts:"), "{view}");
    tmux.keys(&["q"]);
    let overview: Value = serde_json::from_str(
        &fs_err::read_to_string(stack.home.join("grafana/dashboards/raywatch-overview.json"))
            .unwrap(),
    )
    .unwrap();
    let panels = overview["panels"].as_array().unwrap();
    let alert_panel = panels
        .iter()
        .find(|p| p["title"].as_str().unwrap().starts_with("Alerts firing"))
        .expect("an alerts panel");
    let firing = stack.query(alert_panel["targets"][0]["expr"].as_str().unwrap());
    assert!(
        firing
            .iter()
            .any(|s| s["metric"]["alertname"] == "RayGpusIdle"
                && s["metric"]["ray_io_cluster"] == name.as_str()),
        "{firing:#?}"
    );
    let column = panels[0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["legendFormat"] == "Alerts firing")
        .expect("an alerts column");
    let counted = stack.query(column["expr"].as_str().unwrap());
    assert!(
        counted
            .iter()
            .any(|s| s["metric"]["ray_io_cluster"] == name.as_str()),
        "{counted:#?}"
    );
    wait_for(
        "the terminal back to normal",
        Duration::from_secs(10),
        || (tmux.modes() == "0 1").then_some(()),
    );
}
