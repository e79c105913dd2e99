//! Where `unsafe` may live, checked over the whole workspace (issue 13): every crate root says
//! `#![forbid(unsafe_code)]` but the two that hold it, which say `#![deny(unsafe_code)]`, and
//! only two files allow `unsafe_code`. The compiler enforces the attributes;
//! this keeps them from being dropped or an allowance from spreading unnoticed.

use std::path::{Path, PathBuf};

/// The files allowed to hold `unsafe`, each with a SAFETY comment on every block; their crate
/// roots deny it.
const UNSAFE_HOMES: [&str; 2] = ["speaker/src/sys.rs", "heap/src/lib.rs"];
const DENYING_ROOTS: [&str; 2] = ["speaker/src/lib.rs", "heap/src/lib.rs"];
/// Spelt in two pieces so this file does not match itself.
const ALLOW: &str = concat!("allow(", "unsafe_code)");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness sits in the workspace")
        .to_owned()
}

fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let list = regex::Regex::new(r"(?s)members\s*=\s*\[(.*?)\]")
        .unwrap()
        .captures(&manifest)
        .expect("a members list")[1]
        .to_owned();
    regex::Regex::new(r#""([^"]+)""#)
        .unwrap()
        .captures_iter(&list)
        .map(|c| c[1].to_owned())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

#[test]
fn unsafe_lives_in_two_places_only() {
    let root = workspace();
    let members = members(&root);
    assert!(members.len() >= 6, "{members:?}");
    let mut files = Vec::new();
    for m in &members {
        rust_files(&root.join(m), &mut files);
    }
    let mut wrong = Vec::new();
    for f in &files {
        let rel = relative(&root, f);
        let text = std::fs::read_to_string(f).expect("readable");
        if text.contains(ALLOW) && !UNSAFE_HOMES.contains(&rel.as_str()) {
            wrong.push(format!("{rel}: allows unsafe_code"));
        }
    }
    // Crate roots: libraries, binaries (src/main.rs and src/bin/*).
    let roots = files.iter().filter(|f| {
        let rel = relative(&root, f);
        let parts: Vec<&str> = rel.split('/').collect();
        matches!(
            parts.as_slice(),
            [_, "src", "lib.rs" | "main.rs"] | [_, "src", "bin", _]
        )
    });
    let mut seen = 0;
    for f in roots {
        seen += 1;
        let rel = relative(&root, f);
        let text = std::fs::read_to_string(f).expect("readable");
        let wanted = if DENYING_ROOTS.contains(&rel.as_str()) {
            "#![deny(unsafe_code)]"
        } else {
            "#![forbid(unsafe_code)]"
        };
        if !text.contains(wanted) {
            wrong.push(format!("{rel}: no {wanted}"));
        }
    }
    assert!(seen >= members.len(), "only {seen} crate roots found");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
