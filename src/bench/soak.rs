//! `raywatch-bench soak`: clusters joining and leaving for a long time — the
//! daemon's memory and descriptors, the final presence of every cluster in
//! Prometheus, and join-to-listed latency sampled throughout.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::local::{BenchStack, percentile, sample, write_discovery};
use crate::discovery::DISCOVERY_FILE;

/// slot -> (session file, target) of its live cluster, if live.
type Slots = Arc<Mutex<Vec<Option<(PathBuf, String)>>>>;

/// The latest join waiting to be timed, taken by the prober when it is free.
type Latest = Arc<Mutex<Option<(String, Instant)>>>;

/// A soak: `clusters` slots, a join or leave every `every`, for `duration`;
/// RSS and fds at start and end, the final presence of every cluster in
/// Prometheus, and join-to-listed latency sampled throughout.
pub fn soak(clusters: usize, duration: Duration, every: Duration) -> Result<()> {
    let stack = BenchStack::up()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut churn = Churn {
        stack: &stack,
        live: Arc::new(Mutex::new(vec![None; clusters])),
        latest: Arc::default(),
        generation: 0,
        joins: 0,
        leaves: 0,
    };
    for slot in 0..clusters / 2 {
        let joined = churn.join(slot)?;
        churn.live.lock().unwrap()[slot] = Some(joined);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(churn.live.clone(), clusters, stop.clone());
    stack.wait_published(clusters / 2, Duration::from_secs(300))?;
    let pid = stack.daemon_pid()?;
    let (_, rss0, fds0) = sample(pid)?;
    let meter = stack.meter()?;
    let prober = spawn_prober(&stack, churn.latest.clone(), stop.clone())?;
    churn.run(clusters, duration, every)?;
    eprintln!();
    let (cpu, prometheus_cpu) = meter.percent()?;
    let (_, rss1, fds1) = sample(pid)?;
    // Let the last changes settle (liveness bound, Prometheus' tick), then compare.
    std::thread::sleep(Duration::from_secs(30));
    let expected: BTreeSet<String> = churn
        .live
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .map(|(_, t)| t.clone())
        .collect();
    let listed = stack.listed(&rt)?;
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
    println!("| joins / leaves | {} / {} |", churn.joins, churn.leaves);
    println!(
        "| daemon RSS start → end | {:.1} MiB → {:.1} MiB |",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0
    );
    println!("| daemon open fds start → end | {fds0} → {fds1} |");
    println!("| daemon CPU during the churn | {cpu:.1} % |");
    println!("| Prometheus CPU during the churn | {prometheus_cpu:.1} % |");
    println!(
        "| final presence | {} live clusters expected, {} listed by Prometheus: {missing} missing, {extra} extra |",
        expected.len(),
        listed.len()
    );
    println!("{}", latency_row(samples));
    if missing + extra > 0 {
        bail!("{missing} clusters missing and {extra} extra in Prometheus after the soak");
    }
    Ok(())
}

/// The clusters' slots and what happened to them.
struct Churn<'a> {
    stack: &'a BenchStack,
    live: Slots,
    latest: Latest,
    generation: u64,
    joins: u64,
    leaves: u64,
}

impl Churn<'_> {
    /// A new cluster in `slot`. Every join gets a target of its own, so a
    /// rejoin is never "listed" early through its previous incarnation.
    fn join(&mut self, slot: usize) -> Result<(PathBuf, String)> {
        let generation = self.generation;
        self.generation += 1;
        let instance = format!("127.0.0.1:{}", 10000 + generation % 55000);
        let d = self
            .stack
            .root
            .join(format!("session_soak_{slot}_{generation}"));
        fs_err::create_dir(&d)?;
        let f = d.join(DISCOVERY_FILE);
        self.stack.held.hold(&instance)?;
        write_discovery(&f, &instance)?;
        Ok((f, instance))
    }

    /// A join or a leave in a random slot every `every`, for `duration`.
    fn run(&mut self, clusters: usize, duration: Duration, every: Duration) -> Result<()> {
        let mut seed = u64::from(std::process::id());
        let start = Instant::now();
        while start.elapsed() < duration {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let slot = ((seed >> 33) as usize) % clusters;
            let current = self.live.lock().unwrap()[slot].take();
            match current {
                Some((f, target)) => {
                    fs_err::remove_dir_all(f.parent().context("session dir")?)?;
                    self.stack.held.release(&target);
                    self.leaves += 1;
                }
                None => {
                    let (f, target) = self.join(slot)?;
                    self.live.lock().unwrap()[slot] = Some((f, target.clone()));
                    *self.latest.lock().unwrap() = Some((target, Instant::now()));
                    self.joins += 1;
                }
            }
            std::thread::sleep(every);
            let changes = self.joins + self.leaves;
            if changes > 0 && changes.is_multiple_of(600) {
                eprintln!(
                    "soak: {:.0} s of {:.0} s",
                    start.elapsed().as_secs_f64(),
                    duration.as_secs_f64()
                );
            }
        }
        Ok(())
    }
}

/// Like Ray: every live file rewritten every 5 s, until `stop`.
fn spawn_writer(live: Slots, clusters: usize, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let gap = super::local::RAY_PERIOD / clusters.max(1) as u32;
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
}

/// Times each latest join until Prometheus lists it (30 s at most), until `stop`.
fn spawn_prober(
    stack: &BenchStack,
    latest: Latest,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Vec<Duration>>> {
    // Its own client: a connection pool must not be shared across runtimes.
    let client = crate::prometheus::Client::for_home(&stack.home)?;
    Ok(std::thread::spawn(move || -> Vec<Duration> {
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
    }))
}

/// The table's join → listed row.
fn latency_row(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "| join → listed | no sample |".into();
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "| join → listed (sampled) | {} samples: median {:.0} ms, p95 {:.0} ms, min {:.0} ms, max {:.0} ms |",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.95)),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}
