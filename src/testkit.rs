//! Synthetic Ray heads, shared by the integration tests and `raywatch-bench`:
//! discovery files written the way Ray writes them, rewritten on Ray's schedule,
//! and listeners holding their targets as a real head's processes do; and a
//! loopback HTTP sink standing in for a notification receiver.
//!
//! Compiled only with the `testkit` feature (the tests turn it on through the
//! crate's dev-dependency on itself, and `bench` implies it): the shipped
//! `raywatch` does not carry it.

use std::collections::HashMap;
use std::net::{SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Writes a discovery file as Ray does: one group labelled `job: ray` with
/// every target, through a temp file and a rename.
pub fn write_discovery(file: &Path, targets: &[String]) -> std::io::Result<()> {
    let body = serde_json::json!([{"labels": {"job": "ray"}, "targets": targets}]);
    let tmp = file.with_extension("tmp");
    fs_err::write(&tmp, body.to_string())?;
    fs_err::rename(&tmp, file)
}

/// Discovery files rewritten every `period` (a Ray head: 5 s), the writes
/// spread evenly over it and paced by the clock, until dropped. The caller
/// writes each file first; a file whose folder is gone is not written again.
pub struct Rewriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Rewriter {
    /// Rewrites each of `files` (a path and its targets) every `period`.
    pub fn start(files: Vec<(PathBuf, Vec<String>)>, period: Duration) -> Rewriter {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || rewrite(&files, period, &stop))
        };
        Rewriter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Rewriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The rewriter's loop: each round lasts `period`, file `k` is written at
/// `k + 1` gaps into it (so a slow write does not stretch the round).
fn rewrite(files: &[(PathBuf, Vec<String>)], period: Duration, stop: &AtomicBool) {
    let gap = period / u32::try_from(files.len().max(1)).unwrap_or(u32::MAX);
    loop {
        let round = Instant::now();
        for (k, (file, targets)) in (1u32..).zip(files) {
            if !sleep_until(round + gap * k, stop) {
                return;
            }
            if file.parent().is_some_and(Path::exists) {
                let _ = write_discovery(file, targets);
            }
        }
        if files.is_empty() && !sleep_until(round + period, stop) {
            return;
        }
    }
}

/// Listeners on synthetic clusters' targets, as a real head's processes hold
/// them (raywatch publishes a local target only while a trusted uid listens on
/// it); one thread accepts and closes their connections every `poll`. Closed
/// on drop.
pub struct Held {
    listeners: Arc<Mutex<HashMap<String, TcpListener>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Held {
    /// Holds nothing yet; its thread looks for connections every 250 ms.
    pub fn new() -> Held {
        Held::polling(Duration::from_millis(250))
    }

    /// Holds nothing yet; its thread looks for connections every `poll`.
    pub fn polling(poll: Duration) -> Held {
        let listeners: Arc<Mutex<HashMap<String, TcpListener>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (listeners, stop) = (listeners.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for l in listeners.lock().unwrap().values() {
                        while let Ok((c, _)) = l.accept() {
                            drop(c);
                        }
                    }
                    std::thread::sleep(poll);
                }
            })
        };
        Held {
            listeners,
            stop,
            thread: Some(thread),
        }
    }

    /// Listens on `target` (`127.0.0.1:port`), alone.
    pub fn hold(&self, target: &str) -> anyhow::Result<()> {
        let l = TcpListener::bind(target).with_context(|| {
            format!(
                "cannot listen on {target} for a synthetic cluster: the port is taken, or this \
                 process is short of file descriptors (raise `ulimit -n`)"
            )
        })?;
        l.set_nonblocking(true)?;
        self.listeners.lock().unwrap().insert(target.to_string(), l);
        Ok(())
    }

    /// Listens on `target` with `SO_REUSEPORT`, so that other sockets of this
    /// uid (parallel tests) may hold the same port; a port another socket
    /// holds without it is left to that socket (an error).
    pub fn share(&self, target: &str) -> anyhow::Result<()> {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt,
            socket, sockopt,
        };
        use std::os::fd::AsRawFd;
        let addr: SocketAddrV4 = target
            .parse()
            .with_context(|| format!("{target} is not an IPv4 address and port"))?;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReusePort, &true)?;
        bind(fd.as_raw_fd(), &SockaddrIn::from(addr))
            .with_context(|| format!("cannot listen on {target}: the port is taken"))?;
        listen(&fd, Backlog::new(16)?)?;
        self.listeners
            .lock()
            .unwrap()
            .insert(target.to_string(), TcpListener::from(fd));
        Ok(())
    }

    /// Stops listening on `target`.
    pub fn release(&self, target: &str) {
        self.listeners.lock().unwrap().remove(target);
    }
}

impl Default for Held {
    fn default() -> Held {
        Held::new()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps until `due`, in slices of at most 100 ms; false once `stop` is set.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let Some(left) = due.checked_duration_since(Instant::now()) else {
            return true;
        };
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewriter_rewrites_each_file_within_its_period_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = (0..3)
            .map(|k| {
                let f = dir.path().join(format!("d{k}.json"));
                (f, vec![format!("127.0.0.1:{}", 30000 + k)])
            })
            .collect();
        let rewriter = Rewriter::start(files.clone(), Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !files.iter().all(|(f, _)| f.exists()) {
            assert!(Instant::now() < deadline, "not every file was written");
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = fs_err::read_to_string(&files[2].0).unwrap();
        let groups: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(groups[0]["targets"][0], "127.0.0.1:30002");
        assert_eq!(groups[0]["labels"]["job"], "ray");
        drop(rewriter);
        fs_err::remove_file(&files[0].0).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(!files[0].0.exists(), "a dropped rewriter wrote again");
    }

    #[test]
    fn held_targets_accept_until_released_and_a_shared_port_takes_two() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = probe.local_addr().unwrap().to_string();
        drop(probe);
        let held = Held::polling(Duration::from_millis(20));
        held.share(&target).unwrap();
        let other = Held::polling(Duration::from_millis(20));
        other.share(&target).unwrap();
        assert!(
            Held::polling(Duration::from_millis(20))
                .hold(&target)
                .is_err(),
            "a port held with SO_REUSEPORT was bound again without it"
        );
        std::net::TcpStream::connect(&target).unwrap();
        drop(other);
        held.release(&target);
        assert!(std::net::TcpStream::connect(&target).is_err());
        held.hold(&target).unwrap();
        std::net::TcpStream::connect(&target).unwrap();
    }
}

/// One request an [`HttpSink`] received: when, its path, its body.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub body: String,
}

/// A loopback HTTP server that answers every request `200 ok` and keeps it: a
/// webhook receiver, or a stand-in for Slack's.
pub struct HttpSink {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl HttpSink {
    pub fn start() -> std::io::Result<HttpSink> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream);
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let path = first.split(' ').nth(1).unwrap_or("").to_string();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length.min(1 << 20)];
                let _ = reader.read_exact(&mut body);
                let at = Instant::now();
                if let Ok(mut v) = keep.lock() {
                    v.push(Received {
                        at,
                        path,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        Ok(HttpSink { base, got })
    }

    /// Every request so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The JSON bodies received on `path`.
    pub fn json_on(&self, path: &str) -> Vec<serde_json::Value> {
        self.received()
            .iter()
            .filter(|r| r.path == path)
            .filter_map(|r| serde_json::from_str(&r.body).ok())
            .collect()
    }
}
