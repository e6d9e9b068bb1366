//! The command line: parsing (clap), and one function per command.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use hyper::Method;

use crate::api::{self, AttachRequest, AttachResponse, DetachRequest, NotRunning};
use crate::config::{StackConfig, parse_duration};
use crate::escape;
use crate::home::Home;
use crate::status::StatusReport;

/// Prometheus monitoring for every Ray cluster on this machine.
///
/// `raywatch up` starts a private Prometheus on a free loopback port and a daemon
/// that finds every Ray cluster (any --temp-dir), labels its targets with
/// `ray_io_cluster`, and drops them when the cluster dies. No file to edit, no reload.
#[derive(Parser, Debug)]
#[command(name = "raywatch", version, propagate_version = true)]
#[command(
    after_help = "Examples:\n  raywatch up                     start the stack and watch /tmp/ray*\n  raywatch status                 clusters, targets and their health\n  raywatch query 'up{job=\"ray\"}'   ask this stack's Prometheus\n  raywatch attach /nfs/ray_tmp --name train\n  eval \"$(raywatch env --temp-dir /tmp/ray_me)\"   then ray start\n  raywatch down"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// The stack's home folder [default: $XDG_STATE_HOME/raywatch or ~/.local/state/raywatch]
    #[arg(long, global = true, env = "RAYWATCH_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the stack (Prometheus and the discovery daemon); on a running stack, apply changed settings.
    Up(UpArgs),
    /// Stop the stack started by `up`; keeps its data unless --purge.
    Down {
        /// Also delete the home folder: data, targets, secrets and logs.
        #[arg(long)]
        purge: bool,
    },
    /// Show the stack and every cluster it follows, with each target's scrape health.
    Status {
        /// Print the report as JSON (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Run an instant PromQL query against this stack's Prometheus.
    Query {
        /// The PromQL expression, e.g. 'ray_node_cpu_utilization{ray_io_cluster="alice-ray"}'.
        promql: String,
        /// Print Prometheus' own JSON response body.
        #[arg(long)]
        json: bool,
    },
    /// Follow a Ray temp dir, session dir or discovery file outside the watched roots.
    Attach {
        /// A Ray temp dir, a session dir, or a prom_metrics_service_discovery.json.
        path: PathBuf,
        /// The cluster's name (the `ray_io_cluster` label).
        #[arg(long)]
        name: Option<String>,
    },
    /// Stop following an attached cluster.
    Detach {
        /// The name the cluster has in `raywatch status`.
        name: String,
    },
    /// Print shell exports for the next `ray start`: eval "$(raywatch env)".
    ///
    /// Points Ray's Dashboard at this stack's Prometheus (with its credentials) and
    /// Grafana, hands out free metrics ports so clusters do not collide, and
    /// announces the name the cluster will get.
    Env {
        /// The --temp-dir the next cluster will use [default: $RAY_TMPDIR/ray or /tmp/ray]
        #[arg(long, value_name = "DIR")]
        temp_dir: Option<PathBuf>,
        /// The name the cluster should get (its `ray_io_cluster`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the Grafana URL of a cluster's Ray dashboard, and how to reach it from a laptop.
    Open {
        /// The cluster's name in `raywatch status`.
        name: String,
    },
    /// Grafana helpers.
    #[command(subcommand)]
    Grafana(GrafanaCommand),
    /// Measure raywatch against a real Prometheus (for docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the daemon in this process (what `up` starts in the background).
    #[command(hide = true)]
    Daemon {
        /// Log to <home>/logs/daemon.log (rotated) instead of stderr.
        #[arg(long)]
        log_file: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum GrafanaCommand {
    /// Print the provisioning folder and the lines that point an existing Grafana at it.
    Dir,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Discovery-file rename to target listed by Prometheus, beside Prometheus' own floor.
    Latency {
        #[arg(long, default_value_t = 50)]
        trials: usize,
    },
    /// Clusters joining and leaving for a long time: memory, fds, final presence, latency.
    Soak {
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        every: Duration,
    },
    /// The daemon's CPU and RSS with N synthetic clusters rewriting every 5 s.
    Idle {
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        clusters: Vec<usize>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Run in the foreground (for systemd, Slurm job steps, containers) instead of detaching.
    #[arg(long)]
    pub foreground: bool,
    /// Agree to download Prometheus when none is installed.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Prometheus' port on 127.0.0.1 [default: a free port, kept across restarts]
    #[arg(long, value_name = "N", help_heading = "Prometheus")]
    pub prometheus_port: Option<u16>,
    /// The Prometheus binary to run.
    #[arg(long, value_name = "PATH", help_heading = "Prometheus")]
    pub prometheus_bin: Option<PathBuf>,
    /// How often targets are scraped [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Prometheus")]
    pub scrape_interval: Option<Duration>,
    /// How long samples are kept [default: 15days]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Prometheus")]
    pub retention: Option<Duration>,
    /// The Grafana binary to run [default: $RAYWATCH_GRAFANA, `grafana` or `grafana-server` on PATH]
    #[arg(long, value_name = "PATH", help_heading = "Grafana")]
    pub grafana_bin: Option<PathBuf>,
    /// Grafana's port on 127.0.0.1 [default: a free port, kept across restarts]
    #[arg(long, value_name = "N", help_heading = "Grafana")]
    pub grafana_port: Option<u16>,
    /// Let anyone who can reach Grafana's port view dashboards without logging in.
    #[arg(
        long,
        help_heading = "Grafana",
        overrides_with = "no_grafana_anonymous"
    )]
    pub grafana_anonymous: bool,
    /// Require a login to view dashboards again (the default).
    #[arg(long, help_heading = "Grafana")]
    pub no_grafana_anonymous: bool,
    /// A Ray temp dir to watch besides the defaults (repeatable; it may not exist yet).
    #[arg(long = "watch", value_name = "DIR", help_heading = "Discovery")]
    pub watch: Vec<PathBuf>,
    /// Watch only the --watch folders, not /tmp/ray* and $RAY_TMPDIR/ray*.
    #[arg(long, help_heading = "Discovery", overrides_with = "default_watch")]
    pub no_default_watch: bool,
    /// Watch /tmp/ray* and $RAY_TMPDIR/ray* again (the default).
    #[arg(long, help_heading = "Discovery")]
    pub default_watch: bool,
    /// A cluster whose discovery file is not rewritten for this long is dead [default: 20s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Discovery")]
    pub liveness: Option<Duration>,
    /// Also follow discovery files owned by this uid (repeatable).
    #[arg(long, value_name = "UID", help_heading = "Discovery")]
    pub trust_uid: Vec<u32>,
}

/// Entry point: runs the command and turns errors into `error:` / `Caused by:` lines.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Messages carry paths and names from outside raywatch: their control
            // characters are shown escaped, the line breaks raywatch wrote are kept.
            eprintln!("error: {}", escape::lines(&e.to_string()));
            for cause in e.chain().skip(1) {
                eprintln!("  Caused by: {}", escape::lines(&cause.to_string()));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::resolve(cli.global.home)?;
    match cli.command {
        Command::Up(args) => up(&home, args),
        Command::Down { purge } => down(&home, purge),
        Command::Status { json } => status(&home, json),
        Command::Query { promql, json } => query(&home, &promql, json),
        Command::Attach { path, name } => attach(&home, path, name),
        Command::Detach { name } => detach(&home, name),
        Command::Env { temp_dir, name } => env(&home, temp_dir, name),
        Command::Open { name } => open(&home, &name),
        Command::Grafana(GrafanaCommand::Dir) => grafana_dir(&home),
        Command::Bench(BenchCommand::Latency { trials }) => {
            crate::bench::latency(trials)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Soak {
            clusters,
            duration,
            every,
        }) => {
            crate::bench::soak(clusters, duration, every)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Idle { clusters, seconds }) => {
            crate::bench::idle(&clusters, seconds)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon { log_file } => {
            init_logging(log_file.then(|| home.daemon_log()));
            crate::daemon::run(home)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(file: Option<PathBuf>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAYWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match file {
        Some(path) => {
            let log = crate::logfile::SharedLog::open(path);
            builder
                .with_writer(move || log.clone())
                .with_ansi(false)
                .try_init()
        }
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Serialises `up` and `down` on one home: a second caller waits (up to a
/// minute) and is told who holds the lock.
fn lock_home(home: &Home, what: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::Write as _;
    let path = home.run_dir().join("cli.lock");
    {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home.run_dir());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", escape::path(&path)))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = write!(lock, "{} raywatch {what}", std::process::id());
                return Ok(lock);
            }
            Err((f, _)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "another raywatch command ({}) has held {} for a minute\n\
                     hint: wait for it to finish, or stop that process",
                    if holder.is_empty() {
                        "pid unknown".into()
                    } else {
                        format!("pid {holder}")
                    },
                    escape::path(&path)
                );
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn fetch_status(home: &Home) -> Result<StatusReport> {
    api::call_json(&home.socket(), Method::GET, "/v1/status", None::<&()>).await
}

fn not_running(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotRunning>().is_some()
}

/// Applies the settings given on the command line over `base`; what is not
/// given keeps its value (settings persist in `<home>/config.json`).
fn apply_settings(args: &UpArgs, base: &mut StackConfig) -> Result<()> {
    if let Some(d) = args.scrape_interval {
        base.scrape_interval = d;
    }
    if let Some(d) = args.retention {
        base.retention = d;
    }
    if let Some(d) = args.liveness {
        base.liveness = d;
    }
    if args.no_default_watch {
        base.default_roots = false;
    }
    if args.default_watch {
        base.default_roots = true;
    }
    if args.grafana_anonymous {
        base.grafana_anonymous = true;
    }
    if args.no_grafana_anonymous {
        base.grafana_anonymous = false;
    }
    if !args.trust_uid.is_empty() {
        base.trust_uids = args.trust_uid.clone();
    }
    if !args.watch.is_empty() {
        let mut watch = Vec::new();
        for w in &args.watch {
            // A temp dir Ray has not created yet is fine: its parent is watched for it.
            let abs = std::fs::canonicalize(w)
                .or_else(|_| std::path::absolute(w))
                .with_context(|| format!("--watch {}: not a usable path", escape::path(w)))?;
            if !abs.is_dir() {
                eprintln!(
                    "note: --watch {} does not exist yet; it is picked up when Ray creates it",
                    escape::path(&abs)
                );
            }
            watch.push(abs);
        }
        base.watch = watch;
    }
    Ok(())
}

fn up(home: &Home, args: UpArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    home.ensure()?;
    let lock = lock_home(home, "up")?;
    let previous = StackConfig::load(&home.config())?;
    if let Ok(report) = rt.block_on(fetch_status(home)) {
        return reconfigure(home, &rt, &args, previous, &report);
    }
    let bin = match crate::install::locate(args.prometheus_bin.as_deref())? {
        Some(bin) => bin,
        None => obtain_prometheus(&rt, args.yes)?,
    };
    let (port, auto) = match args.prometheus_port {
        Some(p) => {
            crate::ports::require_free(p, "Prometheus (--prometheus-port)")?;
            (p, false)
        }
        None => match previous
            .as_ref()
            .filter(|c| crate::ports::is_free(c.prometheus_port))
        {
            Some(c) => (c.prometheus_port, c.prometheus_port_auto),
            None => (crate::ports::free_port()?, true),
        },
    };
    let grafana_bin = crate::grafana::locate(args.grafana_bin.as_deref())?;
    let grafana_port = match args.grafana_port {
        Some(p) => {
            crate::ports::require_free(p, "Grafana (--grafana-port)")?;
            p
        }
        None => match previous.as_ref().filter(|c| {
            c.grafana_port != 0 && c.grafana_port != port && crate::ports::is_free(c.grafana_port)
        }) {
            Some(c) => c.grafana_port,
            None => loop {
                let p = crate::ports::free_port()?;
                if p != port {
                    break p;
                }
            },
        },
    };
    let mut config = previous.unwrap_or_else(|| StackConfig {
        prometheus_bin: bin.clone(),
        prometheus_port: port,
        prometheus_port_auto: auto,
        scrape_interval: Duration::from_secs(10),
        retention: Duration::from_secs(15 * 86_400),
        default_roots: true,
        watch: Vec::new(),
        liveness: Duration::from_secs(20),
        trust_uids: Vec::new(),
        grafana_bin: None,
        grafana_port,
        grafana_anonymous: false,
        prometheus_name: "Prometheus".into(),
        gateway_port: 0,
        ..Default::default()
    });
    config.prometheus_bin = bin;
    config.prometheus_port = port;
    config.prometheus_port_auto = auto;
    config.grafana_bin = grafana_bin;
    config.grafana_port = grafana_port;
    config.prometheus_name = std::env::var("RAY_PROMETHEUS_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "Prometheus".into());
    apply_settings(&args, &mut config)?;
    config.save(&home.config())?;
    if args.foreground {
        // The daemon's own lock keeps it single; `down` must not wait on this one.
        drop(lock);
        init_logging(None);
        crate::daemon::run(home.clone())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut child = spawn_daemon(home)?;
    let report = rt.block_on(wait_ready(home, &mut child))?;
    if let Some(note) = &report.prometheus.port_note {
        eprintln!("warning: {}", escape::text(note));
    }
    println!("raywatch is up ({})", escape::path(home.root()));
    println!("  Prometheus  {}", escape::text(&report.prometheus.url));
    println!(
        "              user {}, password in {}",
        escape::text(&report.prometheus.user),
        escape::path(&report.prometheus.password_file)
    );
    let roots: Vec<String> = report
        .watch
        .roots
        .iter()
        .map(|r| escape::path(r).into_owned())
        .collect();
    let watching = if config.default_roots {
        "/tmp/ray* and $RAY_TMPDIR/ray*".to_string()
    } else {
        String::new()
    };
    println!(
        "  watching    {}",
        [watching, roots.join(", ")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    );
    match &report.grafana.url {
        Some(url) => println!(
            "  Grafana     {}  (admin, password in {})",
            escape::text(url),
            escape::path(&report.grafana.admin_password_file)
        ),
        None => println!(
            "  Grafana     not installed; dashboards are provisioned in {} (`raywatch grafana dir`)",
            escape::path(&report.grafana.provisioning_dir)
        ),
    }
    println!(
        "Start Ray clusters as usual (eval \"$(raywatch env)\" first wires Ray's Dashboard to this stack);"
    );
    println!("`raywatch status` lists what it finds.");
    Ok(ExitCode::SUCCESS)
}

fn obtain_prometheus(rt: &tokio::runtime::Runtime, yes: bool) -> Result<PathBuf> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let agreed = yes
        || (interactive
            && {
                eprint!(
                    "No Prometheus found ({}).\nDownload Prometheus {} from its official release (SHA-256 checked)? [y/N] ",
                    crate::install::search_description(),
                    crate::install::PINNED_VERSION
                );
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                matches!(line.trim(), "y" | "Y" | "yes")
            });
    if !agreed {
        bail!(
            "no Prometheus binary found (looked at {})\nhint: {}",
            crate::install::search_description(),
            crate::install::instructions()
        );
    }
    match rt.block_on(crate::install::download()) {
        Ok(p) => Ok(p),
        Err(download_err) => match crate::install::apt_install() {
            Ok(p) => Ok(p),
            Err(apt_err) => bail!(
                "could not get Prometheus: download failed ({download_err:#}); {apt_err:#}\nhint: {}",
                crate::install::instructions()
            ),
        },
    }
}

fn spawn_daemon(home: &Home) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the raywatch executable")?;
    // Not daemon.log: rotation renames that file, and a panic written to the
    // renamed file is lost after the next rotation.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.daemon_stderr())
        .with_context(|| format!("cannot open {}", escape::path(&home.daemon_stderr())))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home")
        .arg(home.root())
        .args(["daemon", "--log-file"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the daemon gets its own session.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn().context("cannot start the raywatch daemon")
}

async fn wait_ready(home: &Home, child: &mut std::process::Child) -> Result<StatusReport> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_message("waiting for Prometheus to be ready");
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let result = loop {
        if let Ok(report) = fetch_status(home).await {
            if report.prometheus.ready {
                break Ok(report);
            }
            if report.prometheus.child.crash_loop {
                let held = report
                    .prometheus
                    .listener_problem
                    .map(|p| format!("\n{p}"))
                    .unwrap_or_default();
                break Err(anyhow::anyhow!(
                    "Prometheus keeps exiting ({}); see {}{held}",
                    report.prometheus.child.last_exit.unwrap_or_default(),
                    escape::path(&home.prometheus_log())
                ));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Lost a race with another `up` on this home: that daemon may be the one.
            if let Ok(report) = fetch_status(home).await {
                break Ok(report);
            }
            break Err(anyhow::anyhow!(
                "the raywatch daemon exited ({status}):\n{}\n{}",
                tail(&home.daemon_log(), 10),
                tail(&home.daemon_stderr(), 10)
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "Prometheus was not ready within 90 s; see {} and {}",
                escape::path(&home.daemon_log()),
                escape::path(&home.prometheus_log())
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    result
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn down(home: &Home, purge: bool) -> Result<ExitCode> {
    if !home.exists() {
        println!("no raywatch stack at {}", escape::path(home.root()));
        return Ok(ExitCode::SUCCESS);
    }
    crate::home::check_private_dir(home.root())?;
    let _lock = lock_home(home, "down")?;
    let rt = runtime()?;
    let daemon_pid = crate::process::read_pid(&home.daemon_pid());
    let prometheus_pid = crate::process::read_pid(&home.prometheus_pid());
    // A daemon that does not answer within 5 s is stopped by PID below.
    let asked = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                api::call(&home.socket(), Method::POST, "/v1/shutdown", None),
            )
            .await
        })
        .is_ok_and(|r| r.is_ok());
    // The daemon stops Prometheus itself; whatever is left (a dead daemon's
    // child, a daemon that did not answer) is stopped here, by recorded PID, after
    // checking that the PID still runs what raywatch started.
    let home_str = home.root().to_string_lossy().into_owned();
    if let Some(pid) = daemon_pid {
        let ours = |cmd: &[String]| {
            cmd.iter().any(|a| a == "daemon") && cmd.iter().any(|a| a == &home_str)
        };
        crate::process::stop(
            pid,
            ours,
            if asked {
                Duration::from_secs(20)
            } else {
                Duration::ZERO
            },
        );
    }
    if let Some(pid) = prometheus_pid {
        let yml = format!("--config.file={}", home.prometheus_yml().display());
        crate::process::stop(pid, |cmd: &[String]| cmd.contains(&yml), Duration::ZERO);
    }
    if let Some(pid) = crate::process::read_pid(&home.grafana_pid()) {
        let ini = home.grafana_dir().join("grafana.ini").display().to_string();
        crate::process::stop(
            pid,
            |cmd: &[String]| cmd.iter().any(|a| a.contains(&ini)),
            Duration::ZERO,
        );
    }
    for f in [
        home.daemon_pid(),
        home.prometheus_pid(),
        home.grafana_pid(),
        home.socket(),
    ] {
        let _ = std::fs::remove_file(f);
    }
    if purge {
        std::fs::remove_dir_all(home.root())
            .with_context(|| format!("cannot delete {}", escape::path(home.root())))?;
        println!("raywatch stopped; {} deleted", escape::path(home.root()));
    } else {
        println!(
            "raywatch stopped (data kept in {}; `raywatch down --purge` deletes it)",
            escape::path(home.root())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status(home: &Home, json: bool) -> Result<ExitCode> {
    let rt = runtime()?;
    match rt.block_on(fetch_status(home)) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::status::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if not_running(&e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"schema": crate::status::SCHEMA, "running": false, "home": home.root()})
                );
            } else {
                println!(
                    "raywatch is not running for {}; start it with `raywatch up`",
                    escape::path(home.root())
                );
            }
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e),
    }
}

fn query(home: &Home, promql: &str, json: bool) -> Result<ExitCode> {
    let rt = runtime()?;
    let client = crate::prometheus::Client::for_home(home)?;
    let (code, body) = rt.block_on(client.query_raw(promql))?;
    if json {
        println!("{body}");
        return Ok(if code == 200 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let data = crate::prometheus::parse_answer(promql, code, &body)?;
    print!("{}", render_result(&data.result_type, &data.result));
    Ok(ExitCode::SUCCESS)
}

/// A query result as a table: one line per series, labels then value.
fn render_result(kind: &str, result: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match kind {
        "vector" | "matrix" => {
            let series = result.as_array().cloned().unwrap_or_default();
            if series.is_empty() {
                out.push_str("(no data)\n");
            }
            for s in series {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        let name = m.get("__name__").and_then(|v| v.as_str()).unwrap_or("");
                        let rest: Vec<String> = m
                            .iter()
                            .filter(|(k, _)| *k != "__name__")
                            // `v` shows JSON-quoted (C0 controls escaped by serde);
                            // DEL, C1 and bidi controls are escaped on top.
                            .map(|(k, v)| {
                                format!("{}={}", escape::text(k), escape::text(&v.to_string()))
                            })
                            .collect();
                        format!("{}{{{}}}", escape::text(name), rest.join(", "))
                    })
                    .unwrap_or_default();
                let value = if kind == "vector" {
                    escape::text(s["value"][1].as_str().unwrap_or("")).into_owned()
                } else {
                    format!(
                        "{} samples",
                        s["values"].as_array().map(|v| v.len()).unwrap_or(0)
                    )
                };
                let _ = writeln!(out, "{labels}  {value}");
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "{}",
                escape::text(result[1].as_str().unwrap_or(&result.to_string()))
            );
        }
    }
    out
}

fn attach(home: &Home, path: PathBuf, name: Option<String>) -> Result<ExitCode> {
    let rt = runtime()?;
    let abs =
        std::path::absolute(&path).with_context(|| format!("bad path {}", escape::path(&path)))?;
    let req = AttachRequest { path: abs, name };
    let resp: AttachResponse = rt
        .block_on(api::call_json(
            &home.socket(),
            Method::POST,
            "/v1/attach",
            Some(&req),
        ))
        .map_err(hint_up)?;
    if resp.clusters.is_empty() {
        println!(
            "attached {}; no Ray cluster there yet, it will appear when one starts",
            escape::path(&path)
        );
    } else {
        println!(
            "attached {}: cluster {}",
            escape::path(&path),
            resp.clusters
                .iter()
                .map(|c| escape::text(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn detach(home: &Home, name: String) -> Result<ExitCode> {
    let rt = runtime()?;
    let _: serde_json::Value = rt
        .block_on(api::call_json(
            &home.socket(),
            Method::POST,
            "/v1/detach",
            Some(&DetachRequest { name: name.clone() }),
        ))
        .map_err(hint_up)?;
    println!("detached {}", escape::text(&name));
    Ok(ExitCode::SUCCESS)
}

/// Adds the hint to start the stack to a "not running" error, after the error
/// itself (the error stays the `error:` line).
fn hint_up(e: anyhow::Error) -> anyhow::Error {
    if not_running(&e) {
        anyhow::anyhow!("{e}\nhint: start the stack with `raywatch up` first")
    } else {
        e
    }
}

/// Quotes a value for POSIX sh.
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

fn ray_default_temp_dir() -> PathBuf {
    let base = std::env::var_os("RAY_TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    base.unwrap_or_else(|| PathBuf::from("/tmp")).join("ray")
}

fn env(home: &Home, temp_dir: Option<PathBuf>, name: Option<String>) -> Result<ExitCode> {
    let rt = runtime()?;
    let report = rt.block_on(fetch_status(home)).map_err(hint_up)?;
    let temp_dir = std::path::absolute(temp_dir.unwrap_or_else(ray_default_temp_dir))?;
    if let Some(n) = &name {
        crate::registry::validate_name(n).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(c) = report
        .clusters
        .iter()
        .find(|c| c.state == "live" && c.temp_dir == temp_dir)
    {
        bail!(
            "a Ray cluster ({}) is already running in {}; give the next cluster its own temp dir\n\
             hint: raywatch env --temp-dir {}_2",
            c.name,
            escape::path(&temp_dir),
            escape::path(&temp_dir)
        );
    }
    let user = crate::process::user_name(nix::unistd::geteuid().as_raw());
    let default_name = crate::registry::sanitize_name(&format!(
        "{user}-{}",
        temp_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let taken = |n: &str| {
        report
            .clusters
            .iter()
            .any(|c| c.state == "live" && c.name == n)
    };
    let chosen = match name {
        Some(n) if taken(&n) => {
            bail!("the name {n:?} is already used by a live cluster; choose another --name")
        }
        Some(n) => Some(n),
        None if taken(&default_name) => (2..)
            .map(|i| format!("{default_name}-{i}"))
            .find(|n| !taken(n)),
        None => None,
    };
    // Attaching makes the temp dir followed wherever it is, under the announced name.
    std::fs::create_dir_all(&temp_dir)
        .with_context(|| format!("cannot create {}", escape::path(&temp_dir)))?;
    let req = AttachRequest {
        path: temp_dir.clone(),
        name: chosen.clone(),
    };
    let _: AttachResponse = rt.block_on(api::call_json(
        &home.socket(),
        Method::POST,
        "/v1/attach",
        Some(&req),
    ))?;
    let announced = chosen.unwrap_or(default_name);

    // Ray gets no credential: it copies whatever it is given into
    // world-readable files. The gateway serves this user's connections only.
    let grafana = report
        .grafana
        .url
        .clone()
        .unwrap_or_else(|| "DISABLED".into());
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let p = crate::ports::free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let vars: Vec<(&str, String)> = vec![
        ("RAY_PROMETHEUS_HOST", report.gateway.url.clone()),
        (
            "RAY_PROMETHEUS_NAME",
            report.prometheus.datasource_name.clone(),
        ),
        ("RAY_GRAFANA_HOST", grafana.clone()),
        ("RAY_GRAFANA_IFRAME_HOST", grafana),
        ("RAY_GRAFANA_CLUSTER_FILTER", announced.clone()),
        ("AUTOSCALER_METRIC_PORT", ports[0].to_string()),
        ("DASHBOARD_METRIC_PORT", ports[1].to_string()),
        ("RAYWATCH_METRICS_EXPORT_PORT", ports[2].to_string()),
        ("RAYWATCH_TEMP_DIR", temp_dir.display().to_string()),
        ("RAYWATCH_CLUSTER", announced.clone()),
    ];
    println!("# raywatch: environment for the next `ray start` (cluster {announced})");
    for (k, v) in vars {
        println!("export {k}={}", sh_quote(&v));
    }
    println!(
        "# then: ray start --head --temp-dir=\"$RAYWATCH_TEMP_DIR\" --metrics-export-port=\"$RAYWATCH_METRICS_EXPORT_PORT\""
    );
    Ok(ExitCode::SUCCESS)
}

fn open(home: &Home, name: &str) -> Result<ExitCode> {
    let rt = runtime()?;
    let report = rt.block_on(fetch_status(home)).map_err(hint_up)?;
    let c = report
        .clusters
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("no cluster is named {name:?}; `raywatch status` lists them"))?;
    match &c.grafana_url {
        Some(url) => println!("{}", escape::text(url)),
        None => println!(
            "Grafana is not running for this stack; with an existing Grafana, see `raywatch grafana dir`.\n\
             Prometheus: {}/graph?g0.expr=up%7Bray_io_cluster%3D%22{}%22%7D",
            escape::text(&report.prometheus.url),
            escape::text(name)
        ),
    }
    println!("# from a laptop: {}", crate::status::ssh_hint(&report));
    Ok(ExitCode::SUCCESS)
}

fn grafana_dir(home: &Home) -> Result<ExitCode> {
    let dir = home.grafana_dir().join("provisioning");
    if !dir.is_dir() {
        bail!(
            "{} does not exist yet; run `raywatch up` first",
            escape::path(&dir)
        );
    }
    println!("{}", dir.display());
    println!("# to use it from an existing Grafana, add to its grafana.ini:");
    println!("[paths]");
    println!("provisioning = {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `up` on a running stack: apply changed settings, or report that it runs.
fn reconfigure(
    home: &Home,
    rt: &tokio::runtime::Runtime,
    args: &UpArgs,
    previous: Option<StackConfig>,
    report: &StatusReport,
) -> Result<ExitCode> {
    let current = previous
        .with_context(|| format!("the running stack has no {}", escape::path(&home.config())))?;
    let mut wanted = current.clone();
    apply_settings(args, &mut wanted)?;
    let port_change = args
        .prometheus_port
        .is_some_and(|p| p != current.prometheus_port)
        || args.grafana_port.is_some_and(|p| p != current.grafana_port)
        || args.prometheus_bin.is_some()
        || args.grafana_bin.is_some();
    if port_change {
        bail!(
            "raywatch is running for {}; ports and binaries change only on a fresh start\n\
             hint: raywatch down, then raywatch up with the new flags",
            escape::path(home.root())
        );
    }
    if wanted == current {
        println!(
            "raywatch is already running for {} (daemon pid {}): Prometheus at {}",
            escape::path(home.root()),
            report.daemon.pid,
            escape::text(&report.prometheus.url)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let resp: crate::api::ReconfigureResponse = rt
        .block_on(api::call_json(
            &home.socket(),
            Method::POST,
            "/v1/config",
            Some(&wanted),
        ))
        .context("the running stack kept its previous configuration")?;
    println!(
        "raywatch is running for {}; applied: {}",
        escape::path(home.root()),
        escape::text(&resp.changes.join("; "))
    );
    Ok(ExitCode::SUCCESS)
}
