//! Writes the Markdown API reference to `docs/reference.md` (or the file given as the first
//! argument), rendered from the same CRD schemas as `deploy/crds/`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md"));
    let md = lodestone_crds::reference::reference_markdown(&lodestone_crds::all_crds());
    std::fs::write(&path, md)?;
    println!("wrote {}", path.display());
    Ok(())
}
