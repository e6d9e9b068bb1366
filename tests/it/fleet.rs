//! Beyond one machine: stacks feeding a real central store (VictoriaMetrics, or a
//! Prometheus remote-write receiver) by remote_write, and a central Prometheus
//! pulling through http_sd.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// A central store on a free loopback port, in its own folder; killed on drop.
struct Central {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    kind: &'static str,
    /// Basic auth the receiver requires, if any.
    auth: Option<(String, String)>,
}

impl Central {
    fn victoria() -> Central {
        let mut c = Central {
            child: None,
            port: free_port(),
            dir: scratch(),
            kind: "victoria-metrics",
            auth: None,
        };
        c.start();
        c
    }

    /// Prometheus with its remote-write receiver; with basic auth when `auth` is given.
    fn prometheus_receiver(auth: Option<(&str, &str)>) -> Central {
        let mut c = Central {
            child: None,
            port: free_port(),
            dir: scratch(),
            kind: "prometheus",
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        c.start();
        c
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.url())
    }

    fn start(&mut self) {
        let d = self.dir.path();
        let mut cmd = if self.kind == "victoria-metrics" {
            let mut c = Command::new("victoria-metrics");
            c.arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
                .arg(format!("-storageDataPath={}", d.join("data").display()))
                .arg("-retentionPeriod=1d")
                // Show the newest samples at once (the default hides the last 30 s).
                .arg("-search.latencyOffset=0s")
                .arg("-search.disableCache");
            c
        } else {
            fs_err::write(d.join("prometheus.yml"), "global: {}\n").unwrap();
            let mut c = Command::new("prometheus");
            c.arg(format!(
                "--config.file={}",
                d.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--web.enable-remote-write-receiver");
            if let Some((user, password)) = &self.auth {
                let hash = bcrypt::hash(password, 4).unwrap();
                fs_err::write(
                    d.join("web.yml"),
                    format!("basic_auth_users:\n  {user}: {hash}\n"),
                )
                .unwrap();
                c.arg(format!("--web.config.file={}", d.join("web.yml").display()));
            }
            c
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} (scripts/test installs it): {e}", self.kind)
            });
        self.child = Some(child);
        wait_for(
            &format!("{} to be ready", self.kind),
            Duration::from_secs(60),
            || {
                let path = if self.kind == "victoria-metrics" {
                    "/health"
                } else {
                    "/-/ready"
                };
                self.get(path)
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            },
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn get(&self, path_and_query: &str) -> Option<reqwest::blocking::Response> {
        let mut req = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!("{}{path_and_query}", self.url()));
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        req.send().ok()
    }

    /// An instant query (at `time` when given): the result vector.
    fn query_at(&self, promql: &str, time: Option<f64>) -> Vec<Value> {
        let mut q = format!("/api/v1/query?query={}", urlencode(promql));
        if let Some(t) = time {
            q.push_str(&format!("&time={t}"));
        }
        let Some(resp) = self.get(&q) else {
            return Vec::new();
        };
        let v: Value = resp.json().unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn query(&self, promql: &str) -> Vec<Value> {
        self.query_at(promql, None)
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        self.kill();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `(ray_host, ray_io_cluster)` pairs of a `count by (ray_host, ray_io_cluster)` answer.
fn hosts_and_clusters(result: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = result
        .iter()
        .map(|s| {
            (
                s["metric"]["ray_host"].as_str().unwrap_or("").to_string(),
                s["metric"]["ray_io_cluster"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A stack watching its own root, labelled as host `host`, with extra `up` flags.
fn host_stack(host: &str, extra: &[&str]) -> (Stack, PathBuf) {
    Stack::watching(
        &format!("ray_{host}"),
        &[&["--host-label", host], extra].concat(),
    )
}

/// A synthetic Ray node: an endpoint serving a node metric, listed by a fake head.
fn fake_cluster(root: &Path, session: &str) -> (MetricsEndpoint, FakeHead) {
    let ep = MetricsEndpoint::serve(&format!(
        "ray_node_cpu_utilization{{SessionName=\"{session}\"}} 5\n"
    ));
    let head = FakeHead::start(root, session, vec![ep.addr.clone()]);
    (ep, head)
}

const COUNT: &str = "count by (ray_host, ray_io_cluster) (ray_node_cpu_utilization)";

#[test]
fn two_hosts_with_real_ray_remote_write_to_victoria_metrics_with_host_and_slurm_labels() {
    let vm = Central::victoria();
    let write = vm.write_url();
    let (a, root_a) = host_stack("node-a", &["--remote-write", &write]);
    let (b, root_b) = host_stack("node-b", &["--remote-write", &write]);
    // node-a's cluster runs inside a Slurm job; node-b's does not.
    let slurm = [
        ("SLURM_JOB_ID".to_string(), "4242".to_string()),
        ("SLURM_JOB_NAME".to_string(), "train".to_string()),
    ];
    let mut ray_a = RayCluster::start_with(&ray_bin(), &root_a, false, &slurm);
    let mut ray_b = RayCluster::start(&root_b, false);
    ray_a.wait_discovery(Duration::from_secs(120));
    ray_b.wait_discovery(Duration::from_secs(120));
    let (name_a, name_b) = (
        format!("{}-ray_node-a", user()),
        format!("{}-ray_node-b", user()),
    );
    let started = Instant::now();
    let expected = vec![
        ("node-a".to_string(), name_a.clone()),
        ("node-b".to_string(), name_b.clone()),
    ];
    wait_for(
        "both hosts' clusters in the central store",
        Duration::from_secs(90),
        || (hosts_and_clusters(&vm.query(COUNT)) == expected).then_some(()),
    );
    eprintln!("both clusters central after {:?}", started.elapsed());
    let slurm_a = vm.query(&format!(
        "count by (slurm_job_id, slurm_job_name) (ray_node_cpu_utilization{{ray_io_cluster=\"{name_a}\"}})"
    ));
    assert_eq!(slurm_a.len(), 1, "{slurm_a:?}");
    assert_eq!(slurm_a[0]["metric"]["slurm_job_id"], "4242");
    assert_eq!(slurm_a[0]["metric"]["slurm_job_name"], "train");
    let slurm_b = vm.query(&format!(
        "count(ray_node_cpu_utilization{{ray_io_cluster=\"{name_b}\", slurm_job_id!=\"\"}})"
    ));
    assert!(slurm_b.is_empty(), "{slurm_b:?}");
    // Sizing: series one real Ray node sends.
    let per_node = vm.query(&format!("count({{ray_io_cluster=\"{name_b}\"}})"));
    eprintln!(
        "series per Ray 2.60 node (idle head): {:?}",
        per_node.first().map(|s| s["value"][1].clone())
    );
    let st = a.status();
    assert_eq!(st["remote_write"][0]["url"], write.as_str(), "{st:#}");
    assert!(st["remote_write"][0]["last_error"].is_null(), "{st:#}");
    drop((b, a));
}

#[test]
fn a_prometheus_remote_write_receiver_works_as_the_central_store_too() {
    let central = Central::prometheus_receiver(None);
    let write = central.write_url();
    let (_a, root_a) = host_stack("node-a", &["--remote-write", &write]);
    let (_b, root_b) = host_stack("node-b", &["--remote-write", &write]);
    let _ca = fake_cluster(&root_a, "session_2026-01-01_00-00-00_000001_1");
    let _cb = fake_cluster(&root_b, "session_2026-01-01_00-00-00_000001_2");
    let expected = vec![
        ("node-a".to_string(), format!("{}-ray_node-a", user())),
        ("node-b".to_string(), format!("{}-ray_node-b", user())),
    ];
    wait_for(
        "both hosts' clusters in the central Prometheus",
        Duration::from_secs(30),
        || (hosts_and_clusters(&central.query(COUNT)) == expected).then_some(()),
    );
}

/// `top`'s recorded series stay on the host (the remote write drops them), and `top`
/// against the central store, which has no rules, asks live: the same values.
#[test]
fn tops_recorded_series_stay_home_and_top_at_the_central_store_asks_live() {
    let vm = Central::victoria();
    let write = vm.write_url();
    let (stack, root) = host_stack("node-a", &["--remote-write", &write]);
    let _c = fake_cluster(&root, "session_2026-01-01_00-00-00_000001_1");
    let name = format!("{}-ray_node-a", user());
    let recorded = |promql: &str| {
        let out = stack.run(&["query", promql, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    };
    // Recorded here at time `t`…
    let t = wait_for(
        "top's recorded series locally",
        Duration::from_secs(60),
        || {
            recorded("timestamp(raywatch_top:cpu)")
                .first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        },
    );
    // …and samples scraped after `t` arrived centrally: the recorded ones would have too.
    wait_for(
        "samples newer than the recorded series centrally",
        Duration::from_secs(60),
        || {
            vm.query("max(timestamp(ray_node_cpu_utilization))")
                .first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .filter(|&c| c > t + 2.0)
        },
    );
    let leaked = vm.query(r#"count({__name__=~"raywatch_top:.*"})"#);
    assert!(
        leaked.is_empty(),
        "recorded series reached the central store: {leaked:?}"
    );
    // top at the central store: live values, the same CPU, the host named.
    let out = stack.run(&["top", "--once", "--json", "--prometheus", &vm.url()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snap["values"], "live", "{snap:#}");
    let c = snap["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name.as_str() && c["host"] == "node-a")
        .unwrap_or_else(|| panic!("{snap:#}"));
    assert_eq!(c["cpu_percent"], 5.0, "{c:#}");
    let here = stack.run(&["top", "--once", "--json"]);
    let here: Value = serde_json::from_slice(&here.stdout).unwrap();
    assert_eq!(here["values"], "recorded", "{here:#}");
}

#[test]
fn agent_mode_keeps_no_local_data_and_query_asks_the_central_store() {
    let vm = Central::victoria();
    let write = vm.write_url();
    let (stack, root) = host_stack("node-a", &["--agent", "--remote-write", &write]);
    assert_eq!(stack.status()["prometheus"]["mode"], "agent");
    let _c = fake_cluster(&root, "session_2026-01-01_00-00-00_000001_1");
    wait_for(
        "the agent's samples centrally",
        Duration::from_secs(30),
        || (hosts_and_clusters(&vm.query(COUNT)).len() == 1).then_some(()),
    );
    // The local Prometheus has no TSDB to query.
    let local = stack.prom_get("/api/v1/query?query=up");
    assert!(!local.status().is_success(), "an agent answered a query");
    // Without --query-url, `query` says what to do; with it, the central store answers.
    let out = stack.run(&["query", "ray_node_cpu_utilization"]);
    assert!(!out.status.success());
    // An agent keeps no data: ask with --query-url.
    crate::snapshots::assert_transcript(
        "query-on-an-agent",
        &out,
        crate::snapshots::stack_filters(&stack),
    );
    let up = stack.run(&["up", "--query-url", &vm.url()]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let out = stack.run(&["query", "ray_node_cpu_utilization"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The values are live metrics: only the labels are checked.
    assert!(
        text.contains("ray_host") && text.contains("node-a"),
        "{text}"
    );
}

#[test]
fn samples_taken_while_the_central_store_is_down_arrive_when_it_is_back() {
    let mut vm = Central::victoria();
    let write = vm.write_url();
    let (_stack, root) = host_stack("node-a", &["--remote-write", &write]);
    let _c = fake_cluster(&root, "session_2026-01-01_00-00-00_000001_1");
    wait_for("samples centrally", Duration::from_secs(30), || {
        (hosts_and_clusters(&vm.query(COUNT)).len() == 1).then_some(())
    });
    let now = || raywatch::clock::unix_now();
    vm.kill();
    let down_at = now();
    std::thread::sleep(Duration::from_secs(60));
    let up_at = now();
    vm.start();
    // Scraped every 2 s: the outage window holds ~30 samples of the node metric.
    let window = (up_at - down_at).floor();
    let expected = window / 2.0;
    let got = wait_for(
        "the outage's samples to arrive",
        Duration::from_secs(60),
        || {
            let r = vm.query_at(
                &format!(
                    "count_over_time(ray_node_cpu_utilization{{ray_host=\"node-a\"}}[{window}s])"
                ),
                Some(up_at),
            );
            let n: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
            (n >= 0.9 * expected).then_some(n)
        },
    );
    eprintln!("outage of {window} s: {got} of ~{expected} samples arrived");
}

#[test]
fn wrong_remote_write_credentials_are_reported_and_no_secret_shows() {
    let central = Central::prometheus_receiver(Some(("central", "right-password")));
    let dir = scratch();
    let secret = "wrong-password-8c1f";
    let file = dir.path().join("basic");
    fs_err::write(&file, format!("central:{secret}\n")).unwrap();
    fs_err::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (stack, root) = host_stack(
        "node-a",
        &[
            "--remote-write",
            &central.write_url(),
            "--remote-write-basic-auth-file",
            file.to_str().unwrap(),
        ],
    );
    let _c = fake_cluster(&root, "session_2026-01-01_00-00-00_000001_1");
    let st = wait_for(
        "status to report the failing remote write",
        Duration::from_secs(60),
        || {
            let st = stack.status();
            st["remote_write"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("401"))
                .then_some(st)
        },
    );
    assert_eq!(st["remote_write"][0]["url"], central.write_url().as_str());
    let human = stack.run(&["status"]);
    let json = stack.run(&["status", "--json"]);
    let mut everything = String::from_utf8_lossy(&human.stdout).into_owned();
    everything += &String::from_utf8_lossy(&json.stdout);
    for log in [
        "logs/daemon.log",
        "logs/prometheus.log",
        "logs/daemon.stderr",
        "config.json",
        "prometheus/prometheus.yml",
    ] {
        everything += &fs_err::read_to_string(stack.home.join(log)).unwrap_or_default();
    }
    for pid in stack.pids() {
        everything += &String::from_utf8_lossy(
            &fs_err::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        );
    }
    assert!(
        !everything.contains(secret),
        "the remote-write password shows somewhere"
    );
    assert!(String::from_utf8_lossy(&human.stdout).contains("401"));
}

#[test]
fn a_central_prometheus_discovers_both_hosts_by_http_sd() {
    let (pa, pb) = (free_port(), free_port());
    let sa = format!("127.0.0.1:{pa}");
    let sb = format!("127.0.0.1:{pb}");
    let (a, root_a) = host_stack("node-a", &["--sd-listen", &sa, "--liveness", "6s"]);
    let (b, root_b) = host_stack("node-b", &["--sd-listen", &sb]);
    let head_a = fake_cluster(&root_a, "session_2026-01-01_00-00-00_000001_1");
    let _head_b = fake_cluster(&root_b, "session_2026-01-01_00-00-00_000001_2");

    // The endpoint: 401 without or with a wrong token, and nothing but GET /sd.
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let token = fs_err::read_to_string(a.home.join("secrets/sd-token")).unwrap();
    let token = token.trim();
    let no = client.get(format!("http://{sa}/sd")).send().unwrap();
    assert_eq!(no.status().as_u16(), 401);
    assert_eq!(no.text().unwrap(), "", "a refused request learns nothing");
    let wrong = client
        .get(format!("http://{sa}/sd"))
        .bearer_auth("x".repeat(token.len()))
        .send()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    for (method, path) in [
        ("POST", "/sd"),
        ("GET", "/"),
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
    ] {
        let r = client
            .request(method.parse().unwrap(), format!("http://{sa}{path}"))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert!(
            r.status().is_client_error(),
            "{method} {path}: {}",
            r.status()
        );
        assert!(!r.text().unwrap().contains("ray_io_cluster"));
    }
    let groups: Value = wait_for("the host's groups", Duration::from_secs(20), || {
        let v: Value = client
            .get(format!("http://{sa}/sd"))
            .bearer_auth(token)
            .send()
            .ok()?
            .json()
            .ok()?;
        (!v.as_array()?.is_empty()).then_some(v)
    });
    assert_eq!(groups[0]["labels"]["ray_host"], "node-a");

    // A central Prometheus configured from `raywatch fleet-config`.
    let central = scratch();
    let template = central.path().join("sd-{host}.token");
    let out = a.run(&[
        "fleet-config",
        "--host",
        &sa,
        "--host",
        &sb,
        "--token-file",
        template.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8_lossy(&out.stdout)
        .replace("refresh_interval: 15s", "refresh_interval: 5s");
    fs_err::write(
        central.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 2s\n{config}"),
    )
    .unwrap();
    // Both stacks run on 127.0.0.1: the {host} of both is 127.0.0.1, so one
    // token file would serve both; give each host its own by port instead.
    let yml = fs_err::read_to_string(central.path().join("prometheus.yml")).unwrap();
    let tokens = [(pa, &a), (pb, &b)];
    let mut yml_out = String::new();
    let mut next: Option<u16> = None;
    for line in yml.lines() {
        if let Some((p, _)) = tokens
            .iter()
            .find(|(p, _)| line.contains(&format!(":{p}/sd")))
        {
            next = Some(*p);
        }
        if line.trim_start().starts_with("credentials_file:")
            && let Some(p) = next
        {
            let f = central.path().join(format!("sd-{p}.token"));
            let stack = tokens.iter().find(|(q, _)| *q == p).unwrap().1;
            fs_err::copy(stack.home.join("secrets/sd-token"), &f).unwrap();
            yml_out += &format!("      credentials_file: {}\n", f.display());
            continue;
        }
        yml_out += line;
        yml_out.push('\n');
    }
    fs_err::write(central.path().join("prometheus.yml"), yml_out).unwrap();
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            central.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            central.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let targets = || -> Vec<(String, String)> {
        let v: Value = client
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/targets?state=active"
            ))
            .send()
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or_default();
        let mut out: Vec<(String, String)> = v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["ray_host"].as_str().unwrap_or("").to_string(),
                    t["labels"]["ray_io_cluster"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let expected = vec![
        ("node-a".to_string(), format!("{}-ray_node-a", user())),
        ("node-b".to_string(), format!("{}-ray_node-b", user())),
    ];
    wait_for(
        "both hosts' clusters in the central Prometheus",
        Duration::from_secs(5 + 10 + 10),
        || (targets() == expected).then_some(()),
    );
    // node-a's cluster dies (its head stops): it leaves the central Prometheus.
    drop(head_a);
    wait_for(
        "the dead cluster to leave centrally",
        Duration::from_secs(30 + 5),
        || (targets() == expected[1..]).then_some(()),
    );
    let _ = prom.kill();
    let _ = prom.wait();
}

#[test]
fn agent_mode_names_the_prometheus_version_it_needs() {
    let dir = scratch();
    // A "Prometheus" older than agent mode (2.28, what `up --yes` downloaded before 3.x).
    let old = dir.path().join("prometheus");
    fs_err::write(
        &old,
        "#!/bin/sh\necho 'prometheus, version 2.28.1 (branch: HEAD, revision: b0944590)'\n",
    )
    .unwrap();
    fs_err::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(raywatch_bin())
        .env("RAYWATCH_HOME", dir.path().join("home"))
        .args([
            "up",
            "--agent",
            "--remote-write",
            "http://127.0.0.1:9/api/v1/write",
        ])
        .arg("--prometheus-bin")
        .arg(&old)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Agent mode needs Prometheus 2.32; this one is 2.28 (and a hint follows).
    crate::snapshots::assert_transcript(
        "agent-mode-with-prometheus-2-28",
        &out,
        crate::snapshots::scratch_filters(dir.path()),
    );
}
