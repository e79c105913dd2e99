use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Finalizer the controller puts on every pool, so a pool whose addresses are still assigned to
/// Services stays `Terminating` instead of vanishing from under them.
pub const POOL_FINALIZER: &str = "lodestone.dev/pool-in-use";

/// Condition types set on `IPAddressPool.status.conditions`.
pub mod condition_types {
    /// The pool parsed and its addresses can be handed out.
    pub const READY: &str = "Ready";
    /// An entry of `spec.addresses` (or a selector) is malformed; the message names it.
    pub const INVALID: &str = "Invalid";
    /// The pool shares addresses with another pool; the message names the other pool.
    pub const OVERLAPPING: &str = "Overlapping";
}

/// Machine-readable reasons used with [`condition_types`].
pub mod condition_reasons {
    pub const ADDRESSES_VALID: &str = "AddressesValid";
    pub const INVALID_ADDRESSES: &str = "InvalidAddresses";
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
    /// Every problem is an entry the pool may not hand out (special-purpose or too large).
    pub const REFUSED_ADDRESSES: &str = "RefusedAddresses";
    pub const NO_OVERLAP: &str = "NoOverlap";
    pub const OVERLAPS_POOL: &str = "OverlapsPool";
    pub const TERMINATING: &str = "Terminating";
}

/// A set of addresses the controller may give to LoadBalancer Services.
// kube's derive takes one `printcolumn(...)` attribute per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lodestone.dev",
    version = "v1alpha1",
    kind = "IPAddressPool",
    doc = "A set of addresses Lodestone may give to LoadBalancer Services",
    plural = "ipaddresspools",
    singular = "ipaddresspool",
    shortname = "ippool",
    category = "lodestone",
    status = "IPAddressPoolStatus",
    derive = "PartialEq",
    cel,
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(
        name = "Auto Assign",
        type_ = "boolean",
        json_path = ".spec.autoAssign"
    ),
    printcolumn(name = "Assigned", type_ = "integer", json_path = ".status.assigned"),
    printcolumn(name = "Available", type_ = "integer", json_path = ".status.available"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// Addresses of the pool: each entry is a CIDR (`192.0.2.0/28`, `2001:db8::/120`) or an
    /// inclusive range (`192.0.2.10-192.0.2.20`). IPv4 and IPv6 may be mixed in one pool.
    // The bounds are what lets kube-apiserver accept the rule: its CEL cost estimator assumes an
    // unbounded string is as long as a whole request (3 MiB), which puts this rule over budget
    // by more than 100x. An entry is at most 91 characters (two full IPv6 addresses and '-').
    #[x_kube(validation = kube::core::Rule::new("self.all(a, isCIDR(a) || (a.split('-').size() == 2 && isIP(a.split('-')[0]) && isIP(a.split('-')[1])))").message("each entry must be a CIDR such as 192.0.2.0/28 or an inclusive range such as 192.0.2.10-192.0.2.20"))]
    #[schemars(length(min = 1, max = 1024), inner(length(max = 100)))]
    pub addresses: Vec<String>,

    /// When false, the pool only serves Services that name it (`lodestone.dev/address-pool`) or
    /// ask for one of its addresses.
    #[serde(default = "default_true")]
    pub auto_assign: bool,

    /// Never hand out addresses ending in `.0` or `.255` (some clients drop them).
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,

    /// Allow link-local addresses (`169.254.0.0/16`, `fe80::/10`) in `addresses`. Refused by
    /// default: such an address is valid on one link only, and `169.254.169.254` is where cloud
    /// instances fetch their credentials.
    #[serde(default)]
    pub allow_link_local: bool,

    /// Which Services the pool serves, and in which order pools are tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

fn default_true() -> bool {
    true
}

/// Restricts and orders the Services a pool serves: a namespace listed in `namespaces` or matched
/// by `namespaceSelectors`, and a Service matched by `serviceSelectors`, where given. A pool with a
/// `serviceAllocation` is tried before pools without one (the rule is in [`crate::allocation`]).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first among pools with a `serviceAllocation`; pools without a
    /// priority come after all pools with one, and pools without a `serviceAllocation` after
    /// them all. Ties are broken by pool name, so the choice is deterministic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub priority: Option<i32>,

    /// Namespaces whose Services the pool serves (besides those `namespaceSelectors` match).
    /// With both empty, any namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,

    /// Label selectors on Namespaces; a Service's namespace is served when it matches one of them
    /// or is listed in `namespaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,

    /// Label selectors on Services; the Service must match one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// What the controller reports about a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    /// Addresses assigned to Services, both families.
    #[serde(default)]
    pub assigned: i64,
    /// Addresses still free, both families (saturates at 2^63-1 for very large IPv6 pools).
    #[serde(default)]
    pub available: i64,
    #[serde(default, rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    #[serde(default, rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    #[serde(default, rename = "availableIPv4")]
    pub available_ipv4: i64,
    #[serde(default, rename = "availableIPv6")]
    pub available_ipv6: i64,

    /// While the pool is being deleted: the addresses that still hold it, and by whom.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<AddressUse>,

    /// `Ready`, `Invalid` and `Overlapping`. A map list keyed by type, so server-side apply can
    /// give each condition its own owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The pool generation these figures describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One address of a pool held by a Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AddressUse {
    pub address: String,
    /// `namespace/name` of the Service.
    pub service: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(addresses: &[&str]) -> serde_json::Value {
        json!({ "addresses": addresses, "autoAssign": true })
    }

    #[test]
    fn defaults_apply() {
        let s: IPAddressPoolSpec =
            serde_json::from_value(json!({"addresses": ["192.0.2.0/28"]})).unwrap();
        assert!(s.auto_assign);
        assert!(!s.avoid_buggy_ips);
        assert!(!s.allow_link_local);
        assert_eq!(s.service_allocation, None);
    }

    #[test]
    fn cel_accepts_cidrs_and_ranges() {
        for good in [
            vec!["192.0.2.0/28"],
            vec!["2001:db8::/120"],
            vec!["192.0.2.10-192.0.2.20", "2001:db8::10-2001:db8::1f"],
        ] {
            let pool = IPAddressPool::new("p", serde_json::from_value(spec(&good)).unwrap());
            assert!(
                pool.validate_cel().is_ok(),
                "{good:?} should pass: {:?}",
                pool.validate_cel()
            );
        }
    }

    #[test]
    fn cel_rejects_garbage() {
        for bad in [
            vec!["nonsense"],
            vec!["192.0.2.1-"],
            vec!["192.0.2.0/33"],
            vec!["1-2-3"],
        ] {
            let pool = IPAddressPool::new("p", serde_json::from_value(spec(&bad)).unwrap());
            let err = pool
                .validate_cel()
                .expect_err(&format!("{bad:?} should fail"));
            assert!(
                format!("{err:?}").contains("each entry must be a CIDR"),
                "{err:?}"
            );
        }
    }
}
