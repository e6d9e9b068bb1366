//! The `foreign_prometheus` check: other Prometheus and Grafana servers on this machine, and
//! whether a Prometheus among them lets anyone stop it (its lifecycle API answers without credentials).
//!
//! A server is found by its process (`/proc/<pid>/cmdline`, readable for every
//! user) and its listening sockets: exactly, through the process' fds, when
//! this user may read them; else through the port its command line names
//! (`--web.listen-address`, Grafana's `cfg:server.http_port`, or the default)
//! held by a socket of the same uid.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::{Finding, Machine, Proc, Status};
use crate::prometheus::answer::read_at_most;

/// How long one probe of a server may take, all probes running side by side.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of a server's answer that is read.
const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Prometheus,
    Grafana,
}

impl Kind {
    fn of(cmdline: &[String]) -> Option<Kind> {
        let exe = Path::new(cmdline.first()?).file_name()?.to_str()?;
        match exe {
            "prometheus" => Some(Kind::Prometheus),
            "grafana-server" => Some(Kind::Grafana),
            "grafana" if cmdline.get(1).is_some_and(|a| a == "server") => Some(Kind::Grafana),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Prometheus => "Prometheus",
            Kind::Grafana => "Grafana",
        }
    }

    /// The ports the command line says the server listens on.
    fn ports(self, cmdline: &[String]) -> Vec<u16> {
        let (flag, default) = match self {
            Kind::Prometheus => ("--web.listen-address", 9090),
            Kind::Grafana => ("cfg:server.http_port", 3000),
        };
        let mut values = Vec::new();
        let mut args = cmdline.iter().skip(1);
        while let Some(a) = args.next() {
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                values.push(v.to_string());
            } else if a == flag
                && let Some(v) = args.next()
            {
                values.push(v.clone());
            }
        }
        let ports: Vec<u16> = values
            .iter()
            .filter_map(|v| v.rsplit(':').next()?.parse().ok())
            .collect();
        if ports.is_empty() {
            vec![default]
        } else {
            ports
        }
    }
}

/// What a Prometheus answered to `GET /api/v1/status/flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Answered without credentials, with `web.enable-lifecycle=true`: anyone can stop it.
    Open,
    /// Answered without credentials; the lifecycle API is off.
    Off,
    /// Asked for credentials (or refused).
    Guarded,
    /// No (readable) answer within [`PROBE_TIMEOUT`].
    Silent,
}

/// Whether the Prometheus at `addr` has its lifecycle API on without auth: a
/// GET of `/api/v1/status/flags` (read-only) shows `web.enable-lifecycle`. (A
/// GET of `/-/quit` cannot tell: Prometheus answers 405 to it whether the API
/// is on or off.) Never a POST.
pub async fn lifecycle(client: &reqwest::Client, addr: SocketAddr) -> Lifecycle {
    let probe = async {
        let r = client
            .get(format!("http://{addr}/api/v1/status/flags"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return Some(Lifecycle::Guarded);
        }
        // Another user's server: read at most MAX_ANSWER bytes of its answer.
        let from = format!("the Prometheus at {addr}");
        let bytes = read_at_most(r, &from, MAX_ANSWER).await.ok()?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        Some(if body["data"]["web.enable-lifecycle"] == "true" {
            Lifecycle::Open
        } else {
            Lifecycle::Off
        })
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(Lifecycle::Silent)
}

/// Probes every address side by side: the whole check costs one timeout at most.
fn probe_all(addrs: &[SocketAddr]) -> Vec<Lifecycle> {
    if addrs.is_empty() {
        return Vec::new();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let (Ok(rt), Ok(client)) = (rt, client) else {
        return vec![Lifecycle::Silent; addrs.len()];
    };
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, a) in addrs.iter().enumerate() {
            let (client, a) = (client.clone(), *a);
            set.spawn(async move { (i, lifecycle(&client, a).await) });
        }
        let mut out = vec![Lifecycle::Silent; addrs.len()];
        while let Some(Ok((i, l))) = set.join_next().await {
            out[i] = l;
        }
        out
    })
}

/// A server and where it listens.
struct Server<'a> {
    kind: Kind,
    proc: &'a Proc,
    addr: SocketAddr,
}

/// Where a client on this machine reaches a listener.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v) if v.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(v) if v.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Every Prometheus and Grafana listening on loopback or every address, except this stack's.
fn servers(m: &Machine) -> Vec<Server<'_>> {
    let ours: BTreeSet<u32> = [m.home.prometheus_pid(), m.home.grafana_pid()]
        .iter()
        .filter_map(|p| crate::process::read_pid(p))
        .collect();
    let local = |a: &SocketAddr| a.ip().is_loopback() || a.ip().is_unspecified();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for p in &m.procs.list {
        let Some(kind) = Kind::of(&p.cmdline) else {
            continue;
        };
        if ours.contains(&p.pid) {
            continue;
        }
        let addrs: Vec<SocketAddr> = if m.procs.fds_readable(p.pid) {
            m.listeners
                .all()
                .filter(|l| m.procs.socket_owner(l.inode) == Some(p.pid))
                .map(|l| l.addr)
                .collect()
        } else {
            // Another user's process: the port its command line names, held by its uid.
            kind.ports(&p.cmdline)
                .into_iter()
                .flat_map(|port| m.listeners.all().filter(move |l| l.addr.port() == port))
                .filter(|l| l.uid == p.uid)
                .map(|l| l.addr)
                .collect()
        };
        for addr in addrs.into_iter().filter(local) {
            if seen.insert((p.pid, addr.port())) {
                out.push(Server {
                    kind,
                    proc: p,
                    addr,
                });
            }
        }
    }
    out
}

pub(super) fn foreign_servers(m: &Machine) -> Finding {
    const CHECK: &str = "foreign_prometheus";
    let found = servers(m);
    let probed: Vec<SocketAddr> = found
        .iter()
        .filter(|s| s.kind == Kind::Prometheus)
        .map(|s| reachable(s.addr))
        .collect();
    let mut answers = probe_all(&probed).into_iter();
    let mut evidence = Vec::new();
    let mut worst = Status::Ok;
    for s in &found {
        let mut line = format!(
            "{} pid {} of {} listens on {}",
            s.kind.name(),
            s.proc.pid,
            crate::process::user_name(s.proc.uid),
            s.addr
        );
        if s.kind == Kind::Prometheus {
            line.push_str(match answers.next().unwrap_or(Lifecycle::Silent) {
                Lifecycle::Open => {
                    worst = Status::Problem;
                    ": its lifecycle API answers without credentials — anyone on this machine can stop it"
                }
                Lifecycle::Off => ": it answers without credentials; its lifecycle API is off",
                Lifecycle::Guarded => ": it asks for credentials",
                Lifecycle::Silent => ": it did not answer within 2 s",
            });
        }
        if worst == Status::Ok {
            worst = Status::Warning;
        }
        evidence.push(line);
    }
    if evidence.is_empty() {
        return Finding::ok(
            CHECK,
            "no other Prometheus or Grafana listens on this machine",
        );
    }
    let fix = if worst == Status::Problem {
        "whoever runs a Prometheus with an open lifecycle API should restart it without --web.enable-lifecycle (or behind --web.config.file with basic auth); point Ray at this stack, not at it: `eval \"$(raywatch env)\"` before `ray start`"
    } else {
        "point Ray's Dashboard at this stack, not at them: `eval \"$(raywatch env)\"` before `ray start`"
    };
    Finding::new(
        CHECK,
        worst,
        "other Prometheus or Grafana servers run on this machine",
    )
    .with(evidence, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    /// A server on a free loopback port that answers every connection with
    /// `head` and `body` (chunked), the body again and again when `endless`,
    /// until the client hangs up.
    async fn serve(head: &'static str, body: String, endless: bool) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let framed = format!("{:x}\r\n{body}\r\n", body.len());
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = s.read(&mut request).await;
                    let head = format!("{head}\r\ntransfer-encoding: chunked\r\n\r\n");
                    let _ = s.write_all(head.as_bytes()).await;
                    while s.write_all(framed.as_bytes()).await.is_ok() && endless {}
                    let _ = s.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_probe_reads_the_flags_and_never_more_than_its_bound() {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let flags = |on: &str, pad: usize| {
            let pad = "x".repeat(pad);
            format!(
                r#"{{"status":"success","data":{{"web.enable-lifecycle":"{on}"}},"pad":"{pad}"}}"#
            )
        };
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json";
        let cases = [
            (serve(ok, flags("true", 0), false).await, Lifecycle::Open),
            (serve(ok, flags("false", 0), false).await, Lifecycle::Off),
            (
                serve("HTTP/1.1 401 Unauthorized", "no".into(), false).await,
                Lifecycle::Guarded,
            ),
            // Open, were it read whole: over the bound, it is not read.
            (
                serve(ok, flags("true", MAX_ANSWER), false).await,
                Lifecycle::Silent,
            ),
            (
                serve(ok, "x".repeat(64 << 10), true).await,
                Lifecycle::Silent,
            ),
        ];
        for (addr, want) in cases {
            assert_eq!(lifecycle(&client, addr).await, want, "{addr}");
        }
    }

    #[test]
    fn server_kinds_and_their_ports_from_the_command_line() {
        assert_eq!(
            Kind::of(&cmd("/usr/bin/prometheus --config.file=x")),
            Some(Kind::Prometheus)
        );
        assert_eq!(Kind::of(&cmd("/usr/bin/prometheus-node-exporter")), None);
        assert_eq!(
            Kind::of(&cmd("/usr/sbin/grafana server --homepath=/x")),
            Some(Kind::Grafana)
        );
        assert_eq!(Kind::of(&cmd("/usr/sbin/grafana cli")), None);
        assert_eq!(Kind::of(&cmd("grafana-server")), Some(Kind::Grafana));
        assert_eq!(Kind::Prometheus.ports(&cmd("prometheus")), vec![9090]);
        assert_eq!(
            Kind::Prometheus.ports(&cmd("prometheus --web.listen-address=127.0.0.1:4000")),
            vec![4000]
        );
        assert_eq!(
            Kind::Prometheus.ports(&cmd("prometheus --web.listen-address [::1]:4001")),
            vec![4001]
        );
        assert_eq!(
            Kind::Grafana.ports(&cmd("grafana server cfg:server.http_port=3300")),
            vec![3300]
        );
        assert_eq!(Kind::Grafana.ports(&cmd("grafana-server")), vec![3000]);
    }
}
