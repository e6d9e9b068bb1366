//! `raywatch query`: an instant PromQL query against this stack's Prometheus, as a table or JSON.

use anyhow::Result;

use super::error::HintExt;
use super::{Exit, runtime, unless_stack_down};
use crate::escape;
use crate::home::Home;

pub(super) fn query(home: &Home, promql: &str, json: bool) -> Result<Exit> {
    let rt = runtime()?;
    let config = crate::config::StackConfig::load(&home.config())?;
    let answer = match config.as_ref().filter(|c| c.agent) {
        // An agent keeps no data: the central store answers.
        Some(c) => {
            let Some(url) = &c.query_url else {
                return Err(anyhow::anyhow!(
                    "Prometheus runs as an agent here: it keeps no data to query"
                ))
                .hint(
                    "ask the central store: raywatch up --query-url URL [--query-bearer-file FILE]",
                );
            };
            rt.block_on(crate::prometheus::query_central(
                url,
                c.query_bearer_file.as_deref(),
                promql,
            ))
        }
        None => rt.block_on(async {
            let client = crate::prometheus::Client::for_home(home)?;
            client.query_raw(promql).await
        }),
    };
    let (code, body) = match answer {
        Ok(answer) => answer,
        Err(e) => return Err(rt.block_on(unless_stack_down(home, e))),
    };
    if json {
        println!("{body}");
        return Ok(if code == 200 {
            Exit::Success
        } else {
            Exit::Failure
        });
    }
    let data = crate::prometheus::parse_answer(promql, code, &body)?;
    print!("{}", render_result(&data.result_type, &data.result));
    Ok(Exit::Success)
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
