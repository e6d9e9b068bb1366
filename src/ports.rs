//! Ports and addresses: free loopback ports, who holds a taken one, and which hosts are this machine.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use crate::error::HintExt;
use anyhow::Result;

/// A port on 127.0.0.1 that was free a moment ago (the kernel's choice).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// Whether `port` can be bound on 127.0.0.1 right now.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

/// Fails with a message naming the port and its holder when `port` is taken.
pub fn require_free(port: u16, what: &str) -> Result<()> {
    if is_free(port) {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "port {port} on 127.0.0.1, requested for {what}, is already in use ({})",
        crate::process::describe_holder(port)
    ))
    .hint("pick another port, or leave the flag out and raywatch picks a free one")
}

/// The IP addresses of this machine's interfaces, loopback included.
pub fn local_addresses() -> std::collections::BTreeSet<std::net::IpAddr> {
    let mut out = std::collections::BTreeSet::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                out.insert(std::net::IpAddr::V4(v4.ip()));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                out.insert(std::net::IpAddr::V6(v6.ip()));
            }
        }
    }
    out
}

/// Whether `host` (from a `host:port` target) names this machine.
pub fn is_local_host(host: &str, locals: &std::collections::BTreeSet<std::net::IpAddr>) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return ip.is_loopback() || locals.contains(&ip);
    }
    let hostname = fs_err::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    bare == "localhost" || bare == hostname.trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_own_addresses_are_local() {
        let locals = local_addresses();
        assert!(is_local_host("127.0.0.1", &locals));
        assert!(is_local_host("127.3.4.5", &locals));
        assert!(is_local_host("[::1]", &locals));
        assert!(is_local_host("localhost", &locals));
        assert!(
            !is_local_host("192.0.2.1", &locals),
            "TEST-NET-1 is nobody's address"
        );
        assert!(!is_local_host("example.invalid", &locals));
    }
}
