//! Processes and sockets: facts from /proc (procfs crate) — who holds a port, what a PID
//! runs — and stopping a process raywatch recorded, only while it still runs what it started.

use fs_err as fs;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// The user name of `uid`, or the number when it has none.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// The command line of `pid`, split at NULs.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Whether `pid` is alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    ::procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// Reads a PID file raywatch wrote.
pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Stops `pid`, but only while it still runs a command line `is_ours`
/// recognises (a recycled PID is never signalled): waits up to `patience` for it
/// to exit by itself, then SIGTERM, 15 s of grace, then SIGKILL. Returns whether
/// it is gone.
pub fn stop(pid: u32, is_ours: impl Fn(&[String]) -> bool, patience: Duration) -> bool {
    use nix::sys::signal::{Signal, kill};
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let still_ours = || alive(pid) && cmdline(pid).is_some_and(|c| is_ours(&c));
    let gone_within = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while still_ours() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        !still_ours()
    };
    if gone_within(patience) {
        return true;
    }
    for (signal, grace) in [
        (Signal::SIGTERM, Duration::from_secs(15)),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        let _ = kill(target, signal);
        if gone_within(grace) {
            return true;
        }
    }
    false
}

/// A TCP socket in the LISTEN state, from /proc/net/tcp and /proc/net/tcp6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub uid: u32,
    pub inode: u64,
}

/// Every listening TCP socket of this network namespace, by port.
#[derive(Debug, Default)]
pub struct Listeners {
    by_port: HashMap<u16, Vec<Listener>>,
}

impl Listeners {
    /// Reads the kernel's socket tables (both families).
    pub fn read() -> Listeners {
        let mut by_port: HashMap<u16, Vec<Listener>> = HashMap::new();
        let tables = [::procfs::net::tcp(), ::procfs::net::tcp6()];
        for entry in tables.into_iter().flat_map(|t| t.unwrap_or_default()) {
            if entry.state != ::procfs::net::TcpState::Listen {
                continue;
            }
            let addr = unmap(entry.local_address);
            by_port.entry(addr.port()).or_default().push(Listener {
                addr,
                uid: entry.uid,
                inode: entry.inode,
            });
        }
        Listeners { by_port }
    }

    /// The socket that accepts connections to `ip:port`: one bound to that
    /// address, else a wildcard one (`0.0.0.0`, `::`).
    pub fn holder(&self, ip: IpAddr, port: u16) -> Option<&Listener> {
        let all = self.by_port.get(&port)?;
        all.iter()
            .find(|l| l.addr.ip() == ip)
            .or_else(|| all.iter().find(|l| l.addr.ip().is_unspecified()))
    }

    /// Any socket listening on `port`, whatever its address.
    pub fn any_on(&self, port: u16) -> Option<&Listener> {
        self.by_port.get(&port)?.first()
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as the IPv4 address it is.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// The uid owning the client end of a TCP connection that a server socket at
/// `server` accepted from `peer`: the kernel's table lists the client's socket
/// with `peer` as its local and `server` as its remote address.
pub fn peer_uid(server: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let (server, peer) = (unmap(server), unmap(peer));
    let tables = [::procfs::net::tcp(), ::procfs::net::tcp6()];
    tables
        .into_iter()
        .flat_map(|t| t.unwrap_or_default())
        .find(|e| unmap(e.local_address) == peer && unmap(e.remote_address) == server)
        .map(|e| e.uid)
}

/// Whether process `pid` holds the socket with this inode (readable for our own processes).
pub fn holds_socket(pid: u32, inode: u64) -> bool {
    let Ok(process) = ::procfs::process::Process::new(pid as i32) else {
        return false;
    };
    let Ok(fds) = process.fd() else {
        return false;
    };
    fds.flatten()
        .any(|fd| matches!(fd.target, ::procfs::process::FDTarget::Socket(i) if i == inode))
}

/// The process holding a socket inode, among the processes this user may inspect.
fn socket_owner(inode: u64) -> Option<u32> {
    let all = ::procfs::process::all_processes().ok()?;
    all.flatten()
        .find(|p| {
            p.fd().is_ok_and(|mut fds| {
                fds.any(|fd| {
                    fd.is_ok_and(|fd| {
                        matches!(fd.target, ::procfs::process::FDTarget::Socket(i) if i == inode)
                    })
                })
            })
        })
        .map(|p| p.pid as u32)
}

/// The process holding TCP `port` open for listening, with its command line,
/// when this user may see it.
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let listeners = Listeners::read();
    let inode = listeners.any_on(port)?.inode;
    let pid = socket_owner(inode)?;
    let cmd = cmdline(pid).map(|c| c.join(" ")).unwrap_or_default();
    Some((pid, cmd))
}

/// Describes who holds a listening socket, for messages: uid, user and, when
/// this user may see it, the process.
pub fn describe_listener(l: &Listener) -> String {
    let who = format!("uid {} ({})", l.uid, user_name(l.uid));
    match socket_owner(l.inode) {
        Some(pid) => {
            let cmd: String = cmdline(pid)
                .map(|c| c.join(" "))
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect();
            format!("{who}, pid {pid}: {cmd}")
        }
        None => who,
    }
}

/// The Ray session a process belongs to, read from a `session_*` component of
/// the paths on its command line (`--session-dir=…`, `--log_dir=…/logs`).
pub fn ray_session_of(pid: u32) -> Option<String> {
    cmdline(pid)?.iter().find_map(|arg| {
        let value = arg.split_once('=').map(|(_, v)| v).unwrap_or(arg);
        crate::ray::session_in_path(Path::new(value))
    })
}

/// Describes who holds `port`, for error messages.
pub fn describe_holder(port: u16) -> String {
    match Listeners::read().any_on(port) {
        Some(l) => format!("held by {}", describe_listener(l)),
        None => "held by a process this user cannot see".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_of_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (pid, _) = port_holder(port).expect("holder");
        assert_eq!(pid, std::process::id());
        assert!(alive(pid));
        let listeners = Listeners::read();
        let l = listeners
            .holder("127.0.0.1".parse().unwrap(), port)
            .expect("listed");
        assert_eq!(l.uid, nix::unistd::geteuid().as_raw());
        assert!(holds_socket(pid, l.inode));
        assert!(!holds_socket(1, l.inode));
    }

    #[test]
    fn the_peer_of_a_loopback_connection_is_this_user() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(
            peer_uid(l.local_addr().unwrap(), peer),
            Some(nix::unistd::geteuid().as_raw())
        );
    }
}
