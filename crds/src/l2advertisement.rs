use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Announce the addresses of some pools over layer 2 (ARP / NDP) from some nodes.
///
/// No pools named and no pool selectors means every pool; no node selectors means every node.
// kube's derive takes one `printcolumn(...)` attribute per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "lodestone.dev",
    version = "v1alpha1",
    kind = "L2Advertisement",
    doc = "Announce the addresses of some pools over layer 2 (ARP and NDP) from some nodes",
    plural = "l2advertisements",
    singular = "l2advertisement",
    shortname = "l2adv",
    category = "lodestone",
    derive = "PartialEq",
    derive = "Default",
    cel,
    printcolumn(name = "Pools", type_ = "string", json_path = ".spec.ipAddressPools"),
    printcolumn(name = "Interfaces", type_ = "string", json_path = ".spec.interfaces"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    /// Names of the pools whose addresses are announced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,

    /// Label selectors on pools whose addresses are announced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,

    /// Label selectors on Nodes allowed to announce; a node must match one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,

    /// Interfaces to announce on. Empty means every suitable interface (see docs/announcing.md).
    // Bounded so kube-apiserver's CEL cost estimator accepts the rule (see IPAddressPool's
    // addresses); Linux names are at most 15 bytes (IFNAMSIZ - 1). The rule repeats the length
    // limits so that `validate_cel` alone (lodestonectl migrate-metallb) catches them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(i, i.size() >= 1 && i.size() <= 15 && !i.contains('/') && !i.contains(' '))").message("interface names are 1 to 15 characters without '/' or spaces"))]
    #[schemars(length(max = 64), inner(length(min = 1, max = 15)))]
    pub interfaces: Vec<String>,
}

/// The CRD as installed: `L2Advertisement::crd()` with `spec` optional, defaulting to `{}`.
///
/// kube's derive always makes `spec` required, but an advertisement with no spec at all is the
/// simplest useful one (every pool, from every node: see docs/install.md), and MetalLB accepts it
/// too. The API server stores the default, so every reader still gets a `spec`.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = <L2Advertisement as kube::CustomResourceExt>::crd();
    for version in &mut crd.spec.versions {
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        if let Some(required) = root.required.as_mut() {
            required.retain(|r| r != "spec");
            if required.is_empty() {
                root.required = None;
            }
        }
        if let Some(spec) = root.properties.as_mut().and_then(|p| p.get_mut("spec")) {
            spec.default = Some(JSON(serde_json::json!({})));
        }
    }
    crd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_optional_and_defaults_to_everything() {
        let crd = crd();
        let root = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        assert!(
            !root.required.iter().flatten().any(|r| r == "spec"),
            "{:?}",
            root.required
        );
        let spec = &root.properties.as_ref().unwrap()["spec"];
        assert_eq!(spec.default, Some(JSON(serde_json::json!({}))));
        // What the server stores for a bare advertisement reads back as "every pool, every node".
        let stored: L2Advertisement = serde_json::from_value(serde_json::json!({
            "apiVersion": "lodestone.dev/v1alpha1", "kind": "L2Advertisement",
            "metadata": {"name": "default"}, "spec": {}
        }))
        .unwrap();
        assert_eq!(stored.spec, L2AdvertisementSpec::default());
    }

    #[test]
    fn interface_names_are_checked() {
        let ok = L2Advertisement::new(
            "a",
            L2AdvertisementSpec {
                interfaces: vec!["eth0".into()],
                ..Default::default()
            },
        );
        assert!(ok.validate_cel().is_ok(), "{:?}", ok.validate_cel());
        let bad = L2Advertisement::new(
            "a",
            L2AdvertisementSpec {
                interfaces: vec!["a-very-long-interface-name".into()],
                ..Default::default()
            },
        );
        assert!(bad.validate_cel().is_err());
    }
}
