//! Reading Prometheus' HTTP answers: every body bounded ([`read_bounded`]), and one
//! decoder for the query API's JSON ([`decode`], [`parse_answer`]) that surfaces
//! Prometheus' error, an answer of another type, or one that does not parse.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The largest answer read from Prometheus or a query API: a bigger one is an
/// error, not a memory spike (1000 clusters' batched answer is well under 10 MiB).
pub const MAX_ANSWER: usize = 64 << 20;

/// One sample of an instant query, its labels read into `M` (a struct of the labels
/// wanted keeps no copy of the others).
#[derive(Deserialize, Debug, Clone)]
pub struct Point<M> {
    pub metric: M,
    pub value: (f64, String),
}

/// An instant sample with every label.
pub type Sample = Point<BTreeMap<String, String>>;

/// One series of a range query, its labels read into `M`.
#[derive(Deserialize, Debug, Clone)]
pub struct Series<M> {
    pub metric: M,
    pub values: Vec<(f64, String)>,
}

/// A range series with every label.
pub type RangeSeries = Series<BTreeMap<String, String>>;

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

/// A query answer with its result left as JSON (for `raywatch query`, which prints it).
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

/// The body of an answer, at most [`MAX_ANSWER`] bytes; `from` names the server
/// in the error (e.g. "Prometheus at http://127.0.0.1:9090").
pub async fn read_bounded(resp: reqwest::Response, from: &str) -> Result<Vec<u8>> {
    read_at_most(resp, from, MAX_ANSWER).await
}

/// The body of an answer, at most `max` bytes (a smaller bound than
/// [`MAX_ANSWER`], for a server that has no business sending more); `from`
/// names the server in the error. The crate's one bounded body reader.
pub async fn read_at_most(mut resp: reqwest::Response, from: &str, max: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("the answer of {from} broke off"))?
    {
        if body.len() + chunk.len() > max {
            bail!("the answer of {from} is over {}: refused", size(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A bound for an error message: whole MiB, or KiB below one MiB.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// The data of a query answer, or Prometheus' own error for it.
pub fn parse_answer(promql: &str, status: u16, body: &[u8]) -> Result<QueryData> {
    let parsed: QueryResponse = serde_json::from_slice(body).with_context(|| {
        format!(
            "Prometheus answered HTTP {status} with an unexpected body: {}",
            excerpt(body)
        )
    })?;
    if parsed.status != "success" {
        bail!(
            "Prometheus rejected the query {promql:?}: {}",
            parsed.error.unwrap_or_else(|| format!("HTTP {status}"))
        );
    }
    parsed.data.context("Prometheus' answer has no data")
}

/// The start of a body, for an error message.
pub fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    if body.len() > MAX {
        format!("{text}…")
    } else {
        text.into_owned()
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

/// The `want` ("vector" or "matrix") result of a query answer. An error when
/// Prometheus refused the query (its own words), answered another type, or sent
/// something that does not parse: never an empty result standing in for one.
pub fn decode<T: DeserializeOwned>(
    promql: &str,
    status: u16,
    body: &[u8],
    want: &str,
) -> Result<T> {
    if let Ok(Answer {
        status: s,
        data: Some(data),
    }) = serde_json::from_slice::<Answer<T>>(body)
        && s == "success"
        && data.result_type == want
    {
        return Ok(data.result);
    }
    let data = parse_answer(promql, status, body)?;
    if data.result_type == want {
        bail!("Prometheus' {want} for {promql:?} does not parse");
    }
    bail!(
        "Prometheus answered {promql:?} with a {}, not a {want}",
        data.result_type
    )
}

/// Decodes the `data` of one of Prometheus' JSON APIs (`/api/v1/...`) into `T`,
/// or Prometheus' error for the request.
pub fn decode_api<T: DeserializeOwned>(path: &str, status: u16, body: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct Api<T> {
        status: String,
        data: Option<T>,
        #[serde(default)]
        error: Option<String>,
    }
    let answer: Api<T> = serde_json::from_slice(body).with_context(|| {
        format!(
            "Prometheus answered {path} with HTTP {status} and a body raywatch cannot read: {}",
            excerpt(body)
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

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"2"]}]}}"#;

    #[tokio::test]
    async fn a_body_over_its_bound_is_refused_and_one_at_it_is_read() {
        let answer = |n: usize| reqwest::Response::from(axum::http::Response::new(vec![b'x'; n]));
        let read = read_at_most(answer(1024), "a server", 1024).await.unwrap();
        assert_eq!(read.len(), 1024);
        let err = read_at_most(answer(1025), "a server", 1024)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the answer of a server is over 1 KiB: refused"
        );
        let err = read_bounded(answer(MAX_ANSWER + 1), "Prometheus")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the answer of Prometheus is over 64 MiB: refused"
        );
    }

    #[test]
    fn a_vector_decodes_and_anything_else_is_an_error_not_an_empty_list() {
        let v: Vec<Sample> = decode("x", 200, VECTOR.as_bytes(), "vector").unwrap();
        assert_eq!(v[0].metric["a"], "1");
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#;
        let err = decode::<Vec<Sample>>("x", 200, scalar.as_bytes(), "vector").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Prometheus answered \"x\" with a scalar, not a vector"
        );
        let broken =
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":1}]}}"#;
        let err = decode::<Vec<Sample>>("x", 200, broken.as_bytes(), "vector").unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
        let refused = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let err = decode::<Vec<Sample>>("x", 400, refused.as_bytes(), "vector").unwrap_err();
        assert!(err.to_string().contains("parse error"), "{err}");
        let html = vec![b'<'; 10_000];
        let err = format!(
            "{:#}",
            decode::<Vec<Sample>>("x", 502, &html, "vector").unwrap_err()
        );
        assert!(err.contains("HTTP 502") && err.len() < 1000, "{err}");
    }
}
