//! raywatch: Prometheus (and Grafana) monitoring for every Ray cluster on a machine.
//!
//! Theory of operation: a per-user daemon watches the places Ray writes its
//! `prom_metrics_service_discovery.json`, keeps a registry of the clusters it
//! finds (one per Ray session), verifies and labels their targets, and writes every live
//! cluster's group into a few file_sd shards in `<home>/targets/`. The Prometheus it
//! supervises reads that folder through a single glob, so clusters join and leave
//! without a reload. The CLI talks to the daemon over a Unix socket only its owner
//! can open.

pub(crate) mod alertmanager;
pub(crate) mod alerts;
pub(crate) mod api;
pub(crate) mod atomic;
pub(crate) mod attribution;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod clock;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod discovery;
pub(crate) mod doctor;
pub(crate) mod endpoints;
pub(crate) mod env;
pub(crate) mod error;
pub(crate) mod escape;
pub(crate) mod export;
pub(crate) mod gateway;
#[cfg(test)]
mod generated_files;
pub mod grafana;
pub(crate) mod guard;
pub(crate) mod history;
pub(crate) mod home;
pub(crate) mod install;
pub(crate) mod listen;
pub(crate) mod logfile;
pub(crate) mod ports;
pub(crate) mod process;
pub(crate) mod prometheus;
pub(crate) mod quote;
pub(crate) mod ray;
pub(crate) mod ray_auth;
pub(crate) mod ray_dashboard;
pub(crate) mod registry;
pub(crate) mod remote_write;
pub(crate) mod sd;
pub(crate) mod slurm;
pub(crate) mod status;
pub(crate) mod supervisor;
pub(crate) mod targets;
pub(crate) mod temp_dir;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod top;
pub(crate) mod untrusted;
pub(crate) mod watch;

/// The module layers, kept by a test: `cli` on top; the commands' engines
/// (`daemon`, `top`, `doctor`, `bench`) below it; the domain and primitives below
/// them. No top-level module reaches a higher layer, and none is part of a cycle.
#[cfg(test)]
mod layers {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The layer of a top-level module: 2 for `cli`, 1 for the commands' engines, 0 below.
    fn layer(module: &str) -> u8 {
        match module {
            "cli" => 2,
            "daemon" | "top" | "doctor" | "bench" => 1,
            _ => 0,
        }
    }

    /// The top-level modules each names in `crate::<module>` paths (doc links
    /// and comments included), its `#[cfg(test)]` parts left out.
    fn mentions(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let lib = fs_err::read_to_string(src.join("lib.rs")).unwrap();
        let test_only: BTreeSet<&str> = lib
            .split("#[cfg(test)]\nmod ")
            .skip(1)
            .filter_map(|rest| rest.split(';').next())
            .collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs_err::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let rel = path.strip_prefix(src).unwrap();
                let first = rel.components().next().unwrap().as_os_str();
                let module = Path::new(first).file_stem().unwrap().to_string_lossy();
                if ["lib", "main", "bin"].contains(&&*module) || test_only.contains(&*module) {
                    continue;
                }
                let text = fs_err::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap();
                let deps = graph.entry(module.to_string()).or_default();
                for named in paths(code) {
                    if named != module {
                        deps.insert(named);
                    }
                }
            }
        }
        graph
    }

    /// The first segment after every `crate::` (each item of a `crate::{…}` group).
    fn paths(code: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut out = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let Some(group) = rest.strip_prefix('{') else {
                out.push(ident(rest));
                continue;
            };
            let (mut depth, mut item_start) = (0, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.push(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        }
        out.retain(|m| !m.is_empty());
        out
    }

    /// A cycle of `graph`, as the modules on it, if there is one.
    fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            m: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| p == m) {
                let mut found = path[at..].to_vec();
                found.push(m.to_string());
                return Some(found);
            }
            if !done.insert(m.to_string()) {
                return None;
            }
            path.push(m.to_string());
            for d in graph.get(m).into_iter().flatten() {
                if let Some(c) = visit(d, graph, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        graph
            .keys()
            .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
    }

    #[test]
    fn the_paths_of_a_file_are_read_with_their_groups() {
        let code = "use crate::a::B;\n/// see [`crate::b`]\nuse crate::{c::{D, E}, d};";
        assert_eq!(paths(code), ["a", "b", "c", "d"]);
        let g = BTreeMap::from([
            ("a".to_string(), BTreeSet::from(["b".to_string()])),
            ("b".to_string(), BTreeSet::from(["a".to_string()])),
        ]);
        assert_eq!(cycle(&g), Some(vec!["a".into(), "b".into(), "a".into()]));
    }

    #[test]
    fn no_module_reaches_a_higher_layer_and_none_is_in_a_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let graph = mentions(&src);
        assert!(graph.contains_key("prometheus") && graph.contains_key("cli"));
        let upward: Vec<String> = graph
            .iter()
            .flat_map(|(m, deps)| {
                deps.iter()
                    .filter(|d| layer(d) > layer(m))
                    .map(move |d| format!("{m} -> {d}"))
            })
            .collect();
        assert!(
            upward.is_empty(),
            "modules naming a higher layer: {upward:?}"
        );
        if let Some(c) = cycle(&graph) {
            panic!("import cycle between modules: {}", c.join(" -> "));
        }
    }
}

/// Sizes a reader need not scroll for, kept by a test: no source file over
/// [`sizes::FILE_LINES`] lines of code before its tests, no function over
/// [`sizes::FN_LINES`] lines.
#[cfg(test)]
mod sizes {
    use std::path::PathBuf;

    const FILE_LINES: usize = 700;
    const FN_LINES: usize = 80;
    /// Functions kept longer, each with its reason (file below src/, function).
    /// `fleet_scale` is the 20 × 50 simulation's script: set up, a steady window,
    /// the table, sharing a dozen locals; to be split into phases with a struct.
    const LONG_FNS: &[(&str, &str)] = &[("bench/scale/mod.rs", "fleet_scale")];

    fn sources() -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = stack.pop() {
            for e in fs_err::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        out
    }

    /// The length of every `fn` in `code` (its signature to its closing
    /// brace at the same indentation; rustfmt's layout).
    fn functions(code: &str) -> Vec<(String, usize)> {
        let lines: Vec<&str> = code.lines().collect();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let body = l.trim_start();
            let indent = &l[..l.len() - body.len()];
            let signature = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "async fn ",
                "pub async fn ",
                "pub(crate) async fn ",
                "pub(super) async fn ",
            ]
            .iter()
            .find_map(|p| body.strip_prefix(p));
            let Some(rest) = signature else { continue };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let close = format!("{indent}}}");
            if let Some(end) = lines[i + 1..].iter().position(|m| *m == close) {
                out.push((name, end + 2));
            }
        }
        out
    }

    #[test]
    fn no_file_or_function_a_reader_must_scroll_for() {
        let mut over = Vec::new();
        for path in sources() {
            let text = fs_err::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let n = code
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
                .count();
            if n > FILE_LINES {
                over.push(format!("{}: {n} lines of code", path.display()));
            }
            let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
            let rel = rel
                .strip_prefix("src")
                .unwrap()
                .to_string_lossy()
                .into_owned();
            for (name, len) in functions(code) {
                if len > FN_LINES && !LONG_FNS.contains(&(rel.as_str(), name.as_str())) {
                    over.push(format!("{}: fn {name} is {len} lines", path.display()));
                }
            }
        }
        assert!(over.is_empty(), "{over:#?}");
        let sample =
            "fn a() {\n    x();\n}\n    pub fn b(\n        y: u8,\n    ) {\n        z();\n    }\n";
        assert_eq!(
            functions(sample),
            [("a".to_string(), 3), ("b".to_string(), 5)]
        );
    }
}
