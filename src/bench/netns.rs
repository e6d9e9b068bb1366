//! Simulated hosts for `raywatch-bench fleet-scale`: network namespaces on a bridge, removed on drop.
//!
//! A [`Lan`] is a "switch" namespace holding a bridge; each [`Lan::host`] is a
//! namespace joined to it by a veth pair created directly between the two
//! namespaces (the machine's own network never sees either end), with an
//! address in 10.213.0.0/16 that exists only inside it. Every name starts with
//! `rwb-<pid of this process>-`, so a later run removes what a killed run left.
//! Needs root.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// What every namespace made here is called first.
pub(crate) const PREFIX: &str = "rwb-";

/// The third octet of the bench's addresses: 10.213.200.i/16.
const SUBNET: u8 = 200;

/// `ip` with these arguments; an error naming the command unless it succeeds.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (Debian: apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pid in a name `rwb-<pid>-…`, if it is one of ours.
fn owner_pid(ns: &str) -> Option<u32> {
    ns.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Kills every process of namespace `ns` (bounded rounds), then deletes it.
fn remove_namespace(ns: &str) {
    for _ in 0..100 {
        let pids: Vec<i32> = ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            // This process may sit in the central namespace: never itself.
            .filter(|p| *p != std::process::id() as i32)
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Removes the `rwb-<pid>-…` namespaces whose pid no longer runs (a killed run's); returns them.
pub(crate) fn remove_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for line in ip(&["netns", "list"])?.lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = owner_pid(ns) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(ns);
            removed.push(ns.to_string());
        }
    }
    Ok(removed)
}

/// One simulated host: its namespace and address.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub(crate) ns: String,
    pub(crate) addr: Ipv4Addr,
}

/// A switch namespace with a bridge, and the hosts on it; all removed on drop.
pub(crate) struct Lan {
    id: String,
    switch: String,
    /// Every namespace made, in order (the switch first).
    made: Vec<String>,
    /// The network namespace of the thread that made it.
    home: fs_err::File,
}

impl Lan {
    /// A new, empty network (after removing what killed runs left). Needs root.
    pub(crate) fn new() -> Result<Lan> {
        if !nix::unistd::geteuid().is_root() {
            bail!("fleet-scale needs root: it creates network namespaces (run it as root)");
        }
        remove_stale()?;
        let id = format!("{PREFIX}{}", std::process::id());
        let mut lan = Lan {
            switch: format!("{id}-switch"),
            id,
            made: Vec::new(),
            home: fs_err::File::open("/proc/thread-self/ns/net")?,
        };
        let switch = lan.switch.clone();
        ip(&["netns", "add", &switch])?;
        lan.made.push(switch.clone());
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        Ok(lan)
    }

    /// Host `name`: a namespace joined to the bridge, address 10.213.200.i/16, loopback up.
    pub(crate) fn host(&mut self, name: &str) -> Result<Host> {
        let i = self.made.len(); // 1 for the first host: the switch is made[0]
        if i > 254 {
            bail!("at most 254 hosts on one bench network");
        }
        let ns = format!("{}-{name}", self.id);
        ip(&["netns", "add", &ns])?;
        self.made.push(ns.clone());
        let port = format!("v{i}");
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &self.switch, "link", "set", &port, "up"])?;
        let addr = Ipv4Addr::new(10, 213, SUBNET, i as u8);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Host { ns, addr })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Back to where this thread was made: a thread left in one of these
        // namespaces would spawn its `ip` there, and list itself forever.
        let _ = nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET);
        // Hosts first (their veth ends go with them), the switch last.
        for ns in self.made.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// Moves the calling thread into namespace `ns` (what it then connects, binds
/// or spawns lives there).
pub(crate) fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = fs_err::File::open(&path)?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter network namespace {path}"))?;
    Ok(())
}

/// `n` listeners on `addr` (free ports) inside namespace `ns`, bound by a
/// thread of their own that enters it; they stay in it wherever they are served.
pub(crate) fn listeners_in(ns: &str, addr: Ipv4Addr, n: usize) -> Result<Vec<TcpListener>> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<Vec<TcpListener>> {
        enter(&ns)?;
        (0..n)
            .map(|_| {
                let l = TcpListener::bind((addr, 0))
                    .with_context(|| format!("cannot listen on {addr} in {ns}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .collect()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread binding in a namespace panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_prefixed_names_have_an_owner() {
        assert_eq!(owner_pid("rwb-1234-h3"), Some(1234));
        assert_eq!(owner_pid("rwb-1234-switch"), Some(1234));
        assert_eq!(owner_pid("rwt-1234-0-a"), None);
        assert_eq!(owner_pid("rwb-x-h1"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
