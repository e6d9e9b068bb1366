//! Loopback ports: finding free ones and saying who holds a taken one.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::{Result, bail};

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
    bail!(
        "port {port} on 127.0.0.1, requested for {what}, is already in use ({})\n\
         hint: pick another port, or leave the flag out and raywatch picks a free one",
        crate::procfs::describe_holder(port)
    )
}
