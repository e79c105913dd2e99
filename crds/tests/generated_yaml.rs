//! The CRD YAML under `deploy/crds/` is generated from the Rust types; this fails when they drift.

use std::path::PathBuf;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for crd in lodestone_crds::all_crds() {
        let name = lodestone_crds::crd_file_name(&crd);
        let want = lodestone_crds::crd_yaml(&crd).expect("CRD serialises");
        let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            have == want,
            "deploy/crds/{name} is out of date with the Rust types; regenerate it with \
             `cargo run -p lodestone-crds --example crdgen` and commit the result"
        );
    }
}

#[test]
fn committed_yaml_parses_back_into_the_same_crd() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    for crd in lodestone_crds::all_crds() {
        let yaml = lodestone_crds::crd_yaml(&crd).expect("CRD serialises");
        let back: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("YAML parses");
        assert_eq!(back, crd);
    }
}
