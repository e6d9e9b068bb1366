//! Grafana as raywatch provisions it: grafana.ini, the datasource, Ray's own dashboards
//! (one set per Ray version) and raywatch's overview, all generated from typed structs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::StackConfig;
use crate::home::Home;

/// The datasource uid every provisioned dashboard points at.
pub const DATASOURCE_UID: &str = "raywatch-prometheus";
/// raywatch's own dashboard.
pub const OVERVIEW_UID: &str = "raywatch-overview";
/// Ray's default dashboard, as Ray names it.
pub const RAY_DEFAULT_UID: &str = "rayDefaultDashboard";
/// Grafana refuses uids longer than this.
const MAX_UID: usize = 40;
/// A Ray dashboard file larger than this is not provisioned.
const MAX_DASHBOARD_BYTES: u64 = 8 << 20;

// ---------------------------------------------------------------- grafana.ini

#[derive(Serialize, Debug)]
pub struct GrafanaIni {
    pub server: Server,
    pub paths: Paths,
    pub security: Security,
    #[serde(rename = "auth.anonymous")]
    pub auth_anonymous: AuthAnonymous,
    pub users: Users,
    pub analytics: Analytics,
    pub log: Log,
}

#[derive(Serialize, Debug)]
pub struct Server {
    pub http_addr: String,
    pub http_port: u16,
}

#[derive(Serialize, Debug)]
pub struct Paths {
    pub data: PathBuf,
    pub logs: PathBuf,
    pub plugins: PathBuf,
    pub provisioning: PathBuf,
}

#[derive(Serialize, Debug)]
pub struct Security {
    pub admin_user: String,
    pub admin_password: String,
    /// The Ray Dashboard shows Grafana panels in iframes.
    pub allow_embedding: bool,
    pub cookie_samesite: String,
    pub disable_gravatar: bool,
}

#[derive(Serialize, Debug)]
pub struct AuthAnonymous {
    pub enabled: bool,
    pub org_role: String,
}

#[derive(Serialize, Debug)]
pub struct Users {
    pub allow_sign_up: bool,
    pub allow_org_create: bool,
}

#[derive(Serialize, Debug)]
pub struct Analytics {
    pub reporting_enabled: bool,
    pub check_for_updates: bool,
    pub check_for_plugin_updates: bool,
}

#[derive(Serialize, Debug)]
pub struct Log {
    pub mode: String,
}

/// Renders a struct of sections (each a struct of scalars) as INI.
pub fn to_ini<T: Serialize>(value: &T) -> Result<String> {
    let mut out = String::from("; written by raywatch; `raywatch up` rewrites it\n");
    let Value::Object(sections) = serde_json::to_value(value)? else {
        anyhow::bail!("an INI file is a map of sections");
    };
    for (section, body) in sections {
        out.push_str(&format!("\n[{section}]\n"));
        if let Value::Object(keys) = body {
            for (k, v) in keys {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    Ok(out)
}

pub fn grafana_ini(home: &Home, cfg: &StackConfig) -> GrafanaIni {
    let g = home.grafana_dir();
    GrafanaIni {
        server: Server {
            http_addr: "127.0.0.1".into(),
            http_port: cfg.grafana_port,
        },
        paths: Paths {
            data: g.join("data"),
            logs: home.logs_dir().join("grafana"),
            plugins: g.join("plugins"),
            provisioning: g.join("provisioning"),
        },
        security: Security {
            admin_user: "admin".into(),
            admin_password: format!("$__file{{{}}}", home.grafana_password().display()),
            allow_embedding: true,
            cookie_samesite: "lax".into(),
            disable_gravatar: true,
        },
        auth_anonymous: AuthAnonymous {
            enabled: cfg.grafana_anonymous,
            org_role: "Viewer".into(),
        },
        users: Users {
            allow_sign_up: false,
            allow_org_create: false,
        },
        analytics: Analytics {
            reporting_enabled: false,
            check_for_updates: false,
            check_for_plugin_updates: false,
        },
        log: Log {
            mode: "console file".into(),
        },
    }
}

// ---------------------------------------------------------------- provisioning

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct DatasourcesFile {
    #[serde(rename = "apiVersion")]
    pub api_version: u32,
    pub datasources: Vec<Datasource>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Datasource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
    pub access: String,
    pub url: String,
    pub is_default: bool,
    pub editable: bool,
    pub basic_auth: bool,
    pub basic_auth_user: String,
    pub json_data: DatasourceJson,
    pub secure_json_data: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasourceJson {
    pub time_interval: String,
    pub http_method: String,
    /// Grafana's Alerting pages list this Prometheus' rules and alerts (raywatch's
    /// and `--alert-rules` files), read-only, through the datasource.
    pub manage_alerts: bool,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct DashboardsFile {
    #[serde(rename = "apiVersion")]
    pub api_version: u32,
    pub providers: Vec<Provider>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    pub name: String,
    pub org_id: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub disable_deletion: bool,
    pub update_interval_seconds: u32,
    pub allow_ui_updates: bool,
    pub options: ProviderOptions,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderOptions {
    pub path: PathBuf,
    pub folders_from_files_structure: bool,
}

pub fn datasources(home: &Home, cfg: &StackConfig) -> DatasourcesFile {
    DatasourcesFile {
        api_version: 1,
        datasources: vec![Datasource {
            name: cfg.prometheus_name.clone(),
            kind: "prometheus".into(),
            uid: DATASOURCE_UID.into(),
            access: "proxy".into(),
            url: format!("http://127.0.0.1:{}", cfg.prometheus_port),
            is_default: true,
            editable: false,
            basic_auth: true,
            basic_auth_user: crate::prometheus::USER.into(),
            json_data: DatasourceJson {
                time_interval: crate::config::prometheus_duration(cfg.scrape_interval),
                http_method: "POST".into(),
                manage_alerts: true,
            },
            secure_json_data: BTreeMap::from([(
                "basicAuthPassword".to_string(),
                format!("$__file{{{}}}", home.prometheus_password().display()),
            )]),
        }],
    }
}

pub fn dashboards_provider(home: &Home) -> DashboardsFile {
    DashboardsFile {
        api_version: 1,
        providers: vec![Provider {
            name: "raywatch".into(),
            org_id: 1,
            kind: "file".into(),
            disable_deletion: false,
            update_interval_seconds: 10,
            allow_ui_updates: false,
            options: ProviderOptions {
                path: home.grafana_dir().join("dashboards"),
                folders_from_files_structure: true,
            },
        }],
    }
}

/// Writes grafana.ini, the provisioning files, the admin secret and the overview.
pub fn write_files(home: &Home, cfg: &StackConfig) -> Result<()> {
    let g = home.grafana_dir();
    for d in [
        g.clone(),
        g.join("data"),
        g.join("plugins"),
        g.join("provisioning"),
        g.join("provisioning/datasources"),
        g.join("provisioning/dashboards"),
        g.join("provisioning/plugins"),
        g.join("provisioning/alerting"),
        g.join("dashboards"),
        g.join("sources"),
        home.logs_dir().join("grafana"),
    ] {
        fs_err::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    crate::prometheus::ensure_secret(&home.grafana_password())?;
    crate::atomic::write(
        &g.join("grafana.ini"),
        to_ini(&grafana_ini(home, cfg))?.as_bytes(),
        0o600,
    )?;
    crate::atomic::write(
        &g.join("provisioning/datasources/raywatch.yaml"),
        serde_yaml_ng::to_string(&datasources(home, cfg))?.as_bytes(),
        0o600,
    )?;
    crate::atomic::write(
        &g.join("provisioning/dashboards/raywatch.yaml"),
        serde_yaml_ng::to_string(&dashboards_provider(home))?.as_bytes(),
        0o600,
    )?;
    let overview = serde_json::to_vec_pretty(&overview_dashboard(&cfg.prometheus_name))?;
    crate::atomic::write(
        &g.join("dashboards").join(format!("{OVERVIEW_UID}.json")),
        &overview,
        0o600,
    )?;
    render_ray_dashboards(home, &cfg.prometheus_name)?;
    Ok(())
}

// ---------------------------------------------------------------- Ray's dashboards

/// The Ray version a generated dashboard was made by (its `rayVersion:X` tag).
fn ray_version(d: &Value) -> Option<String> {
    d["tags"]
        .as_array()?
        .iter()
        .filter_map(|t| t.as_str())
        .find_map(|t| t.strip_prefix("rayVersion:"))
        .map(String::from)
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Copies the dashboards Ray generated in a live session into `grafana/sources/ray-<version>/`.
/// Returns (whether Ray had written any dashboard yet, whether anything new was stored).
pub fn harvest(
    home: &Home,
    session_dir: &Path,
    trusted: impl Fn(u32) -> bool,
) -> Result<(bool, bool)> {
    // Ray's folders are world-writable: walked without following links, read
    // through the one reader for untrusted files.
    let dir = match crate::untrusted::Folder::open(session_dir).and_then(|s| {
        s.map(|s| s.descend(Path::new(crate::ray::DASHBOARDS_DIR)))
            .transpose()
    }) {
        Ok(Some(Some(d))) => d,
        Ok(_) => return Ok((false, false)),
        Err(r) => {
            tracing::warn!(
                "not reading Ray's dashboards in {}: a folder on the way {r}",
                session_dir.display()
            );
            return Ok((false, false));
        }
    };
    let mut changed = false;
    let mut any = false;
    for (name, _) in dir.entries() {
        let path = dir.path.join(&name);
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        any = true;
        let bytes = match dir.read(&name, MAX_DASHBOARD_BYTES, &trusted) {
            Ok(Some(c)) => c.bytes,
            Ok(None) => continue,
            Err(r) => {
                tracing::warn!("not provisioning {}: it {r}", path.display());
                continue;
            }
        };
        let Ok(d) = serde_json::from_slice::<Value>(&bytes) else {
            tracing::warn!("not provisioning {}: not valid JSON", path.display());
            continue;
        };
        let (Some(version), Some(_uid)) = (ray_version(&d), d["uid"].as_str()) else {
            continue;
        };
        if version.is_empty()
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            continue;
        }
        let dest_dir = home
            .grafana_dir()
            .join("sources")
            .join(format!("ray-{version}"));
        fs_err::create_dir_all(&dest_dir)?;
        let dest = dest_dir.join(&name);
        if fs_err::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
            crate::atomic::write(&dest, &bytes, 0o600)?;
            changed = true;
        }
    }
    Ok((any, changed))
}

/// Renders every stored version's dashboards into `grafana/dashboards/`: the newest
/// version keeps Ray's uids (so Ray's Dashboard finds them), older ones get a
/// version suffix, each version in its own folder; all point at raywatch's datasource.
pub fn render_ray_dashboards(home: &Home, datasource_name: &str) -> Result<()> {
    let sources = home.grafana_dir().join("sources");
    let mut versions: Vec<String> = fs_err::read_dir(&sources)
        .map(|it| {
            it.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("ray-"))
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| version_key(v));
    let newest = versions.last().cloned();
    for version in &versions {
        let out_dir = home
            .grafana_dir()
            .join("dashboards")
            .join(format!("Ray {version}"));
        fs_err::create_dir_all(&out_dir)?;
        for e in fs_err::read_dir(sources.join(format!("ray-{version}")))?.flatten() {
            let Ok(mut d) = serde_json::from_slice::<Value>(&fs_err::read(e.path())?) else {
                continue;
            };
            let uid = d["uid"].as_str().unwrap_or_default().to_string();
            if Some(version) != newest.as_ref() {
                d["uid"] = Value::from(versioned_uid(&uid, version));
                let title = d["title"].as_str().unwrap_or("Ray").to_string();
                d["title"] = Value::from(format!("{title} (Ray {version})"));
            }
            point_at_datasource(&mut d, datasource_name);
            crate::atomic::write(
                &out_dir.join(e.file_name()),
                &serde_json::to_vec_pretty(&d)?,
                0o600,
            )?;
        }
    }
    Ok(())
}

fn versioned_uid(uid: &str, version: &str) -> String {
    let v = version.replace('.', "-");
    let mut out = format!("{uid}-{v}");
    if out.len() > MAX_UID {
        // The uid comes from Ray's session folder (untrusted): cut at a
        // character boundary, never inside a multi-byte character.
        let mut cut = MAX_UID.saturating_sub(v.len() + 1).min(uid.len());
        while !uid.is_char_boundary(cut) {
            cut -= 1;
        }
        out = format!("{}-{v}", &uid[..cut]);
    }
    out
}

/// Makes the dashboard's `datasource` variable select raywatch's datasource.
fn point_at_datasource(d: &mut Value, name: &str) {
    if let Some(vars) = d["templating"]["list"].as_array_mut() {
        for v in vars {
            if v["type"] == "datasource" {
                v["current"] = json!({"selected": true, "text": name, "value": DATASOURCE_UID});
            }
        }
    }
}

// ---------------------------------------------------------------- the overview

/// One query of the overview table: a column.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub expr: String,
    pub ref_id: String,
    pub instant: bool,
    pub format: String,
    pub legend_format: String,
    pub datasource: DatasourceRef,
}

#[derive(Serialize, Debug, Clone)]
pub struct DatasourceRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
}

/// The columns of "Ray clusters on this machine", one row per `ray_io_cluster`.
pub fn overview_columns() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Targets up", r#"sum by (ray_io_cluster) (up{job="ray"})"#),
        (
            "Targets down",
            r#"sum by (ray_io_cluster) (1 - up{job="ray"})"#,
        ),
        ("Nodes", r#"count by (ray_io_cluster) (ray_node_cpu_count)"#),
        (
            "CPU %",
            r#"avg by (ray_io_cluster) (ray_node_cpu_utilization)"#,
        ),
        (
            "Memory %",
            r#"100 * sum by (ray_io_cluster) (ray_node_mem_used_host) / sum by (ray_io_cluster) (ray_node_mem_total_host)"#,
        ),
        (
            "GPU %",
            r#"avg by (ray_io_cluster) (ray_node_gpus_utilization)"#,
        ),
        (
            "Object store bytes",
            r#"sum by (ray_io_cluster) (ray_object_store_memory)"#,
        ),
        (
            "Running tasks",
            r#"sum by (ray_io_cluster) (ray_tasks{State="RUNNING"})"#,
        ),
        (
            "Pending tasks",
            r#"sum by (ray_io_cluster) (ray_tasks{State=~"PENDING.*"})"#,
        ),
        (
            "Alerts firing",
            r#"count by (ray_io_cluster) (ALERTS{alertstate="firing"})"#,
        ),
    ]
}

/// The overview's second panel: every alert firing, one row per alert and cluster
/// (Prometheus' `ALERTS` series; raywatch's rules keep the cluster's labels).
pub const FIRING_ALERTS: &str = r#"ALERTS{alertstate="firing"}"#;

/// The key columns: every live cluster with a running node has a value in each.
pub const OVERVIEW_KEY_COLUMNS: &[&str] = &[
    "Targets up",
    "Nodes",
    "CPU %",
    "Memory %",
    "Object store bytes",
];

pub fn overview_dashboard(datasource_name: &str) -> Value {
    let ds = DatasourceRef {
        kind: "prometheus".into(),
        uid: DATASOURCE_UID.into(),
    };
    let targets: Vec<Target> = overview_columns()
        .iter()
        .enumerate()
        .map(|(i, (title, expr))| Target {
            expr: expr.to_string(),
            ref_id: ((b'A' + i as u8) as char).to_string(),
            instant: true,
            format: "table".into(),
            legend_format: title.to_string(),
            datasource: ds.clone(),
        })
        .collect();
    let renames: serde_json::Map<String, Value> = overview_columns()
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            (
                format!("Value #{}", (b'A' + i as u8) as char),
                Value::from(*title),
            )
        })
        .collect();
    json!({
        "uid": OVERVIEW_UID,
        "title": "Ray clusters on this machine",
        "tags": ["raywatch", "ray"],
        "editable": false,
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus", "hide": 2,
            "current": {"selected": true, "text": datasource_name, "value": DATASOURCE_UID}
        }]},
        "panels": [{
            "id": 1,
            "type": "table",
            "title": "Ray clusters (one row per ray_io_cluster)",
            "gridPos": {"h": 12, "w": 24, "x": 0, "y": 0},
            "datasource": ds,
            "targets": targets,
            "transformations": [
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {"excludeByName": {"Time": true}, "renameByName": renames}}
            ],
            "fieldConfig": {
                "defaults": {},
                "overrides": [{
                    "matcher": {"id": "byName", "options": "ray_io_cluster"},
                    "properties": [{"id": "links", "value": [{
                        "title": "Ray's default dashboard for this cluster",
                        "url": format!("/d/{RAY_DEFAULT_UID}/?var-Cluster=${{__value.raw}}&var-SessionName=$__all")
                    }]}]
                }]
            }
        }, alerts_panel(&ds)]
    })
}

/// The overview's table of every alert firing, one row per alert and cluster.
fn alerts_panel(ds: &DatasourceRef) -> Value {
    json!({
        "id": 2,
        "type": "table",
        "title": "Alerts firing (raywatch alerts; a silence: raywatch alerts silence CLUSTER)",
        "gridPos": {"h": 8, "w": 24, "x": 0, "y": 12},
        "datasource": ds,
        "targets": [Target {
            expr: FIRING_ALERTS.into(),
            ref_id: "A".into(),
            instant: true,
            format: "table".into(),
            legend_format: "{{alertname}}".into(),
            datasource: ds.clone(),
        }],
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"Time": true, "Value": true, "__name__": true, "alertstate": true},
            "indexByName": {"alertname": 0, "ray_io_cluster": 1, "severity": 2, "ray_user": 3}
        }}]
    })
}

/// Grafana's URL of Ray's default dashboard for one cluster.
pub fn cluster_url(port: u16, cluster: &str, session: &str) -> String {
    format!(
        "http://127.0.0.1:{port}/d/{RAY_DEFAULT_UID}/?var-Cluster={cluster}&var-SessionName={session}"
    )
}

// ---------------------------------------------------------------- the binary

/// `--grafana-bin`, `RAYWATCH_GRAFANA`, then `grafana` (with `server`) or `grafana-server` on PATH.
pub fn locate(flag: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = flag {
        anyhow::ensure!(
            p.is_file(),
            "--grafana-bin names {}, which is not a file",
            p.display()
        );
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = crate::env::grafana_bin() {
        anyhow::ensure!(
            p.is_file(),
            "RAYWATCH_GRAFANA names {}, which is not a file",
            p.display()
        );
        return Ok(Some(p));
    }
    Ok(which::which("grafana")
        .or_else(|_| which::which("grafana-server"))
        .ok())
}

/// The command line for Grafana: `grafana server` or the older `grafana-server`.
pub fn command(bin: &Path, home: &Home) -> Vec<String> {
    let mut args = Vec::new();
    if bin.file_name().is_some_and(|n| n == "grafana") {
        args.push("server".to_string());
    }
    if let Some(hp) = homepath(bin) {
        args.push(format!("--homepath={}", hp.display()));
    }
    args.push(format!(
        "--config={}",
        home.grafana_dir().join("grafana.ini").display()
    ));
    args
}

/// Grafana's static files: beside the binary in a tarball, /usr/share/grafana in packages.
fn homepath(bin: &Path) -> Option<PathBuf> {
    let real = fs_err::canonicalize(bin).ok()?;
    let candidates = [
        real.parent().and_then(Path::parent).map(Path::to_path_buf),
        Some(PathBuf::from("/usr/share/grafana")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|c| c.join("conf/defaults.ini").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_uid_is_cut_at_a_character_boundary() {
        // Each 'é' is two bytes: a cut by bytes lands inside one of them.
        for pad in 0..4 {
            let uid = format!("{}{}", "a".repeat(pad), "é".repeat(30));
            let out = versioned_uid(&uid, "2.60.0");
            assert!(out.len() <= MAX_UID, "{out}");
            assert!(out.ends_with("-2-60-0"), "{out}");
        }
        assert_eq!(versioned_uid("rayDefault", "2.60.0"), "rayDefault-2-60-0");
    }

    #[test]
    fn ini_sections_and_values() {
        #[derive(Serialize)]
        struct S {
            a: A,
            #[serde(rename = "auth.anonymous")]
            b: A,
        }
        #[derive(Serialize)]
        struct A {
            x: bool,
            y: String,
        }
        let text = to_ini(&S {
            a: A {
                x: true,
                y: "v".into(),
            },
            b: A {
                x: false,
                y: "w".into(),
            },
        })
        .unwrap();
        assert!(text.contains("[a]\nx = true\ny = v\n"), "{text}");
        assert!(text.contains("[auth.anonymous]\nx = false\n"), "{text}");
    }

    #[test]
    fn each_ray_version_keeps_its_dashboards_and_the_newest_keeps_rays_uids() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(dir.path().join("h"))).unwrap();
        for v in ["2.49.0", "2.60.0"] {
            let src = home.grafana_dir().join("sources").join(format!("ray-{v}"));
            fs_err::create_dir_all(&src).unwrap();
            let d = json!({"uid": "rayDefaultDashboard", "title": "Default", "tags": [format!("rayVersion:{v}")],
                           "templating": {"list": [{"name": "datasource", "type": "datasource"}]}});
            fs_err::write(src.join("default_grafana_dashboard.json"), d.to_string()).unwrap();
        }
        render_ray_dashboards(&home, "Prometheus").unwrap();
        let read = |v: &str| -> Value {
            let p = home
                .grafana_dir()
                .join("dashboards")
                .join(format!("Ray {v}"))
                .join("default_grafana_dashboard.json");
            serde_json::from_slice(&fs_err::read(p).unwrap()).unwrap()
        };
        let (old, new) = (read("2.49.0"), read("2.60.0"));
        assert_eq!(
            new["uid"], "rayDefaultDashboard",
            "the newest keeps Ray's uid, so Ray's links work"
        );
        assert_eq!(old["uid"], "rayDefaultDashboard-2-49-0");
        assert_eq!(old["title"], "Default (Ray 2.49.0)");
        for d in [&old, &new] {
            assert_eq!(
                d["templating"]["list"][0]["current"]["value"],
                DATASOURCE_UID
            );
        }
    }

    #[test]
    fn older_versions_get_distinct_short_uids() {
        assert_eq!(
            versioned_uid("rayDefaultDashboard", "2.49.0"),
            "rayDefaultDashboard-2-49-0"
        );
        let long = versioned_uid("rayServeLlmSglangDashboardWithAVeryLongName", "2.49.10");
        assert!(long.len() <= MAX_UID, "{long}");
        assert!(long.ends_with("-2-49-10"));
        assert!(version_key("2.100.0") > version_key("2.60.1"));
    }
}
