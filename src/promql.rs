//! PromQL over HTTP for the commands that read metrics (`query`, `top`): the stack's own Prometheus
//! (its listener verified before the password goes out) or any Prometheus-compatible API
//! (a central store), credentials read from files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Deserialize;

use crate::config::StackConfig;
use crate::home::Home;
use crate::prometheus::{Client, parse_answer};

/// The largest answer read from a query API: a bigger one is an error, not a
/// memory spike (1000 clusters' batched answer is well under 10 MiB).
pub const MAX_ANSWER: usize = 64 << 20;

/// Where the queries go.
#[derive(Clone)]
pub enum QueryApi {
    /// This stack's Prometheus: basic auth, only after the listener is verified.
    Stack(Client),
    /// A Prometheus-compatible API given by URL.
    Remote(Remote),
}

/// A Prometheus-compatible API (Prometheus, VictoriaMetrics, Thanos, Mimir…).
#[derive(Clone)]
pub struct Remote {
    base: String,
    auth: Option<Auth>,
    http: reqwest::Client,
}

/// Credentials for a remote API, read from files at start.
#[derive(Clone)]
pub enum Auth {
    Bearer(String),
    Basic { user: String, password: String },
}

/// One series of a range query, its labels read into `M`.
#[derive(Deserialize, Debug, Clone)]
pub struct Series<M> {
    pub metric: M,
    pub values: Vec<(f64, String)>,
}

/// One sample of an instant query, its labels read into `M` (a struct of the labels
/// wanted keeps no copy of the others).
#[derive(Deserialize, Debug, Clone)]
pub struct Point<M> {
    pub metric: M,
    pub value: (f64, String),
}

/// One rule group of `/api/v1/rules`: its name and its rules' names and health.
#[derive(Deserialize, Debug, Clone)]
pub struct RuleGroup {
    pub name: String,
    #[serde(default)]
    pub rules: Vec<RuleState>,
}

/// One rule of a [`RuleGroup`].
#[derive(Deserialize, Debug, Clone)]
pub struct RuleState {
    pub name: String,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    #[serde(default)]
    pub health: String,
}

/// A range series with every label.
pub type RangeSeries = Series<BTreeMap<String, String>>;

/// Counts the requests a [`QueryApi`] sent (for `top`'s "queries per refresh").
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

/// A credential file read with the checks of [`crate::untrusted`]: a regular
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

impl QueryApi {
    /// What `raywatch query` and `top` ask on this home: the stack's Prometheus,
    /// or in agent mode the central store of `up --query-url`.
    pub fn for_home(home: &Home) -> Result<QueryApi> {
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
            return Remote::new(url, auth).map(QueryApi::Remote);
        }
        Ok(QueryApi::Stack(Client::for_home(home)?))
    }

    /// A remote API with credentials from `--bearer-file` or `--basic-auth-file` (`user:password`).
    pub fn remote(
        url: &str,
        bearer_file: Option<&Path>,
        basic_auth_file: Option<&Path>,
    ) -> Result<QueryApi> {
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
        Remote::new(url, auth).map(QueryApi::Remote)
    }

    /// Where the queries go, for messages (a URL's credentials removed).
    pub fn describe(&self) -> String {
        match self {
            QueryApi::Stack(c) => format!("this stack's Prometheus at {}", c.base),
            QueryApi::Remote(r) => crate::remote_write::redact(&r.base),
        }
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<(u16, String)> {
        let resp = match self {
            QueryApi::Stack(c) => c.authed_get(path)?.query(params).send().await,
            QueryApi::Remote(r) => {
                let mut req = r.http.get(format!("{}{path}", r.base)).query(params);
                req = match &r.auth {
                    Some(Auth::Bearer(t)) => req.bearer_auth(t),
                    Some(Auth::Basic { user, password }) => req.basic_auth(user, Some(password)),
                    None => req,
                };
                req.send().await
            }
        }
        .with_context(|| format!("cannot reach {}", self.describe()))?;
        let status = resp.status().as_u16();
        Ok((status, read_bounded(resp).await?))
    }

    /// An instant query: Prometheus' status code and body, as it answered.
    pub async fn instant_raw(&self, promql: &str) -> Result<(u16, String)> {
        self.get("/api/v1/query", &[("query", promql)]).await
    }

    /// An instant query's vector.
    pub async fn instant(&self, promql: &str) -> Result<Vec<crate::prometheus::Sample>> {
        let (status, body) = self.instant_raw(promql).await?;
        decode(promql, status, &body, "vector")
    }

    /// An instant query's vector, labels read into `M`.
    pub async fn instant_as<M: serde::de::DeserializeOwned>(
        &self,
        promql: &str,
    ) -> Result<Vec<Point<M>>> {
        let (status, body) = self.instant_raw(promql).await?;
        decode(promql, status, &body, "vector")
    }

    /// A range query's matrix, `start` to `end` (unix seconds) every `step`, labels read into `M`.
    pub async fn range<M: serde::de::DeserializeOwned>(
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
        let (status, body) = self
            .get(
                "/api/v1/query_range",
                &[
                    ("query", promql),
                    ("start", &start),
                    ("end", &end),
                    ("step", &step),
                ],
            )
            .await?;
        decode(promql, status, &body, "matrix")
    }

    /// The recording rules the API evaluates (`/api/v1/rules?type=record`), by group.
    pub async fn recording_rules(&self) -> Result<Vec<RuleGroup>> {
        let path = "/api/v1/rules";
        let (status, body) = self.get(path, &[("type", "record")]).await?;
        #[derive(Deserialize)]
        struct Groups {
            groups: Vec<RuleGroup>,
        }
        #[derive(Deserialize)]
        struct Rules {
            status: String,
            #[serde(default)]
            data: Option<Groups>,
        }
        let answer: Rules = serde_json::from_str(&body).with_context(|| {
            format!(
                "{} answered {path} with HTTP {status} and a body raywatch cannot read",
                self.describe()
            )
        })?;
        match answer.data {
            Some(d) if answer.status == "success" => Ok(d.groups),
            _ => anyhow::bail!("{} refused {path} (HTTP {status})", self.describe()),
        }
    }

    /// The same API, counting every request into `counter`.
    pub fn counted(self, counter: Counter) -> Counted {
        Counted { api: self, counter }
    }
}

/// A [`QueryApi`] that counts its requests.
#[derive(Clone)]
pub struct Counted {
    pub api: QueryApi,
    pub counter: Counter,
}

impl Counted {
    pub async fn instant(&self, promql: &str) -> Result<Vec<crate::prometheus::Sample>> {
        self.counter.bump();
        self.api.instant(promql).await
    }

    pub async fn instant_as<M: serde::de::DeserializeOwned>(
        &self,
        promql: &str,
    ) -> Result<Vec<Point<M>>> {
        self.counter.bump();
        self.api.instant_as(promql).await
    }

    pub async fn range<M: serde::de::DeserializeOwned>(
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

impl Remote {
    fn new(url: &str, auth: Option<Auth>) -> Result<Remote> {
        let parsed = reqwest::Url::parse(url).with_context(|| {
            format!(
                "{} is not a URL (e.g. http://127.0.0.1:8428 or https://metrics.example/prometheus)",
                crate::escape::text(&crate::remote_write::redact(url))
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!(
                "{} is not an http(s) URL",
                crate::escape::text(&crate::remote_write::redact(url))
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // Credentials go to the URL given, never to where it redirects.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Remote {
            base: url.trim_end_matches('/').to_string(),
            auth,
            http,
        })
    }
}

/// A query answer straight into its typed result (no JSON tree in between: at 1000
/// clusters that tree was most of `top`'s memory).
#[derive(Deserialize)]
struct Answer<T> {
    status: String,
    #[serde(default = "Option::default")]
    data: Option<AnswerData<T>>,
}

#[derive(Deserialize)]
struct AnswerData<T> {
    #[serde(rename = "resultType")]
    result_type: String,
    result: T,
}

/// The `want` ("vector" or "matrix") result of an answer; an empty one when Prometheus
/// answered another type; Prometheus' own error when it refused the query.
fn decode<T: serde::de::DeserializeOwned + Default>(
    promql: &str,
    status: u16,
    body: &str,
    want: &str,
) -> Result<T> {
    if let Ok(Answer {
        status: s,
        data: Some(data),
    }) = serde_json::from_str::<Answer<T>>(body)
        && s == "success"
    {
        return Ok(if data.result_type == want {
            data.result
        } else {
            T::default()
        });
    }
    // Not the expected shape: Prometheus' error, or an empty result of another type.
    let data = parse_answer(promql, status, body)?;
    if data.result_type == want {
        anyhow::bail!("Prometheus' {want} for {promql:?} does not parse");
    }
    Ok(T::default())
}

/// The body of an answer, at most [`MAX_ANSWER`] bytes.
async fn read_bounded(mut resp: reqwest::Response) -> Result<String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .context("the query API's answer broke off")?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            anyhow::bail!(
                "the query API's answer is over {} MiB: refused",
                MAX_ANSWER >> 20
            );
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).context("the query API's answer is not UTF-8")
}
