//! Log files of bounded size: the daemon's and its children's output, rotated, never held in memory.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A log that moves itself to `<name>.1` when it passes `max` bytes, keeping
/// at most two files (about 2 × `max` on disk).
pub struct RotatingLog {
    path: PathBuf,
    max: u64,
    file: Option<File>,
    size: u64,
}

/// Default size of one log file.
pub const MAX_LOG_BYTES: u64 = 10 << 20;

impl RotatingLog {
    pub fn open(path: PathBuf, max: u64) -> RotatingLog {
        let mut log = RotatingLog {
            path,
            max,
            file: None,
            size: 0,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        // Owner only: a child may log what it is sent (Alertmanager logs a
        // failing webhook's URL, token and all).
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
    }

    fn rotate(&mut self) {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let _ = fs_err::rename(&self.path, &old);
        self.reopen();
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size + buf.len() as u64 > self.max && self.size > 0 {
            self.rotate();
        }
        match self.file.as_mut() {
            Some(f) => {
                let n = f.write(buf)?;
                self.size += n as u64;
                Ok(n)
            }
            // The disk or the folder is gone: dropping log lines beats dying.
            None => {
                self.reopen();
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

/// A rotating log shared by several writers, usable as a tracing writer.
#[derive(Clone)]
pub struct SharedLog(pub Arc<Mutex<RotatingLog>>);

impl SharedLog {
    pub fn open(path: PathBuf) -> SharedLog {
        SharedLog(Arc::new(Mutex::new(RotatingLog::open(path, MAX_LOG_BYTES))))
    }
}

impl Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// The last lines a child printed, for `status` when it keeps failing.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    const LINES: usize = 10;

    pub fn push(&self, line: &str) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == Self::LINES {
            q.pop_front();
        }
        q.push_back(line.chars().take(500).collect());
    }

    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// The last `max` bytes of a log file (lossy UTF-8, from the first whole line).
pub fn tail_text(path: &std::path::Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs_err::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        text.split_once('\n')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_bound_and_keeps_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut log = RotatingLog::open(path.clone(), 100);
        for _ in 0..50 {
            log.write_all(b"0123456789\n").unwrap();
        }
        let now = fs_err::metadata(&path).unwrap().len();
        let old = fs_err::metadata(dir.path().join("x.log.1")).unwrap().len();
        assert!(now <= 100 && old <= 100, "{now} {old}");
        assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let t = Tail::default();
        for i in 0..25 {
            t.push(&format!("line {i}"));
        }
        let l = t.lines();
        assert_eq!(l.len(), 10);
        assert_eq!(l.last().unwrap(), "line 24");
    }
}
