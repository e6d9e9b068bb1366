//! `raywatch-bench sd`: response time and size of the http_sd endpoint (`up --sd-listen`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::fleet::{FleetStack, heads, http, row, runtime, wait_for};

/// The http_sd endpoint with `clusters` live clusters of `targets` targets
/// each: response time of `GET /sd` (with the token) over `requests`
/// requests, on one kept-alive connection and on a new connection each time.
pub fn sd(clusters: usize, targets: usize, requests: usize) -> Result<()> {
    let port = crate::ports::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let stack = FleetStack::up(&["--sd-listen", &addr])?;
    let listings = free_listings(clusters, targets)?;
    // Held by this process (raywatch publishes a local target only while a
    // trusted uid listens on it), answering nothing.
    let held = super::local::Held::new();
    for t in listings.iter().flatten() {
        held.hold(t)?;
    }
    let _heads = heads(&stack.root, listings)?;
    let token = fs_err::read_to_string(stack.home.sd_token())?
        .trim()
        .to_string();
    let sd = Sd {
        rt: runtime()?,
        url: format!("http://{addr}/sd"),
        token,
    };
    let kept = http()?;
    sd.wait_served(&kept, clusters)?;
    std::thread::sleep(Duration::from_secs(5));
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?;
    let (mut on_kept, mut on_fresh) = (Vec::new(), Vec::new());
    let mut last = Vec::new();
    for _ in 0..requests {
        let (d, body) = sd.get(&kept)?;
        on_kept.push(d);
        last = body;
        std::thread::sleep(Duration::from_millis(10));
        on_fresh.push(sd.get(&fresh)?.0);
        std::thread::sleep(Duration::from_millis(10));
    }
    print(&last, on_kept, on_fresh, clusters, targets)
}

/// `clusters` listings of `targets` free loopback ports each.
fn free_listings(clusters: usize, targets: usize) -> Result<Vec<Vec<String>>> {
    let mut free = (20000u16..=u16::MAX).filter(|&p| crate::ports::is_free(p));
    (0..clusters)
        .map(|_| {
            (0..targets)
                .map(|_| {
                    free.next()
                        .map(|p| format!("127.0.0.1:{p}"))
                        .context("not enough free ports")
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// The endpoint, and how to ask it.
struct Sd {
    rt: tokio::runtime::Runtime,
    url: String,
    token: String,
}

impl Sd {
    /// One `GET /sd` with the token: how long it took, and the body.
    fn get(&self, client: &reqwest::Client) -> Result<(Duration, Vec<u8>)> {
        self.rt.block_on(async {
            let t = Instant::now();
            let resp = client
                .get(&self.url)
                .bearer_auth(&self.token)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("GET /sd: {}", resp.status());
            }
            let body = crate::prometheus::read_bounded(resp, "GET /sd").await?;
            Ok((t.elapsed(), body))
        })
    }

    /// Waits until `GET /sd` lists every cluster.
    fn wait_served(&self, client: &reqwest::Client, clusters: usize) -> Result<()> {
        let t_wait = Instant::now();
        wait_for(
            &format!("all {clusters} clusters in GET /sd"),
            Duration::from_secs(300),
            Duration::from_millis(500),
            || {
                let (_, body) = self.get(client).ok()?;
                let v: Value = serde_json::from_slice(&body).ok()?;
                (v.as_array()?.len() >= clusters).then_some(())
            },
        )?;
        eprintln!(
            "all {clusters} clusters served after {:.0} s",
            t_wait.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The table, and the size of the `last` answer.
fn print(
    last: &[u8],
    on_kept: Vec<Duration>,
    on_fresh: Vec<Duration>,
    clusters: usize,
    targets: usize,
) -> Result<()> {
    let v: Value = serde_json::from_slice(last)?;
    let groups = v.as_array().context("GET /sd is not a JSON array")?;
    let n_targets: usize = groups
        .iter()
        .map(|g| g["targets"].as_array().map_or(0, Vec::len))
        .sum();
    println!("| GET /sd with the bearer token | requests | median | p95 | min | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "{}",
        row(
            "one kept-alive connection (as Prometheus' http_sd client)",
            on_kept,
            1
        )
    );
    println!("{}", row("a new TCP connection per request", on_fresh, 1));
    println!();
    println!(
        "response: {} bytes ({:.0} KiB), {} target groups, {n_targets} targets ({clusters} synthetic clusters × {targets} targets, rewritten every 5 s throughout)",
        last.len(),
        last.len() as f64 / 1024.0,
        groups.len()
    );
    Ok(())
}
