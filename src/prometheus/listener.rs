//! Who holds the port where the stack's Prometheus should be: credentials go only to it.

/// Why raywatch sent nothing to the port where the stack's Prometheus should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerError {
    #[error("nothing listens on 127.0.0.1:{port}, where the stack's {what} should be")]
    NotListening { port: u16, what: &'static str },
    #[error(
        "127.0.0.1:{port} is held by {holder}, not by this stack's {what}; raywatch sent it nothing (no credentials)"
    )]
    Foreign {
        port: u16,
        holder: String,
        what: &'static str,
    },
    #[error(
        "127.0.0.1:{port} is held by another process of yours ({holder}), not by this stack's {what} (pid {pid}); raywatch sent it nothing"
    )]
    NotOurs {
        port: u16,
        pid: u32,
        holder: String,
        what: &'static str,
    },
}

/// Checks that `127.0.0.1:port` is held by this user and, when `pid` is known,
/// by that very process (the stack's `what`). Credentials go only where this passed.
pub fn verify_listener(
    port: u16,
    pid: Option<u32>,
    what: &'static str,
) -> Result<(), ListenerError> {
    let listeners = crate::process::Listeners::read();
    let Some(l) = listeners.holder(std::net::Ipv4Addr::LOCALHOST.into(), port) else {
        return Err(ListenerError::NotListening { port, what });
    };
    if l.uid != nix::unistd::geteuid().as_raw() {
        return Err(ListenerError::Foreign {
            port,
            holder: crate::process::describe_listener(l),
            what,
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
            what,
        });
    }
    Ok(())
}
