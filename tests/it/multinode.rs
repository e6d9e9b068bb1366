//! A real three-node Ray cluster across three test hosts (network namespaces,
//! see [`crate::host`]): the head and raywatch's stack on A, workers on B and C.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::host::{Host, Lan};
use crate::support::{
    DISCOVERY, Stack, free_port, parse_exports, processes_mentioning, ray_bin, raywatch_bin,
    scratch, user, wait_for,
};

/// raywatch's default liveness bound (`up --liveness`).
const LIVENESS: Duration = Duration::from_secs(20);
/// The daemon's 1 s tick and a `status` call on top of the bound.
const SLACK: Duration = Duration::from_secs(3);

/// One Ray node (`ray start --block`) on a test host, in a process group of its own.
struct RayNode {
    host: Host,
    child: Child,
    /// Processes of the host that are not the node's (the stack beside the head).
    spare: Vec<u32>,
}

impl RayNode {
    /// `ray start --block` with `args` on `host`; Ray's usage stats and token auth off.
    fn start(host: &Host, args: &[String], env: &[(String, String)], spare: Vec<u32>) -> RayNode {
        let mut cmd = host.cmd(ray_bin());
        cmd.args([
            "start",
            "--block",
            "--num-cpus",
            "1",
            "--disable-usage-stats",
        ])
        .args(args)
        .arg("--object-store-memory=100000000")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .env("RAY_AUTH_MODE", "disabled")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        RayNode {
            host: host.clone(),
            child: host.spawn(cmd),
            spare,
        }
    }

    /// SIGKILL to the node's process group, then to every process of its host
    /// but the spared ones, until none is left (never `ray stop`).
    fn kill9(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        wait_for(
            "the node's processes to exit",
            Duration::from_secs(30),
            || {
                let left: Vec<i32> = self
                    .host
                    .pids()
                    .into_iter()
                    .filter(|p| !self.spare.contains(&(*p as u32)))
                    .collect();
                for pid in &left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                left.is_empty().then_some(())
            },
        );
    }
}

impl Drop for RayNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The stack's processes (its daemon, Prometheus, Grafana when installed):
/// each names the stack's home on its command line.
fn stack_processes(stack: &Stack) -> Vec<u32> {
    processes_mentioning(&stack.home.to_string_lossy())
}

/// Prometheus' active targets of the `ray` job, asked from inside `host`
/// (the stack's Prometheus listens on that host's loopback).
fn active_targets(host: &Host, stack: &Stack) -> Vec<Value> {
    let (port, password) = (stack.port(), stack.password());
    host.enter(|| {
        let v: Value = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/targets?state=active"
            ))
            .basic_auth("raywatch", Some(password))
            .send()
            .ok()?
            .json()
            .ok()?;
        Some(
            v["data"]["activeTargets"]
                .as_array()?
                .iter()
                .filter(|t| t["labels"]["job"] == "ray")
                .cloned()
                .collect(),
        )
    })
    .unwrap_or_default()
}

/// `raywatch top --once --json`'s row of cluster `name`.
fn top_row(stack: &Stack, name: &str) -> Option<Value> {
    let out = stack.run(&["top", "--once", "--json"]);
    assert!(
        out.status.success(),
        "top failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// `raywatch status --json`'s entry of cluster `name`.
fn status_of(stack: &Stack, name: &str) -> Option<Value> {
    stack.status()["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// The health `status` gives target `address` of cluster `c` (None: not listed).
fn health(c: &Value, address: &str) -> Option<String> {
    c["targets"]
        .as_array()?
        .iter()
        .find(|t| t["address"] == address)
        .map(|t| t["health"].as_str().unwrap_or("").to_string())
}

/// `(up, total)` nodes of a `top` row; panics when more are up than in total.
fn nodes(row: &Value) -> (Option<u64>, Option<u64>) {
    let (up, total) = (row["nodes_up"].as_u64(), row["nodes_total"].as_u64());
    if let (Some(u), Some(t)) = (up, total) {
        assert!(u <= t, "top shows more nodes up than in total: {row}");
    }
    (up, total)
}

/// The session folder Ray made in `temp_dir` (None until it is there).
fn session_dir(temp_dir: &Path) -> Option<PathBuf> {
    fs_err::read_dir(temp_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("session_2"))
        })
}

/// raywatch on a worker host sees the worker's session folder and makes no
/// cluster of it, and reports nothing amiss; returns its clusters (those it
/// follows elsewhere).
fn assert_no_phantom(stack: &Stack, temp_dir: &Path) -> Vec<Value> {
    let out = stack.run(&["status"]);
    assert!(
        out.status.success(),
        "status on the worker host fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = stack.status();
    assert!(
        s["watch"]["roots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == temp_dir.to_str().unwrap()),
        "{s}"
    );
    assert!(
        session_dir(temp_dir).is_some(),
        "the worker's session folder"
    );
    let clusters = s["clusters"].as_array().unwrap().clone();
    let phantoms: Vec<&Value> = clusters
        .iter()
        .filter(|c| {
            c["temp_dir"] == temp_dir.to_str().unwrap()
                || c["discovery_file"]
                    .as_str()
                    .is_some_and(|f| Path::new(f).starts_with(temp_dir))
        })
        .collect();
    assert!(phantoms.is_empty(), "a phantom cluster: {phantoms:?}");
    assert_eq!(s["rejected"], serde_json::json!([]), "{s}");
    assert!(s["watch"]["degraded"].is_null(), "{s}");
    assert_eq!(s["watch"]["foreign_session_dirs"], 0, "{s}");
    clusters
}

#[test]
fn a_three_node_cluster_across_three_hosts_loses_a_worker_then_its_head() {
    let lan = Lan::new();
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let dir = scratch();
    let temp = |h: &Host| {
        let p = dir.path().join(format!("ray-{}", h.name));
        fs_err::create_dir(&p).unwrap();
        p
    };
    let (temp_a, temp_b, temp_c) = (temp(&a), temp(&b), temp(&c));
    let stack_on = |h: &Host, root: &Path| {
        let bin = h.wrapper(dir.path(), &format!("raywatch-{}", h.name), &raywatch_bin());
        let home = dir.path().join(format!("home-{}", h.name));
        Stack::up_with(
            &bin,
            &home,
            &["--no-default-watch", "--watch", root.to_str().unwrap()],
        )
    };

    // The head and raywatch on A, the README's way: `eval "$(raywatch env)"`, then `ray start`.
    let stack_a = stack_on(&a, &temp_a);
    let out = stack_a.run(&[
        "env",
        "--temp-dir",
        temp_a.to_str().unwrap(),
        "--no-ray-auth",
    ]);
    assert!(
        out.status.success(),
        "env: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut env = parse_exports(&String::from_utf8_lossy(&out.stdout));
    let var = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let (name, head_metrics) = (var("RAYWATCH_CLUSTER"), var("RAYWATCH_METRICS_EXPORT_PORT"));
    let gcs = free_port();
    let head_args = vec![
        "--head".to_string(),
        format!("--node-ip-address={}", a.addr),
        format!("--temp-dir={}", var("RAYWATCH_TEMP_DIR")),
        format!("--port={gcs}"),
        format!("--dashboard-port={}", var("RAYWATCH_DASHBOARD_PORT")),
        format!("--metrics-export-port={head_metrics}"),
        format!("--ray-client-server-port={}", free_port()),
        format!("--dashboard-agent-listen-port={}", free_port()),
        format!("--dashboard-agent-grpc-port={}", free_port()),
        format!("--runtime-env-agent-port={}", free_port()),
    ];
    // The head alone needs no multi-node Ray: it keeps the suite's setting.
    env.push(("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER".into(), "0".into()));
    let mut head = RayNode::start(&a, &head_args, &env, stack_processes(&stack_a));
    let session = wait_for("the head's session folder", Duration::from_secs(90), || {
        let d = session_dir(&temp_a)?;
        d.join(DISCOVERY).is_file().then_some(d)
    });
    let session = session.file_name().unwrap().to_string_lossy().into_owned();

    // Workers on B and C join the head at A's address. A worker's `ray start`
    // refuses to run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (it turns
    // multi-node clusters off): it is set to Ray's Linux default, on.
    let worker = |h: &Host, temp_dir: &Path| {
        let metrics = free_port();
        let args = vec![
            format!("--address={}:{gcs}", a.addr),
            format!("--node-ip-address={}", h.addr),
            format!("--temp-dir={}", temp_dir.display()),
            format!("--metrics-export-port={metrics}"),
            format!("--dashboard-agent-listen-port={}", free_port()),
            format!("--dashboard-agent-grpc-port={}", free_port()),
            format!("--runtime-env-agent-port={}", free_port()),
        ];
        let env = [("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER".into(), "1".into())];
        (RayNode::start(h, &args, &env, Vec::new()), metrics)
    };
    let (worker_b, metrics_b) = worker(&b, &temp_b);
    let (mut worker_c, metrics_c) = worker(&c, &temp_c);
    let endpoint_a = format!("{}:{head_metrics}", a.addr);
    let endpoint_b = format!("{}:{metrics_b}", b.addr);
    let endpoint_c = format!("{}:{metrics_c}", c.addr);
    let endpoints = [&endpoint_a, &endpoint_b, &endpoint_c];

    // raywatch on worker host B, watching B's temp dir; it also follows A's
    // temp dir as a shared file system would show it (a head on another host).
    let stack_b = stack_on(&b, &temp_b);
    let out = stack_b.run(&["attach", temp_a.to_str().unwrap(), "--name", "from-a"]);
    assert!(
        out.status.success(),
        "attach on B: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every node's metrics endpoint is an active, healthy target of A's
    // Prometheus, with the cluster's labels.
    let started = Instant::now();
    let targets = wait_for(
        "the three nodes' endpoints scraped by A's Prometheus",
        Duration::from_secs(150),
        || {
            let t = active_targets(&a, &stack_a);
            let ok = endpoints.iter().all(|e| {
                t.iter()
                    .any(|x| x["labels"]["instance"] == e.as_str() && x["health"] == "up")
            });
            ok.then_some(t)
        },
    );
    eprintln!(
        "3 nodes scraped {:.1}s after the head's session",
        started.elapsed().as_secs_f64()
    );
    for e in endpoints {
        let t = targets
            .iter()
            .find(|x| x["labels"]["instance"] == e.as_str())
            .unwrap();
        let l = &t["labels"];
        assert_eq!(l["ray_io_cluster"], name.as_str(), "{t}");
        assert_eq!(l["ray_session"], session.as_str(), "{t}");
        assert_eq!(l["ray_user"], user().as_str(), "{t}");
    }
    // status and top: the cluster, live, its three nodes up of three.
    let c_status = status_of(&stack_a, &name).expect("status lists the cluster");
    assert_eq!(c_status["state"], "live", "{c_status}");
    assert_eq!(c_status["session"], session.as_str(), "{c_status}");
    for e in endpoints {
        assert_eq!(health(&c_status, e).as_deref(), Some("up"), "{c_status}");
    }
    // Each node as the head's or a worker's; the head's autoscaler and
    // dashboard endpoints run on its host too.
    for t in c_status["targets"].as_array().unwrap() {
        let on_a = t["address"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", a.addr));
        let role = if on_a { "head" } else { "worker" };
        assert_eq!(t["role"], role, "{c_status}");
    }
    wait_for("top: nodes 3 up of 3", Duration::from_secs(90), || {
        let row = top_row(&stack_a, &name)?;
        assert_eq!(row["state"], "live", "{row}");
        (nodes(&row) == (Some(3), Some(3))).then_some(())
    });

    // raywatch on the worker host invents no cluster from the worker's
    // session (whose folder has the head's session name); the head's cluster,
    // followed from A's folder, is live there with every node scraped.
    wait_for(
        "the worker's session folder on B",
        Duration::from_secs(30),
        || session_dir(&temp_b),
    );
    wait_for(
        "B: the head's cluster live, its three nodes up",
        Duration::from_secs(60),
        || {
            let on_b = assert_no_phantom(&stack_b, &temp_b);
            assert!(on_b.len() <= 1, "{on_b:?}");
            let c = on_b.first()?;
            assert_eq!(c["name"], "from-a", "{c}");
            assert_eq!(c["session"], session.as_str(), "{c}");
            let up = endpoints
                .iter()
                .all(|e| health(c, e).as_deref() == Some("up"));
            (c["state"] == "live" && up).then_some(())
        },
    );

    // Worker host C dies: every process of it SIGKILLed. The cluster stays
    // live; what status and top show, and when, is recorded.
    worker_c.kill9();
    let killed = Instant::now();
    let killed_unix = raywatch::clock::unix_now();
    let (mut c_down, mut c_gone, mut up_2, mut total_2) = (None, None, None, None);
    let (mut lost_in_status, mut lost_in_top) = (None, None);
    let mut seen = Vec::new();
    while killed.elapsed() < Duration::from_secs(150) {
        let s = status_of(&stack_a, &name).expect("the cluster stays listed");
        assert_eq!(s["state"], "live", "a worker's death ends no cluster: {s}");
        let h = health(&s, &endpoint_c);
        let row = top_row(&stack_a, &name).expect("top shows the cluster");
        let (up, total) = nodes(&row);
        let at = killed.elapsed().as_secs_f64();
        if c_down.is_none() && h.as_deref() != Some("up") {
            c_down = Some(at);
        }
        if c_gone.is_none() && h.is_none() {
            c_gone = Some(at);
        }
        if up_2.is_none() && up == Some(2) {
            up_2 = Some(at);
        }
        if total_2.is_none() && total == Some(2) {
            total_2 = Some(at);
        }
        let lost: Vec<&str> = s["nodes_lost"]
            .as_array()
            .map(|l| l.iter().filter_map(|n| n["address"].as_str()).collect())
            .unwrap_or_default();
        if lost_in_status.is_none() && lost == [endpoint_c.as_str()] {
            lost_in_status = Some(at);
        }
        if lost_in_top.is_none() && row["nodes_lost"] == 1 {
            lost_in_top = Some(at);
        }
        let line = format!(
            "status C {h:?} lost {lost:?}, top nodes {up:?}/{total:?} lost {} targets {} down {}",
            row["nodes_lost"], row["targets"], row["targets_down"]
        );
        if seen.last().is_none_or(|(_, l)| *l != line) {
            seen.push((at, line));
        }
        // Ray's own node count follows a minute later: not waited for.
        if c_gone.is_some() && lost_in_status.is_some() && lost_in_top.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("after worker C's SIGKILL (s since the kill):");
    for (at, line) in &seen {
        eprintln!("  +{at:5.1}s {line}");
    }
    eprintln!(
        "C's target not up in status: {c_down:?}; gone from status: {c_gone:?}; lost in status: {lost_in_status:?}; lost in top: {lost_in_top:?}; top nodes up 2: {up_2:?}; top nodes total 2: {total_2:?}"
    );
    // Ray drops the dead worker from its list: shown lost, not a silent disappearance.
    assert!(
        lost_in_status.is_some() && lost_in_status == c_gone,
        "C left status' targets at {c_gone:?} but was shown lost at {lost_in_status:?}: {seen:?}"
    );
    assert!(lost_in_top.is_some(), "top never counted C lost: {seen:?}");
    let history = stack_a.run(&["history", "--json"]);
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    let entry = history["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name.as_str() && c["state"] == "live")
        .unwrap_or_else(|| panic!("{name} live in the history: {history}"));
    let losses = entry["nodes_lost"]
        .as_array()
        .unwrap_or_else(|| panic!("{entry}"));
    assert_eq!(losses.len(), 1, "{entry}");
    assert_eq!(losses[0]["node"], endpoint_c.as_str(), "{entry}");
    let at = losses[0]["at_unix"].as_f64().unwrap();
    assert!(
        at > killed_unix && at < killed_unix + 150.0,
        "lost at {at}, killed at {killed_unix}: {entry}"
    );
    assert!(
        c_down.is_some_and(|t| t < 30.0),
        "C's target shown up 30 s after its death: {seen:?}"
    );
    assert!(
        up_2.is_some(),
        "top never showed 2 nodes up after C's death: {seen:?}"
    );
    let s = status_of(&stack_a, &name).unwrap();
    for e in [&endpoint_a, &endpoint_b] {
        assert_eq!(health(&s, e).as_deref(), Some("up"), "{s}");
    }
    // Still no phantom on B, minutes into its worker's session.
    let on_b = assert_no_phantom(&stack_b, &temp_b);
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(on_b[0]["state"], "live", "{on_b:?}");

    // A new worker joins on host C: listed as a worker, scraped, counted.
    let temp_c2 = dir.path().join("ray-c2");
    fs_err::create_dir(&temp_c2).unwrap();
    let (worker_c2, metrics_c2) = worker(&c, &temp_c2);
    let endpoint_c2 = format!("{}:{metrics_c2}", c.addr);
    let joined = Instant::now();
    wait_for(
        "the new worker up in status and top's nodes 3 up again",
        Duration::from_secs(150),
        || {
            let s = status_of(&stack_a, &name)?;
            let t = s["targets"]
                .as_array()?
                .iter()
                .find(|t| t["address"] == endpoint_c2.as_str())?
                .clone();
            assert_eq!(t["role"], "worker", "{s}");
            let row = top_row(&stack_a, &name)?;
            (t["health"] == "up" && nodes(&row).0 == Some(3)).then_some(())
        },
    );
    eprintln!(
        "a new worker on C: up in status and counted by top {:.1}s after its start",
        joined.elapsed().as_secs_f64()
    );

    // The head dies: every Ray process of host A, none of the stack's, while
    // worker host B is unreachable (its cable pulled): the GCS probe asks the
    // head, not the workers' hosts, so the end is confirmed by the GCS refusing
    // connections, not by the liveness bound.
    head.spare = stack_processes(&stack_a);
    assert!(head.spare.len() >= 2, "the daemon and Prometheus");
    lan.set_link(&b, false);
    head.kill9();
    let killed = Instant::now();
    let reason = wait_for(
        "the cluster to die within the liveness bound",
        LIVENESS + SLACK,
        || {
            let s = status_of(&stack_a, &name)?;
            (s["state"] == "dead").then(|| s["dead_reason"].clone())
        },
    );
    let dead_after = killed.elapsed().as_secs_f64();
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.contains("refuses connections")),
        "the head's end was not confirmed by its GCS: {reason}"
    );
    // On B too, where the head is on another host (unreachable now: by the bound).
    let reason_b = wait_for(
        "B: the cluster to die within the liveness bound",
        (LIVENESS + SLACK).saturating_sub(killed.elapsed()),
        || {
            let s = status_of(&stack_b, "from-a")?;
            (s["state"] == "dead").then(|| s["dead_reason"].clone())
        },
    );
    let dead_after_b = killed.elapsed().as_secs_f64();
    wait_for(
        "every target of the dead cluster to go",
        Duration::from_secs(30),
        || {
            let t = active_targets(&a, &stack_a);
            t.iter()
                .all(|x| x["labels"]["ray_io_cluster"] != name.as_str())
                .then_some(())
        },
    );
    eprintln!(
        "head killed: dead after {dead_after:.1}s ({reason}), on B after {dead_after_b:.1}s ({reason_b}); its targets gone from A's Prometheus after {:.1}s",
        killed.elapsed().as_secs_f64()
    );

    // Everything goes: the nodes, both stacks, then the hosts.
    drop((head, worker_b, worker_c2, worker_c));
    drop((stack_a, stack_b));
    lan.close();
    let left = processes_mentioning(&dir.path().to_string_lossy());
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// Removes the temp dirs the Slurm example's nodes made (`/tmp/ray_<job>` on
/// the head, `-b` and `-c` for the workers), even after a failure.
struct JobTempDirs(String);

impl Drop for JobTempDirs {
    fn drop(&mut self) {
        for suffix in ["", "-b", "-c"] {
            let _ = fs_err::remove_dir_all(format!("/tmp/ray_{}{suffix}", self.0));
        }
    }
}

/// An executable script at `dir/name`.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    fs_err::write(&path, text).unwrap();
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

const SLURM_JOB: &str = r#"
import os, time, ray
temp_dir = os.environ["RAYWATCH_TEMP_DIR"]
ray.init(address=open(os.path.join(temp_dir, "ray_current_cluster")).read().strip())
while len([n for n in ray.nodes() if n["Alive"]]) < 3:
    time.sleep(1)
open(os.environ["RW_READY"], "w").write("3")
while not os.path.exists(os.environ["RW_STOP"]):
    time.sleep(0.5)
"#;

/// examples/slurm/ray-multinode.sbatch itself, run on test host A as its batch
/// step, with stand-ins for Slurm's `scontrol` (the allocation's nodes: a, b,
/// c) and `srun` (a step on node b or c runs in that host's namespace, in a
/// folder of its own where a real node has its own /tmp): raywatch on the head
/// monitors all three nodes, the job's Slurm id on its record, and `raywatch
/// down` runs when the job ends.
#[test]
fn the_slurm_example_runs_a_three_node_cluster_monitored_from_its_head() {
    let lan = Lan::new();
    let (a, b, c) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let dir = scratch();
    // A Slurm job id is digits; this one is the test process' own.
    let job = format!("9{}", std::process::id());
    let _dirs = JobTempDirs(job.clone());
    let shims = dir.path().join("bin");
    fs_err::create_dir(&shims).unwrap();
    script(&shims, "scontrol", "#!/bin/sh\nprintf 'a\\nb\\nc\\n'\n");
    script(
        &shims,
        "srun",
        &format!(
            r#"#!/bin/sh
# srun stand-in: the step's command on host -w NODE, its --temp-dir its own.
node=
while [ $# -gt 0 ]; do
  case "$1" in -w) node=$2; shift 2 ;; -*) shift ;; *) break ;; esac
done
case "$node" in b) ns='{b}' ;; c) ns='{c}' ;; *) echo "srun stand-in: no node '$node'" >&2; exit 1 ;; esac
prog=$1; shift; set -- "$prog" "$@"
for arg do
  shift
  case "$arg" in --temp-dir=*) arg="$arg-$node" ;; esac
  set -- "$@" "$arg"
done
# A worker joins a multi-node cluster only with Ray's Linux default (on).
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 exec ip netns exec "$ns" "$@"
"#,
            b = b.ns,
            c = c.ns
        ),
    );
    fs_err::write(dir.path().join("job.py"), SLURM_JOB).unwrap();
    let (ready, stop) = (dir.path().join("ready"), dir.path().join("stop"));
    let home = dir.path().join("home");
    let venv = ray_bin().parent().unwrap().to_path_buf();
    let own = raywatch_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}:{}:{}",
        shims.display(),
        venv.display(),
        own.display(),
        std::env::var("PATH").unwrap()
    );
    let sbatch = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm/ray-multinode.sbatch");
    let log = dir.path().join("job.log");
    let mut batch = a.cmd("bash");
    batch
        .arg(&sbatch)
        .env("PATH", &path)
        .env("RAYWATCH_HOME", &home)
        .env("SLURM_JOB_ID", &job)
        .env("SLURM_JOB_NAME", "ray-multinode")
        .env("SLURM_JOB_NODELIST", "a,b,c")
        .env("RAY_JOB_SCRIPT", dir.path().join("job.py"))
        .env("RW_READY", &ready)
        .env("RW_STOP", &stop)
        .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .stdout(fs_err::File::create(&log).unwrap().into_parts().0)
        .stderr(
            fs_err::File::options()
                .append(true)
                .open(&log)
                .unwrap()
                .into_parts()
                .0,
        )
        .process_group(0);
    let mut batch = batch.spawn().unwrap();
    let job_log = || fs_err::read_to_string(&log).unwrap_or_default();
    wait_for("the job's three nodes", Duration::from_secs(240), || {
        if let Ok(Some(st)) = batch.try_wait() {
            panic!(
                "the batch script ended ({st}) before its nodes joined:\n{}",
                job_log()
            );
        }
        ready.exists().then_some(())
    });

    // raywatch on the head: one cluster, its three nodes scraped, the head's
    // endpoints (node, autoscaler, dashboard) on A, the workers on B and C.
    let raywatch = |args: &[&str]| {
        let out = std::process::Command::new(raywatch_bin())
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let cluster = wait_for("the cluster's targets up", Duration::from_secs(120), || {
        let st = raywatch(&["status", "--json"]);
        let clusters = st["clusters"].as_array()?;
        assert!(clusters.len() <= 1, "one cluster, no phantom: {st}");
        let c = clusters.first()?.clone();
        let targets = c["targets"].as_array()?;
        let up = targets.iter().filter(|t| t["health"] == "up").count();
        (c["state"] == "live" && targets.len() == 5 && up == 5).then_some(c)
    });
    let hosts_of = |role: &str| -> Vec<String> {
        let mut v: Vec<String> = cluster["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["role"] == role)
            .map(|t| {
                t["address"]
                    .as_str()
                    .unwrap()
                    .rsplit_once(':')
                    .unwrap()
                    .0
                    .to_string()
            })
            .collect();
        v.dedup();
        v
    };
    assert_eq!(hosts_of("head"), [a.addr.to_string()], "{cluster}");
    let mut workers = hosts_of("worker");
    workers.sort();
    let mut expected = vec![b.addr.to_string(), c.addr.to_string()];
    expected.sort();
    assert_eq!(workers, expected, "{cluster}");
    // The head inherited the job's variables: the cluster's record carries the job.
    let entry = wait_for(
        "the Slurm job on the record",
        Duration::from_secs(60),
        || {
            let history = raywatch(&["history", "--json"]);
            let entry = history["clusters"][0].clone();
            (entry["slurm_job_id"] == job.as_str()).then_some(entry)
        },
    );
    assert_eq!(entry["slurm_job_name"], "ray-multinode", "{entry}");

    // The job ends: the script's trap runs `raywatch down`.
    fs_err::write(&stop, "").unwrap();
    let status = wait_for("the batch script to end", Duration::from_secs(120), || {
        batch.try_wait().unwrap()
    });
    assert!(
        status.success(),
        "the batch script failed ({status}):\n{}",
        job_log()
    );
    wait_for("raywatch down on the head", Duration::from_secs(30), || {
        processes_mentioning(&home.display().to_string())
            .is_empty()
            .then_some(())
    });
    // Slurm ends a job's processes: here the test hosts' teardown does.
    drop((a, b, c));
    lan.close();
}
