//! `raywatch-bench latency | join | idle | soak`: the single-machine figures of docs/BENCHMARKS.md.
//!
//! Each benchmark starts its own stack (the raywatch binary, a temp home, `--no-default-watch`)
//! and synthetic Ray heads: discovery files written the way Ray writes them
//! (temp file, then rename), their targets held by listeners of this process
//! (raywatch publishes a local target only while a trusted uid listens on it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::discovery::DISCOVERY_FILE;
use crate::home::Home;
use crate::testkit::Rewriter;

/// How often a Ray head rewrites its discovery file.
pub(crate) const RAY_PERIOD: Duration = Duration::from_secs(5);

/// The first target port of synthetic clusters (unprivileged, below the
/// kernel's ephemeral range).
const FIRST_PORT: usize = 30001;

/// Listeners on the synthetic clusters' targets, as a real head's processes
/// hold them (the test kit's, shared with the tests).
pub(crate) use crate::testkit::Held;

pub(crate) struct BenchStack {
    pub(crate) home: Home,
    pub(crate) root: PathBuf,
    pub(crate) held: Held,
    _dir: tempfile::TempDir,
}

impl BenchStack {
    pub(crate) fn up() -> Result<BenchStack> {
        let dir = tempfile::Builder::new()
            .prefix("rwbench-")
            .tempdir_in("/tmp")?;
        let home = Home::resolve(Some(dir.path().join("home")))?;
        let root = dir.path().join("ray_bench");
        fs_err::create_dir(&root)?;
        let out = Command::new(super::raywatch_exe()?)
            .arg("--home")
            .arg(home.root())
            .args(["up", "--no-default-watch", "--watch"])
            .arg(&root)
            .output()?;
        if !out.status.success() {
            bail!(
                "raywatch up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(BenchStack {
            home,
            root,
            held: Held::new(),
            _dir: dir,
        })
    }

    pub(crate) fn daemon_pid(&self) -> Result<u32> {
        Ok(fs_err::read_to_string(self.home.daemon_pid())?
            .trim()
            .parse()?)
    }

    fn prometheus_pid(&self) -> Result<u32> {
        Ok(fs_err::read_to_string(self.home.prometheus_pid())?
            .trim()
            .parse()?)
    }

    /// Every target raywatch has written to `targets/` (whatever the file layout).
    fn published(&self) -> BTreeSet<String> {
        published_in(&self.home.targets_dir())
    }

    /// Waits until `targets/` lists at least `n` targets.
    pub(crate) fn wait_published(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.published().len() < n {
            if Instant::now() > deadline {
                bail!("not all {n} clusters were published within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// The daemon's and Prometheus' CPU, from now on.
    pub(crate) fn meter(&self) -> Result<Meter> {
        Meter::start(self.daemon_pid()?, self.prometheus_pid()?)
    }

    /// The targets Prometheus lists as active (job `ray`).
    pub(crate) fn listed(&self, rt: &tokio::runtime::Runtime) -> Result<BTreeSet<String>> {
        let client = crate::prometheus::Client::for_home(&self.home)?;
        let body = rt.block_on(client.get_text("/api/v1/targets?state=active"))?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .context("no activeTargets")?
            .iter()
            .filter(|t| t["labels"]["job"] == "ray")
            .filter_map(|t| t["labels"]["instance"].as_str().map(String::from))
            .collect())
    }
}

/// Every target listed in the file_sd files of `dir`.
fn published_in(dir: &Path) -> BTreeSet<String> {
    #[derive(serde::Deserialize)]
    struct Group {
        targets: Vec<String>,
    }
    let mut out = BTreeSet::new();
    for e in fs_err::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "json")
            && let Ok(bytes) = fs_err::read(e.path())
            && let Ok(groups) = serde_json::from_slice::<Vec<Group>>(&bytes)
        {
            out.extend(groups.into_iter().flat_map(|g| g.targets));
        }
    }
    out
}

/// CPU time (user + system, all threads, from /proc) of the daemon and of
/// Prometheus since a start: each process' own time, robust to other load.
pub(crate) struct Meter {
    pids: [u32; 2],
    start: [u64; 2],
    at: Instant,
    tick: f64,
}

impl Meter {
    fn start(daemon: u32, prometheus: u32) -> Result<Meter> {
        let pids = [daemon, prometheus];
        Ok(Meter {
            start: [sample(pids[0])?.0, sample(pids[1])?.0],
            pids,
            at: Instant::now(),
            tick: nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64,
        })
    }

    /// (daemon, Prometheus) CPU in % of one core since the start.
    pub(crate) fn percent(&self) -> Result<(f64, f64)> {
        let secs = self.at.elapsed().as_secs_f64();
        let pct = |i: usize| -> Result<f64> {
            let now = sample(self.pids[i])?.0;
            Ok(now.saturating_sub(self.start[i]) as f64 / self.tick / secs * 100.0)
        };
        Ok((pct(0)?, pct(1)?))
    }
}

/// Like a Ray head: each of `files` (with its one target) rewritten every 5 s,
/// the writes spread evenly, until dropped.
fn rewriter(files: &[(PathBuf, String)]) -> Rewriter {
    let files = files
        .iter()
        .map(|(f, target)| (f.clone(), vec![target.clone()]))
        .collect();
    Rewriter::start(files, RAY_PERIOD)
}

/// `n` synthetic clusters in the stack's root (`session_<prefix>_<k>`, target
/// port `first_port + k`, held), their files written once; returns (file, target) of each.
fn make_clusters(
    stack: &BenchStack,
    prefix: &str,
    n: usize,
    first_port: usize,
) -> Result<Vec<(PathBuf, String)>> {
    (0..n)
        .map(|k| {
            let d = stack.root.join(format!("session_{prefix}_{k}"));
            fs_err::create_dir(&d)?;
            let f = d.join(DISCOVERY_FILE);
            let target = format!("127.0.0.1:{}", first_port + k);
            stack.held.hold(&target)?;
            write_discovery(&f, &target)?;
            Ok((f, target))
        })
        .collect()
}

impl Drop for BenchStack {
    fn drop(&mut self) {
        let _ = Command::new(super::raywatch_exe().unwrap_or_default())
            .arg("--home")
            .arg(self.home.root())
            .args(["down", "--purge"])
            .output();
    }
}

/// A discovery file listing `target`, as Ray writes it.
pub(crate) fn write_discovery(file: &Path, target: &str) -> Result<()> {
    Ok(crate::testkit::write_discovery(
        file,
        &[target.to_string()],
    )?)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(name: &str, background: usize, mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "| {name} | {background} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.95)),
        ms(percentile(&v, 0.99)),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

/// A random duration below `max` (from /dev/urandom: no RNG crate for one bench).
fn random_below(max: Duration) -> Result<Duration> {
    let mut b = [0u8; 4];
    std::io::Read::read_exact(&mut fs_err::File::open("/dev/urandom")?, &mut b)?;
    let ms = max.as_millis().max(1) as u64;
    Ok(Duration::from_millis(u64::from(u32::from_le_bytes(b)) % ms))
}

/// Tells when a target reaches a file of `targets/`: woken by inotify on the
/// folder (raywatch renames every file into place), so the wait costs one read
/// of the file that changed, not a poll of every file.
struct TargetsWatch {
    dir: PathBuf,
    rx: std::sync::mpsc::Receiver<(PathBuf, Instant)>,
}

impl TargetsWatch {
    fn new(dir: &Path) -> Result<TargetsWatch> {
        use inotify::{Inotify, WatchMask};
        let (tx, rx) = std::sync::mpsc::channel();
        let mut inotify = Inotify::init().context("inotify")?;
        inotify
            .watches()
            .add(dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)
            .with_context(|| format!("watching {}", dir.display()))?;
        let folder = dir.to_path_buf();
        // Ends with the benchmark's process (the thread blocks in read).
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            while let Ok(events) = inotify.read_events_blocking(&mut buffer) {
                let at = Instant::now();
                for ev in events {
                    if let Some(name) = ev.name
                        && tx.send((folder.join(name), at)).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(TargetsWatch {
            dir: dir.to_path_buf(),
            rx,
        })
    }

    /// Drops events of earlier writes.
    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// When a file of the folder first held `"instance"` (at the event that
    /// announced it), waiting at most `limit` from `t0`.
    fn wait_for(&self, instance: &str, t0: Instant, limit: Duration) -> Result<Duration> {
        let needle = format!("\"{instance}\"");
        let holds = |p: &Path| {
            fs_err::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        };
        let deadline = t0 + limit;
        let mut last_poll = Instant::now();
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok((p, at)) => {
                    if p.parent() == Some(self.dir.as_path()) && holds(&p) {
                        return Ok(at.saturating_duration_since(t0));
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => bail!("the watch on targets/ stopped: {e}"),
            }
            // A safety net, should an event be missed: the whole folder, rarely.
            if last_poll.elapsed() > Duration::from_secs(1) {
                last_poll = Instant::now();
                if published_in(&self.dir).contains(instance) {
                    return Ok(t0.elapsed());
                }
            }
            if Instant::now() > deadline {
                bail!("raywatch did not write {instance} to targets/ within {limit:?}");
            }
        }
    }
}

/// Rename-to-listed latency: through raywatch, and straight into targets/ (Prometheus' floor).
pub fn latency(trials: usize) -> Result<()> {
    latency_with(trials, 0, false)
}

/// Rename-to-listed latency with `background` live clusters (rewritten every
/// 5 s) beside the trials. `own_only` measures raywatch's share alone
/// (rename → its targets file written): no wait for Prometheus, no floor,
/// trials 0–500 ms apart instead of 0–5 s.
pub fn latency_with(trials: usize, background: usize, own_only: bool) -> Result<()> {
    let stack = BenchStack::up()?;
    let lister = Lister::new(&stack)?;
    let _rewriter = background_clusters(&stack, background)?;
    let watch = TargetsWatch::new(&stack.home.targets_dir())?;
    let (mut through, mut own, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    // Prometheus hands discovered targets over on a 5 s tick; back-to-back trials
    // would lock onto its phase. A random pause before each write samples it evenly.
    let pause = if own_only {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let jitter = || -> Result<()> {
        std::thread::sleep(random_below(pause)?);
        Ok(())
    };
    for i in 0..trials {
        jitter()?;
        let (o, t) = session_trial(&stack, &watch, &lister, i, own_only)?;
        own.push(o);
        through.extend(t);
        if own_only {
            // Its leave is published before the next trial starts.
            std::thread::sleep(Duration::from_millis(50));
            eprint!("\rtrial {}/{trials}", i + 1);
            continue;
        }
        jitter()?;
        floor.push(floor_trial(&stack, &lister, i)?);
        eprint!("\rtrial {}/{trials}", i + 1);
    }
    eprintln!();
    println!("| path | background clusters | trials | median | p95 | p99 | min | max |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let row = |name: &str, v: Vec<Duration>| println!("{}", summary(name, background, v));
    if !own_only {
        row(
            "discovery file rename → listed in /api/v1/targets (through raywatch)",
            through,
        );
        row(
            "file_sd file rename → listed (Prometheus' own floor)",
            floor,
        );
    }
    row(
        "discovery file rename → raywatch's targets file written (raywatch's share)",
        own,
    );
    Ok(())
}

/// `n` background clusters, from FIRST_PORT on: live, rewritten every 5 s,
/// published before this returns.
fn background_clusters(stack: &BenchStack, n: usize) -> Result<Option<Rewriter>> {
    if n == 0 {
        return Ok(None);
    }
    let files = make_clusters(stack, "bg", n, FIRST_PORT)?;
    let r = rewriter(&files);
    stack.wait_published(n, Duration::from_secs(180))?;
    std::thread::sleep(Duration::from_secs(5));
    Ok(Some(r))
}

/// Asks the stack's Prometheus which targets it lists.
struct Lister {
    rt: tokio::runtime::Runtime,
    client: crate::prometheus::Client,
}

impl Lister {
    fn new(stack: &BenchStack) -> Result<Lister> {
        Ok(Lister {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            client: crate::prometheus::Client::for_home(&stack.home)?,
        })
    }

    fn listed(&self, instance: &str) -> Result<bool> {
        let body = self
            .rt
            .block_on(self.client.get_text("/api/v1/targets?state=active"))?;
        Ok(body.contains(&format!("\"instance\":\"{instance}\"")))
    }

    /// The time from `t0` until `instance` is listed (polled every 10 ms, for 30 s at most).
    fn wait_listed(&self, instance: &str, t0: Instant) -> Result<Duration> {
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if self.listed(instance)? {
                return Ok(t0.elapsed());
            }
            if Instant::now() > deadline {
                bail!("{instance} was not listed within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Trial `i` through raywatch, a new session's discovery file: raywatch's own
/// share (rename to its targets file), and unless `own_only` the time until listed.
fn session_trial(
    stack: &BenchStack,
    watch: &TargetsWatch,
    lister: &Lister,
    i: usize,
    own_only: bool,
) -> Result<(Duration, Option<Duration>)> {
    let instance = format!("127.0.0.1:{}", 20000 + i);
    let session = stack.root.join(format!("session_bench_{i}"));
    fs_err::create_dir(&session)?;
    let file = session.join(DISCOVERY_FILE);
    watch.drain();
    stack.held.hold(&instance)?;
    write_discovery(&file, &instance)?;
    let t0 = Instant::now();
    let own = watch.wait_for(&instance, t0, Duration::from_secs(30))?;
    let through = if own_only {
        None
    } else {
        Some(lister.wait_listed(&instance, t0)?)
    };
    // Let the synthetic cluster go, so the folder stays small.
    fs_err::remove_dir_all(&session)?;
    stack.held.release(&instance);
    Ok((own, through))
}

/// Floor trial `i`: the same kind of target written straight into targets/, until listed.
fn floor_trial(stack: &BenchStack, lister: &Lister, i: usize) -> Result<Duration> {
    let instance = format!("127.0.0.1:{}", 40000 + i);
    let body =
        format!(r#"[{{"targets": ["{instance}"], "labels": {{"ray_io_cluster": "floor-{i}"}}}}]"#);
    let dest = stack.home.targets_dir().join(format!("floor-{i}.json"));
    crate::atomic::write_via(&stack.home.targets_tmp(), &dest, body.as_bytes(), 0o600)?;
    let t0 = Instant::now();
    let took = lister.wait_listed(&instance, t0)?;
    fs_err::remove_file(&dest)?;
    Ok(took)
}

/// CPU ticks (user + system) and RSS (KiB) and open fds of a process.
pub(crate) fn sample(pid: u32) -> Result<(u64, u64, usize)> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = fs_err::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = fs_err::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((ticks, rss, fds))
}

/// The daemon's (and Prometheus') CPU and the daemon's memory with N
/// synthetic clusters rewriting their files every 5 s.
pub fn idle(counts: &[usize], seconds: u64) -> Result<()> {
    println!("| clusters | daemon CPU | Prometheus CPU | daemon RSS | daemon open fds | window |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &n in counts {
        let stack = BenchStack::up()?;
        // Like Ray: every file rewritten every 5 s, the writes spread evenly.
        let _rewriter = rewriter(&make_clusters(&stack, "idle", n, FIRST_PORT)?);
        stack.wait_published(n, Duration::from_secs(180))?;
        std::thread::sleep(Duration::from_secs(5));
        let meter = stack.meter()?;
        std::thread::sleep(Duration::from_secs(seconds));
        let (daemon, prometheus) = meter.percent()?;
        let (_, rss, fds) = sample(stack.daemon_pid()?)?;
        println!(
            "| {n} | {daemon:.2} % | {prometheus:.2} % | {:.1} MiB | {fds} | {seconds} s |",
            rss as f64 / 1024.0
        );
    }
    Ok(())
}

/// `clusters` new sessions at once (Ray-style writes, as fast as they go),
/// then rewritten every 5 s: both processes' CPU over the next `seconds`, the
/// busiest 5 s of Prometheus, and the time until raywatch wrote every target
/// and until Prometheus listed every one.
pub fn join(clusters: usize, seconds: u64) -> Result<()> {
    let stack = BenchStack::up()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::sleep(Duration::from_secs(5));
    let prometheus_pid = stack.prometheus_pid()?;
    let meter = stack.meter()?;
    let t0 = Instant::now();
    let files = make_clusters(&stack, "join", clusters, FIRST_PORT)?;
    let created = t0.elapsed();
    let expected: BTreeSet<String> = files.iter().map(|(_, t)| t.clone()).collect();
    let _rewriter = rewriter(&files);
    let (mut written, mut listed) = (None, None);
    // Prometheus' CPU each second, for its busiest 5 s.
    let mut per_second: Vec<u64> = vec![sample(prometheus_pid)?.0];
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let window = Duration::from_secs(seconds);
    while t0.elapsed() < window {
        let second = Instant::now();
        if written.is_none() && stack.published().is_superset(&expected) {
            written = Some(t0.elapsed());
        }
        // Asked once a second until every target is listed (the answer is
        // large: asking costs Prometheus a little CPU of its own).
        if listed.is_none() && stack.listed(&rt).is_ok_and(|l| l.is_superset(&expected)) {
            listed = Some(t0.elapsed());
        }
        if let Some(d) = Duration::from_secs(1).checked_sub(second.elapsed()) {
            std::thread::sleep(d);
        }
        per_second.push(sample(prometheus_pid)?.0);
    }
    let (daemon, prometheus) = meter.percent()?;
    let peak = per_second
        .windows(6)
        .map(|w| (w[5] - w[0]) as f64 / tick / 5.0 * 100.0)
        .fold(0.0, f64::max);
    let secs = |d: Option<Duration>| match d {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => format!("not within {seconds} s"),
    };
    println!("| join | value |");
    println!("| --- | --- |");
    println!(
        "| clusters created at once | {clusters} (in {:.1} s), then rewritten every 5 s |",
        created.as_secs_f64()
    );
    println!("| daemon CPU over {seconds} s | {daemon:.1} % |");
    println!("| Prometheus CPU over {seconds} s | {prometheus:.1} % |");
    println!("| Prometheus CPU, busiest 5 s | {peak:.1} % |");
    println!(
        "| creation start → raywatch wrote every target | {} |",
        secs(written)
    );
    println!(
        "| creation start → Prometheus lists every target | {} |",
        secs(listed)
    );
    if written.is_none() || listed.is_none() {
        bail!("not every cluster was published and listed within {seconds} s");
    }
    Ok(())
}
