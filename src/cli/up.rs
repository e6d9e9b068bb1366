//! `raywatch up`: starting the stack (finding Prometheus, choosing ports, spawning and
//! waiting for the daemon), and applying changed settings to a running one.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::args::UpArgs;
use super::receivers::{
    alertmanager_bin, alertmanager_port, apply_notify, check_notifications, check_receivers,
};
use super::{Exit, Hint, call_daemon, fetch_status, init_logging, lock_home, runtime};
use crate::config::StackConfig;
use crate::error::HintExt;
use crate::escape;
use crate::home::Home;
use crate::status::StatusReport;

pub(super) fn up(home: &Home, args: UpArgs) -> Result<Exit> {
    let rt = runtime()?;
    home.ensure()?;
    let lock = lock_home(home, "up")?;
    let previous = StackConfig::load(&home.config())?;
    if let Ok(report) = rt.block_on(fetch_status(home)) {
        return reconfigure(home, &rt, &args, previous, &report);
    }
    let (bin, found_note) = prometheus_bin(&rt, &args)?;
    let (port, auto) = prometheus_port(&args, previous.as_ref())?;
    let grafana_bin = grafana_bin(&args)?;
    let grafana_port = grafana_port(&args, previous.as_ref(), port)?;
    let alertmanager_bin = alertmanager_bin(&args)?;
    let alertmanager_port = alertmanager_port(previous.as_ref(), &[port, grafana_port])?;
    // A new home starts from the defaults; the binaries and ports are set below.
    let mut config = previous.unwrap_or_default();
    let version = crate::prometheus::version(&bin);
    check_no_downgrade(
        config.prometheus_version,
        version,
        &config.prometheus_bin,
        &bin,
    )?;
    config.prometheus_version = version.or(config.prometheus_version);
    config.prometheus_bin = bin;
    config.prometheus_port = port;
    config.prometheus_port_auto = auto;
    config.grafana_bin = grafana_bin;
    config.grafana_port = grafana_port;
    config.alertmanager_bin = alertmanager_bin;
    config.alertmanager_port = alertmanager_port;
    config.prometheus_name = crate::env::ray_prometheus_name()
        .unwrap_or_else(|| crate::config::DEFAULT_PROMETHEUS_NAME.into());
    apply_settings(&args, &mut config)?;
    apply_notify(home, &args, &mut config)?;
    if config.agent {
        check_agent_support(&config.prometheus_bin)?;
    }
    // Receivers and no Alertmanager: got like Prometheus (Debian's package as
    // root, else the release download, with --yes or the user's consent).
    if config.has_receivers() && !config.agent && config.alertmanager_bin.is_none() {
        config.alertmanager_bin = Some(super::install::obtain(
            &rt,
            crate::install::Program::Alertmanager,
            args.yes,
            "raywatch up",
        )?);
    }
    check_notifications(&config)?;
    super::user_rules::check(&config)?;
    config.save(&home.config())?;
    crate::alertmanager::prune_copies(home, &config);
    if args.foreground {
        // The daemon's own lock keeps it single; `down` must not wait on this one.
        drop(lock);
        init_logging(None);
        crate::daemon::run(home.clone())?;
        return Ok(Exit::Success);
    }
    let mut child = spawn_daemon(home)?;
    let report = rt.block_on(wait_ready(home, &mut child))?;
    if let Some(note) = found_note {
        eprintln!("{note}");
    }
    println!("raywatch is up ({})", escape::path(home.root()));
    // The same lines as in `status` (a moved port's note included).
    print!(
        "{}",
        crate::status::stack_lines(&report, config.default_roots)
    );
    println!(
        "Start Ray clusters as usual (eval \"$(raywatch env)\" first wires Ray's Dashboard to this stack);"
    );
    println!("`raywatch status` lists what it finds.");
    Ok(Exit::Success)
}

/// The Prometheus to run, and the note naming the one found (said once the stack
/// is up, so that an error stays the first line of output).
fn prometheus_bin(
    rt: &tokio::runtime::Runtime,
    args: &UpArgs,
) -> Result<(PathBuf, Option<String>)> {
    Ok(
        match crate::install::locate(args.prometheus_bin.as_deref())? {
            Some(found) => {
                let note = format!(
                    "Prometheus: {} ({})",
                    escape::path(&found.path),
                    found.describe()
                );
                (found.path, Some(note))
            }
            None => (
                super::install::obtain(
                    rt,
                    crate::install::Program::Prometheus,
                    args.yes,
                    "raywatch up",
                )?,
                None,
            ),
        },
    )
}

/// Prometheus' port and whether raywatch chose it: the flag's, else the previous
/// one while free, else a fresh one.
fn prometheus_port(args: &UpArgs, previous: Option<&StackConfig>) -> Result<(u16, bool)> {
    Ok(match args.prometheus_port {
        Some(p) => {
            crate::ports::require_free(p, "Prometheus (--prometheus-port)")?;
            (p, false)
        }
        None => match previous.filter(|c| crate::ports::is_free(c.prometheus_port)) {
            Some(c) => (c.prometheus_port, c.prometheus_port_auto),
            None => (crate::ports::free_port()?, true),
        },
    })
}

/// The Grafana to run, if any.
fn grafana_bin(args: &UpArgs) -> Result<Option<PathBuf>> {
    Ok(match crate::grafana::locate(args.grafana_bin.as_deref())? {
        Some(bin) => Some(bin),
        // One `raywatch install grafana` put in the cache; Grafana is optional, so a
        // cache raywatch refuses costs Grafana, not the stack.
        None => crate::install::cached(crate::install::Program::Grafana).unwrap_or_else(|e| {
            let shown = super::error::render(&e);
            eprint!(
                "warning: not running the cached Grafana: {}",
                shown.strip_prefix("error: ").unwrap_or(&shown)
            );
            None
        }),
    })
}

/// Grafana's port (reserved even without Grafana): the flag's, else the previous
/// one while free, else a fresh one other than Prometheus' `port`.
fn grafana_port(args: &UpArgs, previous: Option<&StackConfig>, port: u16) -> Result<u16> {
    if let Some(p) = args.grafana_port {
        crate::ports::require_free(p, "Grafana (--grafana-port)")?;
        return Ok(p);
    }
    if let Some(c) = previous.filter(|c| {
        c.grafana_port != 0 && c.grafana_port != port && crate::ports::is_free(c.grafana_port)
    }) {
        return Ok(c.grafana_port);
    }
    loop {
        let p = crate::ports::free_port()?;
        if p != port {
            return Ok(p);
        }
    }
}

/// `up` on a running stack: apply changed settings, or report that it runs.
fn reconfigure(
    home: &Home,
    rt: &tokio::runtime::Runtime,
    args: &UpArgs,
    previous: Option<StackConfig>,
    report: &StatusReport,
) -> Result<Exit> {
    let current = previous
        .with_context(|| format!("the running stack has no {}", escape::path(&home.config())))?;
    let mut wanted = current.clone();
    apply_settings(args, &mut wanted)?;
    super::user_rules::check(&wanted)?;
    let port_change = args
        .prometheus_port
        .is_some_and(|p| p != current.prometheus_port)
        || args.grafana_port.is_some_and(|p| p != current.grafana_port)
        || args.prometheus_bin.is_some()
        || args.grafana_bin.is_some()
        || args.alertmanager_bin.is_some();
    if port_change {
        return Err(Hint::attach(
            anyhow!(
                "raywatch is running for {}; ports and binaries change only on a fresh start",
                escape::path(home.root())
            ),
            "raywatch down, then raywatch up with the new flags",
        ));
    }
    // Receivers: their files read and copied, checked like at a fresh start; a
    // refused change leaves no copy behind.
    apply_notify(home, args, &mut wanted)?;
    if let Err(e) = check_receivers(home, &current, &wanted) {
        crate::alertmanager::prune_copies(home, &current);
        return Err(e);
    }
    if wanted == current {
        println!(
            "raywatch is already running for {} (daemon pid {}): Prometheus at {}",
            escape::path(home.root()),
            report.daemon.pid,
            escape::text(&report.prometheus.url)
        );
        return Ok(Exit::Success);
    }
    let resp: crate::api::ReconfigureResponse = match rt.block_on(call_daemon(home, &wanted)) {
        Ok(r) => r,
        Err(e) => {
            crate::alertmanager::prune_copies(home, &current);
            return Err(e.context("the running stack kept its previous configuration"));
        }
    };
    crate::alertmanager::prune_copies(home, &wanted);
    println!(
        "raywatch is running for {}; applied: {}",
        escape::path(home.root()),
        escape::text(&resp.changes.join("; "))
    );
    Ok(Exit::Success)
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
    if let Some(n) = args.sample_limit {
        base.sample_limit = crate::guard::SampleLimit(n);
    }
    if args.no_top_rules {
        base.no_top_rules = true;
    }
    if args.top_rules {
        base.no_top_rules = false;
    }
    apply_alerts(args, base)?;
    if args.no_drop_label {
        base.drop_labels.clear();
    }
    if !args.drop_label.is_empty() {
        base.drop_labels = crate::guard::drop_labels(&args.drop_label).hint(
            "name a label of the series themselves (e.g. WorkerId); `raywatch query '{ray_io_cluster=\"NAME\"}'` shows them",
        )?;
    }
    apply_fleet(args, base)?;
    if !args.watch.is_empty() {
        let mut watch = Vec::new();
        for w in &args.watch {
            // A temp dir Ray has not created yet is fine: its parent is watched for it.
            let abs = fs_err::canonicalize(w)
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

/// `up`'s alert settings: the built-in rules on or off, their thresholds, the webhooks.
fn apply_alerts(args: &UpArgs, base: &mut StackConfig) -> Result<()> {
    if args.no_default_alerts {
        base.no_default_alerts = true;
    }
    if args.default_alerts {
        base.no_default_alerts = false;
    }
    if let Some(p) = args.gpu_idle_below {
        if !(0.0..=100.0).contains(&p) {
            anyhow::bail!("--gpu-idle-below {p} is not a percentage (0 to 100)");
        }
        base.alerts.gpu_idle_percent = p;
    }
    if let Some(d) = args.gpu_idle_for {
        base.alerts.gpu_idle_for = d;
    }
    super::user_rules::apply(args, base)?;
    if args.no_notify_webhook {
        base.notify_webhooks.clear();
    }
    if !args.notify_webhook.is_empty() {
        base.notify_webhooks = args
            .notify_webhook
            .iter()
            .map(|u| crate::alertmanager::check_webhook(u))
            .collect::<Result<_>>()?;
    }
    Ok(())
}

/// An absolute path to a credentials file that exists (its content is read
/// by Prometheus or at `up`, never printed).
fn credential_file(flag: &str, p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).with_context(|| format!("{flag} {}", escape::path(p)))?;
    if !abs.is_file() {
        return Err(anyhow::anyhow!(
            "{flag} {} is not a file",
            escape::path(&abs)
        ))
        .hint("give the path of a file that holds the credential (never the credential itself)");
    }
    Ok(abs)
}

/// An http(s) URL without credentials in it.
fn checked_url(flag: &str, url: &str) -> Result<String> {
    let ok_scheme = url.starts_with("http://") || url.starts_with("https://");
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
    let host_part = rest.split('/').next().unwrap_or("");
    if !ok_scheme || host_part.is_empty() {
        return Err(anyhow::anyhow!(
            "{flag} {url:?} is not an http:// or https:// URL"
        ));
    }
    if host_part.contains('@') {
        return Err(anyhow::anyhow!(
            "{flag}: the URL carries credentials (user:password@), which would end up in files and logs"
        ))
        .hint("put them in a file and pass --remote-write-basic-auth-file or --remote-write-bearer-file");
    }
    Ok(url.to_string())
}

/// Prometheus 3 writes a data folder that 2.x reads back only from 2.55 on: a stack
/// whose data 3.x wrote is not handed to an older 2.x (say a distribution's, found on
/// PATH after `up --yes` downloaded 3.x).
fn check_no_downgrade(
    wrote: Option<(u32, u32)>,
    now: Option<(u32, u32)>,
    wrote_bin: &Path,
    now_bin: &Path,
) -> Result<()> {
    const READS_V3: (u32, u32) = (2, 55);
    match (wrote, now) {
        (Some(w), Some(n)) if w.0 >= 3 && n < READS_V3 => Err(anyhow::anyhow!(
            "this stack's data was written by Prometheus {}.{} ({}), and {} is {}.{}, which cannot read it",
            w.0,
            w.1,
            escape::path(wrote_bin),
            escape::path(now_bin),
            n.0,
            n.1
        ))
        .hint(format!(
            "run the newer one: raywatch up --prometheus-bin {} (or start afresh with `raywatch down --purge`)",
            escape::path(wrote_bin)
        )),
        _ => Ok(()),
    }
}

/// Agent mode exists since Prometheus 2.32: an older binary (a distribution's 2.2x)
/// is refused with the version it needs.
fn check_agent_support(bin: &Path) -> Result<()> {
    let (want_major, want_minor) = crate::prometheus::AGENT_SINCE;
    match crate::prometheus::version(bin) {
        Some((major, minor)) if (major, minor) >= (want_major, want_minor) => Ok(()),
        found => Err(anyhow::anyhow!(
            "--agent needs Prometheus {want_major}.{want_minor} or newer; {} is {}",
            escape::path(bin),
            found.map_or("of unknown version".to_string(), |(a, b)| format!("{a}.{b}"))
        ))
        .hint("install a newer Prometheus (e.g. apt-get install prometheus) and pass --prometheus-bin, or drop --agent"),
    }
}

/// The fleet settings (remote write, agent mode, host label, central query, http_sd).
fn apply_fleet(args: &UpArgs, base: &mut StackConfig) -> Result<()> {
    if args.no_remote_write {
        base.remote_write.clear();
    }
    if let Some(remote_write) = remote_writes(args)? {
        base.remote_write = remote_write;
    }
    if args.agent {
        base.agent = true;
    }
    if args.no_agent {
        base.agent = false;
    }
    if base.agent && base.remote_write.is_empty() {
        return Err(anyhow::anyhow!(
            "--agent keeps no local data: it needs at least one --remote-write URL to send it to"
        ))
        .hint("add --remote-write URL, or drop --agent");
    }
    if let Some(h) = &args.host_label {
        let ok = !h.is_empty()
            && h.len() <= 128
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(anyhow::anyhow!(
                "--host-label {h:?}: use letters, digits, '-', '_' or '.' (at most 128)"
            ));
        }
        base.host_label = Some(h.clone());
    }
    if let Some(u) = &args.query_url {
        base.query_url = Some(
            checked_url("--query-url", u)?
                .trim_end_matches('/')
                .to_string(),
        );
    }
    if let Some(f) = &args.query_bearer_file {
        base.query_bearer_file = Some(credential_file("--query-bearer-file", f)?);
    }
    apply_sd(args, base)
}

/// The `--remote-write` URLs given, with the credential files given with them
/// (None: no URL given, the saved list stays).
fn remote_writes(args: &UpArgs) -> Result<Option<Vec<crate::config::RemoteWrite>>> {
    let file = |flag: &str, p: &Option<PathBuf>| {
        p.as_deref().map(|p| credential_file(flag, p)).transpose()
    };
    if args.remote_write.is_empty() {
        if args.remote_write_bearer_file.is_some()
            || args.remote_write_basic_auth_file.is_some()
            || args.remote_write_ca_file.is_some()
        {
            return Err(anyhow::anyhow!(
                "--remote-write-*-file applies to the --remote-write URLs given with it"
            ))
            .hint("repeat the --remote-write URL(s) with the credential flag");
        }
        return Ok(None);
    }
    let bearer = file("--remote-write-bearer-file", &args.remote_write_bearer_file)?;
    let basic = file(
        "--remote-write-basic-auth-file",
        &args.remote_write_basic_auth_file,
    )?;
    let ca = file("--remote-write-ca-file", &args.remote_write_ca_file)?;
    args.remote_write
        .iter()
        .map(|u| {
            Ok(crate::config::RemoteWrite {
                url: checked_url("--remote-write", u)?,
                bearer_file: bearer.clone(),
                basic_auth_file: basic.clone(),
                ca_file: ca.clone(),
            })
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// The http_sd endpoint's settings.
fn apply_sd(args: &UpArgs, base: &mut StackConfig) -> Result<()> {
    if args.no_sd_listen {
        base.sd_listen = None;
        base.sd_tls_cert = None;
        base.sd_tls_key = None;
    }
    if let Some(addr) = &args.sd_listen {
        addr.parse::<std::net::SocketAddr>().map_err(|_| {
            anyhow::anyhow!("--sd-listen {addr:?} is not ADDR:PORT (e.g. 0.0.0.0:9464)")
        })?;
        base.sd_listen = Some(addr.clone());
    }
    if let (Some(c), Some(k)) = (&args.sd_tls_cert, &args.sd_tls_key) {
        base.sd_tls_cert = Some(credential_file("--sd-tls-cert", c)?);
        base.sd_tls_key = Some(credential_file("--sd-tls-key", k)?);
    }
    Ok(())
}

/// The daemon's arguments; `down` knows it by them ([`crate::daemon::StackProcess::marks`]).
fn daemon_args(home: &Home) -> Vec<std::ffi::OsString> {
    vec![
        "--home".into(),
        home.root().into(),
        "daemon".into(),
        "--log-file".into(),
    ]
}

fn spawn_daemon(home: &Home) -> Result<std::process::Child> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the raywatch executable")?;
    // Not daemon.log: rotation renames that file, and a panic written to the
    // renamed file is lost after the next rotation.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(home.daemon_stderr())
        .with_context(|| format!("cannot open {}", escape::path(&home.daemon_stderr())))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(daemon_args(home))
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
    let text = fs_err::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {

    #[test]
    fn webhooks_are_refused_without_an_alertmanager_or_with_an_agent() {
        let mut cfg = StackConfig {
            notify_webhooks: vec!["http://127.0.0.1:9/hook".into()],
            ..StackConfig::default()
        };
        let e = format!("{:#}", check_notifications(&cfg).unwrap_err());
        assert!(e.contains("needs Alertmanager, and none was found"), "{e}");
        cfg.alertmanager_bin = Some("/usr/bin/prometheus-alertmanager".into());
        assert!(check_notifications(&cfg).is_ok());
        cfg.agent = true;
        let e = format!("{:#}", check_notifications(&cfg).unwrap_err());
        assert!(e.contains("an agent evaluates no alert rules"), "{e}");
        cfg.notify_webhooks.clear();
        assert!(check_notifications(&cfg).is_ok());
    }
    use super::*;

    #[test]
    fn down_knows_the_daemon_by_the_arguments_up_gives_it() {
        let home = Home::resolve(Some("/h/raywatch".into())).unwrap();
        let args: Vec<String> = daemon_args(&home)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let marks = crate::daemon::StackProcess::Daemon.marks(&home);
        assert!(marks.on(&args));
        let other = Home::resolve(Some("/h/raywatch2".into())).unwrap();
        assert!(!crate::daemon::StackProcess::Daemon.marks(&other).on(&args));
    }

    #[test]
    fn data_written_by_prometheus_3_is_not_handed_to_an_older_2x() {
        let (a, b) = (
            Path::new("/cache/prometheus"),
            Path::new("/usr/bin/prometheus"),
        );
        let err = check_no_downgrade(Some((3, 13)), Some((2, 42)), a, b).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("3.13") && text.contains("2.42"), "{text}");
        assert!(
            super::super::error::render(&err).contains("--prometheus-bin /cache/prometheus"),
            "{}",
            super::super::error::render(&err)
        );
        for (wrote, now) in [
            (Some((3, 13)), Some((2, 55))),
            (Some((3, 13)), Some((3, 5))),
            (Some((2, 42)), Some((2, 28))),
            (None, Some((2, 42))),
            (Some((3, 13)), None),
        ] {
            assert!(
                check_no_downgrade(wrote, now, a, b).is_ok(),
                "{wrote:?} {now:?}"
            );
        }
    }
}
