//! Snapshots (insta) of every file raywatch generates for Prometheus and Grafana, for review in diffs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::StackConfig;
use crate::home::Home;

fn example(home: &Path) -> (Home, StackConfig) {
    let home = Home::resolve(Some(home.to_path_buf())).unwrap();
    let cfg = StackConfig {
        prometheus_bin: "/usr/bin/prometheus".into(),
        prometheus_port: 9999,
        prometheus_port_auto: true,
        scrape_interval: Duration::from_secs(10),
        retention: Duration::from_secs(30 * 86400),
        default_roots: true,
        watch: vec![],
        liveness: Duration::from_secs(20),
        trust_uids: vec![],
        grafana_bin: None,
        grafana_port: 3999,
        grafana_anonymous: false,
        prometheus_name: "Prometheus".into(),
        gateway_port: 4999,
        host_label: Some("node-a".into()),
        drop_labels: vec!["WorkerId".into()],
        ..Default::default()
    };
    (home, cfg)
}

/// Reads a generated file with the temp home and the bcrypt hash made stable.
fn read(home: &Path, relative: &str) -> String {
    let text = fs_err::read_to_string(home.join(relative)).unwrap();
    let text = text.replace(&home.display().to_string(), "[home]");
    let bcrypt = mask_bcrypt(&text);
    bcrypt.unwrap_or(text)
}

/// Replaces a bcrypt hash (`$2b$10$` + 53 characters) by a marker.
fn mask_bcrypt(text: &str) -> Option<String> {
    let start = text.find("$2b$10$").or_else(|| text.find("$2y$10$"))?;
    let end = start + 7 + 53;
    Some(format!(
        "{}[bcrypt hash]{}",
        &text[..start],
        &text[end.min(text.len())..]
    ))
}

#[test]
fn prometheus_files() {
    let dir = tempfile::tempdir().unwrap();
    let (home, mut cfg) = example(dir.path());
    home.ensure().unwrap();
    // No promtool check in a unit test: the binary named does not matter here.
    cfg.prometheus_bin = dir.path().join("no-prometheus");
    crate::prometheus::write_files(&home, &cfg, &crate::daemon::files::rules(&cfg).unwrap())
        .unwrap();
    insta::assert_snapshot!(
        "prometheus.yml",
        read(dir.path(), "prometheus/prometheus.yml")
    );
    insta::assert_snapshot!("web.yml", read(dir.path(), "prometheus/web.yml"));
    insta::assert_snapshot!(
        "top-rules.yml",
        read(dir.path(), "prometheus/top-rules.yml")
    );
    insta::assert_snapshot!("alerts.yml", read(dir.path(), "prometheus/alerts.yml"));
    insta::assert_snapshot!(
        "prometheus-args",
        crate::prometheus::args_for(&home, &cfg, 20_000)
            .join("\n")
            .replace(&dir.path().display().to_string(), "[home]")
    );
}

#[test]
fn prometheus_files_for_an_agent_that_remote_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (home, mut cfg) = example(dir.path());
    home.ensure().unwrap();
    cfg.prometheus_bin = dir.path().join("no-prometheus");
    let basic = dir.path().join("central-basic");
    fs_err::write(&basic, "alice:s3cret\n").unwrap();
    cfg.agent = true;
    cfg.remote_write = vec![
        crate::config::RemoteWrite {
            url: "https://central.example:8428/api/v1/write".into(),
            bearer_file: Some("/etc/raywatch/token".into()),
            basic_auth_file: None,
            ca_file: Some("/etc/raywatch/ca.pem".into()),
        },
        crate::config::RemoteWrite {
            url: "http://127.0.0.1:9009/api/v1/push".into(),
            bearer_file: None,
            basic_auth_file: Some(basic),
            ca_file: None,
        },
    ];
    crate::prometheus::write_files(&home, &cfg, &crate::daemon::files::rules(&cfg).unwrap())
        .unwrap();
    insta::assert_snapshot!(
        "prometheus-agent.yml",
        read(dir.path(), "prometheus/prometheus.yml")
    );
    insta::assert_snapshot!(
        "prometheus-agent-args",
        crate::prometheus::args_for(&home, &cfg, 20_000)
            .join("\n")
            .replace(&dir.path().display().to_string(), "[home]")
    );
    // The password went to a 0600 secret, not into prometheus.yml.
    let secret = home.remote_write_password(1);
    assert_eq!(fs_err::read_to_string(&secret).unwrap(), "s3cret");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs_err::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!read(dir.path(), "prometheus/prometheus.yml").contains("s3cret"));
    // An agent evaluates no rules.
    assert!(!home.top_rules().exists() && !home.alert_rules().exists());
}

#[test]
fn prometheus_yml_that_remote_writes_keeps_tops_recorded_series_home() {
    let dir = tempfile::tempdir().unwrap();
    let (home, mut cfg) = example(dir.path());
    home.ensure().unwrap();
    cfg.prometheus_bin = dir.path().join("no-prometheus");
    cfg.remote_write = vec![crate::config::RemoteWrite {
        url: "http://127.0.0.1:8428/api/v1/write".into(),
        bearer_file: None,
        basic_auth_file: None,
        ca_file: None,
    }];
    crate::prometheus::write_files(&home, &cfg, &crate::daemon::files::rules(&cfg).unwrap())
        .unwrap();
    insta::assert_snapshot!(
        "prometheus-remote-write.yml",
        read(dir.path(), "prometheus/prometheus.yml")
    );
    // Without the rules (`up --no-top-rules`, `--no-default-alerts`) neither the rules nor the drop.
    cfg.no_top_rules = true;
    cfg.no_default_alerts = true;
    crate::prometheus::write_files(&home, &cfg, &crate::daemon::files::rules(&cfg).unwrap())
        .unwrap();
    let yml = read(dir.path(), "prometheus/prometheus.yml");
    assert!(
        !yml.contains("rule_files") && !yml.contains("raywatch_top"),
        "{yml}"
    );
    assert!(!home.top_rules().exists());
}

#[test]
fn grafana_files() {
    let dir = tempfile::tempdir().unwrap();
    let (home, cfg) = example(dir.path());
    home.ensure().unwrap();
    crate::grafana::write_files(&home, &cfg).unwrap();
    insta::assert_snapshot!("grafana.ini", read(dir.path(), "grafana/grafana.ini"));
    insta::assert_snapshot!(
        "datasource",
        read(dir.path(), "grafana/provisioning/datasources/raywatch.yaml")
    );
    insta::assert_snapshot!(
        "dashboards-provider",
        read(dir.path(), "grafana/provisioning/dashboards/raywatch.yaml")
    );
}

#[test]
fn a_targets_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (targets, tmp) = (dir.path().join("targets"), dir.path().join("targets.tmp"));
    fs_err::create_dir(&targets).unwrap();
    fs_err::create_dir(&tmp).unwrap();
    let mut t = crate::targets::TargetsDir::open(targets.clone(), tmp).unwrap();
    let name = "alice-ray_alice";
    let group = crate::registry::TargetGroup {
        targets: vec!["127.0.0.1:8080".into(), "127.0.0.1:44217".into()],
        labels: BTreeMap::from([
            ("ray_io_cluster", name.to_string()),
            (
                "ray_session",
                "session_2026-11-27_13-26-35_555015_2972".to_string(),
            ),
            ("ray_temp_dir", "/tmp/ray_alice".to_string()),
            ("ray_user", "alice".to_string()),
        ]),
    };
    t.sync(&BTreeMap::from([(name.to_string(), group)]), Instant::now());
    let file = crate::targets::shard_file(crate::targets::shard_of(name));
    insta::assert_snapshot!(
        "targets-shard",
        format!(
            "{file}:\n{}",
            fs_err::read_to_string(targets.join(&file)).unwrap()
        )
    );
}
