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
