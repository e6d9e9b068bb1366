//! Another user on Alertmanager's port while it is down: Prometheus' notifier
//! sends them Alertmanager's credential (it checks no listener), and that
//! credential opens nothing once Alertmanager is back, since every start of
//! Alertmanager comes with a password of its own.

use std::process::Stdio;
use std::time::Duration;

use crate::alerts::{Webhook, idle_gpu_node};
use crate::security::{other_user, system_python};
use crate::support::*;

/// As the other user: bind the port as soon as it is free, print the
/// Authorization header of the first request that carries one, then let go.
const SQUATTER: &str = r#"
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
deadline = time.time() + 60
while True:
    try:
        s.bind(("127.0.0.1", port)); break
    except OSError:
        if time.time() > deadline: sys.exit(2)
        time.sleep(0.02)
s.listen(16)
print("bound", flush=True)
s.settimeout(90)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = c.recv(4096)
            if not more: break
            data += more
    except OSError:
        pass
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"authorization:"):
            print(line.decode().split(":", 1)[1].strip(), flush=True)
            c.close(); s.close(); sys.exit(0)
    c.close()
"#;

#[test]
fn a_credential_another_user_caught_on_alertmanagers_port_opens_nothing_once_it_is_back() {
    if on_path("prometheus-alertmanager").is_none() && on_path("alertmanager").is_none() {
        unmet("alertmanager");
    }
    let other = other_user();
    let hook = Webhook::start();
    let (stack, root) = Stack::watching(
        "ray_amsquat",
        &["--gpu-idle-for", "1s", "--notify-webhook", &hook.url],
    );
    let am = &stack.status()["alertmanager"];
    let (port, pid) = (
        am["port"].as_u64().unwrap(),
        am["pid"].as_u64().unwrap() as i32,
    );
    // The squatter waits for the port; Alertmanager is killed.
    let mut squatter = command_as(other, system_python())
        .args(["-c", SQUATTER, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = squatter.stdout.take().unwrap();
    let mut stderr = squatter.stderr.take().unwrap();
    let squatter = Reap(squatter);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // A new alert fires while they hold the port: Prometheus sends it to them.
    let endpoint = MetricsEndpoint::serve(&idle_gpu_node("session_amsquat_1"));
    let _head = FakeHead::start(&root, "session_amsquat_1", vec![endpoint.addr.clone()]);
    let caught = {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("Basic ") => break line,
                Ok(_) => continue,
                Err(e) => {
                    let mut said = String::new();
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
                    panic!(
                        "the squatter caught no credential ({e}; it said: {said}): {}",
                        stack.log()
                    )
                }
            }
        }
    };
    drop(squatter);
    // Alertmanager is back (the supervisor restarts it): the stack gets in (`alerts
    // silence` first checks that this stack's Alertmanager holds the port) ...
    let name = format!("{}-ray_amsquat", user());
    let other_name = format!("{}-someone", user());
    wait_for(
        "the stack's Alertmanager back",
        Duration::from_secs(120),
        || {
            let out = stack.run(&["alerts", "silence", &other_name, "--for", "1m"]);
            out.status.success().then_some(())
        },
    );
    // ... and the caught credential opens nothing (it was changed once
    // Alertmanager held its port: it may have been current while they held it).
    let url = format!("http://127.0.0.1:{port}/api/v2/silences");
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    wait_for(
        "the caught credential refused",
        Duration::from_secs(30),
        || {
            let code = client
                .get(&url)
                .header("Authorization", &caught)
                .send()
                .ok()?
                .status()
                .as_u16();
            (code == 401).then_some(())
        },
    );
    let back = stack.status()["alertmanager"]["pid"].as_u64().unwrap();
    assert_ne!(back as i32, pid, "the same Alertmanager");
    // Prometheus reads the new password: the alert it fired meanwhile reaches
    // the webhook through the new Alertmanager (resent within a minute).
    wait_for(
        "the alert delivered after the restart",
        Duration::from_secs(120),
        || {
            hook.received()
                .iter()
                .any(|n| n["groupLabels"]["ray_io_cluster"] == name.as_str())
                .then_some(())
        },
    );
}
