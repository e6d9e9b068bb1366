//! The fleet over a network: hosts A and B (network namespaces on a bridge of
//! the test's own) each run raywatch and a real Ray head bound to the host's
//! own address; host C runs the central store (VictoriaMetrics) or a central
//! Prometheus pulling through http_sd. Push, pull (plain and TLS), `top` at the
//! center, a link outage, and the refusals, across real addresses.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::host::{Host, Lan};
use crate::security::other_user;
use crate::support::*;

/// A process the test started inside a host (its own process group); killed on drop.
struct Proc(Child);

impl Proc {
    /// Spawns `cmd` (from [`Host::cmd`]) with its output to `log`.
    fn spawn(mut cmd: Command, log: &Path) -> Proc {
        let out = fs_err::File::create(log).unwrap().into_file();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// What an HTTP request from inside a host got: the status and body, or why none.
fn http(
    from: &Host,
    url: &str,
    bearer: Option<&str>,
    ca: Option<&Path>,
) -> Result<(u16, String), String> {
    from.enter(|| {
        let mut client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10));
        if let Some(ca) = ca {
            client = client.add_root_certificate(
                reqwest::Certificate::from_pem(&fs_err::read(ca).unwrap()).unwrap(),
            );
        }
        let client = client.build().unwrap();
        let mut req = client.get(url);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().unwrap_or_default()))
    })
}

/// The result vector of an instant query (at `time` when given) against the
/// Prometheus API at `base`, asked from inside `from`.
fn query_at(from: &Host, base: &str, promql: &str, time: Option<f64>) -> Vec<Value> {
    let mut url = format!("{base}/api/v1/query?query={}", urlencode(promql));
    if let Some(t) = time {
        url.push_str(&format!("&time={t}"));
    }
    let Ok((200, body)) = http(from, &url, None, None) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
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

/// The first value of a query's answer, as a number.
fn first_value(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// `(ray_host, ray_io_cluster)` pairs of a `count by (ray_host, ray_io_cluster)` answer.
fn hosts_and_clusters(result: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = result
        .iter()
        .map(|s| {
            let l = |k: &str| s["metric"][k].as_str().unwrap_or("").to_string();
            (l("ray_host"), l("ray_io_cluster"))
        })
        .collect();
    out.sort();
    out
}

/// VictoriaMetrics on host `c`'s address, in a folder of its own.
struct Victoria {
    proc: Option<Proc>,
    host: Host,
    addr: String,
    url: String,
    dir: tempfile::TempDir,
}

impl Victoria {
    fn start(c: &Host) -> Victoria {
        let addr = format!("{}:{}", c.addr, free_port());
        let mut vm = Victoria {
            proc: None,
            host: c.clone(),
            url: format!("http://{addr}"),
            addr,
            dir: scratch(),
        };
        vm.run();
        vm
    }

    /// Starts it (again, on the same address and data) and waits until it is ready.
    fn run(&mut self) {
        let mut cmd = self.host.cmd("victoria-metrics");
        cmd.arg(format!("-httpListenAddr={}", self.addr))
            .arg(format!(
                "-storageDataPath={}",
                self.dir.path().join("data").display()
            ))
            .arg("-retentionPeriod=1d")
            // Show the newest samples at once (the default hides the last 30 s).
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache");
        self.proc = Some(Proc::spawn(cmd, &self.dir.path().join("vm.log")));
        let health = format!("{}/health", self.url);
        wait_for(
            "VictoriaMetrics to be ready on C",
            Duration::from_secs(60),
            || matches!(http(&self.host, &health, None, None), Ok((200, _))).then_some(()),
        );
    }

    /// Stops it as a restart does (SIGTERM: it flushes what it holds) and waits for its exit.
    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = p.0.wait();
        }
    }

    fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.url)
    }
}

/// One host of the fleet: raywatch and a real Ray head on the host's address.
/// Declared in drop order: the stack goes down first, then the cluster.
struct Node {
    stack: Stack,
    ray: RayCluster,
    host: Host,
    /// The cluster's name (`<user>-ray_<host>`).
    cluster: String,
    /// The head's node metrics endpoint, `<host address>:<port>`.
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Node {
    /// `raywatch up --host-label <name> <extra>` inside `host`, watching a temp
    /// dir of its own, and a Ray head started inside `host` on its address.
    fn start(host: Host, extra: &[&str]) -> Node {
        let dir = scratch();
        let root = dir.path().join(format!("ray_{}", host.name));
        fs_err::create_dir(&root).unwrap();
        let bin = host.wrapper(dir.path(), "raywatch", &raywatch_bin());
        let stack = Stack::up_with(
            &bin,
            &dir.path().join("home"),
            &[
                &[
                    "--no-default-watch",
                    "--watch",
                    root.to_str().unwrap(),
                    "--host-label",
                    &host.name,
                ],
                extra,
            ]
            .concat(),
        );
        // Ray on the host's own address: `ray` with --node-ip-address, run inside the host.
        let bound = dir.path().join("ray-bound");
        fs_err::write(
            &bound,
            format!(
                "#!/bin/sh\nexec '{}' \"$@\" --node-ip-address={} >'{}' 2>&1\n",
                ray_bin().display(),
                host.addr,
                dir.path().join("ray-start.log").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(&bound, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ray_in_host = host.wrapper(dir.path(), "ray", &bound);
        let ray = RayCluster::start_with(&ray_in_host, &root, false, &[]);
        let endpoint = format!("{}:{}", host.addr, ray.metrics_port);
        Node {
            stack,
            ray,
            cluster: format!("{}-ray_{}", user(), host.name),
            endpoint,
            host,
            _dir: dir,
        }
    }

    /// Waits for Ray's discovery file and for the head's metrics endpoint to
    /// serve on the host's address (asked from inside the host).
    fn wait_ready(&mut self) -> Instant {
        let (file, _) = self.ray.wait_discovery(Duration::from_secs(180));
        // Ray lists the head's node endpoint once its metrics agent is up.
        self.ray.wait(
            "Ray's discovery file to list the head on the host's address",
            Duration::from_secs(120),
            || {
                fs_err::read_to_string(&file)
                    .ok()
                    .filter(|l| l.contains(&self.endpoint))
            },
        );
        let url = format!("http://{}/metrics", self.endpoint);
        self.ray.wait(
            "the head's metrics endpoint on the host's address",
            Duration::from_secs(120),
            || matches!(http(&self.host, &url, None, None), Ok((200, _))).then_some(()),
        );
        Instant::now()
    }

    /// The targets Ray's discovery file lists, sorted.
    fn listed_targets(&self) -> Vec<String> {
        let file = discovery_file(&self.ray.temp_dir).expect("a discovery file");
        let v: Value = serde_json::from_slice(&fs_err::read(file).unwrap()).unwrap();
        let mut t: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        t.sort();
        t
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- host {} ({})\n{}{}",
            self.host.name,
            self.host.addr,
            self.stack.diagnostics(),
            ray_diagnostics(&self.ray.temp_dir)
        )
    }
}

impl Node {
    /// The host's own raywatch sees its cluster as a local one on the host's
    /// address: live, every target its own (none remote, none withheld), every
    /// target up, its Dashboard found.
    fn assert_home_view(&self) {
        let cluster = wait_explained(
            &format!(
                "{}'s raywatch to show its cluster live with every target up",
                self.host.name
            ),
            Duration::from_secs(60),
            || {
                let st = self.stack.status();
                let c = st["clusters"]
                    .as_array()?
                    .iter()
                    .find(|c| c["name"] == self.cluster.as_str())?
                    .clone();
                let targets = c["targets"].as_array()?;
                let up = !targets.is_empty() && targets.iter().all(|t| t["health"] == "up");
                (c["state"] == "live" && up).then_some(c)
            },
            || self.diagnostics(),
        );
        let all = |k: &str| cluster[k].as_array().cloned().unwrap_or_default();
        assert!(all("remote_targets").is_empty(), "{cluster:#}");
        assert!(all("withheld").is_empty(), "{cluster:#}");
        assert!(
            cluster["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["address"] == self.endpoint.as_str()),
            "{cluster:#}"
        );
        assert!(cluster["dead_reason"].is_null(), "{cluster:#}");
        assert_ne!(cluster["dashboard"]["job_api"], "unknown", "{cluster:#}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed test shows what `ray start` said (RayCluster discards it).
        if std::thread::panicking() {
            let log =
                fs_err::read_to_string(self._dir.path().join("ray-start.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- ray start on host {} (last lines)\n{}",
                self.host.name,
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}

/// The discovery file of the newest session under `temp_dir`.
fn discovery_file(temp_dir: &Path) -> Option<PathBuf> {
    fs_err::read_dir(temp_dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("session_") && n != "session_latest"
        })
        .map(|e| e.path().join("prom_metrics_service_discovery.json"))
        .find(|f| f.is_file())
}

/// Checks that nothing the test started is left before the network goes: no
/// process mentions any of `dirs`, and no process runs in any of `hosts`.
fn assert_nothing_runs(dirs: &[&Path], hosts: &[Host]) {
    for d in dirs {
        let left = processes_mentioning(&d.to_string_lossy());
        assert!(
            left.is_empty(),
            "processes of {} left: {left:?}",
            d.display()
        );
    }
    for h in hosts {
        wait_for(
            &format!("no process left in host {}", h.name),
            Duration::from_secs(10),
            || h.pids().is_empty().then_some(()),
        );
    }
}

const COUNT: &str = "count by (ray_host, ray_io_cluster) (ray_node_cpu_utilization)";

/// Push: A and B remote-write to VictoriaMetrics on C across the bridge; both
/// clusters are there by `ray_host` and `ray_io_cluster`, scraped on the
/// hosts' own addresses. Then A's cable is pulled for 60 s: the scrapes A's
/// Prometheus took meanwhile reach C once it is back (>= 90 %). Then the
/// central store restarts: nothing is lost beyond its window.
#[test]
fn push_from_two_hosts_to_victoria_metrics_on_a_third_survives_a_60s_link_outage_and_its_restart() {
    let lan = Lan::new();
    let (ha, hb, hc) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let mut vm = Victoria::start(&hc);
    let write = vm.write_url();
    let hosts = [ha.clone(), hb.clone(), hc.clone()];
    let mut a = Node::start(ha, &["--remote-write", &write]);
    let mut b = Node::start(hb, &["--remote-write", &write]);
    a.wait_ready();
    let ready = b.wait_ready();
    let expected = vec![
        ("a".to_string(), a.cluster.clone()),
        ("b".to_string(), b.cluster.clone()),
    ];
    wait_explained(
        "both hosts' clusters in VictoriaMetrics on C",
        Duration::from_secs(120),
        || (hosts_and_clusters(&query_at(&hc, &vm.url, COUNT, None)) == expected).then_some(()),
        || format!("{}{}", a.diagnostics(), b.diagnostics()),
    );
    eprintln!(
        "both hosts' clusters in VictoriaMetrics {:?} after both heads served",
        ready.elapsed()
    );
    // Scraped on each host's own address, by the host's own Prometheus.
    for n in [&a, &b] {
        let q = format!(
            "count(up{{ray_host=\"{}\", ray_io_cluster=\"{}\", instance=\"{}\"}} == 1)",
            n.host.name, n.cluster, n.endpoint
        );
        wait_for(
            &format!("{}'s head endpoint up in VictoriaMetrics", n.host.name),
            Duration::from_secs(30),
            || (first_value(&query_at(&hc, &vm.url, &q, None)) == Some(1.0)).then_some(()),
        );
    }
    let st = a.stack.status();
    assert_eq!(st["remote_write"][0]["url"], write.as_str(), "{st:#}");
    a.assert_home_view();
    b.assert_home_view();

    // A's cable pulled for 60 s.
    let now = raywatch::clock::unix_now;
    let series = format!(
        "up{{ray_host=\"a\", ray_io_cluster=\"{}\", instance=\"{}\"}}",
        a.cluster, a.endpoint
    );
    lan.set_link(&a.host, false);
    let down_at = now();
    // C no longer reaches A (and the other way round).
    let c_to_a: SocketAddr = a.endpoint.parse().unwrap();
    assert!(
        hc.enter(|| TcpStream::connect_timeout(&c_to_a, Duration::from_secs(3)))
            .is_err(),
        "C still reaches A with A's link down"
    );
    std::thread::sleep(
        Duration::from_secs(60).saturating_sub(Duration::from_secs_f64(now() - down_at)),
    );
    let newest_during = first_value(&query_at(
        &hc,
        &vm.url,
        &format!("max(timestamp({series}))"),
        None,
    ))
    .unwrap_or(0.0);
    lan.set_link(&a.host, true);
    let up_at = now();
    assert!(
        newest_during < down_at + 5.0,
        "samples from A arrived during its outage: newest {newest_during}, down at {down_at}"
    );
    let window = (up_at - down_at).floor();
    // What A's own Prometheus scraped during the outage.
    let taken = wait_for(
        "A's Prometheus to answer after the outage",
        Duration::from_secs(30),
        || {
            let r = a.stack.query(&format!(
                "count_over_time(up{{ray_io_cluster=\"{}\", instance=\"{}\"}}[{window}s] @ {up_at})",
                a.cluster, a.endpoint
            ));
            first_value(&r)
        },
    );
    assert!(
        taken >= 0.8 * window / 2.0,
        "A's Prometheus scraped only {taken} times in {window} s at a 2 s interval"
    );
    let started = Instant::now();
    let arrived = wait_explained(
        "the outage's samples to reach C",
        Duration::from_secs(120),
        || {
            let n = first_value(&query_at(
                &hc,
                &vm.url,
                &format!("count_over_time({series}[{window}s])"),
                Some(up_at),
            ))?;
            (n >= 0.9 * taken).then_some(n)
        },
        || a.diagnostics(),
    );
    eprintln!(
        "outage of {window} s: {arrived} of the {taken} scrapes A took reached VictoriaMetrics, \
         {:?} after the link came back",
        started.elapsed()
    );
    // A's cluster stayed live through the outage (its head is on A's address).
    a.assert_home_view();
    // B never noticed: its samples kept arriving throughout.
    let b_during = first_value(&query_at(
        &hc,
        &vm.url,
        &format!(
            "count_over_time(up{{ray_host=\"b\", instance=\"{}\"}}[{window}s])",
            b.endpoint
        ),
        Some(up_at),
    ))
    .unwrap_or(0.0);
    assert!(b_during >= 0.8 * window / 2.0, "B's samples: {b_during}");

    // The central store restarts, down for 20 s: what both hosts
    // scraped before, during and after its restart window is all there.
    let before = now();
    vm.stop();
    let killed_at = now();
    std::thread::sleep(Duration::from_secs(20));
    vm.run();
    let restarted_at = now();
    // The samples of the 30 s before the crash until 10 s after the restart.
    let span = (restarted_at + 10.0 - (before - 30.0)).floor();
    wait_for(
        "10 s to pass after the restart",
        Duration::from_secs(20),
        || (now() > restarted_at + 10.0).then_some(()),
    );
    for n in [&a, &b] {
        let taken = first_value(&n.stack.query(&format!(
            "count_over_time(up{{ray_io_cluster=\"{}\", instance=\"{}\"}}[{span}s] @ {})",
            n.cluster,
            n.endpoint,
            restarted_at + 10.0
        )))
        .unwrap_or(0.0);
        let series = format!(
            "up{{ray_host=\"{}\", ray_io_cluster=\"{}\", instance=\"{}\"}}",
            n.host.name, n.cluster, n.endpoint
        );
        let last = std::cell::RefCell::new(0.0);
        let arrived = wait_explained(
            &format!(
                "{}'s samples around the central store's restart",
                n.host.name
            ),
            Duration::from_secs(120),
            || {
                let got = first_value(&query_at(
                    &hc,
                    &vm.url,
                    &format!("count_over_time({series}[{span}s])"),
                    Some(restarted_at + 10.0),
                ))?;
                *last.borrow_mut() = got;
                (got >= 0.9 * taken && taken > 0.0).then_some(got)
            },
            || {
                format!(
                    "{} of {taken} scrapes arrived\n{}",
                    last.borrow(),
                    n.diagnostics()
                )
            },
        );
        eprintln!(
            "central store down {:.0} s: {arrived} of the {taken} scrapes {} took in {span} s around it arrived",
            restarted_at - killed_at,
            n.host.name
        );
    }

    let dirs: Vec<PathBuf> = [&a, &b]
        .iter()
        .flat_map(|n| [n._dir.path().to_path_buf(), n.ray.temp_dir.clone()])
        .collect();
    drop((a, b, vm));
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    assert_nothing_runs(&dirs, &hosts);
    lan.close();
}

/// A self-signed certificate (not a CA) for `addr`; `unmet` without openssl.
fn certificate_for(addr: Ipv4Addr, dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={addr}")])
        .args(["-addext", &format!("subjectAltName=IP:{addr}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output();
    if !made.is_ok_and(|o| o.status.success()) {
        unmet("openssl, to make a test certificate");
    }
    (cert, key)
}

/// `raywatch fleet-config --host <sd> [--tls]`, parsed.
fn fleet_config(sd: &str, token_template: &Path, tls: bool) -> serde_yaml_ng::Value {
    let mut args = vec![
        "fleet-config",
        "--host",
        sd,
        "--token-file",
        token_template.to_str().unwrap(),
    ];
    if tls {
        args.push("--tls");
    }
    let out = Command::new(raywatch_bin())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml_ng::from_slice(&out.stdout).unwrap()
}

/// `(ray_host, ray_io_cluster, instance, health)` of a Prometheus' active targets.
fn central_targets(c: &Host, base: &str) -> Vec<(String, String, String, String)> {
    let Ok((200, body)) = http(
        c,
        &format!("{base}/api/v1/targets?state=active"),
        None,
        None,
    ) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let mut out: Vec<_> = v["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let l = |k: &str| t["labels"][k].as_str().unwrap_or("").to_string();
            (
                l("ray_host"),
                l("ray_io_cluster"),
                l("instance"),
                t["health"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Pull: A serves http_sd on its address in plain HTTP, B over TLS; a central
/// Prometheus on C, configured from `raywatch fleet-config`, discovers both and
/// scrapes every node of both clusters directly across the bridge; `raywatch
/// top --prometheus` run on C shows both clusters with their hosts. A's head
/// dies: A's raywatch finds its GCS (on A's address) gone and its targets leave C.
#[test]
fn pull_over_http_sd_plain_and_tls_by_a_central_prometheus_and_top_at_the_center() {
    let lan = Lan::new();
    let (ha, hb, hc) = (lan.host("a"), lan.host("b"), lan.host("c"));
    let certs = scratch();
    let (cert, key) = certificate_for(hb.addr, certs.path());
    let sa = format!("{}:{}", ha.addr, free_port());
    let sb = format!("{}:{}", hb.addr, free_port());
    let hosts = [ha.clone(), hb.clone(), hc.clone()];
    let mut a = Node::start(ha, &["--sd-listen", &sa]);
    let mut b = Node::start(
        hb,
        &[
            "--sd-listen",
            &sb,
            "--sd-tls-cert",
            cert.to_str().unwrap(),
            "--sd-tls-key",
            key.to_str().unwrap(),
        ],
    );
    a.wait_ready();
    b.wait_ready();

    // The central Prometheus' config: fleet-config's, A plain and B over TLS.
    let central = scratch();
    let template = central.path().join("sd-{host}.token");
    let mut config = fleet_config(&sa, &template, false);
    let tls = fleet_config(&sb, &template, true);
    let mut sd_b = tls["scrape_configs"][0]["http_sd_configs"][0].clone();
    assert_eq!(
        sd_b["url"].as_str(),
        Some(format!("https://{sb}/sd").as_str())
    );
    // fleet-config names a fixed CA path; this test's CA is B's own certificate.
    sd_b["tls_config"]["ca_file"] = cert.to_str().unwrap().into();
    let sds = config["scrape_configs"][0]["http_sd_configs"]
        .as_sequence_mut()
        .unwrap();
    assert_eq!(
        sds[0]["url"].as_str(),
        Some(format!("http://{sa}/sd").as_str())
    );
    sds.push(sd_b);
    for (sd, node) in sds.iter_mut().zip([&a, &b]) {
        let file = central.path().join(format!("sd-{}.token", node.host.addr));
        assert_eq!(
            sd["authorization"]["credentials_file"].as_str(),
            Some(file.to_str().unwrap()),
            "fleet-config's token file for {}",
            node.host.addr
        );
        fs_err::copy(node.stack.home.join("secrets/sd-token"), &file).unwrap();
        sd["refresh_interval"] = "5s".into();
    }
    config["global"] = serde_yaml_ng::from_str("scrape_interval: 2s").unwrap();
    let yml = central.path().join("prometheus.yml");
    fs_err::write(&yml, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let prom_url = format!("http://{}:{}", hc.addr, free_port());
    let mut cmd = hc.cmd("prometheus");
    cmd.arg(format!("--config.file={}", yml.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            central.path().join("data").display()
        ))
        .arg(format!(
            "--web.listen-address={}",
            prom_url.trim_start_matches("http://")
        ));
    let prom = Proc::spawn(cmd, &central.path().join("prometheus.log"));
    let started = Instant::now();
    let prom_log =
        || fs_err::read_to_string(central.path().join("prometheus.log")).unwrap_or_default();

    // Every target of both clusters, labelled with its host, scraped from C.
    let expected: Vec<(String, String, String, String)> = {
        let mut e: Vec<_> = [&a, &b]
            .iter()
            .flat_map(|n| {
                n.listed_targets()
                    .into_iter()
                    .map(|t| (n.host.name.clone(), n.cluster.clone(), t, "up".to_string()))
            })
            .collect();
        e.sort();
        e
    };
    assert!(
        expected.iter().any(|t| t.2 == a.endpoint) && expected.iter().any(|t| t.2 == b.endpoint)
    );
    wait_explained(
        "C's Prometheus to scrape every node of both clusters, up",
        Duration::from_secs(90),
        || (central_targets(&hc, &prom_url) == expected).then_some(()),
        || {
            format!(
                "expected {expected:#?}\ngot {:#?}\n--- central prometheus.log\n{}\n{}{}",
                central_targets(&hc, &prom_url),
                prom_log(),
                a.diagnostics(),
                b.diagnostics()
            )
        },
    );
    eprintln!(
        "every target of both hosts up at C {:?} after its Prometheus started",
        started.elapsed()
    );
    a.assert_home_view();
    b.assert_home_view();
    let both = vec![
        ("a".to_string(), a.cluster.clone()),
        ("b".to_string(), b.cluster.clone()),
    ];
    wait_for(
        "both clusters' node series at C",
        Duration::from_secs(30),
        || (hosts_and_clusters(&query_at(&hc, &prom_url, COUNT, None)) == both).then_some(()),
    );

    // `top` on C against the central Prometheus: both clusters, with their hosts.
    let top_home = central.path().join("top-home");
    let last = std::cell::RefCell::new(String::new());
    let snap = wait_explained(
        "top on C to show both hosts' clusters, each 1 node of 1 up",
        Duration::from_secs(60),
        || {
            let out = hc
                .cmd(raywatch_bin())
                .env("RAYWATCH_HOME", &top_home)
                .args(["top", "--once", "--json", "--prometheus", &prom_url])
                .output()
                .unwrap();
            *last.borrow_mut() = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let snap: Value = serde_json::from_slice(&out.stdout).ok()?;
            let clusters = snap["clusters"].as_array()?;
            let mut shown: Vec<(String, String)> = clusters
                .iter()
                .map(|c| {
                    (
                        c["host"].as_str().unwrap_or("").to_string(),
                        c["name"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            shown.sort();
            let nodes_ok = clusters
                .iter()
                .all(|c| c["nodes_total"] == 1 && c["nodes_up"] == 1);
            (shown == both && nodes_ok).then_some(snap)
        },
        || format!("last top output:\n{}", last.borrow()),
    );
    assert_eq!(snap["values"], "live", "{snap:#}");

    // A's head dies (its head on A's address, not loopback): A's raywatch ends
    // the cluster and its targets leave C; B's stay.
    a.ray.kill9();
    let killed = Instant::now();
    let b_only: Vec<_> = expected.iter().filter(|t| t.0 == "b").cloned().collect();
    wait_explained(
        "A's dead cluster to leave the central Prometheus",
        Duration::from_secs(60),
        || (central_targets(&hc, &prom_url) == b_only).then_some(()),
        || {
            format!(
                "{:#?}\n{}",
                central_targets(&hc, &prom_url),
                a.diagnostics()
            )
        },
    );
    let gone_after = killed.elapsed();
    let st = a.stack.status();
    let dead = st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == a.cluster.as_str())
        .unwrap_or_else(|| panic!("{st:#}"));
    assert_eq!(dead["state"], "dead", "{dead:#}");
    eprintln!(
        "A's head killed: its targets left C after {gone_after:?} ({})",
        dead["dead_reason"]
    );

    let dirs: Vec<PathBuf> = [&a, &b]
        .iter()
        .map(|n| n._dir.path().to_path_buf())
        .chain([central.path().to_path_buf()])
        .collect();
    drop((prom, a, b));
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    assert_nothing_runs(&dirs, &hosts);
    lan.close();
}

/// `curl` run inside `host` as the suite's second user: the HTTP status it got
/// (`000` when the connection gave no answer).
fn curl_as_other(other: (u32, u32), host: &Host, url: &str) -> String {
    let out = host
        .cmd("setpriv")
        .args([
            "--reuid",
            &other.0.to_string(),
            "--regid",
            &other.1.to_string(),
            "--clear-groups",
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            url,
        ])
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Across real addresses, the http_sd listener answers only its token and the
/// gateway only its owner on its host: B (another host) gets 401 from A's sd
/// port without the token and nothing at all from A's gateway or Prometheus
/// ports; another user on A gets 401 and a refused gateway connection.
#[test]
fn sd_and_the_gateway_refuse_another_host_and_another_user() {
    let other = other_user();
    let lan = Lan::new();
    let (ha, hb) = (lan.host("a"), lan.host("b"));
    let dir = scratch();
    let root = dir.path().join("ray_a");
    fs_err::create_dir(&root).unwrap();
    let sd = format!("{}:{}", ha.addr, free_port());
    let bin = ha.wrapper(dir.path(), "raywatch", &raywatch_bin());
    let stack = Stack::up_with(
        &bin,
        &dir.path().join("home"),
        &[
            "--no-default-watch",
            "--watch",
            root.to_str().unwrap(),
            "--host-label",
            "a",
            "--sd-listen",
            &sd,
        ],
    );
    let st = stack.status();
    let gateway = st["gateway"]["url"].as_str().unwrap().to_string();
    let gateway_port = st["gateway"]["port"].as_u64().unwrap() as u16;
    let prometheus_port = stack.port();
    let token = fs_err::read_to_string(stack.home.join("secrets/sd-token")).unwrap();
    let token = token.trim();
    let sd_url = format!("http://{sd}/sd");
    let query = format!("{gateway}/api/v1/query?query=up");

    // The owner on A: the gateway answers, and so does /sd with the token.
    let owner = http(&ha, &query, None, None);
    assert!(matches!(owner, Ok((200, _))), "{owner:?}");
    // From B: /sd answers the token only; A's loopback listeners are out of reach.
    let with_token = http(&hb, &sd_url, Some(token), None);
    assert!(
        matches!(with_token, Ok((200, ref b)) if b.starts_with('[')),
        "{with_token:?}"
    );
    assert_eq!(http(&hb, &sd_url, None, None), Ok((401, String::new())));
    let wrong = "x".repeat(token.len());
    assert_eq!(
        http(&hb, &sd_url, Some(&wrong), None),
        Ok((401, String::new()))
    );
    for port in [gateway_port, prometheus_port] {
        let r = hb
            .enter(|| TcpStream::connect_timeout(&(ha.addr, port).into(), Duration::from_secs(5)));
        let e = r.expect_err("B connected to a loopback listener of A");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "port {port}: {e}"
        );
    }
    // Another user on A: 401 from /sd, and the gateway refuses the connection.
    assert_eq!(curl_as_other(other, &ha, &sd_url), "401");
    let refused_before = stack.status()["gateway"]["refused_connections"]
        .as_u64()
        .unwrap();
    let got = curl_as_other(other, &ha, &query);
    assert_ne!(got, "200", "the gateway answered another user on A");
    let refused = stack.status()["gateway"]["refused_connections"]
        .as_u64()
        .unwrap();
    assert!(
        refused > refused_before,
        "the gateway counted no refusal ({refused_before} -> {refused}); curl got {got}"
    );
    // The owner still gets answers.
    assert!(matches!(http(&ha, &query, None, None), Ok((200, _))));

    drop(stack);
    assert_nothing_runs(&[dir.path()], &[ha, hb]);
    lan.close();
}
