//! Every clap type of the command line: the commands, their flags, help and examples.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, parse_duration};

/// A flag's help naming its default, taken from [`config::StackConfig`]'s (a new home's).
fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

fn duration(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// `raywatch --version`: the version and the commit it was built from, e.g.
/// `0.1.0 (51cf8ea12 2026-12-07)` (build.rs finds the commit).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("RAYWATCH_BUILD"), ")");

/// Prometheus monitoring for every Ray cluster on this machine.
///
/// `raywatch up` starts a private Prometheus on a free loopback port and a daemon
/// that finds every Ray cluster (any --temp-dir), labels its targets with
/// `ray_io_cluster`, and drops them when the cluster dies. No file to edit, no reload.
#[derive(Parser, Debug)]
#[command(name = "raywatch", version = VERSION, propagate_version = true)]
#[command(
    after_help = "Examples:\n  raywatch up                     start the stack and watch /tmp/ray*\n  raywatch status                 clusters, targets and their health\n  raywatch query 'up{job=\"ray\"}'   ask this stack's Prometheus\n  raywatch top                    every cluster on one screen\n  raywatch attach /nfs/ray_tmp --name train\n  eval \"$(raywatch env)\"          then ray start (private temp dir, token auth)\n  raywatch down"
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

/// `raywatch alerts` subcommands.
#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Print the built-in alert rules, as a Prometheus rules file.
    Rules,
    /// Silence one cluster's notifications for a while (a planned stop), through the stack's Alertmanager.
    Silence {
        /// The cluster's name (its `ray_io_cluster`, as `raywatch status` shows it).
        name: String,
        /// How long.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, default_value = "2h")]
        duration: Duration,
        /// Why (shown in Alertmanager).
        #[arg(long)]
        comment: Option<String>,
    },
}

/// `raywatch notify` subcommands.
#[derive(Subcommand, Debug)]
pub enum NotifyCommand {
    /// Send a test notification through the stack's Alertmanager to every
    /// receiver, and say what each answered (exit 1 when any failed).
    Test {
        /// Print JSON (schema in the README).
        #[arg(long)]
        json: bool,
        /// How long to wait for every receiver's answer.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
        timeout: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the stack (Prometheus and the discovery daemon); on a running stack, apply changed settings.
    Up(Box<UpArgs>),
    /// Stop the stack started by `up`; keeps its data unless --purge.
    Down {
        /// Also delete the home folder: data, targets, secrets and logs.
        #[arg(long)]
        purge: bool,
    },
    /// Check this machine for what breaks Ray monitoring; one line per check with its fix.
    ///
    /// Exits 0 when no check finds a problem, 1 otherwise.
    Doctor {
        /// Print the findings as JSON (schema in the README).
        #[arg(long)]
        json: bool,
        /// Look at these Ray temp dirs instead of /tmp/ray* and $RAY_TMPDIR/ray* (for tests).
        #[arg(long = "root", value_name = "DIR", hide = true)]
        roots: Vec<PathBuf>,
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
    /// Every Ray cluster on one terminal screen (live, with 15-minute history), like htop.
    ///
    /// Reads this stack's Prometheus (or a Prometheus-compatible API with --prometheus)
    /// through a few batched PromQL queries per refresh. Keys are in the footer; `?` shows
    /// them all. `--once` prints one snapshot for scripts.
    Top(TopArgs),
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
    /// Points Ray's Dashboard at this stack's Prometheus and Grafana, hands out
    /// free metrics ports so clusters do not collide, announces the name the
    /// cluster will get, and turns Ray's token auth on (Ray >= 2.52) with a
    /// private token file, so no other user can submit jobs to the cluster.
    Env {
        /// The --temp-dir the next cluster will use [default: $RAY_TMPDIR/ray or /tmp/ray]
        #[arg(long, value_name = "DIR")]
        temp_dir: Option<PathBuf>,
        /// The name the cluster should get (its `ray_io_cluster`).
        #[arg(long)]
        name: Option<String>,
        /// Leave Ray's token auth off: the Dashboard's job API then runs any local user's code as you.
        #[arg(long)]
        no_ray_auth: bool,
    },
    /// Print the Grafana URL of a cluster's Ray dashboard, and how to reach it from a laptop.
    ///
    /// For a cluster that ended, the URL shows the time range of its life
    /// (Grafana, else Prometheus' graph page).
    Open {
        /// The cluster's name in `raywatch status` or `raywatch history`.
        name: String,
    },
    /// List the clusters this stack saw, past and present: first and last seen, why each ended.
    History {
        /// Only clusters seen within this long (e.g. 7d, 12h) [default: all]
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<Duration>,
        /// Print JSON (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Write one cluster's series as OpenMetrics text, for `promtool tsdb create-blocks-from openmetrics`.
    ///
    /// Covers the cluster's life (from `raywatch history`) unless --from/--to
    /// say otherwise; gzip when FILE ends in .gz. Streams: memory stays bounded
    /// whatever the cluster's size.
    #[command(
        after_help = "Examples:\n  raywatch export alice-ray_alice --out alice.om.gz\n  raywatch export train --from 2026-11-27T13:00:00Z --to 2h --out train.om\n  promtool tsdb create-blocks-from openmetrics train.om ./data   # into any Prometheus"
    )]
    Export {
        /// The cluster's name in `raywatch history`.
        name: String,
        /// The file to write (.gz: gzip-compressed).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Start: RFC 3339 (2026-11-27T13:00:00Z), Unix seconds, or a duration ago (2h) [default: first seen]
        #[arg(long, value_name = "TIME", value_parser = crate::export::parse_time)]
        from: Option<f64>,
        /// End, in the same forms [default: last seen, or now while it lives]
        #[arg(long, value_name = "TIME", value_parser = crate::export::parse_time)]
        to: Option<f64>,
        /// Which of the clusters that had this name (their session, from `raywatch history`) [default: the newest]
        #[arg(long)]
        session: Option<String>,
    },
    /// List the alerts firing and pending: which cluster, since when, what to do.
    ///
    /// `raywatch alerts rules` prints raywatch's built-in alert rules (with this
    /// stack's thresholds), for a central Prometheus or vmalert to load.
    Alerts {
        /// Print JSON (schema in the README).
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        what: Option<AlertsCommand>,
    },
    /// Notifications: `raywatch notify test` checks every receiver.
    Notify {
        #[command(subcommand)]
        what: NotifyCommand,
    },
    /// Print the scrape config a central Prometheus or vmagent uses to discover
    /// the clusters of hosts running `raywatch up --sd-listen`.
    FleetConfig {
        /// A host's http_sd endpoint, HOST:PORT (repeatable).
        #[arg(long = "host", value_name = "HOST:PORT", required = true)]
        hosts: Vec<String>,
        /// Where the central side keeps a copy of each host's sd-token; `{host}`
        /// is replaced by the host (each host has its own token).
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/prometheus/raywatch-sd-{host}.token"
        )]
        token_file: PathBuf,
        /// The hosts serve https (--sd-tls-cert).
        #[arg(long)]
        tls: bool,
    },
    /// Grafana helpers.
    #[command(subcommand)]
    Grafana(GrafanaCommand),
    /// Print the shell completion script for bash, zsh or fish.
    ///
    /// bash: raywatch completions bash > ~/.local/share/bash-completion/completions/raywatch
    ///
    /// zsh:  raywatch completions zsh > ~/.zfunc/_raywatch   (a folder on your $fpath)
    ///
    /// fish: raywatch completions fish > ~/.config/fish/completions/raywatch.fish
    Completions {
        /// The shell to complete for.
        shell: CompletionShell,
    },
    /// Download Prometheus, Alertmanager or Grafana into raywatch's cache (no root needed).
    ///
    /// Says what it fetches (URL, size, the checksum it is verified against) and asks
    /// first; `--yes` agrees. As root where apt-get exists, Prometheus and Alertmanager
    /// come from Debian's packages instead. `RAYWATCH_<PROGRAM>_URL` and
    /// `RAYWATCH_<PROGRAM>_SHA256` point at a site mirror. Prints the binary's path;
    /// `up` finds a cached Prometheus or Grafana by itself.
    Install {
        /// The program to get.
        #[arg(value_enum)]
        program: crate::install::Program,
        /// Agree to the download without asking.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Run the daemon in this process (what `up` starts in the background).
    #[command(hide = true)]
    Daemon {
        /// Log to <home>/logs/daemon.log (rotated) instead of stderr.
        #[arg(long)]
        log_file: bool,
    },
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// How often the screen refreshes.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print one snapshot of the clusters view as a table and exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: print it as JSON (the same fields).
    #[arg(long, requires = "once")]
    pub json: bool,
    /// Read this Prometheus-compatible API (Prometheus, VictoriaMetrics, Thanos, Mimir)
    /// instead of this stack's: e.g. a central store's fleet.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// A file with the bearer token for --prometheus.
    #[arg(long, value_name = "FILE", requires = "prometheus")]
    pub bearer_file: Option<PathBuf>,
    /// A file with `user:password` for --prometheus.
    #[arg(
        long,
        value_name = "FILE",
        requires = "prometheus",
        conflicts_with = "bearer_file"
    )]
    pub basic_auth_file: Option<PathBuf>,
    /// Ask every value live even where the stack's Prometheus records top's rules
    /// (slower at many clusters; to compare, or to rule out the rules).
    #[arg(long)]
    pub live: bool,
}

/// The shells `raywatch completions` writes a script for.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum GrafanaCommand {
    /// Print the provisioning folder and the lines that point an existing Grafana at it.
    Dir,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Run in the foreground (for systemd, Slurm job steps, containers) instead of detaching.
    #[arg(long)]
    pub foreground: bool,
    /// Agree to get Prometheus when none is found (download, or apt-get as root; see `raywatch install`).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Prometheus' port on 127.0.0.1 [default: a free port, kept across restarts]
    #[arg(long, value_name = "N", help_heading = "Prometheus")]
    pub prometheus_port: Option<u16>,
    /// The Prometheus binary to run.
    #[arg(long, value_name = "PATH", help_heading = "Prometheus")]
    pub prometheus_bin: Option<PathBuf>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Prometheus",
          help = with_default("How often targets are scraped", duration(config::DEFAULT_SCRAPE_INTERVAL)))]
    pub scrape_interval: Option<Duration>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Prometheus",
          help = with_default("How long samples are kept", duration(config::DEFAULT_RETENTION)))]
    pub retention: Option<Duration>,
    #[arg(long, value_name = "N", help_heading = "Cardinality", help = with_default(
        "Samples one scrape of one target may carry; a target over it is refused whole and `status` says so, the other targets keep being scraped (0: no limit)",
        config::StackConfig::default().sample_limit,
    ))]
    pub sample_limit: Option<u64>,
    /// Remove this label from every scraped series before it is stored, e.g. WorkerId
    /// (repeatable; replaces the saved list). Series that differed only by it collide.
    #[arg(long = "drop-label", value_name = "NAME", help_heading = "Cardinality")]
    pub drop_label: Vec<String>,
    /// Do not record `raywatch top`'s per-cluster values (saves Prometheus their
    /// evaluation every scrape interval; `top` then asks them live, slower at many clusters).
    #[arg(long, help_heading = "Prometheus", overrides_with = "top_rules")]
    pub no_top_rules: bool,
    /// Record them again (the default).
    #[arg(long, help_heading = "Prometheus")]
    pub top_rules: bool,
    /// Leave out raywatch's built-in alert rules (`raywatch alerts rules` shows them).
    #[arg(long, help_heading = "Alerts", overrides_with = "default_alerts")]
    pub no_default_alerts: bool,
    /// Evaluate them again (the default).
    #[arg(long, help_heading = "Alerts")]
    pub default_alerts: bool,
    /// Send notifications to this URL as Alertmanager's webhook JSON (repeatable;
    /// replaces the saved list). Alertmanager runs only when there is one.
    #[arg(long = "notify-webhook", value_name = "URL", help_heading = "Alerts")]
    pub notify_webhook: Vec<String>,
    /// Stop sending notifications (and running Alertmanager).
    #[arg(long, help_heading = "Alerts", conflicts_with = "notify_webhook")]
    pub no_notify_webhook: bool,
    /// Send notifications to the Slack incoming webhook whose URL this file holds
    /// (repeatable; replaces the saved list). The URL is copied into the stack's
    /// home (0600); it never goes on a command line.
    #[arg(
        long = "notify-slack-webhook-file",
        value_name = "FILE",
        help_heading = "Alerts"
    )]
    pub notify_slack_webhook_file: Vec<PathBuf>,
    /// Send Alertmanager's webhook JSON to the URL this file holds, for a URL
    /// carrying a token (repeatable; replaces the saved list).
    #[arg(
        long = "notify-webhook-file",
        value_name = "FILE",
        help_heading = "Alerts"
    )]
    pub notify_webhook_file: Vec<PathBuf>,
    /// E-mail notifications to this address (repeatable; replaces the saved
    /// list), through the mail server of --smtp.
    #[arg(long = "notify-email", value_name = "ADDR", help_heading = "Alerts")]
    pub notify_email: Vec<String>,
    /// The mail server for --notify-email, HOST:PORT; STARTTLS is required
    /// except to a loopback host (a local relay).
    #[arg(long, value_name = "HOST:PORT", help_heading = "Alerts")]
    pub smtp: Option<String>,
    /// A file holding the mail server's `user:password` on one line.
    #[arg(long, value_name = "FILE", help_heading = "Alerts", requires = "smtp")]
    pub smtp_auth_file: Option<PathBuf>,
    /// The sender of e-mail notifications [default: raywatch@<hostname>].
    #[arg(long, value_name = "ADDR", help_heading = "Alerts", requires = "smtp")]
    pub smtp_from: Option<String>,
    /// Remove every notification receiver (webhooks, Slack, e-mail) and stop
    /// running Alertmanager.
    #[arg(long, help_heading = "Alerts", conflicts_with_all = ["notify_webhook", "notify_slack_webhook_file", "notify_webhook_file", "notify_email"])]
    pub no_notify: bool,
    /// The Alertmanager binary [default: $RAYWATCH_ALERTMANAGER, `alertmanager` or `prometheus-alertmanager` on PATH, or `raywatch install alertmanager`'s]
    #[arg(long, value_name = "PATH", help_heading = "Alerts")]
    pub alertmanager_bin: Option<PathBuf>,
    #[arg(long, value_name = "PERCENT", help_heading = "Alerts", help = with_default(
        "GPUs a cluster holds below this utilisation fire RayGpusIdle (after --gpu-idle-for)",
        crate::alerts::Thresholds::default().gpu_idle_percent,
    ))]
    pub gpu_idle_below: Option<f64>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Alerts", help = with_default(
        "How long GPUs may sit idle before RayGpusIdle fires",
        humantime::format_duration(crate::alerts::Thresholds::default().gpu_idle_for),
    ))]
    pub gpu_idle_for: Option<Duration>,
    /// Also evaluate the alerting (or recording) rules of this Prometheus rules file
    /// (repeatable; replaces the saved list). It is checked with promtool and copied:
    /// run `up --alert-rules` again after editing it.
    #[arg(long = "alert-rules", value_name = "FILE", help_heading = "Alerts")]
    pub alert_rules: Vec<PathBuf>,
    /// Stop evaluating the rules files given with --alert-rules.
    #[arg(long, help_heading = "Alerts", conflicts_with = "alert_rules")]
    pub no_alert_rules: bool,
    /// Stop dropping the labels saved earlier.
    #[arg(long, help_heading = "Cardinality", conflicts_with = "drop_label")]
    pub no_drop_label: bool,
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
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Discovery",
          help = with_default("A cluster whose discovery file is not rewritten for this long is dead", duration(config::DEFAULT_LIVENESS)))]
    pub liveness: Option<Duration>,
    /// Also follow discovery files owned by this uid (repeatable).
    #[arg(long, value_name = "UID", help_heading = "Discovery")]
    pub trust_uid: Vec<u32>,
    /// Also send every sample to this remote-write URL (repeatable; replaces the saved list).
    #[arg(long, value_name = "URL", help_heading = "Fleet")]
    pub remote_write: Vec<String>,
    /// A file with the bearer token for the --remote-write URLs given with it.
    #[arg(long, value_name = "FILE", help_heading = "Fleet")]
    pub remote_write_bearer_file: Option<PathBuf>,
    /// A file with `user:password` for the --remote-write URLs given with it.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Fleet",
        conflicts_with = "remote_write_bearer_file"
    )]
    pub remote_write_basic_auth_file: Option<PathBuf>,
    /// A CA bundle (PEM) for https --remote-write URLs.
    #[arg(long, value_name = "FILE", help_heading = "Fleet")]
    pub remote_write_ca_file: Option<PathBuf>,
    /// Stop sending to the remote-write URLs saved earlier.
    #[arg(long, help_heading = "Fleet", conflicts_with = "remote_write")]
    pub no_remote_write: bool,
    /// Run Prometheus as an agent: WAL only, no local queries (needs --remote-write).
    #[arg(long, help_heading = "Fleet", overrides_with = "no_agent")]
    pub agent: bool,
    /// Run Prometheus with its local TSDB again (the default).
    #[arg(long, help_heading = "Fleet")]
    pub no_agent: bool,
    /// The `ray_host` label of every series leaving this host [default: the short host name]
    #[arg(long, value_name = "NAME", help_heading = "Fleet")]
    pub host_label: Option<String>,
    /// The central store's Prometheus-compatible API, for `raywatch query` in agent mode.
    #[arg(long, value_name = "URL", help_heading = "Fleet")]
    pub query_url: Option<String>,
    /// A file with the bearer token for --query-url.
    #[arg(long, value_name = "FILE", help_heading = "Fleet")]
    pub query_bearer_file: Option<PathBuf>,
    /// Serve every cluster's targets in http_sd format at GET /sd on ADDR:PORT (bearer token).
    #[arg(long, value_name = "ADDR:PORT", help_heading = "Fleet")]
    pub sd_listen: Option<String>,
    /// Stop serving http_sd (the default).
    #[arg(long, help_heading = "Fleet", conflicts_with = "sd_listen")]
    pub no_sd_listen: bool,
    /// TLS certificate chain (PEM) for --sd-listen.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Fleet",
        requires = "sd_tls_key"
    )]
    pub sd_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --sd-listen.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Fleet",
        requires = "sd_tls_cert"
    )]
    pub sd_tls_key: Option<PathBuf>,
}
