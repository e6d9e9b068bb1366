//! Test hosts: network namespaces on a bridge of the test's own, each with an
//! address in 10.213.0.0/16 that exists only inside them, torn down on drop.
//!
//! A [`Lan`] is one "switch" namespace holding a bridge; [`Lan::host`] adds a
//! namespace joined to it by a veth pair (both ends live inside namespaces the
//! test made, so the machine's own network never sees them), with its address,
//! loopback up and a host name of its own (each command runs in a UTS
//! namespace of its own that carries it). Every name starts with
//! `rwt-<pid of the test process>-`: a later run removes what a killed run
//! left (its pid is gone), and parallel runs never collide.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::support::{unmet, wait_for};

/// What every namespace the fixture makes is called first.
pub const PREFIX: &str = "rwt-";

/// The test hosts' network: every address is in 10.213.0.0/16.
const NET: [u8; 2] = [10, 213];

/// `ip` with these arguments; panics (naming the command) unless it succeeds.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The network namespaces `ip netns` knows by name.
pub fn namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The PIDs of processes in network namespace `ns`.
fn pids_in(ns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
        .expect("ip (iproute2) runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The inode of namespace `ns` (what `/proc/<pid>/ns/net` of its processes reads).
fn inode_of(ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs_err::metadata(format!("/run/netns/{ns}")).unwrap().ino()
}

/// The processes whose network namespace has inode `inode`.
pub fn processes_in_inode(inode: u64) -> Vec<u32> {
    let want = format!("net:[{inode}]");
    let mut pids = Vec::new();
    for e in fs_err::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if fs_err::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == want)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every process in `ns` (SIGKILL), waits until none is left, then deletes it.
fn remove_namespace(ns: &str) {
    // Bounded: processes that keep forking get killed again each round.
    for _ in 0..150 {
        let pids = pids_in(ns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stdin(Stdio::null())
        .output();
}

/// Removes the namespaces of earlier runs whose test process is gone (killed
/// before its drop guards ran): `rwt-<pid>-…` where no process `pid` runs.
pub fn remove_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in namespaces() {
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_namespace(&ns);
        removed.push(ns);
    }
    removed
}

/// What a [`Lan`] made, for the teardown and the check that nothing is left.
#[derive(Debug, Default, Clone)]
pub struct Made {
    /// Namespaces, with their inodes (hosts first, the switch last).
    pub namespaces: Vec<(String, u64)>,
    /// Interface names (the bridge and the veth ends).
    pub links: Vec<String>,
}

/// A switch namespace with a bridge; hosts join it with [`Lan::host`].
pub struct Lan {
    /// `rwt-<pid>-<n>`: every name of this network starts with it.
    pub id: String,
    /// The third octet of this network's addresses (10.213.N.x/16).
    pub subnet: u8,
    switch: String,
    made: Mutex<Made>,
    closed: bool,
}

/// One test host: a network namespace with an address on its [`Lan`].
#[derive(Debug, Clone)]
pub struct Host {
    /// Its short name (`a`), also its host name.
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Lan {
    /// A new switch namespace (after removing what killed runs left); needs root.
    pub fn new() -> Lan {
        if !nix::unistd::geteuid().is_root() {
            unmet("root, to create network namespaces");
        }
        remove_stale();
        static COUNT: AtomicU8 = AtomicU8::new(0);
        let subnet = COUNT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{subnet}", std::process::id());
        let lan = Lan {
            switch: format!("{id}-switch"),
            id,
            subnet,
            made: Mutex::new(Made::default()),
            closed: false,
        };
        lan.add_namespace(&lan.switch);
        ip(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"]);
        lan.made.lock().unwrap().links.push("br0".into());
        ip(&["-n", &lan.switch, "link", "set", "br0", "up"]);
        ip(&["-n", &lan.switch, "link", "set", "lo", "up"]);
        lan
    }

    fn add_namespace(&self, ns: &str) {
        ip(&["netns", "add", ns]);
        let inode = inode_of(ns);
        self.made
            .lock()
            .unwrap()
            .namespaces
            .insert(0, (ns.to_string(), inode));
    }

    /// A host named `name` (a short word): its namespace, joined to the bridge,
    /// with the next address 10.213.N.i/16 and loopback up.
    pub fn host(&self, name: &str) -> Host {
        let ns = format!("{}-{name}", self.id);
        let i = self.made.lock().unwrap().namespaces.len() as u8; // the switch is the first
        assert!(i < 255, "at most 254 hosts on a Lan");
        self.add_namespace(&ns);
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
        ]);
        self.made.lock().unwrap().links.push(port.clone());
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", &port, "up"]);
        let addr = Ipv4Addr::new(NET[0], NET[1], self.subnet, i);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Host {
            name: name.to_string(),
            ns,
            addr,
        }
    }

    /// What this network made so far.
    pub fn made(&self) -> Made {
        self.made.lock().unwrap().clone()
    }

    /// Kills every process in its namespaces and removes them (idempotent).
    fn teardown(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let made = self.made();
        for (ns, _) in &made.namespaces {
            remove_namespace(ns);
        }
    }

    /// Tears the network down and checks that nothing it made is left: no
    /// namespace, no interface of its names in this namespace, no process in
    /// any of its namespaces.
    pub fn close(mut self) {
        let made = self.made();
        self.teardown();
        assert_nothing_left(&made);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Panics unless everything of `made` is gone.
pub fn assert_nothing_left(made: &Made) {
    let names = namespaces();
    let left: Vec<&String> = made
        .namespaces
        .iter()
        .map(|(n, _)| n)
        .filter(|n| names.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    // The links lived inside the namespaces only: none may have turned up here.
    let here = ip(&["-o", "link", "show"]);
    for link in here.lines() {
        let name = link
            .split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next().unwrap_or_default())
            .unwrap_or_default();
        assert!(
            !made.links.iter().any(|l| l == name) && !name.starts_with(PREFIX),
            "interface left in the test's namespace: {link}"
        );
    }
    for (ns, inode) in &made.namespaces {
        let procs = processes_in_inode(*inode);
        assert!(procs.is_empty(), "processes left in {ns}: {procs:?}");
    }
}

impl Host {
    /// `program` run inside the host: its network namespace, and a UTS
    /// namespace whose host name is the host's name.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "unshare", "--uts", "--"])
            .args(["sh", "-c", "hostname \"$0\" && exec \"$@\"", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Runs `program args` inside the host and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.cmd(program).args(args).output().unwrap()
    }

    /// An executable script at `dir/name` that runs `program` with its
    /// arguments inside the host (e.g. a `Stack`'s `bin`).
    pub fn wrapper(&self, dir: &Path, name: &str, program: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        fs_err::write(
            &path,
            format!(
                "#!/bin/sh\nexec ip netns exec {} unshare --uts -- sh -c 'hostname \"$0\" && exec \"$@\"' {} {} \"$@\"\n",
                quote(&self.ns),
                quote(&self.name),
                quote(&program.to_string_lossy()),
            ),
        )
        .unwrap();
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Runs `f` on a thread inside the host's network namespace (sockets it
    /// opens, and threads it starts, are the host's).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = fs_err::File::open(format!("/run/netns/{}", self.ns)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the host's network namespace");
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// The PIDs of the processes in the host.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.ns)
    }

    /// Spawns `cmd` (from [`Host::cmd`]) in a process group of its own, output discarded.
    pub fn spawn(&self, mut cmd: Command) -> std::process::Child {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    }
}

#[test]
fn hosts_reach_each_other_and_nothing_is_left() {
    use std::io::{Read, Write};
    let lan = Lan::new();
    let a = lan.host("a");
    let b = lan.host("b");
    assert_eq!(a.addr.octets()[..2], NET, "{a:?}");
    assert_ne!(a.addr, b.addr);
    // The host's own name and address, loopback up.
    let out = a.run("sh", &["-c", "hostname; ip -o addr show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("a\n"), "{text}");
    assert!(text.contains(&format!("inet {}/16", a.addr)), "{text}");
    assert!(text.contains("inet 127.0.0.1/8"), "{text}");
    // A listener on a's address answers a connect from b.
    let listener = a.enter(|| std::net::TcpListener::bind((a.addr, 0)).unwrap());
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, peer) = listener.accept().unwrap();
        c.write_all(b"hello").unwrap();
        peer
    });
    let (got, mine) = b.enter(|| {
        let mut c =
            std::net::TcpStream::connect_timeout(&(a.addr, port).into(), Duration::from_secs(10))
                .expect("b reaches a over the bridge");
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        (got, c.local_addr().unwrap().ip())
    });
    assert_eq!(got, "hello");
    assert_eq!(server.join().unwrap().ip(), mine);
    assert_eq!(mine, std::net::IpAddr::V4(b.addr));
    // This namespace does not hold the hosts' addresses.
    assert!(
        !addresses_here().contains(&std::net::IpAddr::V4(a.addr)),
        "a's address is only inside a"
    );
    // A process left running inside is killed at the teardown.
    let mut sleeper = a.spawn({
        let mut c = a.cmd("sleep");
        c.arg("600");
        c
    });
    wait_for("the sleeper in a", Duration::from_secs(10), || {
        (!a.pids().is_empty()).then_some(())
    });
    let made = lan.made();
    assert_eq!(made.namespaces.len(), 3, "{made:?}");
    lan.close();
    assert!(sleeper.wait().is_ok());
    assert_nothing_left(&made);
}

/// The addresses of the test's own network namespace.
fn addresses_here() -> std::collections::BTreeSet<std::net::IpAddr> {
    let out = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet" || *x == "inet6")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_killed_runs_namespaces_are_removed_at_the_next_run() {
    if !nix::unistd::geteuid().is_root() {
        unmet("root, to create network namespaces");
    }
    // A pid that no process has: a child that exited and was reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let stale = format!("{PREFIX}{}-0-a", gone.id());
    ip(&["netns", "add", &stale]);
    let inode = inode_of(&stale);
    // A process still running inside, as a killed run leaves it.
    let mut left = Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the leftover process", Duration::from_secs(10), || {
        (!processes_in_inode(inode).is_empty()).then_some(())
    });
    // The next network's setup removes it, and leaves the current run's alone.
    let lan = Lan::new();
    assert!(!namespaces().contains(&stale), "{:?}", namespaces());
    assert!(left.wait().is_ok());
    assert!(processes_in_inode(inode).is_empty());
    assert!(
        namespaces().iter().any(|n| n.starts_with(&lan.id)),
        "this run's own namespaces stay"
    );
    let made = lan.made();
    lan.close();
    assert_nothing_left(&made);
}

impl Lan {
    /// Pulls `host`'s cable at the switch (`up` false) or plugs it back: its
    /// port on the bridge goes down or up. Inside the host the interface stays
    /// up with its address (local traffic keeps flowing); nothing reaches it.
    pub fn set_link(&self, host: &Host, up: bool) {
        // The host's port on the bridge is `v<i>`, i the last octet of its address.
        let port = format!("v{}", host.addr.octets()[3]);
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch, "link", "set", &port, state]);
    }
}
