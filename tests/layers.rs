//! The layering of the crate, checked from its source: no import circles
//! between top-level modules or between the files of one module, and a
//! planner that reaches nothing that does I/O.
//!
//! A `cargo tree` for modules: every `crate::<module>` and `super::<file>`
//! reference in `src/` is an edge. The README's architecture section names
//! the same layers in the same order as [`LAYERS`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the bottom up: each may use only those before it.
const LAYERS: &[&str] = &[
    "fault",
    "text",
    "diag",
    "progress",
    "fleet",
    "lock",
    "resources",
    "plan",
    "host",
    "observe",
    "apply",
    "state",
    "ui",
    "cli",
];

/// What the pure planner may reach (transitively).
const PLAN_MAY_USE: &[&str] = &["text", "diag", "progress", "fleet", "lock", "resources"];

/// Crates and std paths that mean I/O, a clock or the environment.
const EFFECTS: &[&str] = &[
    "virt::",
    "std::fs",
    "std::process",
    "std::net",
    "std::env",
    "SystemTime",
    "Instant::now",
    "std::thread",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without `#[cfg(test)]` modules (tests may use anything).
fn code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

/// Names following `prefix` in `text`: `crate::host::x` → `host`.
fn refs<'a>(text: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// (top-level module, file path relative to src) of every source file.
fn files() -> Vec<(String, String, String)> {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let top = rel
                .split(['/', '.'])
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            (top, rel, text)
        })
        .collect()
}

fn top_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (top, _, text) in files() {
        if top == "lib" || top == "main" {
            continue;
        }
        let deps = g.entry(top.clone()).or_default();
        for r in refs(code(&text), "crate::") {
            if r != top {
                deps.insert(r.to_owned());
            }
        }
    }
    g
}

#[test]
fn top_level_modules_follow_the_layers() {
    let g = top_graph();
    let known: BTreeSet<&str> = LAYERS.iter().copied().collect();
    for m in g.keys() {
        assert!(
            known.contains(m.as_str()),
            "module {m} is not in LAYERS: place it"
        );
    }
    let mut wrong = Vec::new();
    for (m, deps) in &g {
        let at = LAYERS.iter().position(|l| l == m).unwrap();
        for d in deps {
            match LAYERS.iter().position(|l| l == d) {
                Some(i) if i < at => {}
                _ => wrong.push(format!("{m} uses {d}")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering (a circle or an upward use): {wrong:?}"
    );
}

#[test]
fn the_planner_reaches_no_effects() {
    let g = top_graph();
    // Everything `plan` can reach, transitively.
    let mut reach = BTreeSet::new();
    let mut todo = vec!["plan".to_owned()];
    while let Some(m) = todo.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if reach.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    let allowed: BTreeSet<String> = PLAN_MAY_USE.iter().map(|s| s.to_string()).collect();
    let extra: Vec<&String> = reach.difference(&allowed).collect();
    assert!(extra.is_empty(), "plan reaches {extra:?}");
    // And the planner's and the resources' own files use no I/O directly.
    for (top, rel, text) in files() {
        if top != "plan" && top != "resources" {
            continue;
        }
        // Test fixtures (`mod testkit` under `#[cfg(test)]`) write temp files.
        if rel.ends_with("/testkit.rs") {
            continue;
        }
        for e in EFFECTS {
            assert!(
                !code(&text).contains(e),
                "src/{rel} uses {e}: the planner and its data must stay pure"
            );
        }
    }
}

#[test]
fn files_within_a_module_form_no_circle() {
    // Edges between sibling files of one directory module via `super::x`.
    let mut by_dir: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (_, rel, text) in files() {
        let Some((dir, file)) = rel.rsplit_once('/') else {
            continue;
        };
        let name = file.trim_end_matches(".rs").to_owned();
        if name == "mod" {
            continue;
        }
        let deps = by_dir
            .entry(dir.to_owned())
            .or_default()
            .entry(name.clone())
            .or_default();
        for r in refs(code(&text), "super::") {
            if r != name {
                deps.insert(r.to_owned());
            }
        }
    }
    for (dir, g) in &by_dir {
        // Kahn's algorithm over the files that exist in this directory.
        let mut indeg: BTreeMap<&str, usize> = g.keys().map(|k| (k.as_str(), 0)).collect();
        for deps in g.values() {
            for d in deps {
                if let Some(n) = indeg.get_mut(d.as_str()) {
                    *n += 1;
                }
            }
        }
        let mut ready: Vec<&str> = indeg
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut seen = 0;
        while let Some(f) = ready.pop() {
            seen += 1;
            for d in &g[f] {
                if let Some(n) = indeg.get_mut(d.as_str()) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push(d.as_str());
                    }
                }
            }
        }
        assert_eq!(
            seen,
            g.len(),
            "src/{dir}: files import each other in a circle: {g:?}"
        );
    }
}
