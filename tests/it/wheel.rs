//! The Python wheel and the crate package (issue 17): `scripts/wheel` builds a
//! manylinux wheel whose `raywatch`, installed into a fresh venv, runs a stack;
//! `cargo package` ships what `cargo install raywatch` needs and nothing else.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::{FakeHead, Stack, raywatch_bin, scratch, unmet, user, wait_for};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The build virtualenv scripts/wheel keeps maturin, ziglang and auditwheel in.
fn build_venv() -> PathBuf {
    std::env::var_os("RAYWATCH_BUILD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"))
                .join("raywatch-build-venv")
        })
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn version_of(bin: &Path) -> String {
    let out = run(Command::new(bin).arg("--version"));
    assert!(out.status.success(), "{} --version: {out:?}", bin.display());
    text(&out.stdout).trim().to_string()
}

#[test]
fn the_wheel_is_manylinux_and_its_raywatch_runs_a_stack_from_a_fresh_venv() {
    let dir = scratch();
    // The release binary, compiled faster (see Cargo.toml's `wheel-check`).
    let out = run(Command::new(repo().join("scripts/wheel"))
        .args(["--profile", "wheel-check", "--out"])
        .arg(dir.path().join("wheels")));
    if out.status.code() == Some(3) {
        unmet(&format!(
            "scripts/wheel's build tools (maturin, ziglang, auditwheel):\n{}",
            text(&out.stderr)
        ));
    }
    assert!(
        out.status.success(),
        "scripts/wheel failed: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let wheel = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("scripts/wheel printed no path"),
    );
    assert!(wheel.is_file(), "{} is not a file", wheel.display());

    // raywatch-<version>-py3-none-<platform tags>.whl: every platform tag manylinux
    // (glibc 2.17), none a plain linux_<arch> that only fits the build machine.
    let name = wheel.file_name().unwrap().to_str().unwrap();
    let arch = std::env::consts::ARCH;
    let prefix = format!("raywatch-{}-py3-none-", env!("CARGO_PKG_VERSION"));
    let platforms = name
        .strip_prefix(&prefix)
        .and_then(|n| n.strip_suffix(".whl"))
        .unwrap_or_else(|| panic!("{name} is not named {prefix}<platform>.whl"));
    let tags: Vec<&str> = platforms.split('.').collect();
    assert!(
        tags.contains(&format!("manylinux_2_17_{arch}").as_str()),
        "{name}: no manylinux_2_17_{arch} tag"
    );
    assert!(
        tags.iter().all(|t| t.starts_with("manylinux")),
        "{name}: a platform tag that is not manylinux"
    );

    let audit = run(Command::new(build_venv().join("bin/auditwheel"))
        .arg("show")
        .arg(&wheel));
    let report = text(&audit.stdout);
    assert!(audit.status.success(), "auditwheel show: {audit:?}");
    assert!(
        report.contains(&format!("\"manylinux_2_17_{arch}\"")),
        "auditwheel does not find the wheel consistent with manylinux_2_17_{arch}: {report}"
    );

    // A fresh venv, nothing from an index: the wheel alone.
    let venv = dir.path().join("venv");
    let made = run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    assert!(made.status.success(), "python3 -m venv: {made:?}");
    let pip = run(Command::new(venv.join("bin/pip"))
        .args(["install", "--no-index", "--disable-pip-version-check"])
        .arg(&wheel));
    assert!(pip.status.success(), "pip install {name}: {pip:?}");
    let installed = venv.join("bin/raywatch");
    assert!(
        installed.is_file(),
        "pip put no raywatch in the venv's bin/"
    );

    // The same version and commit as the binary the tests run.
    let version = version_of(&installed);
    assert_eq!(version, version_of(&raywatch_bin()));
    assert!(
        version.starts_with(&format!("raywatch {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // The wheel's metadata: the licence, and a README that starts with pip.
    let metadata = fs_err::read_dir(venv.join("lib"))
        .unwrap()
        .flatten()
        .map(|py| py.path().join("site-packages"))
        .flat_map(|sp| fs_err::read_dir(sp).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("raywatch-") && n.ends_with(".dist-info"))
        })
        .expect("no raywatch-*.dist-info in the venv");
    let meta = fs_err::read_to_string(metadata.join("METADATA")).unwrap();
    assert!(
        meta.contains(&format!("\nVersion: {}\n", env!("CARGO_PKG_VERSION"))),
        "{meta}"
    );
    assert!(
        meta.contains("\nLicense-Expression: MIT OR Apache-2.0\n"),
        "{meta}"
    );
    for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(
            metadata.join("licenses").join(licence).is_file(),
            "{licence} is not in the wheel"
        );
    }
    let readme = meta.split_once("\n\n").map(|(_, body)| body).unwrap_or("");
    let first: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("pip ") || l.starts_with("raywatch ") || l.starts_with("eval "))
        .take(3)
        .collect();
    assert!(
        first.len() == 3
            && first[0].starts_with("pip install raywatch")
            && first[1].starts_with("raywatch up")
            && first[2].starts_with("eval \"$(raywatch env)\""),
        "the wheel's README does not start with pip install, up and env: {readme}"
    );

    // The venv's raywatch runs a stack against the Prometheus installed here.
    let root = dir.path().join("ray_wheel");
    fs_err::create_dir(&root).unwrap();
    let stack = Stack::up_with(
        &installed,
        &dir.path().join("home"),
        &["--no-default-watch", "--watch", root.to_str().unwrap()],
    );
    let _head = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000001_17",
        vec!["127.0.0.1:1".into()],
    );
    let cluster = format!("{}-ray_wheel", user());
    wait_for("the cluster in status", Duration::from_secs(20), || {
        let status = stack.status();
        let names: Vec<_> = status["clusters"]
            .as_array()?
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        (status["prometheus"]["ready"] == true && names == [cluster.as_str()]).then_some(())
    });
    let human = stack.run(&["status"]);
    assert!(human.status.success(), "status: {human:?}");
    assert!(text(&human.stdout).contains(&cluster), "{human:?}");
    let pids = stack.pids();
    assert_eq!(pids.len(), 2, "daemon and Prometheus PIDs: {pids:?}");
    let down = stack.run(&["down"]);
    assert!(down.status.success(), "down: {down:?}");
    wait_for(
        "the stack's processes to exit",
        Duration::from_secs(10),
        || {
            pids.iter()
                .all(|&p| crate::support::state(p).is_none_or(|s| s == 'Z'))
                .then_some(())
        },
    );
}

#[test]
fn the_crate_package_holds_the_sources_licences_and_readme_only() {
    let out = run(Command::new(env!("CARGO"))
        .args(["package", "--list", "--allow-dirty", "--offline"])
        .current_dir(repo()));
    assert!(out.status.success(), "cargo package --list: {out:?}");
    let warnings = text(&out.stderr);
    assert!(
        !warnings.contains("manifest has no"),
        "crates.io metadata missing: {warnings}"
    );
    let files: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src/main.rs",
        "src/lib.rs",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
    ] {
        assert!(
            files.iter().any(|f| f == needed),
            "{needed} not packaged: {files:?}"
        );
    }
    let stray: Vec<&String> = files
        .iter()
        .filter(|f| {
            !(f.starts_with("src/")
                || f.starts_with("docs/")
                || f.starts_with("examples/")
                || f.starts_with("LICENSE-")
                || [
                    "Cargo.toml",
                    "Cargo.toml.orig",
                    "Cargo.lock",
                    "build.rs",
                    "README.md",
                    ".cargo_vcs_info.json",
                ]
                .contains(&f.as_str()))
        })
        .collect();
    assert!(stray.is_empty(), "packaged but not needed: {stray:?}");
}
