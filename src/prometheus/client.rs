//! The one HTTP client for Prometheus: the stack's own (its listener verified before
//! the password goes out) or any Prometheus-compatible API given by URL (a central
//! store, credentials read from files). Every answer is read bounded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::de::DeserializeOwned;

use super::USER;
use super::answer::{Point, RuleGroup, Sample, Series, decode, decode_api, read_bounded};
use super::listener::{ListenerError, verify_listener};
use crate::config::StackConfig;
use crate::error::HintExt;
use crate::home::Home;

/// What to do about a stack's Prometheus raywatch cannot reach.
const UNREACHABLE_HINT: &str =
    "`raywatch status` shows whether the stack runs; `raywatch up` starts it";

/// A client for one Prometheus: this stack's or a remote query API.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    target: Target,
    http: reqwest::Client,
}

/// Where the requests go, and with which credentials.
#[derive(Clone)]
enum Target {
    /// This stack's Prometheus: basic auth, only after the listener is verified.
    Stack {
        port: u16,
        password: String,
        /// Where the supervisor records its PID.
        pid_file: Option<PathBuf>,
        /// Which of the stack's servers: Prometheus, or Alertmanager (for messages).
        what: &'static str,
    },
    /// A Prometheus-compatible API (Prometheus, VictoriaMetrics, Thanos, Mimir…).
    Remote { auth: Option<Auth> },
}

/// Credentials for a remote API, read from files at start.
#[derive(Clone)]
pub enum Auth {
    Bearer(String),
    Basic { user: String, password: String },
}

/// What a readiness check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
    /// The port is held by someone else: nothing was sent.
    Refused(ListenerError),
}

/// A credential file read with the checks of [`crate::untrusted`]: a regular
/// An alert as Prometheus' API lists it: firing, or pending (its `for` not yet over).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
pub struct ActiveAlert {
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// "firing" or "pending".
    pub state: String,
    /// Since when its condition holds (RFC 3339).
    #[serde(default, rename = "activeAt")]
    pub active_at: Option<String>,
    #[serde(default)]
    pub value: String,
}

/// file of this user, not a link, FIFO or device, at most 16 KiB.
pub fn read_credential(flag: &str, file: &Path) -> Result<String> {
    let me = nix::unistd::geteuid().as_raw();
    let contents = crate::untrusted::read_file(file, 16 << 10, &|uid| uid == me)
        .map_err(|r| anyhow!("{flag} {}: it {r}", crate::escape::path(file)))?
        .with_context(|| format!("{flag} {} does not exist", crate::escape::path(file)))?;
    let text = String::from_utf8(contents.bytes)
        .with_context(|| format!("{flag} {} is not UTF-8", crate::escape::path(file)))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

impl Client {
    /// The stack's Prometheus on `port`, its PID recorded in `pid_file`.
    pub fn new(port: u16, password: String, pid_file: Option<PathBuf>) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        Client {
            base: format!("http://127.0.0.1:{port}"),
            target: Target::Stack {
                port,
                password,
                pid_file,
                what: "Prometheus",
            },
            http,
        }
    }

    /// The stack's Prometheus on this home (its port from config.json).
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

    /// The stack's Alertmanager on this home (it shares Prometheus' credential).
    pub fn alertmanager(home: &Home) -> Result<Client> {
        let config = StackConfig::load(&home.config())?
            .filter(StackConfig::runs_alertmanager)
            .with_context(|| {
                format!(
                    "the stack at {} runs no Alertmanager (it runs with `raywatch up --notify-webhook URL`)",
                    home.root().display()
                )
            })?;
        let password = fs_err::read_to_string(home.alertmanager_password())
            .with_context(|| format!("cannot read {}", home.alertmanager_password().display()))?;
        let mut c = Client::new(
            config.alertmanager_port,
            password.trim().to_string(),
            Some(home.alertmanager_pid()),
        );
        if let Target::Stack { what, .. } = &mut c.target {
            *what = "Alertmanager";
        }
        Ok(c)
    }

    /// What `raywatch query` and `top` ask on this home: the stack's Prometheus,
    /// or in agent mode the central store of `up --query-url`.
    pub fn for_queries(home: &Home) -> Result<Client> {
        let config = StackConfig::load(&home.config())?;
        if let Some(c) = config.as_ref().filter(|c| c.agent) {
            let Some(url) = &c.query_url else {
                return Err(crate::error::Hint::attach(
                    anyhow!("Prometheus runs as an agent here: it keeps no data to query"),
                    "ask the central store: raywatch up --query-url URL [--query-bearer-file FILE]",
                ));
            };
            let auth = match &c.query_bearer_file {
                Some(f) => Some(Auth::Bearer(read_credential("--query-bearer-file", f)?)),
                None => None,
            };
            return Client::remote_with(url, auth);
        }
        Client::for_home(home)
    }

    /// A remote API with credentials from `--bearer-file` or `--basic-auth-file` (`user:password`).
    pub fn remote(
        url: &str,
        bearer_file: Option<&Path>,
        basic_auth_file: Option<&Path>,
    ) -> Result<Client> {
        let auth = match (bearer_file, basic_auth_file) {
            (Some(f), _) => Some(Auth::Bearer(read_credential("--bearer-file", f)?)),
            (None, Some(f)) => {
                let text = read_credential("--basic-auth-file", f)?;
                let (user, password) = text.split_once(':').with_context(|| {
                    format!(
                        "--basic-auth-file {} must hold user:password on one line",
                        crate::escape::path(f)
                    )
                })?;
                Some(Auth::Basic {
                    user: user.into(),
                    password: password.into(),
                })
            }
            (None, None) => None,
        };
        Client::remote_with(url, auth)
    }

    fn remote_with(url: &str, auth: Option<Auth>) -> Result<Client> {
        let shown = || crate::escape::text(&crate::remote_write::redact(url)).to_string();
        let parsed = reqwest::Url::parse(url).with_context(|| {
            format!(
                "{} is not a URL (e.g. http://127.0.0.1:8428 or https://metrics.example/prometheus)",
                shown()
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("{} is not an http(s) URL", shown());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // Credentials go to the URL given, never to where it redirects.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Client {
            base: url.trim_end_matches('/').to_string(),
            target: Target::Remote { auth },
            http,
        })
    }

    /// The stack's Prometheus' port; None for a remote API.
    pub fn port(&self) -> Option<u16> {
        match &self.target {
            Target::Stack { port, .. } => Some(*port),
            Target::Remote { .. } => None,
        }
    }

    /// Where the requests go, for messages (a URL's credentials removed).
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Stack { what, .. } => format!("this stack's {what} at {}", self.base),
            Target::Remote { .. } => crate::remote_write::redact(&self.base),
        }
    }

    /// Checks the listener of the stack's Prometheus (see [`verify_listener`]);
    /// nothing to check for a remote API.
    pub fn verify(&self) -> Result<(), ListenerError> {
        let Target::Stack {
            port,
            pid_file,
            what,
            ..
        } = &self.target
        else {
            return Ok(());
        };
        let pid = pid_file
            .as_ref()
            .and_then(|f| fs_err::read_to_string(f).ok())
            .and_then(|s| s.trim().parse().ok());
        verify_listener(*port, pid, what)
    }

    /// A request to `path` carrying the credentials, once the listener is verified.
    fn request(&self, method: reqwest::Method, url: String) -> Result<reqwest::RequestBuilder> {
        self.verify()?;
        let req = self.http.request(method, url);
        Ok(match &self.target {
            Target::Stack { password, .. } => req.basic_auth(USER, Some(password)),
            Target::Remote { auth: None } => req,
            Target::Remote {
                auth: Some(Auth::Bearer(t)),
            } => req.bearer_auth(t),
            Target::Remote {
                auth: Some(Auth::Basic { user, password }),
            } => req.basic_auth(user, Some(password)),
        })
    }

    /// Sends a request; an error names where it went (and, for the stack, what to do).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let sent = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.describe()));
        match self.target {
            Target::Stack { .. } => sent.hint(UNREACHABLE_HINT),
            Target::Remote { .. } => sent,
        }
    }

    /// A GET of `path` with `params`: the HTTP status and the body, read bounded.
    async fn get(
        &self,
        path: &str,
        params: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = self
            .request(reqwest::Method::GET, format!("{}{path}", self.base))?
            .query(params);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = self.send(req).await?;
        let status = resp.status().as_u16();
        Ok((status, read_bounded(resp, &self.describe()).await?))
    }

    /// Whether Prometheus answers /-/ready (after checking who holds its port).
    pub async fn readiness(&self) -> Readiness {
        if let Err(e) = self.verify() {
            return match e {
                ListenerError::NotListening { .. } => Readiness::NotReady,
                e => Readiness::Refused(e),
            };
        }
        let Ok(req) = self.request(reqwest::Method::GET, format!("{}/-/ready", self.base)) else {
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

    /// A GET of any Prometheus path, as text.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let (_, body) = self.get(path, &[], None).await?;
        String::from_utf8(body)
            .with_context(|| format!("{} answered {path} in something not UTF-8", self.describe()))
    }

    /// A GET of one of Prometheus' JSON APIs (`/api/v1/...`) with these
    /// parameters: its `data`, decoded straight from the body into `T`, or
    /// Prometheus' error for the request.
    pub async fn api_get<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<T> {
        let (status, body) = self
            .get(path, params, Some(Duration::from_secs(120)))
            .await?;
        decode_api(path, status, &body)
    }

    /// An instant query: Prometheus' status code and body, as it answered.
    pub async fn instant_raw(&self, promql: &str) -> Result<(u16, String)> {
        let (status, body) = self
            .get("/api/v1/query", &[("query", promql)], None)
            .await?;
        let body = String::from_utf8(body)
            .with_context(|| format!("the answer of {} is not UTF-8", self.describe()))?;
        Ok((status, body))
    }

    /// An instant query's vector.
    pub async fn instant(&self, promql: &str) -> Result<Vec<Sample>> {
        self.instant_as(promql).await
    }

    /// An instant query's vector, labels read into `M`.
    pub async fn instant_as<M: DeserializeOwned>(&self, promql: &str) -> Result<Vec<Point<M>>> {
        let (status, body) = self
            .get("/api/v1/query", &[("query", promql)], None)
            .await?;
        decode(promql, status, &body, "vector")
    }

    /// A range query's matrix, `start` to `end` (unix seconds) every `step`, labels read into `M`.
    pub async fn range<M: DeserializeOwned>(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<Series<M>>> {
        let (start, end, step) = (
            format!("{start:.3}"),
            format!("{end:.3}"),
            format!("{:.3}", step.as_secs_f64()),
        );
        let params = [
            ("query", promql),
            ("start", &start),
            ("end", &end),
            ("step", &step),
        ];
        let (status, body) = self.get("/api/v1/query_range", &params, None).await?;
        decode(promql, status, &body, "matrix")
    }

    /// The recording rules the API evaluates (`/api/v1/rules?type=record`), by group.
    pub async fn recording_rules(&self) -> Result<Vec<RuleGroup>> {
        #[derive(serde::Deserialize)]
        struct Groups {
            groups: Vec<RuleGroup>,
        }
        let path = "/api/v1/rules";
        let (status, body) = self.get(path, &[("type", "record")], None).await?;
        decode_api::<Groups>(path, status, &body)
            .map(|g| g.groups)
            .with_context(|| format!("{} answered {path} (HTTP {status})", self.describe()))
    }

    /// The alerts firing and pending (`/api/v1/alerts`).
    pub async fn alerts(&self) -> Result<Vec<ActiveAlert>> {
        #[derive(serde::Deserialize)]
        struct Alerts {
            alerts: Vec<ActiveAlert>,
        }
        let path = "/api/v1/alerts";
        let (status, body) = self.get(path, &[], None).await?;
        decode_api::<Alerts>(path, status, &body)
            .map(|a| a.alerts)
            .with_context(|| format!("{} answered {path} (HTTP {status})", self.describe()))
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
        let mut req = self.request(method, url)?;
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = self.send(req.body(body)).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = read_bounded(resp, &self.describe()).await?;
        Ok((status, headers, bytes.into()))
    }

    /// The same client, counting every query into `counter`.
    pub fn counted(self, counter: Counter) -> Counted {
        Counted { api: self, counter }
    }
}

/// Counts the queries a [`Counted`] client sent (for `top`'s "queries per refresh").
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A [`Client`] that counts its queries.
#[derive(Clone)]
pub struct Counted {
    pub api: Client,
    pub counter: Counter,
}

impl Counted {
    pub async fn instant(&self, promql: &str) -> Result<Vec<Sample>> {
        self.counter.bump();
        self.api.instant(promql).await
    }

    pub async fn instant_as<M: DeserializeOwned>(&self, promql: &str) -> Result<Vec<Point<M>>> {
        self.counter.bump();
        self.api.instant_as(promql).await
    }

    pub async fn range<M: DeserializeOwned>(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<Series<M>>> {
        self.counter.bump();
        self.api.range(promql, start, end, step).await
    }
}
