//! The per-stack daemon: follows Ray's folders, keeps every cluster's targets current,
//! runs Prometheus (and Grafana), and answers the control API.
//!
//! - [`follow`]: which folders are followed and which discovery files they hold;
//! - [`clusters`]: the cluster core, the daemon's state in its parts (observe, liveness);
//! - [`publish`]: keeping the target files current;
//! - [`lookups`]: a new cluster's Slurm job and GCS port, an overdue one's GCS probes;
//! - [`probe`]: asking a cluster's GCS whether it still runs;
//! - [`trust`]: whom the daemon trusts, and this machine's addresses;
//! - [`every`]: the periodic chores;
//! - [`lifecycle`]: each cluster's life, recorded in the history;
//! - [`report`]: the status report;
//! - [`control`]: the control API over the Unix socket.
//!
//! The live settings have one owner: a `watch` channel ([`Shared::settings`])
//! that the supervisor writes when it moves Prometheus to another port, and
//! that `up` writes through the control API; every part reads it from there.

mod attach;
mod clusters;
mod control;
mod every;
pub(crate) mod files;
mod follow;
mod harvest;
mod lifecycle;
mod lookups;
mod metrics;
mod probe;
mod publish;
mod published;
mod report;
mod settings;
mod trust;

pub use follow::Attachment;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;

use crate::config::StackConfig;
use crate::home::Home;
use crate::registry::Registry;
use crate::supervisor::{Spec, Supervisor};
use crate::targets::TargetsDir;
use crate::watch::Watcher;
use clusters::Core;
use follow::Follow;
use settings::SettingsWriter;

/// A live cluster that missed one rewrite is re-read and its GCS asked.
const OVERDUE: Duration = Duration::from_secs(7);
/// The safety-net rescan, when inotify works.
const RESCAN: Duration = Duration::from_secs(30);
/// The rescan when inotify is unavailable.
const RESCAN_DEGRADED: Duration = Duration::from_secs(2);
/// Coalesces a writer's burst (temp file, write, rename) into one batch. Only
/// prompt events pay it (live clusters' rewrites are drained once a second),
/// so it is kept below the registration budget's noise.
const DEBOUNCE: Duration = Duration::from_millis(1);

/// The gateway's port and counters, for `status`.
pub struct GatewayInfo {
    port: u16,
    counters: Arc<crate::gateway::Counters>,
}

/// Binds the gateway's port: the one in the config when it is still free (so
/// Ray clusters started earlier keep reaching the stack), else a fresh one.
fn bind_gateway(
    home: &Home,
    mut config: StackConfig,
) -> Result<(tokio::net::TcpListener, StackConfig)> {
    let bind = |port: u16| {
        let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))?;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    let listener = match (config.gateway_port != 0).then(|| bind(config.gateway_port)) {
        Some(Ok(l)) => l,
        other => {
            if let Some(Err(e)) = other {
                tracing::warn!(
                    "the gateway's port {} is not available ({e}; {}); Ray clusters started with the old RAY_PROMETHEUS_HOST reach nothing of this stack: run `eval \"$(raywatch env)\"` before their next start",
                    config.gateway_port,
                    crate::process::describe_holder(config.gateway_port)
                );
            }
            bind(0).context("cannot listen on 127.0.0.1 for the gateway")?
        }
    };
    let port = listener.local_addr()?.port();
    if port != config.gateway_port {
        config.gateway_port = port;
        config.save(&home.config())?;
    }
    Ok((listener, config))
}

/// What the event loop, the control API and the gateway share.
pub struct Shared {
    core: Mutex<Core>,
    wake: tokio::sync::Notify,
    shutdown: watch::Sender<bool>,
    /// The live settings, the one owner of them (see the module's doc).
    settings: Arc<watch::Sender<StackConfig>>,
    /// Their one writer, with the files made from them.
    writer: Arc<SettingsWriter>,
    prometheus: Arc<Supervisor>,
    grafana: Option<Arc<Supervisor>>,
    alertmanager: Option<Arc<Supervisor>>,
    /// The verified client of Prometheus, following its port.
    client: Mutex<crate::prometheus::Client>,
    /// Why Prometheus last moved to another port, if it did.
    port_note: Arc<Mutex<Option<String>>>,
    gateway: GatewayInfo,
    started: SystemTime,
}

/// How long a new daemon waits for the lock of one that was killed: a killed
/// process shows as a zombie while its other threads still tear down and hold
/// its files (the lock among them), longer on a loaded machine.
const DYING_DAEMON_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the stack's lock: refused at once while the recorded daemon runs,
/// waited for while it is dying.
fn lock_stack(home: &Home, file: std::fs::File) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + DYING_DAEMON_GRACE;
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, _)) => file = f,
        }
        let pid = fs_err::read_to_string(home.daemon_pid()).unwrap_or_default();
        let running = pid.trim().parse().is_ok_and(crate::process::alive);
        if running || std::time::Instant::now() > deadline {
            bail!(
                "another raywatch daemon (pid {}) already runs the stack in {}",
                pid.trim(),
                home.root().display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs the daemon for `home` until it is told to stop. Blocks.
pub fn run(home: Home) -> Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    home.ensure()?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(home.daemon_lock())
        .with_context(|| format!("cannot open {}", home.daemon_lock().display()))?;
    let _lock = lock_stack(&home, lock_file)?;
    let config = StackConfig::load(&home.config())?.with_context(|| {
        format!(
            "{} is missing; start the stack with `raywatch up`",
            home.config().display()
        )
    })?;
    raise_fd_limit();
    crate::atomic::write(
        &home.daemon_pid(),
        format!("{}\n", std::process::id()).as_bytes(),
        0o600,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(home.clone(), config));
    let _ = fs_err::remove_file(home.socket());
    let _ = fs_err::remove_file(home.daemon_pid());
    result
}

/// Raises the soft limit on open files to the hard one: an ordinary user's
/// soft limit (often 1024) is small for a daemon that holds listeners, the
/// connections it serves, and Ray's files. The listeners are bounded all the
/// same (see [`crate::listen`]).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // An unlimited hard limit is not a value setrlimit takes for open files.
    let ceiling = fs_err::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(hard);
    let wanted = hard.min(ceiling);
    if soft >= wanted {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
        Ok(()) => tracing::info!("raised the open-file limit from {soft} to {wanted}"),
        Err(e) => tracing::warn!(
            "the open-file limit stays at {soft} (raising it to {wanted} failed: {e}); `ulimit -n` shows it"
        ),
    }
}

/// The processes of a stack that `down` and a new daemon find by recorded PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackProcess {
    Daemon,
    Prometheus,
    Grafana,
    Alertmanager,
}

impl StackProcess {
    pub const ALL: [StackProcess; 4] = [
        StackProcess::Daemon,
        StackProcess::Prometheus,
        StackProcess::Grafana,
        StackProcess::Alertmanager,
    ];

    pub fn pid_file(self, home: &Home) -> PathBuf {
        match self {
            StackProcess::Daemon => home.daemon_pid(),
            StackProcess::Prometheus => home.prometheus_pid(),
            StackProcess::Grafana => home.grafana_pid(),
            StackProcess::Alertmanager => home.alertmanager_pid(),
        }
    }

    /// What its command line carries (see [`crate::process::Marks`]): the home for
    /// the daemon (`raywatch --home HOME daemon`), the config file the stack wrote
    /// for Prometheus and Grafana.
    pub fn marks(self, home: &Home) -> crate::process::Marks {
        crate::process::Marks(match self {
            StackProcess::Daemon => {
                vec!["daemon".into(), home.root().to_string_lossy().into_owned()]
            }
            StackProcess::Prometheus => {
                vec![format!("--config.file={}", home.prometheus_yml().display())]
            }
            StackProcess::Grafana => vec![format!(
                "--config={}",
                home.grafana_dir().join("grafana.ini").display()
            )],
            StackProcess::Alertmanager => {
                vec![format!(
                    "--config.file={}",
                    home.alertmanager_yml().display()
                )]
            }
        })
    }

    /// The recorded PID, when it still runs this process.
    pub fn running(self, home: &Home) -> Option<u32> {
        crate::process::read_pid(&self.pid_file(home)).filter(|&pid| self.marks(home).runs(pid))
    }
}

/// Stops a child a previous daemon left running (it was killed before it could),
/// identified by its recorded PID and its command line.
fn reap_stale_child(home: &Home, child: StackProcess) {
    if let Some(pid) = child.running(home) {
        tracing::warn!("stopping the {child:?} a previous daemon left running (pid {pid})");
        crate::process::stop(pid, &child.marks(home), Duration::ZERO);
    }
    let _ = fs_err::remove_file(child.pid_file(home));
}

/// Removes temp files a killed writer left behind (`.<name>.<pid>.tmp`, and
/// anything in `targets.tmp/`), outside the data folders.
fn sweep_temp_files(home: &Home) {
    fn walk(dir: &Path, skip: &[PathBuf], depth: u32) {
        let Ok(entries) = fs_err::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if skip.contains(&p) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 6 => walk(&p, skip, depth + 1),
                Ok(t) if t.is_file() && name.starts_with('.') && name.ends_with(".tmp") => {
                    let _ = fs_err::remove_file(&p);
                }
                _ => {}
            }
        }
    }
    walk(
        home.root(),
        &[home.prometheus_data(), home.grafana_dir().join("data")],
        0,
    );
    if let Ok(entries) = fs_err::read_dir(home.targets_tmp()) {
        for e in entries.flatten() {
            let _ = fs_err::remove_file(e.path());
        }
    }
}

/// The daemon's life: files made ready, children started, the shared state
/// built, the listeners opened, then the event loop until a stop, then the stop.
async fn serve(home: Home, config: StackConfig) -> Result<()> {
    let (password, gateway_listener, config) = prepare(&home, config)?;
    let settings = Arc::new(watch::channel(config.clone()).0);
    let writer = Arc::new(SettingsWriter::new(home.clone(), settings.clone()));
    let port_note: Arc<Mutex<Option<String>>> = Arc::default();
    let prometheus = start_prometheus(&home, writer.clone(), port_note.clone());
    let grafana = start_grafana(&home, &config);
    let alertmanager = start_alertmanager(&home, &config);
    let (fs_tx, fs_rx) = unbounded_channel::<PathBuf>();
    let core = build_core(&home, &config, settings.subscribe(), &fs_tx)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        wake: tokio::sync::Notify::new(),
        shutdown,
        settings: settings.clone(),
        writer,
        prometheus: prometheus.clone(),
        grafana: grafana.clone(),
        alertmanager: alertmanager.clone(),
        client: Mutex::new(crate::prometheus::Client::new(
            config.prometheus_port,
            password.clone(),
            Some(home.prometheus_pid()),
        )),
        port_note,
        gateway: GatewayInfo {
            port: config.gateway_port,
            counters: Arc::default(),
        },
        started: SystemTime::now(),
    });

    let api = control::serve(&home, shared.clone(), shutdown_rx.clone())?;
    let gateway = start_gateway(&shared, gateway_listener, shutdown_rx.clone());
    let event_loop = EventLoop::new(home.clone(), password, shared.clone(), fs_rx)?;
    event_loop.publish_first();
    tracing::info!(
        "raywatch daemon up for {} (pid {})",
        home.root().display(),
        std::process::id()
    );
    let sd = match &config.sd_listen {
        Some(addr) => {
            Some(start_sd(&home, &config, addr, shared.clone(), shutdown_rx.clone()).await?)
        }
        None => None,
    };
    event_loop.run(shutdown_rx).await?;

    let _ = shared.shutdown.send(true);
    let _ = api.await;
    gateway.abort();
    if let Some(sd) = sd {
        sd.abort();
    }
    for child in [&grafana, &alertmanager].into_iter().flatten() {
        child.stop().await;
    }
    prometheus.stop().await;
    drop(fs_tx);
    Ok(())
}

/// What comes before anything starts: temp files and children a killed daemon
/// left are cleaned up, the password rotated, the files written, the gateway's
/// port bound. Returns the password, the gateway's listener and the settings
/// (with the gateway's port).
fn prepare(
    home: &Home,
    config: StackConfig,
) -> Result<(String, tokio::net::TcpListener, StackConfig)> {
    sweep_temp_files(home);
    reap_stale_child(home, StackProcess::Prometheus);
    reap_stale_child(home, StackProcess::Grafana);
    reap_stale_child(home, StackProcess::Alertmanager);
    // A new password at every start: one that leaked (an old Ray file, a
    // squatter before this fix) stops working with the next `up`.
    let password = crate::prometheus::rotate_password(home)?;
    // The gateway for Ray: held by the daemon for its whole life. Bound
    // first: prometheus.yml names its port (raywatch's own metrics).
    let (listener, config) = bind_gateway(home, config)?;
    files::write(home, &config)?;
    Ok((password, listener, config))
}

/// Prometheus, restarted with backoff. A port chosen by raywatch that someone
/// took meanwhile is replaced by a fresh one, in the live settings.
fn start_prometheus(
    home: &Home,
    writer: Arc<SettingsWriter>,
    port_note: Arc<Mutex<Option<String>>>,
) -> Arc<Supervisor> {
    let home = home.clone();
    Arc::new(Supervisor::start("prometheus", move || {
        let config = writer.for_prometheus_start(&port_note)?;
        Ok(Spec {
            program: config.prometheus_bin.clone(),
            args: crate::prometheus::args(&home, &config),
            log: home.prometheus_log(),
            pid_file: home.prometheus_pid(),
        })
    }))
}

/// Grafana, when a binary was found at `up`; supervised like Prometheus.
fn start_grafana(home: &Home, config: &StackConfig) -> Option<Arc<Supervisor>> {
    config.grafana_bin.clone().map(|bin| {
        let home = home.clone();
        Arc::new(Supervisor::start("grafana", move || {
            Ok(Spec {
                program: bin.clone(),
                args: crate::grafana::command(&bin, &home),
                log: home.grafana_log(),
                pid_file: home.grafana_pid(),
            })
        }))
    })
}

/// Alertmanager, when the stack has somewhere to deliver to; supervised like Prometheus.
fn start_alertmanager(home: &Home, config: &StackConfig) -> Option<Arc<Supervisor>> {
    let bin = config
        .alertmanager_bin
        .clone()
        .filter(|_| crate::alertmanager::runs(config))?;
    let (home, config) = (home.clone(), config.clone());
    let guard = (home.clone(), config.alertmanager_port);
    let sup = Arc::new(Supervisor::start("alertmanager", move || {
        crate::alertmanager::fresh_credential(&home)?;
        Ok(Spec {
            program: bin.clone(),
            args: crate::alertmanager::args(&home, &config),
            log: home.alertmanager_log(),
            pid_file: home.alertmanager_pid(),
        })
    }));
    tokio::spawn(crate::alertmanager::guard_credential(
        guard.0,
        guard.1,
        Arc::downgrade(&sup.status),
    ));
    Some(sup)
}

/// The cluster core, with the attachments, the names and the history a previous
/// daemon left; nothing is scanned yet.
fn build_core(
    home: &Home,
    config: &StackConfig,
    settings: watch::Receiver<StackConfig>,
    fs_tx: &UnboundedSender<PathBuf>,
) -> Result<Core> {
    let attachments: Vec<Attachment> = match fs_err::read(home.attachments()) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::error!(
                "{} is not valid ({e}); starting with no attachments",
                home.attachments().display()
            );
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    let targets = TargetsDir::open(home.targets_dir(), home.targets_tmp())?;
    let mut registry = Registry::new(config.liveness);
    for (temp_dir, session, name) in targets.previous_names() {
        registry.prefer(temp_dir, session, name);
    }
    let mut core = Core::new(
        home.clone(),
        settings,
        registry,
        targets,
        Follow::new(Watcher::new(fs_tx.clone()), attachments),
    );
    core.open_history();
    Ok(core)
}

/// The gateway Ray's Dashboard queries, serving only this user.
fn start_gateway(
    shared: &Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let upstream = Arc::new(crate::gateway::Upstream {
        client: {
            let shared = shared.clone();
            Box::new(move || shared.client.lock().unwrap().clone())
        },
        counters: shared.gateway.counters.clone(),
        metrics: {
            let shared = shared.clone();
            Box::new(move || {
                let snapshot = shared
                    .core
                    .lock()
                    .unwrap()
                    .metrics_snapshot(&shared.gateway.counters);
                metrics::render(&snapshot)
            })
        },
    });
    let owner = crate::gateway::OwnerOnly::new(
        nix::unistd::geteuid().as_raw(),
        shared.gateway.counters.clone(),
    );
    tokio::spawn(crate::gateway::serve(listener, owner, upstream, shutdown))
}

/// The daemon's event loop: folder events, the 1 s tick, owners resolved, dead
/// clusters reported by probes, wake-ups and deadlines; after each, what is due
/// is published.
struct EventLoop {
    home: Home,
    password: String,
    shared: Arc<Shared>,
    fs_rx: UnboundedReceiver<PathBuf>,
    owner_tx: UnboundedSender<(String, Option<String>)>,
    owner_rx: UnboundedReceiver<(String, Option<String>)>,
    dead_tx: UnboundedSender<(PathBuf, String)>,
    dead_rx: UnboundedReceiver<(PathBuf, String)>,
    http: reqwest::Client,
}

impl EventLoop {
    fn new(
        home: Home,
        password: String,
        shared: Arc<Shared>,
        fs_rx: UnboundedReceiver<PathBuf>,
    ) -> Result<EventLoop> {
        let (owner_tx, owner_rx) = unbounded_channel();
        let (dead_tx, dead_rx) = unbounded_channel();
        Ok(EventLoop {
            home,
            password,
            shared,
            fs_rx,
            owner_tx,
            owner_rx,
            dead_tx,
            dead_rx,
            http: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    /// The first full scan and publish.
    fn publish_first(&self) {
        let mut core = self.shared.core.lock().unwrap();
        core.full_scan();
        let due = core.publish();
        drop(core);
        spawn_resolves(&self.http, due, &self.owner_tx);
    }

    /// Runs until SIGTERM, SIGINT or a stop request.
    async fn run(mut self, mut shutdown_rx: watch::Receiver<bool>) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            let mut probes = Vec::new();
            let wake_at = shared.core.lock().unwrap().next_deadline();
            tokio::select! {
                Some(p) = self.fs_rx.recv() => self.handle_fs_events(p).await,
                _ = tick.tick() => probes = self.tick(),
                Some((ep, owner)) = self.owner_rx.recv() => {
                    shared.core.lock().unwrap().attribution.record(ep, owner, Instant::now());
                }
                Some((file, reason)) = self.dead_rx.recv() => {
                    let mut core = shared.core.lock().unwrap();
                    let change = core.registry.declare_dead(&file, SystemTime::now(), reason);
                    core.log_change(&file, change);
                }
                _ = shared.wake.notified() => {}
                // Target files waiting for the write pace go out below.
                _ = sleep_until(wake_at) => {}
                _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = shutdown_rx.changed() => { tracing::info!("stop requested"); break; }
            }
            self.spawn_probes(probes);
            let due = shared.core.lock().unwrap().publish();
            spawn_resolves(&self.http, due, &self.owner_tx);
        }
        Ok(())
    }

    /// A folder event, with the rest of its writer's burst.
    async fn handle_fs_events(&mut self, first: PathBuf) {
        let mut batch = vec![first];
        tokio::time::sleep(DEBOUNCE).await;
        while let Ok(p) = self.fs_rx.try_recv() {
            batch.push(p);
        }
        self.shared.core.lock().unwrap().handle_events(batch);
    }

    /// The core's 1 s tick; the Prometheus client follows a moved port. Returns
    /// the clusters whose GCS is to be asked.
    fn tick(&self) -> Vec<(PathBuf, Vec<String>)> {
        let probes = self.shared.core.lock().unwrap().tick();
        let port = self.shared.settings.borrow().prometheus_port;
        let mut client = self.shared.client.lock().unwrap();
        if client.port() != Some(port) {
            *client = crate::prometheus::Client::new(
                port,
                self.password.clone(),
                Some(self.home.prometheus_pid()),
            );
        }
        probes
    }

    /// Asks each cluster's GCS whether it still runs; one that refuses is reported dead.
    fn spawn_probes(&self, probes: Vec<(PathBuf, Vec<String>)>) {
        for (file, addrs) in probes {
            let tx = self.dead_tx.clone();
            tokio::spawn(async move {
                if probe::all_refused(&addrs).await {
                    let _ = tx.send((
                        file,
                        format!("its GCS refuses connections ({})", addrs.join(", ")),
                    ));
                }
            });
        }
    }
}

/// Starts the http_sd endpoint (see [`crate::sd`]) on `addr`.
async fn start_sd(
    home: &Home,
    config: &StackConfig,
    addr: &str,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let token = crate::prometheus::ensure_secret(&home.sd_token())?;
    let tls = match (&config.sd_tls_cert, &config.sd_tls_key) {
        (Some(cert), Some(key)) => Some(crate::sd::tls_config(cert, key)?),
        (None, None) => None,
        _ => bail!("--sd-tls-cert and --sd-tls-key go together"),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --sd-listen"))?;
    let groups = {
        let shared = shared.clone();
        move || {
            let host = shared.settings.borrow().ray_host();
            let core = shared.core.lock().unwrap();
            core.desired()
                .into_values()
                .filter(|g| !g.targets.is_empty())
                .map(|g| {
                    let mut labels: std::collections::BTreeMap<String, String> = g
                        .labels
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    labels.insert("ray_host".into(), host.clone());
                    crate::sd::SdGroup {
                        targets: g.targets,
                        labels,
                    }
                })
                .collect()
        }
    };
    tracing::info!(
        "http_sd endpoint on {}{} (GET /sd, bearer token in {})",
        listener.local_addr()?,
        if tls.is_some() { " (TLS)" } else { "" },
        home.sd_token().display()
    );
    let state = Arc::new(crate::sd::SdState {
        token,
        groups: Box::new(groups),
    });
    Ok(tokio::spawn(crate::sd::serve(
        listener, state, tls, shutdown,
    )))
}

/// Sleeps until `at` (forever when there is none).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn spawn_resolves(
    http: &reqwest::Client,
    due: Vec<(String, Vec<String>)>,
    tx: &UnboundedSender<(String, Option<String>)>,
) {
    for (ep, claimants) in due {
        let (http, tx) = (http.clone(), tx.clone());
        tokio::spawn(async move {
            let owner = crate::attribution::resolve(&http, &ep, &claimants).await;
            match &owner {
                Some(s) => tracing::info!(
                    "{ep} is listed by {} clusters; it serves session {s}",
                    claimants.len()
                ),
                None => tracing::warn!(
                    "{ep} is listed by {} clusters; none could be confirmed as its owner",
                    claimants.len()
                ),
            }
            let _ = tx.send((ep, owner));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marks_are_on_the_command_lines_the_stack_runs() {
        let home = Home::resolve(Some("/h/raywatch".into())).unwrap();
        let config = StackConfig::default();
        let prometheus = crate::prometheus::args(&home, &config);
        assert!(StackProcess::Prometheus.marks(&home).on(&prometheus));
        let grafana = crate::grafana::command(Path::new("/usr/sbin/grafana-server"), &home);
        assert!(StackProcess::Grafana.marks(&home).on(&grafana));
        // Each process' marks are its own.
        assert!(!StackProcess::Grafana.marks(&home).on(&prometheus));
        assert!(!StackProcess::Prometheus.marks(&home).on(&grafana));
        let other = Home::resolve(Some("/h/other".into())).unwrap();
        assert!(!StackProcess::Prometheus.marks(&other).on(&prometheus));
    }
}
