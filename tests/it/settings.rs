//! Settings applied to a running stack (`up` with new flags): the daemon keeps
//! answering while it writes and checks the new files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Stack, on_path, scratch, wait_for};

/// An executable shell script at `path`.
fn script(path: &Path, text: &str) {
    fs_err::write(path, text).unwrap();
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn status_answers_while_a_settings_change_is_checked_by_promtool() {
    let (Some(prometheus), Some(promtool)) = (on_path("prometheus"), on_path("promtool")) else {
        println!("SKIPPED: prometheus and promtool are not both on PATH");
        return;
    };
    let dir = scratch();
    let bin = dir.path().join("bin");
    fs_err::create_dir(&bin).unwrap();
    // The promtool beside this Prometheus takes 6 s per check once `slow` exists.
    let (slow, checking) = (dir.path().join("slow"), dir.path().join("checking"));
    script(
        &bin.join("prometheus"),
        &format!("#!/bin/sh\nexec '{}' \"$@\"\n", prometheus.display()),
    );
    script(
        &bin.join("promtool"),
        &format!(
            "#!/bin/sh\nif [ -e '{}' ]; then touch '{}'; sleep 6; fi\nexec '{}' \"$@\"\n",
            slow.display(),
            checking.display(),
            promtool.display()
        ),
    );
    let stack = Stack::up_at(
        &dir.path().join("home"),
        &[
            "--no-default-watch",
            "--prometheus-bin",
            bin.join("prometheus").to_str().unwrap(),
        ],
    );
    fs_err::write(&slow, "").unwrap();
    let mut up = stack.cmd();
    up.args(["up", "--scrape-interval", "5s"]);
    let change = std::thread::spawn(move || up.output().unwrap());
    wait_for(
        "promtool to check the new files",
        Duration::from_secs(30),
        || checking.exists().then_some(()),
    );
    let asked = Instant::now();
    let out = stack.run(&["status", "--json"]);
    let took = asked.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(4),
        "status took {took:?} while promtool checked the new settings"
    );
    let out = change.join().unwrap();
    // The change is applied and reported (scrape interval 2s -> 5s).
    crate::snapshots::assert_transcript(
        "settings-change-checked-by-promtool",
        &out,
        crate::snapshots::stack_filters(&stack),
    );
}
