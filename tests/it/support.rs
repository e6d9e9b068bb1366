//! Test harness: a raywatch stack in a temp home, synthetic Ray heads, real Ray clusters.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DISCOVERY: &str = "prom_metrics_service_discovery.json";

pub fn raywatch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raywatch"))
}

/// The real binary as a test drives it (assert_cmd): these arguments, stdin
/// closed; `.env(..)` to adjust, then `.assert()` checks the exit code,
/// stdout and stderr (with `predicates`), or `.output()` for the raw output.
pub fn raywatch(args: &[&str]) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(raywatch_bin());
    c.args(args).write_stdin("");
    c
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_explained(what, limit, f, String::new)
}

/// [`wait_for`], whose panic also carries what `explain` says then (e.g. a
/// cluster's [`ray_diagnostics`]).
pub fn wait_explained<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a timed-out wait on a real Ray cluster needs to be understood in a CI
/// log: the machine's load, memory and disk, and the tails of the cluster's own
/// logs (its GCS, raylet and agents), which say whether a part crashed, never
/// started or was starved.
pub fn ray_diagnostics(temp_dir: &Path) -> String {
    let mut out = String::new();
    let loadavg = fs_err::read_to_string("/proc/loadavg").unwrap_or_default();
    let available = fs_err::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemAvailable"))
        .unwrap_or_default()
        .to_string();
    out += &format!("load: {}{available}\n", loadavg.trim_end());
    if let Ok(fs) = nix::sys::statvfs::statvfs(temp_dir.parent().unwrap_or(temp_dir)) {
        let mib = |blocks: u64| blocks * fs.fragment_size() / (1 << 20);
        out += &format!(
            "disk: {} MiB free of {} MiB\n",
            mib(fs.blocks_available()),
            mib(fs.blocks())
        );
    }
    let logs = temp_dir.join("session_latest/logs");
    let mut names: Vec<String> = fs_err::read_dir(&logs)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    [
                        "gcs_server",
                        "raylet",
                        "dashboard_agent",
                        "dashboard.",
                        "monitor.",
                    ]
                    .iter()
                    .any(|p| n.starts_with(p))
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        let text = fs_err::read_to_string(logs.join(&name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(12)..];
        if !tail.is_empty() {
            out += &format!(
                "--- {name} (last {} lines)\n{}\n",
                tail.len(),
                tail.join("\n")
            );
        }
    }
    out
}

/// A fresh temp dir that does not match /tmp/ray* (so no default root sees it).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rwtest-")
        .tempdir_in("/tmp")
        .unwrap()
}

pub fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A raywatch stack with its own home, stopped (and checked stopped) on drop.
pub struct Stack {
    pub home: PathBuf,
    /// The `raywatch` executable that runs this stack's commands.
    pub bin: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Stack {
    /// `raywatch up` with these extra arguments; panics unless it succeeds.
    pub fn up(args: &[&str]) -> Stack {
        let dir = scratch();
        let home = dir.path().join("home");
        let mut stack = Stack::up_at(&home, args);
        stack._dir = Some(dir);
        stack
    }

    /// A stack that watches only one Ray temp dir, `name`, created empty next to
    /// its home; returns the stack and that root.
    pub fn watching(name: &str, extra: &[&str]) -> (Stack, PathBuf) {
        let dir = scratch();
        let root = dir.path().join(name);
        fs_err::create_dir(&root).unwrap();
        let watch = ["--no-default-watch", "--watch", root.to_str().unwrap()];
        let mut stack = Stack::up_at(&dir.path().join("home"), &[&watch[..], extra].concat());
        stack._dir = Some(dir);
        (stack, root)
    }

    /// `raywatch up` with its home at `home` (the caller owns the folder around it).
    pub fn up_at(home: &Path, args: &[&str]) -> Stack {
        Stack::up_with(&raywatch_bin(), home, args)
    }

    /// `raywatch up` run by the executable `bin` (e.g. the one a wheel installed);
    /// every later command of the stack runs `bin` too.
    pub fn up_with(bin: &Path, home: &Path, args: &[&str]) -> Stack {
        let stack = Stack {
            home: home.to_path_buf(),
            bin: bin.to_path_buf(),
            _dir: None,
        };
        let out = stack.run(&[&["up", "--scrape-interval", "2s"], args].concat());
        assert!(
            out.status.success(),
            "raywatch up failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            stack.log()
        );
        stack
    }

    /// Takes charge of a stack someone else started (stopped on drop).
    pub fn adopt(home: PathBuf) -> Stack {
        Stack {
            home,
            bin: raywatch_bin(),
            _dir: None,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("RAYWATCH_HOME", &self.home).stdin(Stdio::null());
        c
    }

    /// [`raywatch`] against this stack's home.
    pub fn raywatch(&self, args: &[&str]) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(&self.bin);
        c.args(args)
            .write_stdin("")
            .env("RAYWATCH_HOME", &self.home);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn log(&self) -> String {
        fs_err::read_to_string(self.home.join("logs/daemon.log")).unwrap_or_default()
    }

    pub fn status(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The alerts the stack fires or holds pending (`raywatch alerts --json`).
    pub fn alerts(&self) -> Vec<Value> {
        let out = self.run(&["alerts", "--json"]);
        assert!(
            out.status.success(),
            "alerts failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["schema"], 1, "{v}");
        v["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// The series the stack's Prometheus holds for `promql` at this instant
    /// (`raywatch query --json`).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let out = self.run(&["query", promql, "--json"]);
        assert!(
            out.status.success(),
            "query {promql} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Prometheus' port, as the stack's config.json has it (the daemon keeps it current).
    pub fn port(&self) -> u16 {
        let config: Value =
            serde_json::from_slice(&fs_err::read(self.home.join("config.json")).unwrap()).unwrap();
        config["prometheus_port"].as_u64().unwrap() as u16
    }

    pub fn password(&self) -> String {
        fs_err::read_to_string(self.home.join("secrets/prometheus-password"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// An authenticated GET against this stack's Prometheus.
    pub fn prom_get(&self, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}{path}", self.port()))
            .basic_auth("raywatch", Some(self.password()))
            .send()
            .unwrap()
    }

    /// Prometheus' active targets of the `ray` job: (ray_io_cluster, instance) pairs.
    pub fn active_targets(&self) -> Vec<(String, String)> {
        self.active_target_labels()
            .into_iter()
            .map(|mut l| {
                let cluster = l.remove("ray_io_cluster").unwrap_or_default();
                (cluster, l.remove("instance").unwrap_or_default())
            })
            .collect()
    }

    /// Labels of every active `ray` target, for label checks.
    pub fn active_target_labels(&self) -> Vec<BTreeMap<String, String>> {
        let v: Value = self
            .prom_get("/api/v1/targets?state=active")
            .json()
            .unwrap();
        v["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["labels"]["job"] == "ray")
            .map(|t| serde_json::from_value(t["labels"].clone()).unwrap())
            .collect()
    }

    pub fn instances_of(&self, cluster: &str) -> Vec<String> {
        self.active_targets()
            .into_iter()
            .filter(|(c, _)| c == cluster)
            .map(|(_, i)| i)
            .collect()
    }

    /// A metric of Prometheus' own /metrics page.
    pub fn own_metric(&self, name: &str) -> f64 {
        let text = self.prom_get("/metrics").text().unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in Prometheus' /metrics"))
    }

    /// What a timed-out wait on this stack needs to be understood in a CI log:
    /// `raywatch status` and the tail of the daemon's log.
    pub fn diagnostics(&self) -> String {
        let status = self.run(&["status"]);
        let log = fs_err::read_to_string(self.home.join("logs/daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- raywatch status\n{}{}--- daemon.log (last lines)\n{}\n",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr),
            lines[lines.len().saturating_sub(25)..].join("\n")
        )
    }

    pub fn pids(&self) -> Vec<u32> {
        ["run/daemon.pid", "run/prometheus.pid"]
            .iter()
            .filter_map(|f| fs_err::read_to_string(self.home.join(f)).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }
}

/// Whether any process runs with `needle` on its command line.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in fs_err::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if state(pid).is_none_or(|s| s == 'Z') {
            continue;
        }
        if let Ok(cmd) = fs_err::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        let home = self.home.to_string_lossy().into_owned();
        let left = processes_mentioning(&home);
        if !left.is_empty() && !std::thread::panicking() {
            panic!("processes of {home} left after `raywatch down`: {left:?}");
        }
    }
}

/// The target group raywatch publishes for `cluster` (in whichever file of
/// `<home>/targets/` holds it), or None when none does.
pub fn published_group(home: &Path, cluster: &str) -> Option<Value> {
    let mut found = None;
    for e in fs_err::read_dir(home.join("targets")).ok()?.flatten() {
        let Ok(bytes) = fs_err::read(e.path()) else {
            continue;
        };
        let groups: Vec<Value> = serde_json::from_slice(&bytes)
            .unwrap_or_else(|err| panic!("{} does not parse: {err}", e.path().display()));
        for g in groups {
            if g["labels"]["ray_io_cluster"] == cluster {
                assert!(found.is_none(), "{cluster} is published twice");
                found = Some(g);
            }
        }
    }
    found
}

/// Writes a discovery file atomically, as Ray does.
pub fn write_discovery(file: &Path, targets: &[String]) {
    raywatch::testkit::write_discovery(file, targets).unwrap();
}

/// Listeners on a synthetic cluster's loopback targets, as a real head's
/// processes hold them (raywatch publishes a local target only while a trusted
/// uid listens on it); each connection is accepted and closed. A port another
/// socket holds is left to it; `SO_REUSEPORT` lets parallel tests of this uid
/// hold the same port. Closed on drop.
pub use raywatch::testkit::Held;

/// Holds every `127.0.0.1:port` of `targets` that this uid can bind.
pub fn hold(targets: &[String]) -> Held {
    let held = Held::polling(Duration::from_millis(50));
    for t in targets {
        // Ray's fixed metrics ports are left to the real clusters of parallel tests.
        let ours = t
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| ![44217, 44227].contains(&p));
        if ours {
            // A port this uid cannot bind is left to whoever holds it.
            let _ = held.share(t);
        }
    }
    held
}

/// A synthetic Ray head: rewrites its session's discovery file every second, like
/// Ray does every 5 s, until dropped. It holds its loopback targets (see [`hold`]).
pub struct FakeHead {
    pub file: PathBuf,
    _rewriter: raywatch::testkit::Rewriter,
    _held: Held,
}

impl FakeHead {
    pub fn start(temp_dir: &Path, session: &str, targets: Vec<String>) -> FakeHead {
        FakeHead::start_every(temp_dir, session, targets, Duration::from_secs(1))
    }

    /// Like [`FakeHead::start`], rewriting every `period` (Ray: 5 s).
    pub fn start_every(
        temp_dir: &Path,
        session: &str,
        targets: Vec<String>,
        period: Duration,
    ) -> FakeHead {
        let dir = temp_dir.join(session);
        fs_err::create_dir_all(&dir).unwrap();
        let file = dir.join(DISCOVERY);
        let held = hold(&targets);
        write_discovery(&file, &targets);
        let rewriter = raywatch::testkit::Rewriter::start(vec![(file.clone(), targets)], period);
        FakeHead {
            file,
            _rewriter: rewriter,
            _held: held,
        }
    }
}

/// A loopback HTTP endpoint serving fixed Prometheus text on `/metrics`, until dropped.
pub struct MetricsEndpoint {
    pub addr: String,
    stop: Arc<AtomicBool>,
}

impl MetricsEndpoint {
    pub fn serve(text: &str) -> MetricsEndpoint {
        MetricsEndpoint::serve_on(0, text)
    }

    /// Like [`MetricsEndpoint::serve`], on 127.0.0.1:`port` (0: any free port).
    pub fn serve_on(port: u16, text: &str) -> MetricsEndpoint {
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, text) = (stop.clone(), text.to_string());
        std::thread::spawn(move || {
            use std::io::Read;
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                            text.len(),
                            text
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        MetricsEndpoint { addr, stop }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The daemon's PID of a stack.
pub fn daemon_pid(stack: &Stack) -> u32 {
    fs_err::read_to_string(stack.home.join("run/daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A process' state letter (`R`, `S`, `Z`, …), or None when it is gone.
pub fn state(pid: u32) -> Option<char> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.state)
}

/// CPU time (user + system) a process used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .unwrap();
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    fs_err::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// inotify watches a process holds (lines of its inotify descriptors' fdinfo).
pub fn inotify_watches(pid: u32) -> usize {
    let mut n = 0;
    for e in fs_err::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(text) = fs_err::read_to_string(e.path()) {
            n += text
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

/// A free port for a process a test starts later (Ray binds the ports it is
/// given seconds after `ray start`; a port another process takes meanwhile ends
/// the whole cluster, since `ray start --block` stops every part once one dies).
///
/// So the port is neither from the kernel's ephemeral range (which every
/// `bind(0)` and `connect()` of the machine draws from: Ray's own parts,
/// Prometheus, the clients) nor from Ray's worker ports (10002-19999), and it
/// is reserved for this test process by a lock on a file named after it
/// (released when the process exits), so tests running side by side never
/// pick the same one. It is free on every address when picked.
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<nix::fcntl::Flock<std::fs::File>>> =
        std::sync::Mutex::new(Vec::new());
    let ephemeral_low: u16 = fs_err::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (20_000u16, ephemeral_low.saturating_sub(1).min(32_767));
    if high <= low + 1000 {
        // An unusual ephemeral range: the kernel's pick, bound at once.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let dir = port_lock_dir();
    let span = u64::from(high - low) + 1;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let start = u64::from(std::process::id()).wrapping_mul(2_654_435_761) ^ u64::from(nanos);
    for i in 0..span {
        let port = low + ((start.wrapping_add(i)) % span) as u16;
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            HELD.lock().unwrap().push(lock);
            return port;
        }
    }
    panic!("no free port in {low}-{high} (locks in {})", dir.display());
}

/// Where [`free_port`]'s locks live: a folder of this uid's own in /tmp,
/// refused when someone else made it (another user could otherwise hold
/// locks that starve the tests, or plant links).
fn port_lock_dir() -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = nix::unistd::geteuid().as_raw();
    let dir = PathBuf::from(format!("/tmp/rwtest-ports-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = fs_err::symlink_metadata(&dir).unwrap();
    assert!(
        meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0,
        "{} is not a private folder of uid {uid}: remove it and run the tests again",
        dir.display()
    );
    dir
}

/// The `ray` executable of the test virtualenv (set up by scripts/test).
pub fn ray_bin() -> PathBuf {
    let p = std::env::var_os("RAYWATCH_TEST_RAY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/raywatch-venv/bin/ray")
        });
    assert!(
        p.is_file(),
        "no ray at {} (run the tests through scripts/test, which installs it)",
        p.display()
    );
    p
}

/// A real single-node Ray cluster on loopback with its own temp dir and ports,
/// started as `ray start --head --block` in its own process group so the test can
/// kill exactly its processes (never `ray stop`).
pub struct RayCluster {
    pub temp_dir: PathBuf,
    pub metrics_port: u16,
    pub dashboard_port: u16,
    /// The file of Ray's token, when the cluster was started with token auth (`RAY_AUTH_TOKEN_PATH`).
    pub token_file: Option<PathBuf>,
    child: Child,
    pgid: i32,
}

impl RayCluster {
    /// `fixed_metric_ports`: leave Ray's default autoscaler / dashboard metrics
    /// ports (44217 / 44227), which every cluster on the machine then lists.
    pub fn start(temp_dir: &Path, fixed_metric_ports: bool) -> RayCluster {
        RayCluster::start_with_env(temp_dir, fixed_metric_ports, &[])
    }

    /// Starts with extra environment (e.g. what `raywatch env` printed); its
    /// RAYWATCH_METRICS_EXPORT_PORT, when present, is passed as --metrics-export-port.
    pub fn start_with_env(
        temp_dir: &Path,
        fixed_metric_ports: bool,
        env: &[(String, String)],
    ) -> RayCluster {
        RayCluster::start_with(&ray_bin(), temp_dir, fixed_metric_ports, env)
    }

    /// Starts with the given `ray` executable (a Ray version of its own).
    pub fn start_with(
        ray: &Path,
        temp_dir: &Path,
        fixed_metric_ports: bool,
        env: &[(String, String)],
    ) -> RayCluster {
        let from_env = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let metrics_port = from_env("RAYWATCH_METRICS_EXPORT_PORT")
            .map(|p| p.parse().unwrap())
            .unwrap_or_else(free_port);
        let dashboard_port = from_env("RAYWATCH_DASHBOARD_PORT")
            .map(|p| p.parse().unwrap())
            .unwrap_or_else(free_port);
        let mut cmd = Command::new(ray);
        cmd.args([
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "1",
            "--disable-usage-stats",
        ])
        .arg(format!("--temp-dir={}", temp_dir.display()))
        .arg(format!("--port={}", free_port()))
        .arg(format!("--dashboard-port={dashboard_port}"))
        .arg(format!("--metrics-export-port={metrics_port}"))
        .arg(format!("--ray-client-server-port={}", free_port()))
        .arg(format!("--dashboard-agent-listen-port={}", free_port()))
        .arg(format!("--dashboard-agent-grpc-port={}", free_port()))
        .arg(format!("--runtime-env-agent-port={}", free_port()))
        .arg("--object-store-memory=100000000")
        .env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        // Explicit: Ray turns token auth on by itself once ~/.ray/auth_token exists.
        .env("RAY_AUTH_MODE", "disabled")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        if !fixed_metric_ports {
            cmd.env("AUTOSCALER_METRIC_PORT", free_port().to_string())
                .env("DASHBOARD_METRIC_PORT", free_port().to_string());
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // An empty RAY_AUTH_MODE in `env` means: leave it unset (Ray decides).
        if from_env("RAY_AUTH_MODE").is_some_and(|m| m.is_empty()) {
            cmd.env_remove("RAY_AUTH_MODE");
        }
        let token_file = from_env("RAY_AUTH_TOKEN_PATH").map(PathBuf::from);
        let child = cmd.spawn().expect("ray start");
        let pgid = child.id() as i32;
        RayCluster {
            temp_dir: temp_dir.to_path_buf(),
            metrics_port,
            dashboard_port,
            token_file,
            child,
            pgid,
        }
    }

    /// A GET on the cluster's Dashboard, with Ray's token when it has one
    /// (`token_file`); `None` when it does not answer.
    pub fn dashboard_get(&self, path: &str) -> Option<reqwest::blocking::Response> {
        let mut req = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}{path}", self.dashboard_port));
        if let Some(f) = &self.token_file {
            let token = fs_err::read_to_string(f).unwrap();
            req = req.bearer_auth(token.trim());
        }
        req.send().ok()
    }

    /// Waits for the cluster's discovery file: session-scoped (Ray ≥ 2.5x), or
    /// a regular file at the temp-dir level (older Ray); returns it and when it appeared.
    pub fn wait_discovery(&mut self, limit: Duration) -> (PathBuf, Instant) {
        let temp_dir = self.temp_dir.clone();
        let found = || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ray start exited early: {status}");
            }
            let entries = fs_err::read_dir(&self.temp_dir).ok()?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("session_") && name != "session_latest" {
                    let f = e.path().join(DISCOVERY);
                    if f.is_file() {
                        return Some((f, Instant::now()));
                    }
                }
            }
            let legacy = self.temp_dir.join(DISCOVERY);
            fs_err::symlink_metadata(&legacy)
                .is_ok_and(|m| m.is_file())
                .then(|| (legacy, Instant::now()))
        };
        wait_explained("Ray's session discovery file", limit, found, || {
            ray_diagnostics(&temp_dir)
        })
    }

    /// [`wait_for`] on something this cluster does (its endpoints serving,
    /// its series arriving): a timeout's panic carries [`ray_diagnostics`].
    pub fn wait<T>(&self, what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
        wait_explained(what, limit, f, || ray_diagnostics(&self.temp_dir))
    }

    /// Stops the cluster the way a user does (SIGTERM to `ray start --block`,
    /// which stops its parts), then waits until none is left (SIGKILL after 30 s).
    pub fn terminate(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pgid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let needle = self.temp_dir.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !processes_mentioning(&needle).is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.kill9();
    }

    /// SIGKILL to every process of the cluster, then waits until none is left.
    pub fn kill9(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        let needle = self.temp_dir.to_string_lossy().into_owned();
        wait_for(
            "the cluster's processes to exit",
            Duration::from_secs(30),
            || {
                let left = processes_mentioning(&needle);
                for pid in &left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                left.is_empty().then_some(())
            },
        );
    }
}

impl Drop for RayCluster {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The session a Ray metrics endpoint serves, read from its series.
pub fn served_session(endpoint: &str) -> Option<String> {
    let text = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
        .get(format!("http://{endpoint}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    let start = text.find("SessionName=\"")? + "SessionName=\"".len();
    let len = text[start..].find('"')?;
    Some(text[start..start + len].to_string())
}

/// The session a cluster's discovery file belongs to: its folder's name, or
/// for a temp-dir-level file (older Ray), where `session_latest` points.
pub fn cluster_session(file: &Path) -> String {
    let parent = file.parent().unwrap();
    if parent
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("session_")
    {
        return session_of(file);
    }
    fs_err::read_link(parent.join("session_latest"))
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The `ray` executable of Ray 2.52.1 (the seed's version, temp-dir layout),
/// from the virtualenv scripts/test sets up.
pub fn legacy_ray_bin() -> PathBuf {
    let p = std::env::var_os("RAYWATCH_TEST_RAY_LEGACY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/raywatch-venv-2.52.1/bin/ray")
        });
    assert!(
        p.is_file(),
        "no Ray 2.52.1 at {} (run the tests through scripts/test, which installs it)",
        p.display()
    );
    p
}

/// The `ray` executable of Ray 2.40.0, the oldest release `raywatch top` reads
/// (OpenCensus-era metric names), from the virtualenv scripts/test sets up.
pub fn oldest_ray_bin() -> PathBuf {
    let p = std::env::var_os("RAYWATCH_TEST_RAY_OLDEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/raywatch-venv-2.40.0/bin/ray")
        });
    assert!(
        p.is_file(),
        "no Ray 2.40.0 at {} (run the tests through scripts/test, which installs it)",
        p.display()
    );
    p
}

/// `program` run as another local user (`setpriv`: that uid and gid, no
/// supplementary groups, a HOME that does not exist).
pub fn command_as((uid, gid): (u32, u32), program: impl AsRef<std::ffi::OsStr>) -> Command {
    // By its path: a test may give the command a PATH without it.
    let mut cmd = Command::new(on_path("setpriv").unwrap_or_else(|| "setpriv".into()));
    cmd.args([
        "--reuid",
        &uid.to_string(),
        "--regid",
        &gid.to_string(),
        "--clear-groups",
        "--",
    ])
    .arg(program)
    .env("HOME", "/nonexistent");
    cmd
}

/// `name` in this process' PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The session name of a session-scoped discovery file (its folder's name).
pub fn session_of(file: &Path) -> String {
    file.parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Runs several raywatch commands at once as separate processes; each must succeed.
pub fn run_parallel(stack: &Stack, commands: Vec<Vec<String>>) {
    let children: Vec<_> = commands
        .into_iter()
        .map(|a| {
            stack
                .cmd()
                .args(&a)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Parses `export K='V'` lines as `raywatch env` prints them.
pub fn parse_exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').replace("'\\''", "'")))
        .collect()
}

/// Fails a test that runs where something it needs is missing. `scripts/test`
/// checks each such need first and has nextest skip (and count) the tests that
/// lack it, so a test never passes without asserting; getting here means the
/// test was run some other way.
pub fn unmet(need: &str) -> ! {
    panic!(
        "this test needs {need}: run the suite with scripts/test, which reports \
         the tests whose needs this machine lacks as skipped"
    )
}
