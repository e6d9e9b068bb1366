//! `raywatch query`: an instant PromQL query against this stack's Prometheus, as a table or JSON.

use anyhow::Result;

use super::{Exit, runtime, unless_stack_down};
use crate::escape;
use crate::home::Home;

pub(super) fn query(home: &Home, promql: &str, json: bool) -> Result<Exit> {
    let rt = runtime()?;
    // The stack's Prometheus, or in agent mode the central store (`up --query-url`).
    let answer = match crate::prometheus::Client::for_queries(home) {
        Ok(api) => rt.block_on(api.instant_raw(promql)),
        Err(e) => Err(e),
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
    let data = crate::prometheus::parse_answer(promql, code, body.as_bytes())?;
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
