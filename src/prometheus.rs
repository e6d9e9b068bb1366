//! Prometheus as raywatch runs it: its config files (from typed structs), its secret, and a client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::HintExt;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::{StackConfig, prometheus_duration};
use crate::home::Home;

/// The user Prometheus' basic auth knows.
pub const USER: &str = "raywatch";
/// The job every Ray target is scraped under.
pub const RAY_JOB: &str = "ray";

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct PrometheusYml {
    pub global: Global,
    /// The rules files (`raywatch top`'s recording rules; none on an agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_files: Vec<String>,
    pub scrape_configs: Vec<ScrapeConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<RemoteWriteConfig>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Global {
    pub scrape_interval: String,
    pub evaluation_interval: String,
    /// Added to every series that leaves this Prometheus (remote write).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_labels: BTreeMap<String, String>,
}

/// One `remote_write` entry of prometheus.yml.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RemoteWriteConfig {
    pub url: String,
    /// Shown as `remote_name` on Prometheus' own remote-storage metrics.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    /// What is not sent: `top`'s recorded series stay home (see [`prometheus_yml`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_relabel_configs: Vec<RelabelConfig>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Authorization {
    #[serde(rename = "type")]
    pub kind: String,
    pub credentials_file: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct TlsConfig {
    pub ca_file: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ScrapeConfig {
    pub job_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_sd_configs: Vec<FileSdConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Samples one scrape may carry; over it the whole scrape fails (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_relabel_configs: Vec<RelabelConfig>,
}

/// One `metric_relabel_configs` or `write_relabel_configs` entry (raywatch writes
/// `labeldrop`, and `drop` by metric name).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RelabelConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_labels: Vec<String>,
    pub action: String,
    /// Matched against whole label names (Prometheus anchors it).
    pub regex: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct FileSdConfig {
    pub files: Vec<String>,
    pub refresh_interval: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StaticConfig {
    pub targets: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct BasicAuth {
    pub username: String,
    pub password_file: String,
}

/// `--web.config.file`: basic auth for every HTTP endpoint of Prometheus.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct WebYml {
    pub basic_auth_users: BTreeMap<String, String>,
}

/// Recording rules for the stack's Prometheus, handed in by their owner (`raywatch
/// top`'s, see `top::rules::for_stack`): the config writer stores the file, names it
/// in prometheus.yml and keeps the recorded series out of remote writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRules {
    /// The rules file, as YAML.
    pub yaml: String,
    /// The name prefix of every series the rules record.
    pub prefix: String,
}

/// prometheus.yml for a stack: one `ray` job reading the targets glob (so
/// clusters come and go without a reload), and Prometheus scraping itself.
/// Remote writes leave out `top`'s recorded series: they are derived from the
/// samples sent, keyed without `ray_host` until the external label is added, and a
/// central store holding them for some hosts only would mislead a `top` there
/// (which asks live).
pub fn prometheus_yml(
    home: &Home,
    cfg: &StackConfig,
    rules: Option<&RecordingRules>,
) -> PrometheusYml {
    let interval = prometheus_duration(cfg.scrape_interval);
    PrometheusYml {
        global: Global {
            scrape_interval: interval.clone(),
            evaluation_interval: interval,
            external_labels: BTreeMap::from([("ray_host".to_string(), cfg.ray_host())]),
        },
        rule_files: match rules {
            Some(_) => vec![home.top_rules().to_string_lossy().into_owned()],
            None => vec![],
        },
        remote_write: cfg
            .remote_write
            .iter()
            .enumerate()
            .map(|(i, rw)| RemoteWriteConfig {
                url: rw.url.clone(),
                name: crate::remote_write::remote_name(i),
                authorization: rw.bearer_file.as_ref().map(|f| Authorization {
                    kind: "Bearer".into(),
                    credentials_file: f.to_string_lossy().into_owned(),
                }),
                basic_auth: rw.basic_auth_file.as_ref().map(|_| BasicAuth {
                    username: basic_auth_user(home, i).unwrap_or_default(),
                    password_file: home.remote_write_password(i).to_string_lossy().into_owned(),
                }),
                tls_config: rw.ca_file.as_ref().map(|f| TlsConfig {
                    ca_file: f.to_string_lossy().into_owned(),
                }),
                write_relabel_configs: rules
                    .map(|r| RelabelConfig {
                        source_labels: vec!["__name__".into()],
                        action: "drop".into(),
                        regex: format!("{}.*", r.prefix),
                    })
                    .into_iter()
                    .collect(),
            })
            .collect(),
        scrape_configs: vec![
            ScrapeConfig {
                job_name: RAY_JOB.into(),
                file_sd_configs: vec![FileSdConfig {
                    files: vec![
                        home.targets_dir()
                            .join("*.json")
                            .to_string_lossy()
                            .into_owned(),
                    ],
                    // A safety net only: the folder is watched. Should Prometheus
                    // fail to watch it (inotify exhausted), this bounds the delay.
                    refresh_interval: "30s".into(),
                }],
                static_configs: vec![],
                basic_auth: None,
                sample_limit: Some(cfg.sample_limit.0),
                // Checked names (crate::guard): letters, digits and '_' need no escaping.
                metric_relabel_configs: cfg
                    .drop_labels
                    .iter()
                    .map(|l| RelabelConfig {
                        source_labels: vec![],
                        action: "labeldrop".into(),
                        regex: l.clone(),
                    })
                    .collect(),
            },
            ScrapeConfig {
                job_name: "prometheus".into(),
                file_sd_configs: vec![],
                static_configs: vec![StaticConfig {
                    targets: vec![format!("127.0.0.1:{}", cfg.prometheus_port)],
                }],
                basic_auth: Some(BasicAuth {
                    username: USER.into(),
                    password_file: home.prometheus_password().to_string_lossy().into_owned(),
                }),
                sample_limit: None,
                metric_relabel_configs: vec![],
            },
        ],
    }
}

/// `--web.read-timeout`: how long a connection may sit without sending its request
/// (or idle between requests). Prometheus' 5 minutes let any local user, without
/// the password, hold every connection it accepts for that long.
pub const READ_TIMEOUT: &str = "30s";

/// `--web.max-connections` for a hard open-files limit of `nofile` (Go programs
/// raise their soft limit to it): half of it, between Prometheus' default 512 and
/// 8192, so that idle connections cannot take the files its storage needs.
pub fn max_connections(nofile: u64) -> u64 {
    (nofile / 2).clamp(512, 8192)
}

/// This process' hard limit of open files (Prometheus inherits it).
pub fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024)
}

/// The command line the daemon runs Prometheus with ([`args_for`] this process'
/// open-files limit).
pub fn args(home: &Home, cfg: &StackConfig) -> Vec<String> {
    args_for(home, cfg, open_files_limit())
}

/// The command line of Prometheus under a hard open-files limit of `nofile`. No
/// lifecycle endpoints: the daemon reloads with SIGHUP. Idle connections are
/// closed after [`READ_TIMEOUT`], and it takes [`max_connections`]. As an agent,
/// Prometheus keeps only a WAL (`--enable-feature=agent` on 2.x, `--agent` on 3.x)
/// and takes no TSDB flags.
pub fn args_for(home: &Home, cfg: &StackConfig, nofile: u64) -> Vec<String> {
    let mut args = vec![
        format!("--config.file={}", home.prometheus_yml().display()),
        format!("--web.config.file={}", home.web_yml().display()),
        format!("--web.read-timeout={READ_TIMEOUT}"),
        format!("--web.max-connections={}", max_connections(nofile)),
    ];
    if cfg.agent {
        match major_version(&cfg.prometheus_bin) {
            Some(v) if v >= 3 => args.push("--agent".into()),
            _ => args.push("--enable-feature=agent".into()),
        }
        args.push(format!(
            "--storage.agent.path={}",
            home.prometheus_dir().join("agent").display()
        ));
    } else {
        args.push(format!(
            "--storage.tsdb.path={}",
            home.prometheus_data().display()
        ));
        args.push(format!(
            "--storage.tsdb.retention.time={}",
            prometheus_duration(cfg.retention)
        ));
    }
    args.push(format!(
        "--web.listen-address=127.0.0.1:{}",
        cfg.prometheus_port
    ));
    args
}

/// The major version of a Prometheus binary (`prometheus --version`).
pub fn major_version(bin: &Path) -> Option<u32> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_major_version(&text)
}

/// `prometheus, version 2.42.0+ds (…)` → 2.
pub fn parse_major_version(text: &str) -> Option<u32> {
    let rest = text.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

/// Agent mode needs Prometheus ≥ 2.32.
/// What to do about a Prometheus raywatch cannot reach.
const UNREACHABLE_HINT: &str =
    "`raywatch status` shows whether the stack runs; `raywatch up` starts it";

pub const AGENT_SINCE: (u32, u32) = (2, 32);
/// `--web.config.file` (basic auth), without which raywatch does not run Prometheus, exists since 2.24.
pub const WEB_CONFIG_SINCE: (u32, u32) = (2, 24);

/// The (major, minor) version of a Prometheus binary.
pub fn version(bin: &Path) -> Option<(u32, u32)> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let rest = text.split("version ").nth(1)?;
    let mut parts = rest.split(['.', '+', ' ', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The user name of the `i`-th remote write's basic-auth file (read at `up`).
fn basic_auth_user(home: &Home, i: usize) -> Option<String> {
    fs_err::read_to_string(home.remote_write_user(i))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Splits each remote write's `user:password` file into a user file and a
/// password file in `<home>/secrets/` (0600): Prometheus' basic auth reads the
/// password from a file, and the user goes into prometheus.yml. The user's
/// file is read like untrusted input (regular, owned by this user, bounded).
pub fn write_remote_write_secrets(home: &Home, cfg: &StackConfig) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    for (i, rw) in cfg.remote_write.iter().enumerate() {
        let Some(file) = &rw.basic_auth_file else {
            continue;
        };
        let contents = crate::untrusted::read_file(file, 4096, &|uid| uid == me)
            .map_err(|r| {
                anyhow::anyhow!("--remote-write-basic-auth-file {}: it {r}", file.display())
            })?
            .with_context(|| {
                format!(
                    "--remote-write-basic-auth-file {} does not exist",
                    file.display()
                )
            })?;
        let text = String::from_utf8(contents.bytes).with_context(|| {
            format!(
                "--remote-write-basic-auth-file {} is not UTF-8",
                file.display()
            )
        })?;
        let (user, password) = text
            .trim_end_matches(['\n', '\r'])
            .split_once(':')
            .with_context(|| {
                format!(
                    "--remote-write-basic-auth-file {} must hold user:password on one line",
                    file.display()
                )
            })?;
        crate::atomic::write(
            &home.remote_write_user(i),
            format!("{user}\n").as_bytes(),
            0o600,
        )?;
        crate::atomic::write(&home.remote_write_password(i), password.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// Writes the secret (once), web.yml, the recording rules (when there are any) and
/// prometheus.yml. Each is checked with promtool, when there is one, before it
/// replaces the old file.
pub fn write_files(home: &Home, cfg: &StackConfig, rules: Option<&RecordingRules>) -> Result<()> {
    // A hand-edited config.json gets the same checks as `up --drop-label`.
    crate::guard::drop_labels(&cfg.drop_labels)
        .with_context(|| format!("{} has a bad drop_labels entry", home.config().display()))?;
    let password = ensure_password(home)?;
    write_remote_write_secrets(home, cfg)?;
    let web_ok = fs_err::read_to_string(home.web_yml())
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<WebYml>(&t).ok())
        .and_then(|w| w.basic_auth_users.get(USER).cloned())
        .is_some_and(|hash| bcrypt::verify(&password, &hash).unwrap_or(false));
    if !web_ok {
        let hash = bcrypt::hash(&password, 10).context("cannot hash the Prometheus password")?;
        let web = WebYml {
            basic_auth_users: BTreeMap::from([(USER.to_string(), hash)]),
        };
        crate::atomic::write(
            &home.web_yml(),
            serde_yaml_ng::to_string(&web)?.as_bytes(),
            0o600,
        )?;
    }
    // The rules first: the prometheus.yml naming them may be read at any moment.
    if let Some(r) = rules {
        write_checked(home, cfg, &home.top_rules(), &r.yaml, &["check", "rules"])?;
    }
    let yml = serde_yaml_ng::to_string(&prometheus_yml(home, cfg, rules))?;
    write_checked(
        home,
        cfg,
        &home.prometheus_yml(),
        &yml,
        &["check", "config", "--syntax-only"],
    )?;
    if rules.is_none() {
        // No longer named by prometheus.yml: a stale copy would only mislead a reader.
        match fs_err::remove_file(home.top_rules()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Writes `text` to `dest` in Prometheus' folder unless it holds it already: staged
/// (0600), checked with `promtool <check…>` when there is a promtool, committed.
fn write_checked(
    home: &Home,
    cfg: &StackConfig,
    dest: &Path,
    text: &str,
    check: &[&str],
) -> Result<()> {
    if fs_err::read_to_string(dest).ok().as_deref() == Some(text) {
        return Ok(());
    }
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .context("a generated file has no name")?;
    let staged = crate::atomic::stage(&home.prometheus_dir(), name, text.as_bytes(), 0o600)?;
    if let Some(promtool) = promtool_beside(&cfg.prometheus_bin) {
        let out = std::process::Command::new(&promtool)
            .args(check)
            .arg(staged.path())
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            bail!(
                "the new {} failed `promtool {}`, so the previous file is kept: {} {}",
                dest.display(),
                check.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    staged.commit(dest)
}

fn promtool_beside(prometheus: &Path) -> Option<PathBuf> {
    let beside = prometheus.with_file_name("promtool");
    if beside.is_file() {
        return Some(beside);
    }
    which::which("promtool").ok()
}

/// The stack's Prometheus password, generated on first use (0600 in `secrets/`).
pub fn ensure_password(home: &Home) -> Result<String> {
    ensure_secret(&home.prometheus_password())
}

/// Replaces the stack's Prometheus password with a fresh one (at every start
/// of the daemon), so a password that ever leaked stops working.
pub fn rotate_password(home: &Home) -> Result<String> {
    let secret = random_secret()?;
    crate::atomic::write(
        &home.prometheus_password(),
        format!("{secret}\n").as_bytes(),
        0o600,
    )?;
    Ok(secret)
}

fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom to generate a secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a secret file, generating it (random, hex, 0600) when missing or empty.
pub fn ensure_secret(path: &Path) -> Result<String> {
    match fs_err::read_to_string(path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = random_secret()?;
    crate::atomic::write(path, format!("{secret}\n").as_bytes(), 0o600)?;
    Ok(secret)
}

/// Why raywatch sent nothing to the port where the stack's Prometheus should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerError {
    #[error("nothing listens on 127.0.0.1:{port}, where the stack's Prometheus should be")]
    NotListening { port: u16 },
    #[error(
        "127.0.0.1:{port} is held by {holder}, not by this stack's Prometheus; raywatch sent it nothing (no credentials)"
    )]
    Foreign { port: u16, holder: String },
    #[error(
        "127.0.0.1:{port} is held by another process of yours ({holder}), not by this stack's Prometheus (pid {pid}); raywatch sent it nothing"
    )]
    NotOurs { port: u16, pid: u32, holder: String },
}

/// Checks that `127.0.0.1:port` is held by this user and, when `pid` is known,
/// by that very process. Credentials go only where this passed.
pub fn verify_listener(port: u16, pid: Option<u32>) -> Result<(), ListenerError> {
    let listeners = crate::process::Listeners::read();
    let Some(l) = listeners.holder(std::net::Ipv4Addr::LOCALHOST.into(), port) else {
        return Err(ListenerError::NotListening { port });
    };
    if l.uid != nix::unistd::geteuid().as_raw() {
        return Err(ListenerError::Foreign {
            port,
            holder: crate::process::describe_listener(l),
        });
    }
    if let Some(pid) = pid
        && crate::process::alive(pid)
        && !crate::process::holds_socket(pid, l.inode)
    {
        return Err(ListenerError::NotOurs {
            port,
            pid,
            holder: crate::process::describe_listener(l),
        });
    }
    Ok(())
}

/// The disk Prometheus' data uses: the bytes of every file under `dir` (not
/// following links), and the space left to it on that file system.
pub fn disk_use(dir: &Path) -> (u64, Option<u64>) {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = fs_err::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 8 => total += walk(&e.path(), depth + 1),
                Ok(t) if t.is_file() => {
                    total += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
        total
    }
    let free = nix::sys::statvfs::statvfs(dir)
        .ok()
        .map(|s| s.blocks_available() * s.fragment_size());
    (walk(dir, 0), free)
}

/// What a readiness check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
    /// The port is held by someone else: nothing was sent.
    Refused(ListenerError),
}

/// An authenticated client for one stack's Prometheus. Before every request it
/// checks who holds the port ([`verify_listener`]): the credentials never go
/// to a listener that is not the stack's own Prometheus.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub port: u16,
    password: String,
    /// Where the supervisor records Prometheus' PID.
    pid_file: Option<PathBuf>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(port: u16, password: String, pid_file: Option<PathBuf>) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        Client {
            base: format!("http://127.0.0.1:{port}"),
            port,
            password,
            pid_file,
            http,
        }
    }

    pub fn for_home(home: &Home) -> Result<Client> {
        // config.json holds the port in use: the daemon writes it when it moves Prometheus.
        let config = StackConfig::load(&home.config())?.with_context(|| {
            format!(
                "{} is missing (is the stack up? run `raywatch up`)",
                home.config().display()
            )
        })?;
        let password = fs_err::read_to_string(home.prometheus_password())
            .with_context(|| format!("cannot read {}", home.prometheus_password().display()))?;
        Ok(Client::new(
            config.prometheus_port,
            password.trim().to_string(),
            Some(home.prometheus_pid()),
        ))
    }

    fn unreachable(&self) -> String {
        format!("cannot reach Prometheus at {}", self.base)
    }

    /// Checks the listener (see [`verify_listener`]).
    pub fn verify(&self) -> Result<(), ListenerError> {
        let pid = self
            .pid_file
            .as_ref()
            .and_then(|f| fs_err::read_to_string(f).ok())
            .and_then(|s| s.trim().parse().ok());
        verify_listener(self.port, pid)
    }

    /// A GET of `path` carrying the password, once the listener is verified.
    pub fn authed_get(&self, path: &str) -> Result<reqwest::RequestBuilder> {
        self.get(path)
    }

    fn get(&self, path: &str) -> Result<reqwest::RequestBuilder> {
        self.verify()?;
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth(USER, Some(&self.password)))
    }

    /// Whether Prometheus answers /-/ready (after checking who holds its port).
    pub async fn readiness(&self) -> Readiness {
        if let Err(e) = self.verify() {
            return match e {
                ListenerError::NotListening { .. } => Readiness::NotReady,
                e => Readiness::Refused(e),
            };
        }
        let Ok(req) = self.get("/-/ready") else {
            return Readiness::NotReady;
        };
        match req.timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => Readiness::Ready,
            _ => Readiness::NotReady,
        }
    }

    /// Whether Prometheus answers /-/ready.
    pub async fn ready(&self) -> bool {
        self.readiness().await == Readiness::Ready
    }

    /// An authenticated GET of any Prometheus path, as text.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self
            .get(path)?
            .send()
            .await
            .with_context(|| self.unreachable())
            .hint(UNREACHABLE_HINT)?;
        Ok(resp.text().await?)
    }

    /// A GET of one of Prometheus' JSON APIs (`/api/v1/...`) with these
    /// parameters: its `data`, decoded straight from the body into `T`, or
    /// Prometheus' error for the request.
    pub async fn api_get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<T> {
        let resp = self
            .get(path)?
            .timeout(Duration::from_secs(120))
            .query(params)
            .send()
            .await
            .with_context(|| self.unreachable())
            .hint(UNREACHABLE_HINT)?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .context("cannot read Prometheus' answer")?;
        #[derive(Deserialize)]
        struct Answer<T> {
            status: String,
            data: Option<T>,
            #[serde(default)]
            error: Option<String>,
        }
        let answer: Answer<T> = serde_json::from_slice(&body).with_context(|| {
            format!(
                "Prometheus answered {path} with HTTP {status} and a body raywatch cannot read: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )
        })?;
        if answer.status != "success" {
            bail!(
                "Prometheus refused {path}: {}",
                answer.error.unwrap_or_else(|| format!("HTTP {status}"))
            );
        }
        answer
            .data
            .with_context(|| format!("Prometheus' answer to {path} has no data"))
    }

    /// An instant query: the HTTP status and Prometheus' response body.
    pub async fn query_raw(&self, promql: &str) -> Result<(u16, String)> {
        let resp = self
            .get("/api/v1/query")?
            .query(&[("query", promql)])
            .send()
            .await
            .with_context(|| self.unreachable())
            .hint(UNREACHABLE_HINT)?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .context("cannot read Prometheus' answer")?;
        Ok((status, body))
    }

    /// An instant query returning its vector result, or Prometheus' error.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let (status, body) = self.query_raw(promql).await?;
        let data = parse_answer(promql, status, &body)?;
        if data.result_type != "vector" {
            return Ok(Vec::new());
        }
        Ok(serde_json::from_value(data.result).unwrap_or_default())
    }

    /// Forwards one request (for the gateway): status, headers and body of the answer.
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path: &str,
        query: Option<&str>,
        content_type: Option<reqwest::header::HeaderValue>,
        body: axum::body::Bytes,
    ) -> Result<(u16, reqwest::header::HeaderMap, axum::body::Bytes)> {
        // The socket tables and Prometheus' descriptors are read on a
        // blocking thread: a request never holds up the daemon's others.
        let check = self.clone();
        tokio::task::spawn_blocking(move || check.verify())
            .await
            .context("the listener check did not finish")??;
        let url = match query {
            Some(q) => format!("{}{path}?{q}", self.base),
            None => format!("{}{path}", self.base),
        };
        let mut req = self
            .http
            .request(method, url)
            .basic_auth(USER, Some(&self.password));
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .with_context(|| self.unreachable())
            .hint(UNREACHABLE_HINT)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.context("Prometheus' answer broke off")?;
        Ok((status, headers, bytes))
    }
}

/// The data of a query answer, or Prometheus' own error for it.
pub fn parse_answer(promql: &str, status: u16, body: &str) -> Result<QueryData> {
    let parsed: QueryResponse = serde_json::from_str(body).with_context(|| {
        format!("Prometheus answered HTTP {status} with an unexpected body: {body}")
    })?;
    if parsed.status != "success" {
        bail!(
            "Prometheus rejected the query {promql:?}: {}",
            parsed.error.unwrap_or_else(|| format!("HTTP {status}"))
        );
    }
    parsed.data.context("Prometheus' answer has no data")
}

#[derive(Deserialize, Debug)]
pub struct QueryResponse {
    pub status: String,
    #[serde(default)]
    pub data: Option<QueryData>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct QueryData {
    #[serde(rename = "resultType")]
    pub result_type: String,
    pub result: serde_json::Value,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Sample {
    pub metric: BTreeMap<String, String>,
    pub value: (f64, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_edited_config_that_drops_a_label_raywatch_needs_is_refused_before_any_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(dir.path().join("home"))).unwrap();
        home.ensure().unwrap();
        let cfg = StackConfig {
            prometheus_bin: dir.path().join("no-prometheus"),
            prometheus_port: 9999,
            scrape_interval: Duration::from_secs(10),
            drop_labels: vec!["ray_io_cluster".into()],
            ..Default::default()
        };
        let err = format!("{:#}", write_files(&home, &cfg, None).unwrap_err());
        assert!(err.contains("config.json"), "{err}");
        assert!(
            err.contains("\"ray_io_cluster\" would break raywatch"),
            "{err}"
        );
        assert!(!home.prometheus_yml().exists());
    }

    #[test]
    fn config_has_one_ray_job_reading_the_glob() {
        let home = Home::resolve(Some("/h".into())).unwrap();
        let cfg = StackConfig {
            prometheus_bin: "/usr/bin/prometheus".into(),
            prometheus_port: 9999,
            prometheus_port_auto: true,
            scrape_interval: Duration::from_secs(10),
            retention: Duration::from_secs(15 * 86400),
            default_roots: true,
            watch: vec![],
            liveness: Duration::from_secs(20),
            trust_uids: vec![],
            grafana_bin: None,
            grafana_port: 3999,
            grafana_anonymous: false,
            prometheus_name: "Prometheus".into(),
            gateway_port: 0,
            ..Default::default()
        };
        let text = serde_yaml_ng::to_string(&prometheus_yml(&home, &cfg, None)).unwrap();
        let back: PrometheusYml = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back.scrape_configs[0].job_name, "ray");
        assert_eq!(
            back.scrape_configs[0].file_sd_configs[0].files,
            vec!["/h/targets/*.json"]
        );
        assert_eq!(back.global.scrape_interval, "10s");
        assert!(
            !args(&home, &cfg)
                .iter()
                .any(|a| a.contains("enable-lifecycle"))
        );
        assert!(args(&home, &cfg).contains(&"--web.listen-address=127.0.0.1:9999".to_string()));
        assert!(args(&home, &cfg).contains(&"--web.read-timeout=30s".to_string()));
    }

    #[test]
    fn the_connection_limit_follows_the_open_files_limit() {
        assert_eq!(max_connections(1024), 512);
        assert_eq!(max_connections(4096), 2048);
        assert_eq!(max_connections(20_000), 8192);
        assert_eq!(max_connections(u64::MAX), 8192);
        assert!(max_connections(open_files_limit()) >= 512);
    }
}
