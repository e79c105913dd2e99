//! `docs/reference.md` is generated from the CRD schemas; this fails when it drifts.

use std::path::PathBuf;

#[test]
fn committed_reference_matches_the_types() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md");
    let want = lodestone_crds::reference::reference_markdown(&lodestone_crds::all_crds());
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/reference.md is out of date with the Rust types; regenerate it with `{}` and commit \
         the result",
        lodestone_crds::reference::REGENERATE
    );
}

/// mdBook silently leaves out a page that `docs/SUMMARY.md` does not list, so a new page would be
/// missing from the built manual without anyone noticing.
#[test]
fn book_summary_lists_every_page() {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let summary = std::fs::read_to_string(docs.join("SUMMARY.md")).expect("docs/SUMMARY.md");
    let mut pages: Vec<String> = std::fs::read_dir(&docs)
        .expect("docs/ is readable")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".md") && n != "SUMMARY.md")
        .collect();
    pages.sort();
    assert!(
        pages.iter().any(|p| p == "reference.md"),
        "docs/ looks wrong: {pages:?}"
    );
    let missing: Vec<&String> = pages
        .iter()
        .filter(|p| !summary.contains(&format!("]({p})")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/SUMMARY.md does not list {missing:?}; add them so mdBook builds them"
    );
}
