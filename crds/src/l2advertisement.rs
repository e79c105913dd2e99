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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(i, i.size() >= 1 && i.size() <= 15 && !i.contains('/') && !i.contains(' '))").message("interface names are 1 to 15 characters without '/' or spaces"))]
    pub interfaces: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
