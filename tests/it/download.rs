//! Getting Prometheus without root: `up --yes` as the suite's second user, against a
//! loopback mirror laid out like the official release (built from the Prometheus
//! installed here), with tampered, truncated and planted files.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::security::{open_scratch, other_user, shared_raywatch};
use crate::snapshots::{
    assert_transcript, assert_transcripts, keeping, regex_escape, scratch_filters,
};
use crate::support::*;

/// The release folder and tarball name the mirror serves (the installed Prometheus' version).
const RELEASE: &str = "prometheus-2.42.0.linux-amd64";

/// How the mirror answers for one file.
#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    /// States the whole length, sends this many bytes, then closes.
    CutAfter(Vec<u8>, usize),
    /// No length: sends these bytes and closes, as an HTTP/1.0 server may.
    Unframed(Vec<u8>),
    /// States the whole length, then sends one byte per 200 ms.
    Trickle(Vec<u8>),
}

/// A loopback HTTP server with a few files, counting the GETs of each.
struct Mirror {
    port: u16,
    gets: Arc<Mutex<BTreeMap<String, usize>>>,
    stop: Arc<AtomicUsize>,
}

impl Mirror {
    fn serve(files: Vec<(&str, Reply)>) -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: BTreeMap<String, Reply> =
            files.into_iter().map(|(p, r)| (p.to_string(), r)).collect();
        let gets = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicUsize::new(0));
        let (g, s) = (gets.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) != 0 {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let mut words = line.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                if method == "GET" {
                    *g.lock().unwrap().entry(path.to_string()).or_default() += 1;
                }
                let _ = match files.get(path) {
                    None => conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                    Some(reply) => respond(&mut conn, method == "HEAD", reply),
                };
            }
        });
        Mirror { port, gets, stop }
    }

    fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/rel/{file}", self.port)
    }

    fn gets(&self, file: &str) -> usize {
        let path = format!("/rel/{file}");
        self.gets.lock().unwrap().get(&path).copied().unwrap_or(0)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(1, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn respond(conn: &mut std::net::TcpStream, head: bool, reply: &Reply) -> std::io::Result<()> {
    if let (Reply::Trickle(b), false) = (reply, head) {
        let header = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            b.len()
        );
        conn.write_all(header.as_bytes())?;
        // Until the client gives up (a write fails) or 30 s pass.
        for byte in b.iter().take(150) {
            conn.write_all(&[*byte])?;
            conn.flush()?;
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        return Ok(());
    }
    let (body, length, send) = match reply {
        Reply::Trickle(b) => (b, Some(b.len()), 0),
        Reply::Body(b) => (b, Some(b.len()), b.len()),
        Reply::CutAfter(b, n) => (b, Some(b.len()), *n),
        Reply::Unframed(b) => (b, None, b.len()),
    };
    let mut header = "HTTP/1.1 200 OK\r\nConnection: close\r\n".to_string();
    if let Some(l) = length {
        header.push_str(&format!("Content-Length: {l}\r\n"));
    }
    header.push_str("\r\n");
    conn.write_all(header.as_bytes())?;
    if !head {
        conn.write_all(&body[..send])?;
    }
    conn.flush()
}

/// The tarball, laid out like the official release, built once from the installed Prometheus.
fn release_tarball() -> Option<&'static [u8]> {
    static TARBALL: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    TARBALL
        .get_or_init(|| {
            let (Some(prom), Some(promtool)) = (on_path("prometheus"), on_path("promtool")) else {
                return None;
            };
            let d = scratch();
            let rel = d.path().join(RELEASE);
            fs_err::create_dir(&rel).unwrap();
            fs_err::copy(prom, rel.join("prometheus")).unwrap();
            fs_err::copy(promtool, rel.join("promtool")).unwrap();
            fs_err::write(rel.join("LICENSE"), "Apache License 2.0\n").unwrap();
            fs_err::write(rel.join("NOTICE"), "Prometheus\n").unwrap();
            let out = d.path().join("t.tar.gz");
            let ok = Command::new("tar")
                .arg("-C")
                .arg(d.path())
                .args(["--owner=0", "--group=0", "-I", "gzip -1", "-cf"])
                .arg(&out)
                .arg(RELEASE)
                .status()
                .unwrap()
                .success();
            assert!(ok, "tar failed");
            Some(fs_err::read(out).unwrap())
        })
        .as_deref()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn sums_for(tarball: &[u8]) -> Vec<u8> {
    format!(
        "{}  {RELEASE}.tar.gz\n{}  prometheus-2.42.0.linux-arm64.tar.gz\n",
        sha256_hex(tarball),
        "0".repeat(64)
    )
    .into_bytes()
}

/// The second user's own folders: a HOME (whose cache raywatch fills) and a raywatch home.
struct Ordinary {
    ids: (u32, u32),
    _scratch: tempfile::TempDir,
    exe: PathBuf,
    home: PathBuf,
    state: PathBuf,
}

impl Ordinary {
    fn new() -> Ordinary {
        let ids = other_user();
        let scratch = open_scratch();
        let exe = shared_raywatch(scratch.path());
        let home = scratch.path().join("home");
        fs_err::create_dir(&home).unwrap();
        nix::unistd::chown(&home, Some(ids.0.into()), Some(ids.1.into())).unwrap();
        fs_err::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let state = home.join("raywatch");
        Ordinary {
            ids,
            _scratch: scratch,
            exe,
            home,
            state,
        }
    }

    /// Snapshot filters for this user's outputs: its scratch folder, the
    /// mirror's port, sizes, checksums (of a tarball built here) and its uid.
    fn filters(&self) -> Vec<(String, String)> {
        let mut f = vec![
            (r"\b[0-9a-f]{64}\b".to_string(), "[sha256]".to_string()),
            (format!(r"\buid {}\b", self.ids.0), "uid [uid]".to_string()),
            // The tarball's length (of the Prometheus installed here), and how
            // much of it a trickling mirror sent in time.
            (
                r"after \d+ of \d+ bytes".to_string(),
                "after [half] of [all] bytes".to_string(),
            ),
            (
                r"\d+ bytes in the last (\d+s) \(\d+ in all\)".to_string(),
                "[n] bytes in the last $1 ([n] in all)".to_string(),
            ),
        ];
        f.extend(scratch_filters(self._scratch.path()));
        f
    }

    fn cache(&self) -> PathBuf {
        self.home.join(".cache/raywatch")
    }

    /// raywatch as the second user, with no Prometheus on PATH.
    fn raywatch(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.command(env, args).output().unwrap()
    }

    fn command(&self, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut cmd = command_as(self.ids, &self.exe);
        cmd.args(args)
            .env("HOME", &self.home)
            .env("RAYWATCH_HOME", &self.state)
            .env("PATH", "/nonexistent")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("RAYWATCH_PROMETHEUS")
            .env_remove("RAYWATCH_PROMETHEUS_SHA256")
            .stdin(Stdio::null());
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn up(&self, mirror_url: &str, extra: &[&str]) -> Output {
        let mut args = vec!["up", "--no-default-watch"];
        args.extend_from_slice(extra);
        self.raywatch(&[("RAYWATCH_PROMETHEUS_URL", mirror_url)], &args)
    }
}

impl Drop for Ordinary {
    fn drop(&mut self) {
        let _ = self.command(&[], &["down"]).output();
    }
}

/// Every file under `dir` (folders left out).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs_err::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tarball() -> &'static [u8] {
    release_tarball().unwrap_or_else(|| {
        unmet("prometheus and promtool on PATH, to build a release tarball from")
    })
}

#[test]
fn an_ordinary_user_downloads_verifies_caches_and_runs_prometheus() {
    let tarball = tarball();
    let user = Ordinary::new();
    let file = format!("{RELEASE}.tar.gz");
    let mirror = Mirror::serve(vec![
        ("/rel/sha256sums.txt", Reply::Body(sums_for(tarball))),
        (&format!("/rel/{file}"), Reply::Body(tarball.to_vec())),
    ]);
    let url = mirror.url(&file);

    // `up` says which way it got Prometheus: downloaded from the mirror
    // $RAYWATCH_PROMETHEUS_URL names, its SHA-256 verified.
    let first = user.up(&url, &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    assert_transcript("download-first-up", &first, user.filters());
    assert_eq!(mirror.gets(&file), 1);
    let bin = user.cache().join(RELEASE).join("prometheus");
    let meta = fs_err::metadata(&bin).unwrap();
    assert_eq!(
        meta.uid(),
        user.ids.0,
        "the cached binary is the user's own"
    );
    assert_eq!(meta.mode() & 0o022, 0, "nobody else may change it");
    let status = user.raywatch(&[], &["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["prometheus"]["ready"], true, "{}", text(&status));
    assert_eq!(report["prometheus"]["binary"], bin.display().to_string());
    assert!(user.raywatch(&[], &["down"]).status.success());

    // The second `up` takes the cache: nothing is fetched again, and it says so.
    let second = user.up(&url, &[]);
    assert!(second.status.success(), "{}", text(&second));
    assert_transcript("download-second-up-from-the-cache", &second, user.filters());
    assert_eq!(
        mirror.gets(&file),
        1,
        "the cached release was downloaded again"
    );
    assert!(user.raywatch(&[], &["down"]).status.success());

    // Agent mode with the downloaded version: its flag is picked from `--version`.
    let agent = user.up(
        &url,
        &[
            "--agent",
            "--remote-write",
            "http://127.0.0.1:9/api/v1/write",
        ],
    );
    assert!(agent.status.success(), "{}", text(&agent));
    let report: serde_json::Value =
        serde_json::from_slice(&user.raywatch(&[], &["status", "--json"]).stdout).unwrap();
    assert_eq!(report["prometheus"]["mode"], "agent");
    assert_eq!(report["prometheus"]["ready"], true);
    assert_eq!(report["prometheus"]["binary"], bin.display().to_string());
}

#[test]
fn a_tampered_truncated_or_unlisted_release_is_refused_and_leaves_nothing() {
    let tarball = tarball();
    let user = Ordinary::new();
    let file = format!("{RELEASE}.tar.gz");
    let good_sums = sums_for(tarball);
    let mut tampered = tarball.to_vec();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    let wrong = "ab".repeat(32);
    let wrong_pin = [("RAYWATCH_PROMETHEUS_SHA256", wrong.as_str())];
    let stall = [("RAYWATCH_DOWNLOAD_STALL", "2s")];
    type Case<'a> = (&'a str, Reply, Reply, &'a [(&'a str, &'a str)]);
    let cases: Vec<Case> = vec![
        (
            "a tampered tarball",
            Reply::Body(good_sums.clone()),
            Reply::Body(tampered),
            &[],
        ),
        (
            "a wrong RAYWATCH_PROMETHEUS_SHA256",
            Reply::Body(good_sums.clone()),
            Reply::Body(tarball.to_vec()),
            &wrong_pin,
        ),
        (
            "a download cut off mid-body",
            Reply::Body(good_sums.clone()),
            Reply::CutAfter(tarball.to_vec(), tarball.len() / 2),
            &[],
        ),
        (
            "a short body with no stated length",
            Reply::Body(good_sums.clone()),
            Reply::Unframed(tarball[..tarball.len() / 2].to_vec()),
            &[],
        ),
        (
            "a checksum list without the tarball",
            Reply::Body(b"0000  other.tar.gz\n".to_vec()),
            Reply::Body(tarball.to_vec()),
            &[],
        ),
        (
            "a mirror that trickles (RAYWATCH_DOWNLOAD_STALL=2s)",
            Reply::Body(good_sums.clone()),
            Reply::Trickle(tarball.to_vec()),
            &stall,
        ),
        (
            "a checksum list that never ends",
            Reply::Body(vec![b'0'; 3 << 20]),
            Reply::Body(tarball.to_vec()),
            &[],
        ),
    ];
    // Each refusal: exit code 1, the error naming what was wrong, a hint, and
    // no "raywatch is up".
    let mut refusals = Vec::new();
    for (what, sums, body, env) in cases {
        let mirror = Mirror::serve(vec![
            ("/rel/sha256sums.txt", sums),
            (&format!("/rel/{file}"), body),
        ]);
        let url = mirror.url(&file);
        let mut vars = vec![("RAYWATCH_PROMETHEUS_URL", url.as_str())];
        vars.extend_from_slice(env);
        let out = user.raywatch(&vars, &["up", "--yes", "--no-default-watch"]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        let left = files_under(&user.cache());
        assert!(left.is_empty(), "{what} left {left:?}");
        assert!(
            !user.state.join("run/daemon.pid").exists(),
            "{what}: a daemon was started"
        );
        refusals.push((what, out));
    }
    // The checksum list's bound is a fixed size, not one measured here.
    let filters = keeping(&["larger than 1024 KiB"], user.filters());
    assert_transcripts("download-refusals", &refusals, filters);
}

/// The uid another user's planted files belong to.
const NOBODY: u32 = 65534;

/// Hands everything under `p` to `uid`.
fn chown_all(p: &Path, uid: u32) {
    let ok = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// The second user, a mirror with the good release, and a shared sticky
/// folder in which another user (nobody) plants Prometheus binaries that
/// touch `marker` if they ever run.
struct Planted {
    user: Ordinary,
    mirror: Mirror,
    file: String,
    url: String,
    shared: tempfile::TempDir,
    marker: PathBuf,
}

impl Planted {
    fn new() -> Planted {
        let tarball = tarball();
        let user = Ordinary::new();
        let file = format!("{RELEASE}.tar.gz");
        let mirror = Mirror::serve(vec![
            ("/rel/sha256sums.txt", Reply::Body(sums_for(tarball))),
            (&format!("/rel/{file}"), Reply::Body(tarball.to_vec())),
        ]);
        let url = mirror.url(&file);
        let shared = open_scratch();
        fs_err::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let marker = shared.path().join("ran");
        Planted {
            user,
            mirror,
            file,
            url,
            shared,
            marker,
        }
    }

    /// A release folder under `root` whose `prometheus` touches the marker.
    fn plant(&self, root: &Path) -> PathBuf {
        let rel = root.join(RELEASE);
        fs_err::create_dir_all(&rel).unwrap();
        let fake = rel.join("prometheus");
        fs_err::write(
            &fake,
            format!("#!/bin/sh\ntouch {}\nexit 1\n", self.marker.display()),
        )
        .unwrap();
        fs_err::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        rel
    }

    /// The user's own cache folder, made as raywatch makes it (theirs, 0700).
    fn own_cache(&self) -> PathBuf {
        let cache = self.user.cache();
        fs_err::create_dir_all(&cache).unwrap();
        chown_all(&self.user.home.join(".cache"), self.user.ids.0);
        fs_err::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        cache
    }

    /// Snapshots a refusal: exit code 1, and the planted binary never ran.
    fn refused(&self, name: &str, out: &Output) {
        assert_eq!(out.status.code(), Some(1), "{}", text(out));
        assert!(!self.marker.exists(), "a planted Prometheus ran");
        let mut filters = vec![(
            regex_escape(&self.shared.path().display().to_string()),
            "[shared]".to_string(),
        )];
        filters.extend(self.user.filters());
        assert_transcript(name, out, filters);
    }
}

/// XDG_CACHE_HOME in a shared folder, where another user made raywatch/ first:
/// the refusal names the owner (uid 65534) and XDG_CACHE_HOME.
#[test]
fn a_cache_another_user_made_under_xdg_cache_home_is_never_run() {
    let p = Planted::new();
    let xdg = p.shared.path().join("cache");
    p.plant(&xdg.join("raywatch"));
    chown_all(&xdg, NOBODY);
    let xdg_s = xdg.display().to_string();
    let out = p.user.raywatch(
        &[
            ("RAYWATCH_PROMETHEUS_URL", &p.url),
            ("XDG_CACHE_HOME", &xdg_s),
        ],
        &["up", "--yes", "--no-default-watch"],
    );
    p.refused("download-cache-of-another-user-in-xdg-cache-home", &out);
}

/// The user's own cache, with a release folder that is a symbolic link to another user's.
#[test]
fn a_cached_release_linked_to_another_users_folder_is_never_run() {
    let p = Planted::new();
    let cache = p.own_cache();
    let elsewhere = p.shared.path().join("elsewhere");
    let rel = p.plant(&elsewhere);
    chown_all(&elsewhere, NOBODY);
    std::os::unix::fs::symlink(&rel, cache.join(RELEASE)).unwrap();
    let out = p.user.up(&p.url, &["--yes"]);
    p.refused("download-cached-release-a-link", &out);
}

/// A release folder of the user's own that others may write to.
#[test]
fn a_cached_release_others_may_write_to_is_never_run() {
    let p = Planted::new();
    let own = p.plant(&p.own_cache());
    chown_all(&own, p.user.ids.0);
    fs_err::set_permissions(&own, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = p.user.up(&p.url, &["--yes"]);
    p.refused("download-cached-release-writable-by-others", &out);
}

/// ~/.cache itself a link of the user's own, into a folder another user
/// controls (others can write to it): nothing is downloaded into it.
#[test]
fn a_cache_linked_into_a_folder_others_can_write_gets_no_download() {
    let p = Planted::new();
    let theirs = p.shared.path().join("theirs");
    fs_err::create_dir(&theirs).unwrap();
    fs_err::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    chown_all(&theirs, NOBODY);
    let dot_cache = p.user.home.join(".cache");
    std::os::unix::fs::symlink(&theirs, &dot_cache).unwrap();
    let ok = Command::new("chown")
        .args(["-h", &format!("{}:{}", p.user.ids.0, p.user.ids.1)])
        .arg(&dot_cache)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = p.user.up(&p.url, &["--yes"]);
    p.refused("download-cache-linked-into-others-folder", &out);
    assert_eq!(
        p.mirror.gets(&p.file),
        0,
        "it downloaded into another user's folder"
    );
    assert!(files_under(&theirs).is_empty());
}

/// A relative XDG_CACHE_HOME is ignored (the XDG spec): the cache stays in HOME.
#[test]
fn a_relative_xdg_cache_home_is_ignored_and_the_cache_stays_in_home() {
    let p = Planted::new();
    let out = p.user.raywatch(
        &[
            ("RAYWATCH_PROMETHEUS_URL", &p.url),
            ("XDG_CACHE_HOME", "rel/cache"),
        ],
        &["install", "prometheus", "--yes"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        p.user
            .cache()
            .join(RELEASE)
            .join("prometheus")
            .display()
            .to_string()
    );
    assert!(!p.marker.exists());
}

#[test]
fn a_release_whose_links_lead_out_of_its_folder_is_refused() {
    let user = Ordinary::new();
    let d = scratch();
    let outside = d.path().join("elsewhere");
    fs_err::create_dir(&outside).unwrap();
    // A link out of the release, then the binary "through" it; and a binary
    // folder that is a link inside the release.
    let escaping = tarball_with_links(
        "grafana-v12.3.0",
        &[("bin", "../../elsewhere")],
        &[("conf/defaults.ini", "", 0o644)],
    );
    let inner = tarball_with_links(
        "grafana-v12.3.0",
        &[("bin", "real")],
        &[
            ("real/grafana", "#!/bin/sh\n", 0o755),
            ("conf/defaults.ini", "", 0o644),
        ],
    );
    // Refused as a link "outside its folder", and as "not laid out like" a release.
    let mut refusals = Vec::new();
    for (what, tarball) in [
        ("a link out of the folder", escaping),
        ("a binary reached through a link", inner),
    ] {
        let file = "grafana-12.3.0.linux-amd64.tar.gz";
        let mirror = Mirror::serve(vec![(
            &format!("/rel/{file}"),
            Reply::Body(tarball.clone()),
        )]);
        let sha = sha256_hex(&tarball);
        let url = mirror.url(file);
        let out = user.raywatch(
            &[
                ("RAYWATCH_GRAFANA_URL", &url),
                ("RAYWATCH_GRAFANA_SHA256", &sha),
            ],
            &["install", "grafana", "--yes"],
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(
            files_under(&user.cache()).is_empty(),
            "{what}: {:?}",
            files_under(&user.cache())
        );
        assert!(files_under(&outside).is_empty(), "{what}: wrote outside");
        refusals.push((what, out));
    }
    assert_transcripts(
        "download-links-out-of-the-release",
        &refusals,
        user.filters(),
    );
}

/// [`tarball_of`] with symbolic links (path, target) in the top folder, made first.
fn tarball_with_links(top: &str, links: &[(&str, &str)], files: &[(&str, &str, u32)]) -> Vec<u8> {
    let d = scratch();
    for (path, target) in links {
        let p = d.path().join(top).join(path);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &p).unwrap();
    }
    for (path, content, mode) in files {
        let p = d.path().join(top).join(path);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(&p, content).unwrap();
        fs_err::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let out = d.path().join("t.tar.gz");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(d.path())
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&out)
        .arg(top)
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar failed");
    fs_err::read(out).unwrap()
}

/// A gzipped tarball of one folder `top` holding `files` (path, content, mode).
fn tarball_of(top: &str, files: &[(&str, &str, u32)]) -> Vec<u8> {
    tarball_with_links(top, &[], files)
}

#[test]
fn grafana_and_alertmanager_come_the_same_way_and_up_finds_the_cached_grafana() {
    let prometheus = tarball();
    let user = Ordinary::new();
    // Grafana cannot be installed here: its tarball's layout (grafana-v<version>/bin,
    // conf/defaults.ini) with a stand-in that stays up like a server.
    let grafana = tarball_of(
        "grafana-v12.3.0",
        &[
            (
                "bin/grafana",
                "#!/bin/sh\nwhile :; do sleep 1; done\n",
                0o755,
            ),
            ("conf/defaults.ini", "[server]\n", 0o644),
        ],
    );
    let alertmanager = tarball_of(
        "alertmanager-0.35.1.linux-amd64",
        &[("alertmanager", "#!/bin/sh\nexit 0\n", 0o755)],
    );
    let g_file = "grafana-12.3.0.linux-amd64.tar.gz";
    let a_file = "alertmanager-0.35.1.linux-amd64.tar.gz";
    let p_file = format!("{RELEASE}.tar.gz");
    let list = format!(
        "{}  {a_file}\n{}  {p_file}\n",
        sha256_hex(&alertmanager),
        sha256_hex(prometheus)
    );
    let mirror = Mirror::serve(vec![
        (&format!("/rel/{g_file}"), Reply::Body(grafana.clone())),
        (
            &format!("/rel/{g_file}.sha256"),
            Reply::Body(format!("{}\n", sha256_hex(&grafana)).into_bytes()),
        ),
        (&format!("/rel/{a_file}"), Reply::Body(alertmanager)),
        (&format!("/rel/{p_file}"), Reply::Body(prometheus.to_vec())),
        ("/rel/sha256sums.txt", Reply::Body(list.into_bytes())),
    ]);
    let (g_url, a_url, p_url) = (mirror.url(g_file), mirror.url(a_file), mirror.url(&p_file));
    let mirrors = [
        ("RAYWATCH_GRAFANA_URL", g_url.as_str()),
        ("RAYWATCH_ALERTMANAGER_URL", a_url.as_str()),
        ("RAYWATCH_PROMETHEUS_URL", p_url.as_str()),
    ];

    // Without --yes and without a terminal: it says what it would fetch, and fetches nothing.
    // It names `raywatch install grafana --yes`, the tarball and its .sha256.
    let asked = user.raywatch(&mirrors, &["install", "grafana"]);
    assert_eq!(asked.status.code(), Some(1), "{}", text(&asked));
    assert_transcript("download-install-grafana-asks", &asked, user.filters());
    assert_eq!(mirror.gets(g_file), 0);

    for (program, bin) in [
        ("grafana", "grafana-12.3.0.linux-amd64/bin/grafana"),
        (
            "alertmanager",
            "alertmanager-0.35.1.linux-amd64/alertmanager",
        ),
    ] {
        let out = user.raywatch(&mirrors, &["install", program, "--yes"]);
        assert!(out.status.success(), "{program}: {}", text(&out));
        let path = user.cache().join(bin);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            path.display().to_string()
        );
        assert_eq!(fs_err::metadata(&path).unwrap().uid(), user.ids.0);
        let again = user.raywatch(&mirrors, &["install", program]);
        assert!(again.status.success(), "{program}: {}", text(&again));
        assert_transcript(
            &format!("download-install-{program}-again"),
            &again,
            user.filters(),
        );
    }
    assert_eq!((mirror.gets(g_file), mirror.gets(a_file)), (1, 1));

    // `up` runs the cached Grafana (and a downloaded Prometheus).
    let up = user.raywatch(&mirrors, &["up", "--yes", "--no-default-watch"]);
    assert!(up.status.success(), "{}", text(&up));
    let report: serde_json::Value =
        serde_json::from_slice(&user.raywatch(&[], &["status", "--json"]).stdout).unwrap();
    assert_eq!(report["grafana"]["installed"], true);
    let cached = user.cache().join("grafana-12.3.0.linux-amd64/bin/grafana");
    assert_eq!(report["grafana"]["binary"], cached.display().to_string());
    assert!(user.raywatch(&[], &["down"]).status.success());

    // A cached Grafana others could change costs Grafana, not the stack.
    fs_err::set_permissions(&cached, std::fs::Permissions::from_mode(0o777)).unwrap();
    // `up` warns that it does not run the cached Grafana, writable by other users.
    let up = user.raywatch(&mirrors, &["up", "--no-default-watch"]);
    assert!(up.status.success(), "{}", text(&up));
    assert_transcript(
        "download-up-skips-a-grafana-others-could-change",
        &up,
        user.filters(),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&user.raywatch(&[], &["status", "--json"]).stdout).unwrap();
    assert_eq!(report["grafana"]["installed"], false);
    assert_eq!(report["prometheus"]["ready"], true);
}

#[test]
fn as_root_with_apt_alertmanager_comes_from_debian_with_its_open_service_off() {
    if !nix::unistd::geteuid().is_root() || on_path("apt-get").is_none() {
        unmet("root and apt-get, for Debian's package route");
    }
    let d = scratch();
    let out = Command::new(raywatch_bin())
        .args(["install", "alertmanager", "--yes"])
        .env("HOME", d.path())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("RAYWATCH_ALERTMANAGER_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    // Which of the two it says depends on whether an earlier run installed the package.
    assert!(
        said.contains("installing Debian's prometheus-alertmanager package with apt-get (raywatch runs as root")
            || said.contains("Alertmanager is on PATH; nothing to do"),
        "{said}"
    );
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(bin.is_file(), "{said}");
    assert!(
        !d.path().join(".cache/raywatch").exists(),
        "root with apt downloaded instead"
    );
    // The package's own service (0.0.0.0:9093, no password) does not run.
    let system = Command::new("pgrep")
        .args(["-u", "prometheus", "-f", "alertmanager"])
        .output()
        .unwrap();
    assert!(
        system.stdout.is_empty(),
        "Debian's Alertmanager service runs: {}",
        String::from_utf8_lossy(&system.stdout)
    );
}

/// `up` with a notification receiver and no Alertmanager anywhere: without
/// `--yes` (and no terminal) it says what it would fetch and fetches nothing;
/// with it, the release is downloaded, checked against the release's
/// sha256sums.txt, cached, and runs as the stack's Alertmanager.
#[test]
fn up_yes_with_a_receiver_downloads_alertmanager_and_runs_it() {
    let real = on_path("prometheus-alertmanager")
        .or_else(|| on_path("alertmanager"))
        .unwrap_or_else(|| unmet("alertmanager"));
    let prometheus = tarball();
    let user = Ordinary::new();
    let top = "alertmanager-0.35.1.linux-amd64";
    let d = scratch();
    fs_err::create_dir(d.path().join(top)).unwrap();
    fs_err::copy(&real, d.path().join(top).join("alertmanager")).unwrap();
    let tgz = d.path().join("a.tar.gz");
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(d.path())
        .args(["--owner=0", "--group=0", "-I", "gzip -1", "-cf"])
        .arg(&tgz)
        .arg(top)
        .status()
        .unwrap();
    assert!(tarred.success());
    let alertmanager = fs_err::read(&tgz).unwrap();
    let (a_file, p_file) = (format!("{top}.tar.gz"), format!("{RELEASE}.tar.gz"));
    let list = format!(
        "{}  {a_file}\n{}  {p_file}\n",
        sha256_hex(&alertmanager),
        sha256_hex(prometheus)
    );
    let mirror = Mirror::serve(vec![
        (&format!("/rel/{a_file}"), Reply::Body(alertmanager)),
        (&format!("/rel/{p_file}"), Reply::Body(prometheus.to_vec())),
        ("/rel/sha256sums.txt", Reply::Body(list.into_bytes())),
    ]);
    let (a_url, p_url) = (mirror.url(&a_file), mirror.url(&p_file));
    let mirrors = [
        ("RAYWATCH_ALERTMANAGER_URL", a_url.as_str()),
        ("RAYWATCH_PROMETHEUS_URL", p_url.as_str()),
    ];
    let hook = format!("http://127.0.0.1:{}/hook", free_port());
    let up = [
        "up",
        "--no-default-watch",
        "--notify-webhook",
        hook.as_str(),
    ];
    let got = user.raywatch(&mirrors, &["install", "prometheus", "--yes"]);
    assert!(got.status.success(), "{}", text(&got));

    let asked = user.raywatch(&mirrors, &up);
    assert_eq!(asked.status.code(), Some(1), "{}", text(&asked));
    assert!(
        text(&asked).contains("--yes") && text(&asked).contains(&a_file),
        "{}",
        text(&asked)
    );
    assert_eq!(mirror.gets(&a_file), 0, "fetched without consent");

    let yes = user.raywatch(&mirrors, &[&up[..], &["--yes"]].concat());
    assert!(yes.status.success(), "{}", text(&yes));
    assert_eq!(mirror.gets(&a_file), 1);
    let report: serde_json::Value =
        serde_json::from_slice(&user.raywatch(&[], &["status", "--json"]).stdout).unwrap();
    let cached = user.cache().join(top).join("alertmanager");
    assert_eq!(
        report["alertmanager"]["binary"],
        cached.display().to_string(),
        "{report:#}"
    );
    assert_eq!(fs_err::metadata(&cached).unwrap().uid(), user.ids.0);
    assert_eq!(report["alertmanager"]["webhooks"], 1, "{report:#}");
    // It runs, and answers on its port (with its credential only).
    let pid = report["alertmanager"]["pid"].as_u64().expect("a pid");
    assert!(
        fs_err::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .contains(&cached.display().to_string())
    );
    assert!(user.raywatch(&[], &["down"]).status.success());
}
