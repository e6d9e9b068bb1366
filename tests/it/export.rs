//! `raywatch export`: a cluster's series as OpenMetrics, through promtool into a
//! fresh Prometheus, compared sample by sample with the stack's own.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A Prometheus of the test's own over blocks made by promtool, stopped on drop.
struct FreshPrometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl FreshPrometheus {
    /// `promtool tsdb create-blocks-from openmetrics FILE`, then a Prometheus on those blocks.
    fn from_openmetrics(file: &Path) -> FreshPrometheus {
        let dir = scratch();
        let data = dir.path().join("data");
        let out = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(file)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool refused the export: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.path().join("prometheus.yml");
        fs_err::write(&config, "scrape_configs: []\n").unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let p = FreshPrometheus {
            child,
            port,
            _dir: dir,
        };
        wait_for("the fresh Prometheus", Duration::from_secs(60), || {
            reqwest::blocking::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        });
        p
    }

    fn query(&self, promql: &str, time: f64) -> Vec<Value> {
        let v: Value = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", promql), ("time", &format!("{time:.3}"))])
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for FreshPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stack's answer to an instant query at `time`.
fn stack_query(stack: &Stack, promql: &str, time: f64) -> Vec<Value> {
    let v: Value = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}/api/v1/query", stack.port()))
        .basic_auth("raywatch", Some(stack.password()))
        .query(&[("query", promql), ("time", &format!("{time:.3}"))])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["status"], "success", "{promql}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Series of a range-selector answer as (labels, [(ms, value)]), sorted.
fn samples(result: &[Value]) -> Vec<(String, Vec<(i64, String)>)> {
    let mut out: Vec<_> = result
        .iter()
        .map(|s| {
            let values = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                        p[1].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (s["metric"].to_string(), values)
        })
        .collect();
    out.sort();
    out
}

/// The cluster's entry in `raywatch history --json`.
fn history_entry(stack: &Stack, name: &str) -> Option<Value> {
    let out = stack.run(&["history", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|c| c["name"] == name)
        .cloned()
}

fn export(stack: &Stack, args: &[&str]) {
    let out = stack.run(&[&["export"], args].concat());
    assert!(
        out.status.success(),
        "export {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gunzip(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(fs_err::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Both Prometheus servers hold the same samples of `metric` for the cluster
/// over `[from, to]`; returns how many.
fn assert_same_samples(
    stack: &Stack,
    fresh: &FreshPrometheus,
    selector: &str,
    from: f64,
    to: f64,
) -> usize {
    let window = (to - from).ceil() as u64 + 1;
    let q = format!("{selector}[{window}s]");
    let ours = samples(&stack_query(stack, &q, to));
    let theirs = samples(&fresh.query(&q, to));
    assert!(!ours.is_empty(), "the stack has no {selector}");
    assert_eq!(ours.len(), theirs.len(), "series of {selector}");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.0, b.0, "labels");
        assert_eq!(a.1.len(), b.1.len(), "sample count of {}", a.0);
        assert_eq!(a.1, b.1, "samples of {}", a.0);
    }
    ours.iter().map(|s| s.1.len()).sum()
}

/// The round trip: a real Ray cluster runs two minutes and is killed;
/// its export, through promtool into a fresh Prometheus, holds the same
/// `ray_node_cpu_utilization` samples (count and values) as the stack's.
#[test]
fn ray_cluster_export_round_trips_through_promtool_into_a_fresh_prometheus() {
    let base = scratch();
    let temp = base.path().join("ray_export");
    let stack = Stack::up(&[
        "--no-default-watch",
        "--watch",
        temp.to_str().unwrap(),
        "--liveness",
        "8s",
    ]);
    let name = format!("{}-ray_export", user());
    let mut ray = RayCluster::start(&temp, false);
    ray.wait_discovery(Duration::from_secs(120));
    let selector = format!("ray_node_cpu_utilization{{ray_io_cluster=\"{name}\"}}");
    // Two minutes of it, at the harness' 2 s scrape interval: 60 samples.
    wait_for(
        "two minutes of ray_node_cpu_utilization",
        Duration::from_secs(240),
        || {
            let now = raywatch::clock::unix_now();
            let r = stack_query(&stack, &format!("count_over_time({selector}[10m])"), now);
            r.first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .filter(|n| *n >= 60.0)
        },
    );
    ray.kill9();
    let entry = wait_for(
        "the cluster's end in the history",
        Duration::from_secs(60),
        || history_entry(&stack, &name).filter(|e| e["state"] == "ended"),
    );

    // Its targets gone from Prometheus, nothing more of it arrives.
    wait_for(
        "the cluster's targets to go",
        Duration::from_secs(60),
        || stack.instances_of(&name).is_empty().then_some(()),
    );
    let out_dir = scratch();
    let (plain, gz) = (out_dir.path().join("a.om"), out_dir.path().join("a.om.gz"));
    export(&stack, &[&name, "--out", plain.to_str().unwrap()]);
    export(&stack, &[&name, "--out", gz.to_str().unwrap()]);
    let text = fs_err::read(&plain).unwrap();
    assert!(text.ends_with(b"# EOF\n"));
    // Only the cluster's own series: no alert state or recorded series, which
    // the stack's rules go on writing after the cluster ended.
    let text_str = String::from_utf8_lossy(&text);
    let families: Vec<&str> = text_str
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    assert!(
        families.contains(&"ray_node_cpu_utilization"),
        "{families:?}"
    );
    assert!(
        families
            .iter()
            .all(|f| !f.starts_with("ALERTS") && !f.contains(':') && !f.starts_with("raywatch_")),
        "derived series exported: {families:?}"
    );
    let unzipped = gunzip(&gz);
    assert!(
        unzipped == text,
        "the .gz holds another export ({} bytes, the plain one {})",
        unzipped.len(),
        text.len()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs_err::metadata(&plain).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let fresh = FreshPrometheus::from_openmetrics(&plain);
    let first = entry["first_seen_unix"].as_f64().unwrap() - 60.0;
    let last = entry["ended_unix"].as_f64().unwrap() + 60.0;
    let n = assert_same_samples(&stack, &fresh, &selector, first, last);
    assert!(n >= 60, "only {n} samples of ray_node_cpu_utilization");
    // And every series scraped from the cluster made it, with its labels (what the
    // stack's rules derive from them, alerts included, is the stack's, not exported).
    let sel = format!(
        "{{ray_io_cluster=\"{name}\",job=\"ray\",__name__!~\"ALERTS|ALERTS_FOR_STATE|.*:.*\"}}"
    );
    let ours = series(
        &format!("http://127.0.0.1:{}", stack.port()),
        Some(&stack.password()),
        &sel,
        first,
        last,
    );
    let theirs = series(
        &format!("http://127.0.0.1:{}", fresh.port),
        None,
        &sel,
        first,
        last,
    );
    assert!(ours.len() > 50, "only {} series", ours.len());
    assert_eq!(ours, theirs);
}

/// The label sets of the series matching `selector` in `[from, to]`, sorted.
fn series(base: &str, password: Option<&str>, selector: &str, from: f64, to: f64) -> Vec<String> {
    let mut req = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{base}/api/v1/series"))
        .query(&[
            ("match[]", selector),
            ("start", &format!("{from:.3}")),
            ("end", &format!("{to:.3}")),
        ]);
    if let Some(p) = password {
        req = req.basic_auth("raywatch", Some(p));
    }
    let v: Value = req.send().unwrap().json().unwrap();
    assert_eq!(v["status"], "success", "{v}");
    let mut out: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    out.sort();
    out
}

/// Label values with quotes, backslashes, newlines and escape sequences, a
/// counter and a histogram survive the round trip; without history, --from
/// and --to choose the window.
#[test]
fn odd_label_values_counters_and_histograms_survive_the_round_trip() {
    let (stack, root) = Stack::watching("ray_odd", &[]);
    let ep = MetricsEndpoint::serve(concat!(
        "# TYPE odd_gauge gauge\n",
        "odd_gauge{v=\"q\\\"b\\\\c\\nd\u{1b}[2J é\"} 1.5\n",
        "# TYPE odd_requests_total counter\n",
        "odd_requests_total{path=\"/\"} 42\n",
        "# TYPE odd_latency histogram\n",
        "odd_latency_bucket{le=\"0.1\"} 1\n",
        "odd_latency_bucket{le=\"+Inf\"} 3\n",
        "odd_latency_sum 0.7\n",
        "odd_latency_count 3\n",
    ));
    let _head = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000000_1",
        vec![ep.addr.clone()],
    );
    let name = format!("{}-ray_odd", user());
    let now = || raywatch::clock::unix_now();
    let start = now();
    wait_for("five scrapes", Duration::from_secs(60), || {
        let r = stack_query(
            &stack,
            &format!("count_over_time(odd_gauge{{ray_io_cluster=\"{name}\"}}[5m])"),
            now(),
        );
        r.first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .filter(|n| *n >= 5.0)
    });
    let to = now();
    let out_dir = scratch();
    let file = out_dir.path().join("odd.om");
    // An unknown name without --from is refused with a hint.
    let refused = stack.run(&["export", "no-such", "--out", file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--from"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!file.exists());
    export(
        &stack,
        &[
            &name,
            "--from",
            &format!("{:.3}", start - 30.0),
            "--to",
            &format!("{to:.3}"),
            "--out",
            file.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8(fs_err::read(&file).unwrap()).unwrap();
    assert!(text.contains("# TYPE odd_requests counter\n"), "{text}");
    assert!(text.contains("# TYPE odd_gauge gauge\n"), "{text}");
    let fresh = FreshPrometheus::from_openmetrics(&file);
    for metric in [
        "odd_gauge",
        "odd_requests_total",
        "odd_latency_bucket",
        "odd_latency_sum",
        "up",
    ] {
        let n = assert_same_samples(
            &stack,
            &fresh,
            &format!("{metric}{{ray_io_cluster=\"{name}\"}}"),
            start - 30.0,
            to,
        );
        assert!(n >= 5, "{metric}: {n}");
    }
    let odd = fresh.query(&format!("odd_gauge{{ray_io_cluster=\"{name}\"}}"), to);
    assert_eq!(odd[0]["metric"]["v"], "q\"b\\c\nd\u{1b}[2J é");
}

/// The other local user plants a symlink (to a file of ours) and a FIFO at
/// export paths in a shared sticky folder: the export replaces them without
/// writing through the link or blocking on the FIFO, and the file it leaves
/// is ours and private.
#[test]
fn planted_links_and_fifos_at_the_out_path_are_replaced_not_followed() {
    let other = crate::security::other_user();
    let (stack, root) = Stack::watching("ray_plant", &[]);
    let ep = MetricsEndpoint::serve("planted_gauge 1\n");
    let _head = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000000_2",
        vec![ep.addr.clone()],
    );
    let name = format!("{}-ray_plant", user());
    wait_for("a scrape", Duration::from_secs(60), || {
        let now = raywatch::clock::unix_now();
        (!stack_query(
            &stack,
            &format!("planted_gauge{{ray_io_cluster=\"{name}\"}}"),
            now,
        )
        .is_empty())
        .then_some(())
    });
    let shared = scratch();
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mine = shared.path().join("precious");
    fs_err::write(&mine, "mine\n").unwrap();
    let link: PathBuf = shared.path().join("export.om");
    let fifo: PathBuf = shared.path().join("export2.om");
    let ln = crate::security::as_other(
        other,
        &["ln", "-s", mine.to_str().unwrap(), link.to_str().unwrap()],
    );
    assert!(
        ln.status.success(),
        "{}",
        String::from_utf8_lossy(&ln.stderr)
    );
    let mk = crate::security::as_other(other, &["mkfifo", fifo.to_str().unwrap()]);
    assert!(
        mk.status.success(),
        "{}",
        String::from_utf8_lossy(&mk.stderr)
    );
    for out in [&link, &fifo] {
        export(
            &stack,
            &[&name, "--from", "10m", "--out", out.to_str().unwrap()],
        );
        let meta = fs_err::symlink_metadata(out).unwrap();
        assert!(meta.is_file(), "{} is a regular file now", out.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        let text = fs_err::read_to_string(out).unwrap();
        assert!(
            text.contains("planted_gauge{") && text.ends_with("# EOF\n"),
            "{text}"
        );
        let peek = crate::security::as_other(other, &["cat", out.to_str().unwrap()]);
        assert!(!peek.status.success(), "the other user reads the export");
    }
    assert_eq!(fs_err::read_to_string(&mine).unwrap(), "mine\n");
}
