//! `tests/it/needs.txt` (which `scripts/test` reads to skip, and count as
//! skipped, the tests whose needs this machine lacks) names every test that can
//! find a need unmet, and only tests that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `#[test]` function of the suite: `module::name` to its body.
fn tests() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut found = BTreeMap::new();
    for entry in fs_err::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        if module == "needs" {
            continue; // this file names the markers it looks for
        }
        let text = fs_err::read_to_string(&path).unwrap();
        for chunk in text.split("#[test]").skip(1) {
            let Some(start) = chunk.find("fn ") else {
                continue;
            };
            let rest = &chunk[start + 3..];
            let name = &rest[..rest.find('(').unwrap()];
            let body = &rest[..rest.find("\n}\n").unwrap_or(rest.len())];
            found.insert(format!("{module}::{name}"), body.to_string());
        }
    }
    found
}

/// `needs.txt` as need to the tests listed under it.
fn listed() -> BTreeMap<String, BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/needs.txt");
    let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in fs_err::read_to_string(path).unwrap().lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (need, test) = line.split_once(' ').expect("a line is `NEED TEST`");
        needs
            .entry(need.to_string())
            .or_default()
            .insert(test.trim().to_string());
    }
    needs
}

#[test]
fn every_test_that_can_be_unmet_is_listed() {
    let tests = tests();
    let needs = listed();
    let under = |need: &str, test: &str| needs.get(need).is_some_and(|t| t.contains(test));
    let mut wrong = Vec::new();
    for (test, body) in &tests {
        let root = [
            "other_user()",
            "Ordinary::new()",
            "unmet(\"root",
            "Lan::new()",
        ];
        if root.iter().any(|m| body.contains(m)) && !under("root", test) {
            wrong.push(format!("{test} needs root but is not listed under `root`"));
        }
        if body.contains("system_python()") && !under("python", test) {
            wrong.push(format!(
                "{test} needs /usr/bin/python3 but is not listed under `python`"
            ));
        }
        if body.contains("unmet(") && !needs.values().any(|t| t.contains(test)) {
            wrong.push(format!("{test} calls unmet() but is not listed"));
        }
    }
    for (need, listed) in &needs {
        for test in listed {
            if !tests.contains_key(test) {
                wrong.push(format!("`{need} {test}`: no such test"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "tests/it/needs.txt:\n{}",
        wrong.join("\n")
    );
}
