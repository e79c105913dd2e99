//! Writes the CRD YAML under `deploy/crds/` (or the directory given as the first argument).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds"));
    std::fs::create_dir_all(&dir)?;
    for crd in lodestone_crds::all_crds() {
        let path = dir.join(lodestone_crds::crd_file_name(&crd));
        std::fs::write(&path, lodestone_crds::crd_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
