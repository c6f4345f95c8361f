//! The layering the code keeps, checked from the sources: data flows one way (kernel
//! events -> capture -> protocol -> engine -> resolve -> model -> sinks / top), and a
//! module names nothing above it. A failure names the file and the line.

use std::path::{Path, PathBuf};

/// (module folder or file under src/, crate modules it must not name).
const RULES: &[(&str, &[&str])] = &[
    // The record schema is a leaf: it names nothing of the crate.
    ("model", &["*"]),
    ("flow.rs", &["*"]),
    (
        "capture",
        &[
            "protocol", "engine", "resolve", "sink", "top", "cli", "cmd", "doctor",
        ],
    ),
    (
        "protocol",
        &[
            "capture", "engine", "resolve", "sink", "top", "cli", "cmd", "doctor",
        ],
    ),
    (
        "engine",
        &["capture::skel", "sink", "top", "cli", "cmd", "doctor"],
    ),
    (
        "resolve",
        &["capture", "protocol", "engine", "sink", "top", "cli", "cmd"],
    ),
    (
        "sink",
        &[
            "capture", "protocol", "engine", "top", "cli", "cmd", "doctor",
        ],
    ),
    ("top", &["capture", "cli", "cmd"]),
    (
        "tls",
        &["capture", "protocol", "engine", "sink", "top", "cli", "cmd"],
    ),
];

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            rust_files(&e.path(), out);
        }
    } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("layering_tests.rs") {
        out.push(p.to_path_buf());
    }
}

/// Every `crate::a::b` path a line names, braces of `use crate::{a, b::c}` expanded one
/// level (enough for this code base's imports).
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(inner) = after.strip_prefix('{') {
            let inner = inner.split('}').next().unwrap_or("");
            out.extend(inner.split(',').map(|s| s.trim().to_string()));
        } else {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(after.len());
            out.push(after[..end].trim_end_matches(':').to_string());
        }
        rest = &after[1.min(after.len())..];
    }
    out
}

fn violations() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (module, banned) in RULES {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.exists() {
            rust_files(&dir, &mut files);
        } else {
            rust_files(&src.join(format!("{module}.rs")), &mut files);
        }
        assert!(!files.is_empty(), "no sources for {module}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for path in crate_paths(code) {
                    let own = module.trim_end_matches(".rs");
                    if path == own || path.starts_with(&format!("{own}::")) {
                        continue;
                    }
                    let bad = banned
                        .iter()
                        .any(|b| *b == "*" || path == *b || path.starts_with(&format!("{b}::")));
                    if bad {
                        found.push(format!(
                            "{}:{}: {module} names crate::{path}",
                            f.strip_prefix(&src).unwrap().display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn modules_name_nothing_above_them() {
    let v = violations();
    assert!(v.is_empty(), "layering broken:\n{}", v.join("\n"));
}

#[test]
fn the_check_sees_what_it_looks_for() {
    assert_eq!(
        crate_paths("use crate::capture::skel::types::alog_conn_flags as F;"),
        ["capture::skel::types::alog_conn_flags"]
    );
    assert_eq!(
        crate_paths("use crate::{cli::K8sArgs, model::Record};"),
        ["cli::K8sArgs", "model::Record"]
    );
    assert_eq!(
        crate_paths("let k = crate::capture::KernelCounters::default();"),
        ["capture::KernelCounters::default"]
    );
}
