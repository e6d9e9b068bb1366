//! `raywatch fleet-config`: the scrape config a central Prometheus or vmagent uses to discover every host's clusters.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::Exit;

#[derive(Serialize)]
struct Fleet {
    scrape_configs: Vec<Job>,
}

#[derive(Serialize)]
struct Job {
    job_name: String,
    http_sd_configs: Vec<HttpSd>,
}

#[derive(Serialize)]
struct HttpSd {
    url: String,
    refresh_interval: String,
    authorization: Authorization,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_config: Option<Tls>,
}

#[derive(Serialize)]
struct Authorization {
    #[serde(rename = "type")]
    kind: String,
    credentials_file: String,
}

#[derive(Serialize)]
struct Tls {
    /// Set ca_file (or insecure_skip_verify for a test) to match the hosts' certificates.
    ca_file: String,
}

/// The YAML for a central Prometheus (or vmagent's -promscrape.config): one
/// `ray` job, one http_sd source per host. No relabeling is needed: the hosts
/// serve every label, `ray_host` included.
pub fn config(hosts: &[String], token_file: &Path, tls: bool) -> Result<String> {
    for h in hosts {
        let ok = h.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            anyhow::bail!("--host {h:?} is not HOST:PORT (the host's --sd-listen)");
        }
    }
    let scheme = if tls { "https" } else { "http" };
    let fleet = Fleet {
        scrape_configs: vec![Job {
            job_name: crate::prometheus::RAY_JOB.into(),
            http_sd_configs: hosts
                .iter()
                .map(|h| HttpSd {
                    url: format!("{scheme}://{h}/sd"),
                    refresh_interval: "15s".into(),
                    authorization: Authorization {
                        kind: "Bearer".into(),
                        credentials_file: token_file.display().to_string().replace(
                            "{host}",
                            h.rsplit_once(':').map_or(h.as_str(), |(host, _)| host),
                        ),
                    },
                    tls_config: tls.then(|| Tls {
                        ca_file: "/etc/prometheus/raywatch-ca.pem".into(),
                    }),
                })
                .collect(),
        }],
    };
    Ok(format!(
        "# raywatch fleet-config: every Ray cluster of {} host(s), by http_sd.\n\
         # Copy each host's <home>/secrets/sd-token to {} (0600; {{host}}: the host).\n{}",
        hosts.len(),
        token_file.display(),
        serde_yaml_ng::to_string(&fleet)?
    ))
}

pub(super) fn fleet_config(hosts: &[String], token_file: &Path, tls: bool) -> Result<Exit> {
    print!("{}", config(hosts, token_file, tls)?);
    Ok(Exit::Success)
}
