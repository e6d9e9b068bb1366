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

/// How much of a process' command line raywatch reads: every flag it looks at
/// comes early (a raylet names its session in its first argument), and a process
/// may carry megabytes of arguments (another user's, to make raywatch hold them).
pub const CMDLINE_LIMIT: usize = 8 * 1024;

/// How much of a process' environment raywatch reads, and of one variable in it.
pub const ENVIRON_LIMIT: u64 = 1024 * 1024;
pub const ENV_ENTRY_LIMIT: usize = 4 * 1024;

/// The command line of `pid`, split at NULs: the arguments that end within its
/// first [`CMDLINE_LIMIT`] bytes (an argument cut by the limit is left out).
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    use std::io::Read;
    let mut raw = Vec::with_capacity(1024);
    fs::File::open(format!("/proc/{pid}/cmdline"))
        .ok()?
        .take(CMDLINE_LIMIT as u64 + 1)
        .read_to_end(&mut raw)
        .ok()?;
    Some(split_cmdline(&raw, CMDLINE_LIMIT)).filter(|args| !args.is_empty())
}

/// The arguments of a raw `/proc/<pid>/cmdline` read up to `limit` bytes (one
/// more byte tells that it went on): a last argument cut by the limit is dropped.
fn split_cmdline(raw: &[u8], limit: usize) -> Vec<String> {
    let raw = if raw.len() > limit {
        let kept = &raw[..limit];
        match kept.iter().rposition(|b| *b == 0) {
            Some(end) => &kept[..end],
            None => &[][..],
        }
    } else {
        raw
    };
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The variables `names` of `pid`'s environment (those it has), read as a stream:
/// at most [`ENVIRON_LIMIT`] bytes of it, and a variable longer than
/// [`ENV_ENTRY_LIMIT`] is skipped, so a huge environment is never held.
pub fn env_vars(pid: u32, names: &[&str]) -> std::io::Result<HashMap<String, String>> {
    let file = fs_err::File::open(format!("/proc/{pid}/environ"))?;
    read_env_vars(std::io::Read::take(file, ENVIRON_LIMIT), names)
}

fn read_env_vars(
    stream: impl std::io::Read,
    names: &[&str],
) -> std::io::Result<HashMap<String, String>> {
    use std::io::{BufRead, Read};
    let mut reader = std::io::BufReader::with_capacity(8 * 1024, stream);
    let mut out = HashMap::new();
    let mut entry = Vec::with_capacity(ENV_ENTRY_LIMIT);
    loop {
        entry.clear();
        let n = (&mut reader)
            .take(ENV_ENTRY_LIMIT as u64)
            .read_until(0, &mut entry)?;
        if n == 0 {
            return Ok(out);
        }
        if entry.last() != Some(&0) && n == ENV_ENTRY_LIMIT {
            // Longer than any variable raywatch wants: skip the rest of it.
            reader.skip_until(0)?;
            continue;
        }
        let entry = entry.strip_suffix(&[0]).unwrap_or(&entry);
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        if let Some(name) = names.iter().find(|n| n.as_bytes() == name) {
            out.insert(
                (*name).to_string(),
                String::from_utf8_lossy(value).into_owned(),
            );
        }
    }
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

/// How raywatch tells a process it started from another that reuses its recorded
/// PID: the command line carries every one of these arguments, each exactly. One
/// rule for `down` and for the daemon's start; no marks match nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks(pub Vec<String>);

impl Marks {
    /// Whether the command line `cmd` carries every mark.
    pub fn on(&self, cmd: &[String]) -> bool {
        !self.0.is_empty() && self.0.iter().all(|m| cmd.iter().any(|a| a == m))
    }

    /// Whether `pid` runs (not a zombie) a command line carrying every mark.
    pub fn runs(&self, pid: u32) -> bool {
        alive(pid) && cmdline(pid).is_some_and(|c| self.on(&c))
    }
}

/// Stops `pid`, but only while it still runs a command line with the `ours`
/// marks (a recycled PID is never signalled): waits up to `patience` for it
/// to exit by itself, then SIGTERM, 15 s of grace, then SIGKILL. Returns whether
/// it is gone.
pub fn stop(pid: u32, ours: &Marks, patience: Duration) -> bool {
    use nix::sys::signal::{Signal, kill};
    if pid == 0 {
        // `kill(0, …)` would signal raywatch's own process group.
        return true;
    }
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let still_ours = || ours.runs(pid);
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

/// A TCP socket in the LISTEN state, from the kernel's socket tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    pub addr: SocketAddr,
    pub uid: u32,
    pub inode: u64,
}

/// Every listening TCP socket of this network namespace, by port.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listeners {
    by_port: HashMap<u16, Vec<Listener>>,
}

impl Listeners {
    /// Reads the kernel's listening sockets (both families): through netlink's
    /// sock_diag, which walks only the listening sockets (tens of microseconds),
    /// else from /proc/net/tcp{,6}, whose reading walks the whole connection hash
    /// table (milliseconds, however few sockets there are).
    pub fn read() -> Listeners {
        let all = sock_diag::listeners().unwrap_or_else(|e| {
            tracing::debug!("sock_diag: {e}; reading /proc/net/tcp instead");
            Listeners::from_procfs()
        });
        Listeners::from_list(all)
    }

    fn from_list(all: Vec<Listener>) -> Listeners {
        let mut by_port: HashMap<u16, Vec<Listener>> = HashMap::new();
        for l in all {
            by_port.entry(l.addr.port()).or_default().push(l);
        }
        // Sorted, so that two reads of an unchanged table compare equal.
        for v in by_port.values_mut() {
            v.sort();
        }
        Listeners { by_port }
    }

    /// The listening sockets, from /proc/net/tcp and /proc/net/tcp6.
    fn from_procfs() -> Vec<Listener> {
        let tables = [::procfs::net::tcp(), ::procfs::net::tcp6()];
        tables
            .into_iter()
            .flat_map(|t| t.unwrap_or_default())
            .filter(|entry| entry.state == ::procfs::net::TcpState::Listen)
            .map(|entry| Listener {
                addr: unmap(entry.local_address),
                uid: entry.uid,
                inode: entry.inode,
            })
            .collect()
    }

    /// The ports whose listeners differ between `self` and `other`.
    pub fn changed_ports(&self, other: &Listeners) -> std::collections::BTreeSet<u16> {
        let mut out = std::collections::BTreeSet::new();
        for (port, v) in &self.by_port {
            if other.by_port.get(port) != Some(v) {
                out.insert(*port);
            }
        }
        for port in other.by_port.keys() {
            if !self.by_port.contains_key(port) {
                out.insert(*port);
            }
        }
        out
    }

    /// The socket that accepts connections to `ip:port`: one bound to that
    /// address, else a wildcard one (`0.0.0.0`, `::`).
    pub fn holder(&self, ip: IpAddr, port: u16) -> Option<&Listener> {
        let all = self.by_port.get(&port)?;
        all.iter()
            .find(|l| l.addr.ip() == ip)
            .or_else(|| all.iter().find(|l| l.addr.ip().is_unspecified()))
    }

    /// Every listening socket, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Listener> {
        self.by_port.values().flatten()
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

/// A TCP socket of the kernel's tables: its two ends and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub uid: u32,
    pub inode: u64,
}

/// The established connections to the server at `server`, counted by the uid
/// owning their client end (from sock_diag, else /proc/net/tcp{,6}), most first.
pub fn connections_to(server: SocketAddr) -> Vec<(u32, usize)> {
    let server = unmap(server);
    let sockets = sock_diag::established().unwrap_or_else(|e| {
        tracing::debug!("sock_diag: {e}; reading /proc/net/tcp instead");
        let tables = [::procfs::net::tcp(), ::procfs::net::tcp6()];
        tables
            .into_iter()
            .flat_map(|t| t.unwrap_or_default())
            .filter(|e| e.state == ::procfs::net::TcpState::Established)
            .map(|e| Socket {
                local: unmap(e.local_address),
                remote: unmap(e.remote_address),
                uid: e.uid,
                inode: e.inode,
            })
            .collect()
    });
    let mut by_uid: HashMap<u32, usize> = HashMap::new();
    for s in sockets.iter().filter(|s| s.remote == server) {
        *by_uid.entry(s.uid).or_default() += 1;
    }
    let mut out: Vec<(u32, usize)> = by_uid.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// A TCP socket of an established connection, as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The kernel's TCP state (1: established).
    pub state: u8,
    pub uid: u32,
    /// 0 when no process holds the socket any more (closed, in TIME_WAIT).
    pub inode: u64,
}

/// The kernel's number for an established TCP connection.
const TCP_ESTABLISHED: u8 = 1;

/// The uid owning the client end of a TCP connection that a server socket at
/// `server` accepted from `peer`: the kernel lists the client's socket with
/// `peer` as its local and `server` as its remote address. Only an
/// established socket that a process still holds counts (a socket its client
/// already closed is listed with uid 0, and would pass for root's).
///
/// The kernel is asked about that one socket (sock_diag, a hash lookup);
/// /proc/net/tcp, whose reading walks every connection of the machine, only
/// when sock_diag is unavailable. Blocking: call it off an async runtime.
pub fn peer_uid(server: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let (server, peer) = (unmap(server), unmap(peer));
    let socket = sock_diag::connection(peer, server).unwrap_or_else(|e| {
        tracing::debug!("sock_diag: {e}; reading /proc/net/tcp instead");
        connection_from_procfs(peer, server)
    });
    socket
        .filter(|s| s.state == TCP_ESTABLISHED && s.inode != 0)
        .map(|s| s.uid)
}

/// The socket whose local address is `local` and remote `remote`, from /proc/net/tcp{,6}.
fn connection_from_procfs(local: SocketAddr, remote: SocketAddr) -> Option<Connection> {
    let tables = [::procfs::net::tcp(), ::procfs::net::tcp6()];
    tables
        .into_iter()
        .flat_map(|t| t.unwrap_or_default())
        .find(|e| unmap(e.local_address) == local && unmap(e.remote_address) == remote)
        .map(|e| Connection {
            state: if e.state == ::procfs::net::TcpState::Established {
                TCP_ESTABLISHED
            } else {
                0
            },
            uid: e.uid,
            inode: e.inode,
        })
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
pub fn socket_owner(inode: u64) -> Option<u32> {
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

/// Listening TCP sockets through netlink's `NETLINK_SOCK_DIAG` (see `sock_diag(7)`):
/// a dump request for the LISTEN state only, answered from the kernel's
/// listening hash without walking established connections.
mod sock_diag {
    use super::{Connection, Listener, Socket, unmap};
    use nix::libc;
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    };
    use std::io::{Error, ErrorKind, Result};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const TCP_ESTABLISHED: u32 = 1;
    const TCP_LISTEN: u32 = 10;
    /// `struct nlmsghdr`.
    const HEADER: usize = 16;
    /// `struct inet_diag_req_v2`.
    const REQUEST: usize = 56;
    /// `struct inet_diag_msg`.
    const MESSAGE: usize = 72;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().expect("2 bytes"))
    }

    /// Every listening TCP socket, IPv4 and IPv6.
    pub fn listeners() -> Result<Vec<Listener>> {
        Ok(dump(1 << TCP_LISTEN)?
            .into_iter()
            .map(|s| Listener {
                addr: s.local,
                uid: s.uid,
                inode: s.inode,
            })
            .collect())
    }

    /// Every established TCP connection's socket, IPv4 and IPv6.
    pub fn established() -> Result<Vec<Socket>> {
        dump(1 << TCP_ESTABLISHED)
    }

    fn open() -> Result<std::os::fd::OwnedFd> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        // The kernel answers at once; a bound on the wait all the same.
        nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(2, 0),
        )?;
        Ok(fd)
    }

    /// The address bytes of `a` as `struct inet_diag_sockid` holds them.
    fn address_bytes(a: &SocketAddr) -> [u8; 16] {
        let mut out = [0u8; 16];
        match a.ip() {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
        }
        out
    }

    /// The TCP socket whose local address is `local` and remote address
    /// `remote` (one socket, looked up in the kernel's connection hash: no
    /// walk of the table), or None when there is none.
    pub fn connection(local: SocketAddr, remote: SocketAddr) -> Result<Option<Connection>> {
        let family = match (local, remote) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET,
            (SocketAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6,
            _ => return Ok(None),
        };
        let fd = open()?;
        let mut req = [0u8; HEADER + REQUEST];
        req[0..4].copy_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        let r = &mut req[HEADER..];
        r[0] = family as u8;
        r[1] = libc::IPPROTO_TCP as u8;
        // Every state: the state of what is found is checked by the caller.
        r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        // struct inet_diag_sockid: ports and addresses in network order.
        r[8..10].copy_from_slice(&local.port().to_be_bytes());
        r[10..12].copy_from_slice(&remote.port().to_be_bytes());
        r[12..28].copy_from_slice(&address_bytes(&local));
        r[28..44].copy_from_slice(&address_bytes(&remote));
        // No interface; no cookie (INET_DIAG_NOCOOKIE).
        r[48..56].fill(0xff);
        sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        let mut buf = vec![0u8; 8 * 1024];
        let n = recv(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &mut buf,
            MsgFlags::empty(),
        )?;
        if n < HEADER {
            return Err(Error::new(ErrorKind::InvalidData, "short netlink answer"));
        }
        let len = (u32_at(&buf, 0) as usize).min(n);
        match u16_at(&buf, 4) {
            NLMSG_ERROR if len >= HEADER + 4 => {
                let errno =
                    -i32::from_ne_bytes(buf[HEADER..HEADER + 4].try_into().expect("4 bytes"));
                if errno == libc::ENOENT {
                    Ok(None)
                } else {
                    Err(Error::from_raw_os_error(errno))
                }
            }
            SOCK_DIAG_BY_FAMILY if len >= HEADER + MESSAGE => {
                let m = &buf[HEADER..len];
                Ok(Some(Connection {
                    state: m[1],
                    uid: u32_at(m, 64),
                    inode: u64::from(u32_at(m, 68)),
                }))
            }
            other => Err(Error::new(
                ErrorKind::InvalidData,
                format!("unexpected netlink message type {other}"),
            )),
        }
    }

    /// Every TCP socket in one of the `states` (a bit mask of `1 << state`).
    fn dump(states: u32) -> Result<Vec<Socket>> {
        let fd = open()?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        for (seq, family) in [(1u32, libc::AF_INET), (2, libc::AF_INET6)] {
            let mut req = [0u8; HEADER + REQUEST];
            req[0..4].copy_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
            req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
            req[8..12].copy_from_slice(&seq.to_ne_bytes());
            req[HEADER] = family as u8;
            req[HEADER + 1] = libc::IPPROTO_TCP as u8;
            req[HEADER + 4..HEADER + 8].copy_from_slice(&states.to_ne_bytes());
            sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &req,
                &NetlinkAddr::new(0, 0),
                MsgFlags::empty(),
            )?;
            'dump: loop {
                let n = recv(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &mut buf,
                    MsgFlags::empty(),
                )?;
                if n == 0 {
                    return Err(Error::new(ErrorKind::UnexpectedEof, "netlink closed"));
                }
                let mut at = 0;
                while at + HEADER <= n {
                    let len = u32_at(&buf, at) as usize;
                    if len < HEADER || at + len > n {
                        return Err(Error::new(ErrorKind::InvalidData, "bad netlink message"));
                    }
                    match u16_at(&buf, at + 4) {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => {
                            let errno = i32::from_ne_bytes(
                                buf[at + HEADER..at + HEADER + 4]
                                    .try_into()
                                    .expect("4 bytes"),
                            );
                            return Err(Error::from_raw_os_error(-errno));
                        }
                        SOCK_DIAG_BY_FAMILY if len >= HEADER + MESSAGE => {
                            out.push(parse(&buf[at + HEADER..at + len])?);
                        }
                        _ => {}
                    }
                    at += (len + 3) & !3;
                }
            }
        }
        Ok(out)
    }

    /// One `struct inet_diag_msg`: family, state, …, then `inet_diag_sockid`
    /// (source and destination port, source and destination address), …, uid, inode.
    fn parse(m: &[u8]) -> Result<Socket> {
        let ip = |at: usize| match i32::from(m[0]) {
            libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                m[at],
                m[at + 1],
                m[at + 2],
                m[at + 3],
            ))),
            libc::AF_INET6 => {
                let b: [u8; 16] = m[at..at + 16].try_into().expect("16 bytes");
                Ok(IpAddr::V6(Ipv6Addr::from(b)))
            }
            f => Err(Error::new(
                ErrorKind::InvalidData,
                format!("address family {f}"),
            )),
        };
        let (sport, dport) = (
            u16::from_be_bytes([m[4], m[5]]),
            u16::from_be_bytes([m[6], m[7]]),
        );
        Ok(Socket {
            local: unmap(SocketAddr::new(ip(8)?, sport)),
            remote: unmap(SocketAddr::new(ip(24)?, dport)),
            uid: u32_at(m, 64),
            inode: u64::from(u32_at(m, 68)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_ours_when_it_carries_every_mark_exactly() {
        let cmd: Vec<String> = [
            "/usr/bin/prometheus",
            "--config.file=/h/prometheus/prometheus.yml",
        ]
        .map(String::from)
        .to_vec();
        let marks = |m: &[&str]| Marks(m.iter().map(|s| s.to_string()).collect());
        assert!(marks(&["--config.file=/h/prometheus/prometheus.yml"]).on(&cmd));
        // An argument that merely contains the path (an editor, a pager) is not ours.
        let pager: Vec<String> = ["less", "/h/prometheus/prometheus.yml"]
            .map(String::from)
            .to_vec();
        assert!(!marks(&["/h/prometheus/prometheus.yml"]).on(&cmd));
        assert!(marks(&["/h/prometheus/prometheus.yml"]).on(&pager));
        assert!(!marks(&["--config.file=/h/prometheus/prometheus.yml"]).on(&pager));
        let daemon: Vec<String> = ["raywatch", "--home", "/h", "daemon", "--log-file"]
            .map(String::from)
            .to_vec();
        assert!(marks(&["daemon", "/h"]).on(&daemon));
        assert!(!marks(&["daemon", "/h2"]).on(&daemon));
        // No marks match nothing, not everything.
        assert!(!marks(&[]).on(&daemon));
    }

    #[test]
    fn a_recorded_pid_that_runs_something_else_is_not_signalled() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = sleeper.id();
        // Until it has exec'd, its command line is this test's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cmdline(pid).is_some_and(|c| c.iter().any(|a| a == "30")) {
            assert!(
                Instant::now() < deadline,
                "sleep 30 never showed its command line"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let other = Marks(vec!["--config.file=/nowhere.yml".into()]);
        assert!(!other.runs(pid));
        assert!(stop(pid, &other, Duration::ZERO), "not ours counts as gone");
        assert!(alive(pid), "a process that is not ours was signalled");
        assert!(Marks(vec!["30".into()]).runs(pid));
        assert!(stop(pid, &Marks(vec!["30".into()]), Duration::ZERO));
        let _ = sleeper.wait();
        assert!(stop(0, &Marks(vec!["30".into()]), Duration::ZERO));
    }

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
    fn sock_diag_lists_what_proc_net_tcp_lists() {
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l6 = std::net::TcpListener::bind("[::1]:0").ok();
        let netlink = sock_diag::listeners().expect("sock_diag works here");
        let procfs = Listeners::from_procfs();
        // Other tests open and close listeners meanwhile: compare ours.
        let ours = [
            Some(l4.local_addr().unwrap()),
            l6.as_ref().map(|l| l.local_addr().unwrap()),
        ];
        for addr in ours.into_iter().flatten() {
            let find = |v: &[Listener]| v.iter().find(|l| l.addr == addr).cloned();
            let got = find(&netlink).expect("listed by sock_diag");
            assert_eq!(got.uid, nix::unistd::geteuid().as_raw());
            assert_eq!(Some(got), find(&procfs), "sock_diag and /proc agree");
        }
        let port = l4.local_addr().unwrap().port();
        let before = Listeners::read();
        drop(l4);
        let after = Listeners::read();
        assert!(after.changed_ports(&before).contains(&port));
    }

    #[test]
    fn a_long_command_line_is_read_only_up_to_the_limit() {
        let raw = b"python\0--session-dir=/tmp/ray/session_1\0xxxxxxxxxxxxxxxxxx\0";
        assert_eq!(
            split_cmdline(raw, raw.len()),
            [
                "python",
                "--session-dir=/tmp/ray/session_1",
                "xxxxxxxxxxxxxxxxxx"
            ]
        );
        // Cut inside the third argument: it is left out, not kept half.
        assert_eq!(
            split_cmdline(&raw[..45], 44),
            ["python", "--session-dir=/tmp/ray/session_1"]
        );
        assert!(split_cmdline(&[b'a'; 20], 10).is_empty());
        let me = std::process::id();
        let args = cmdline(me).expect("our own command line");
        assert!(args.iter().map(String::len).sum::<usize>() <= CMDLINE_LIMIT);
    }

    #[test]
    fn env_vars_picks_the_wanted_ones_and_skips_huge_entries() {
        let huge = format!("HUGE={}", "x".repeat(3 * ENV_ENTRY_LIMIT));
        let raw = format!("A=1\0{huge}\0SLURM_JOB_ID=4242\0B\0SLURM_JOB_NAME=train\0");
        let got =
            read_env_vars(raw.as_bytes(), &["SLURM_JOB_ID", "SLURM_JOB_NAME", "HUGE"]).unwrap();
        assert_eq!(got.get("SLURM_JOB_ID").map(String::as_str), Some("4242"));
        assert_eq!(got.get("SLURM_JOB_NAME").map(String::as_str), Some("train"));
        assert_eq!(
            got.get("HUGE"),
            None,
            "longer than a variable raywatch reads"
        );
        let path = std::env::var("PATH").unwrap();
        let mine = env_vars(std::process::id(), &["PATH"]).unwrap();
        if path.len() < ENV_ENTRY_LIMIT {
            assert_eq!(mine.get("PATH"), Some(&path));
        }
    }

    #[test]
    fn connections_to_a_server_are_counted_by_the_clients_uid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(connections_to(addr), vec![]);
        // Never accepted, as with a server at its connection limit: still counted.
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        assert_eq!(connections_to(addr), vec![(me, 3)]);
        drop(clients);
    }

    #[test]
    fn a_connection_closed_by_its_client_has_no_owner() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(server).unwrap();
        let (s, peer) = l.accept().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(peer_uid(server, peer), Some(me));
        assert_eq!(
            connection_from_procfs(peer, server).map(|c| c.uid),
            Some(me)
        );
        // The client closes first: its socket waits for the server's FIN
        // (FIN_WAIT2) or lingers ownerless (TIME_WAIT): nobody's.
        drop(c);
        assert_eq!(peer_uid(server, peer), None);
        drop(s);
        assert_eq!(peer_uid(server, peer), None);
        // No such connection at all.
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sock_diag::connection(nobody, server).unwrap(), None);
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
