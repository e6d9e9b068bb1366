//! Facts about processes and sockets read from /proc: who holds a port, what a PID runs.

use std::fs;
use std::path::Path;

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
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name, which is in parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// The inode of the socket listening on TCP `port` (any local address), if any.
fn listening_inode(port: u16) -> Option<u64> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let Some((_, hex_port)) = cols[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(hex_port, 16).ok() == Some(port) {
                return cols[9].parse().ok();
            }
        }
    }
    None
}

/// The process holding TCP `port` open for listening, with its command line,
/// when this user may see it.
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let inode = listening_inode(port)?;
    let needle = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()) {
                let cmd = cmdline(pid).map(|c| c.join(" ")).unwrap_or_default();
                return Some((pid, cmd));
            }
        }
    }
    None
}

/// The Ray session a process belongs to, read from a `session_*` component of
/// the paths on its command line (`--session-dir=…`, `--log_dir=…/logs`).
pub fn ray_session_of(pid: u32) -> Option<String> {
    for arg in cmdline(pid)? {
        let value = arg.split_once('=').map(|(_, v)| v).unwrap_or(&arg);
        for comp in Path::new(value).components() {
            let comp = comp.as_os_str().to_string_lossy();
            if comp.starts_with("session_") && comp != "session_latest" {
                return Some(comp.into_owned());
            }
        }
    }
    None
}

/// Describes who holds `port`, for error messages.
pub fn describe_holder(port: u16) -> String {
    match port_holder(port) {
        Some((pid, cmd)) => {
            let cmd: String = cmd.chars().take(120).collect();
            format!("held by pid {pid} ({cmd})")
        }
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
    }
}
