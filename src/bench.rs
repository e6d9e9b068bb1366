//! `raywatch bench`: the measurements behind docs/BENCHMARKS.md, run against a real stack.
//!
//! Each benchmark starts its own stack (this binary, a temp home, `--no-default-watch`)
//! and synthetic Ray heads: discovery files written the way Ray writes them
//! (temp file, then rename).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::discovery::DISCOVERY_FILE;
use crate::home::Home;

struct BenchStack {
    home: Home,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl BenchStack {
    fn up() -> Result<BenchStack> {
        let dir = tempfile::Builder::new()
            .prefix("rwbench-")
            .tempdir_in("/tmp")?;
        let home = Home::resolve(Some(dir.path().join("home")))?;
        let root = dir.path().join("ray_bench");
        fs_err::create_dir(&root)?;
        let out = Command::new(std::env::current_exe()?)
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
            _dir: dir,
        })
    }

    fn daemon_pid(&self) -> Result<u32> {
        Ok(fs_err::read_to_string(self.home.daemon_pid())?
            .trim()
            .parse()?)
    }
}

impl Drop for BenchStack {
    fn drop(&mut self) {
        let _ = Command::new(std::env::current_exe().unwrap_or_default())
            .arg("--home")
            .arg(self.home.root())
            .args(["down", "--purge"])
            .output();
    }
}

fn write_discovery(file: &Path, target: &str) -> Result<()> {
    let tmp = file.with_extension("tmp");
    fs_err::write(
        &tmp,
        format!(r#"[{{"labels": {{"job": "ray"}}, "targets": ["{target}"]}}]"#),
    )?;
    fs_err::rename(&tmp, file)?;
    Ok(())
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "| {name} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        v.len(),
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.95).as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    )
}

/// Rename-to-listed latency: through raywatch, and straight into targets/ (Prometheus' floor).
pub fn latency(trials: usize) -> Result<()> {
    let stack = BenchStack::up()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = crate::prometheus::Client::for_home(&stack.home)?;
    let listed = |instance: &str| -> Result<bool> {
        let body = rt.block_on(client.get_text("/api/v1/targets?state=active"))?;
        Ok(body.contains(&format!("\"instance\":\"{instance}\"")))
    };
    let wait_listed = |instance: &str, t0: Instant| -> Result<Duration> {
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if listed(instance)? {
                return Ok(t0.elapsed());
            }
            if Instant::now() > deadline {
                bail!("{instance} was not listed within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (mut through, mut own, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    // Prometheus hands discovered targets over on a 5 s tick; back-to-back trials
    // would lock onto its phase. A random pause before each write samples it evenly.
    let jitter = || -> Result<()> {
        let mut b = [0u8; 2];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
        std::thread::sleep(Duration::from_millis(
            u64::from(u16::from_le_bytes(b)) % 5000,
        ));
        Ok(())
    };
    for i in 0..trials {
        jitter()?;
        // Through raywatch: a new session's discovery file.
        let instance = format!("127.0.0.1:{}", 20000 + i);
        let session = stack.root.join(format!("session_bench_{i}"));
        fs_err::create_dir(&session)?;
        let file = session.join(DISCOVERY_FILE);
        let targets_file = stack
            .home
            .targets_dir()
            .join(format!("{}-ray_bench-{i}.json", user()));
        write_discovery(&file, &instance)?;
        let t0 = Instant::now();
        let mut own_t = None;
        let deadline = t0 + Duration::from_secs(30);
        // raywatch's own share: rename to the targets file holding the target.
        while own_t.is_none() && Instant::now() < deadline {
            if let Ok(dir) = fs_err::read_dir(stack.home.targets_dir()) {
                for e in dir.flatten() {
                    if fs_err::read_to_string(e.path())
                        .is_ok_and(|t| t.contains(&format!("\"{instance}\"")))
                    {
                        own_t = Some(t0.elapsed());
                    }
                }
            }
            if own_t.is_none() {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        own.push(own_t.with_context(|| {
            format!(
                "raywatch never wrote {instance} ({})",
                targets_file.display()
            )
        })?);
        through.push(wait_listed(&instance, t0)?);
        // Let the synthetic cluster go, so the folder stays small.
        fs_err::remove_dir_all(&session)?;

        // The floor: the same target written straight into targets/.
        let instance = format!("127.0.0.1:{}", 40000 + i);
        let body = format!(
            r#"[{{"targets": ["{instance}"], "labels": {{"ray_io_cluster": "floor-{i}"}}}}]"#
        );
        let dest = stack.home.targets_dir().join(format!("floor-{i}.json"));
        jitter()?;
        crate::atomic::write_via(&stack.home.targets_tmp(), &dest, body.as_bytes(), 0o600)?;
        let t0 = Instant::now();
        floor.push(wait_listed(&instance, t0)?);
        fs_err::remove_file(&dest)?;
        eprint!("\rtrial {}/{trials}", i + 1);
    }
    eprintln!();
    println!("| path | trials | median | p95 | min | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "{}",
        summary(
            "discovery file rename → listed in /api/v1/targets (through raywatch)",
            through
        )
    );
    println!(
        "{}",
        summary(
            "file_sd file rename → listed (Prometheus' own floor)",
            floor
        )
    );
    println!(
        "{}",
        summary(
            "discovery file rename → raywatch's targets file written (raywatch's share)",
            own
        )
    );
    Ok(())
}

fn user() -> String {
    crate::process::user_name(nix::unistd::geteuid().as_raw())
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

/// The daemon's CPU and memory with N synthetic clusters rewriting their files every 5 s.
pub fn idle(counts: &[usize], seconds: u64) -> Result<()> {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    println!("| clusters | daemon CPU | daemon RSS | daemon open fds | window |");
    println!("| --- | --- | --- | --- | --- |");
    for &n in counts {
        let stack = BenchStack::up()?;
        let files: Vec<PathBuf> = (0..n)
            .map(|k| {
                let d = stack.root.join(format!("session_idle_{k}"));
                fs_err::create_dir(&d)?;
                let f = d.join(DISCOVERY_FILE);
                write_discovery(&f, &format!("127.0.0.1:{}", 1 + k))?;
                Ok(f)
            })
            .collect::<Result<_>>()?;
        // Like Ray: every file rewritten every 5 s, the writes spread evenly.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, files) = (stop.clone(), files.clone());
            std::thread::spawn(move || {
                let gap = Duration::from_secs(5) / files.len().max(1) as u32;
                while !stop.load(Ordering::Relaxed) {
                    for (k, f) in files.iter().enumerate() {
                        let _ = write_discovery(f, &format!("127.0.0.1:{}", 1 + k));
                        std::thread::sleep(gap);
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while fs_err::read_dir(stack.home.targets_dir())?.count() < n {
            if Instant::now() > deadline {
                bail!("not all {n} clusters were published within 180 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(5));
        let pid = stack.daemon_pid()?;
        let (t0, _, _) = sample(pid)?;
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let (t1, rss, fds) = sample(pid)?;
        let cpu = (t1 - t0) as f64 / tick / start.elapsed().as_secs_f64() * 100.0;
        println!(
            "| {n} | {cpu:.2} % | {:.1} MiB | {fds} | {seconds} s |",
            rss as f64 / 1024.0
        );
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
    }
    Ok(())
}

/// A soak: `clusters` slots, a join or leave every `every`, for `duration`;
/// RSS and fds at start and end, the final presence of every cluster in
/// Prometheus, and join-to-listed latency sampled throughout.
pub fn soak(clusters: usize, duration: Duration, every: Duration) -> Result<()> {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    let stack = BenchStack::up()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = crate::prometheus::Client::for_home(&stack.home)?;
    // Every join gets a target of its own, so a rejoin is never "listed" early
    // through its previous incarnation.
    let instance = |generation: u64| format!("127.0.0.1:{}", 10000 + generation % 55000);
    // slot -> (session file, target) of its live cluster, if live.
    type Slots = Vec<Option<(PathBuf, String)>>;
    let live: Arc<Mutex<Slots>> = Arc::new(Mutex::new(vec![None; clusters]));
    let join = |slot: usize, generation: u64| -> Result<(PathBuf, String)> {
        let d = stack.root.join(format!("session_soak_{slot}_{generation}"));
        fs_err::create_dir(&d)?;
        let f = d.join(DISCOVERY_FILE);
        write_discovery(&f, &instance(generation))?;
        Ok((f, instance(generation)))
    };
    let mut generation = 0u64;
    for slot in 0..clusters / 2 {
        live.lock().unwrap()[slot] = Some(join(slot, generation)?);
        generation += 1;
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Like Ray: every live file rewritten every 5 s.
    let writer = {
        let (stop, live) = (stop.clone(), live.clone());
        std::thread::spawn(move || {
            let gap = Duration::from_secs(5) / clusters.max(1) as u32;
            while !stop.load(Ordering::Relaxed) {
                for slot in 0..clusters {
                    let f = live.lock().unwrap()[slot].clone();
                    if let Some((f, target)) = f {
                        let _ = write_discovery(&f, &target);
                    }
                    std::thread::sleep(gap);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while fs_err::read_dir(stack.home.targets_dir())?.count() < clusters / 2 {
        if Instant::now() > deadline {
            bail!(
                "the first {} clusters were not published within 300 s",
                clusters / 2
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = stack.daemon_pid()?;
    let (ticks0, rss0, fds0) = sample(pid)?;
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;

    // The latest join waiting to be timed, taken by the prober when it is free.
    let latest: Arc<Mutex<Option<(String, Instant)>>> = Arc::new(Mutex::new(None));
    let prober = {
        // Its own client: a connection pool must not be shared across runtimes.
        let (stop, latest, client) = (
            stop.clone(),
            latest.clone(),
            crate::prometheus::Client::for_home(&stack.home)?,
        );
        std::thread::spawn(move || -> Vec<Duration> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some((inst, t0)) = latest.lock().unwrap().take() else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                while t0.elapsed() < Duration::from_secs(30) && !stop.load(Ordering::Relaxed) {
                    let body = rt
                        .block_on(client.get_text("/api/v1/targets?state=active"))
                        .unwrap_or_default();
                    if body.contains(&format!("\"instance\":\"{inst}\"")) {
                        samples.push(t0.elapsed());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        })
    };
    let mut seed = u64::from(std::process::id());
    let (mut joins, mut leaves) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let slot = ((seed >> 33) as usize) % clusters;
        let current = live.lock().unwrap()[slot].take();
        match current {
            Some((f, _)) => {
                fs_err::remove_dir_all(f.parent().context("session dir")?)?;
                leaves += 1;
            }
            None => {
                let (f, target) = join(slot, generation)?;
                generation += 1;
                live.lock().unwrap()[slot] = Some((f, target.clone()));
                *latest.lock().unwrap() = Some((target, Instant::now()));
                joins += 1;
            }
        }
        std::thread::sleep(every);
        if joins + leaves > 0 && (joins + leaves) % 600 == 0 {
            eprintln!(
                "soak: {:.0} s of {:.0} s",
                start.elapsed().as_secs_f64(),
                duration.as_secs_f64()
            );
        }
    }
    eprintln!();
    let (ticks1, rss1, fds1) = sample(pid)?;
    let cpu = (ticks1 - ticks0) as f64 / tick / start.elapsed().as_secs_f64() * 100.0;
    // Let the last changes settle (liveness bound, Prometheus' tick), then compare.
    std::thread::sleep(Duration::from_secs(30));
    let expected: BTreeSet<String> = live
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .map(|(_, t)| t.clone())
        .collect();
    let body = rt.block_on(client.get_text("/api/v1/targets?state=active"))?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let listed: BTreeSet<String> = v["data"]["activeTargets"]
        .as_array()
        .context("no activeTargets")?
        .iter()
        .filter(|t| t["labels"]["job"] == "ray")
        .filter_map(|t| t["labels"]["instance"].as_str().map(String::from))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let samples = prober.join().unwrap_or_default();
    let missing = expected.difference(&listed).count();
    let extra = listed.difference(&expected).count();
    println!("| soak | value |");
    println!("| --- | --- |");
    println!(
        "| slots, churn | {clusters} synthetic clusters, a join or leave every {every:?}, {duration:?} |"
    );
    println!("| joins / leaves | {joins} / {leaves} |");
    println!(
        "| daemon RSS start → end | {:.1} MiB → {:.1} MiB |",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0
    );
    println!("| daemon open fds start → end | {fds0} → {fds1} |");
    println!("| daemon CPU during the churn | {cpu:.1} % |");
    println!(
        "| final presence | {} live clusters expected, {} listed by Prometheus: {missing} missing, {extra} extra |",
        expected.len(),
        listed.len()
    );
    if samples.is_empty() {
        println!("| join → listed | no sample |");
    } else {
        let mut v = samples;
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| join → listed (sampled) | {} samples: median {:.0} ms, p95 {:.0} ms, min {:.0} ms, max {:.0} ms |",
            v.len(),
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.95)),
            ms(v[0]),
            ms(v[v.len() - 1])
        );
    }
    if missing + extra > 0 {
        bail!("{missing} clusters missing and {extra} extra in Prometheus after the soak");
    }
    Ok(())
}
