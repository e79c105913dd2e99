//! A Service as every Lodestone program reads it: its key, the addresses in its status, the
//! annotations it asks with. Controller, speaker, `lodestonectl` and the sandbox read Services
//! through these functions only, so they cannot disagree on what a Service says.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A Service's `namespace/name`: the key of every map, log line and Event about one Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
}

impl ServiceKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object's metadata (missing fields read as empty, as the API never sends
    /// a Service without them).
    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }

    /// Parse `namespace/name` (the [`Display`](fmt::Display) form); `None` unless both parts
    /// are non-empty and the name has no further `/`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The label an EndpointSlice carries to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The IP addresses in `status.loadBalancer.ingress`, in order, each once. Hostname-only
/// entries and values that do not parse are skipped (nobody here wrote them); IPv4-mapped IPv6
/// addresses read as the IPv4 address they are.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for entry in ingress.into_iter().flatten() {
        if let Some(ip) = entry
            .ip
            .as_deref()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
        {
            let ip = ip.to_canonical();
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The annotations a Service asks with, most specific first: Lodestone's own, then MetalLB's
/// current (`metallb.io/*`) and legacy (`metallb.universe.tf/*`) spellings, so a cluster moves
/// from MetalLB without editing its Services. Use [`annotations::first`] to read one.
pub mod annotations {
    use super::BTreeMap;

    /// Addresses the Service asks for, comma-separated, at most one per family.
    pub const LOAD_BALANCER_IPS: [&str; 3] = [
        "lodestone.dev/loadBalancerIPs",
        "metallb.io/loadBalancerIPs",
        "metallb.universe.tf/loadBalancerIPs",
    ];
    /// The pool to take the address from.
    pub const ADDRESS_POOL: [&str; 3] = [
        "lodestone.dev/address-pool",
        "metallb.io/address-pool",
        "metallb.universe.tf/address-pool",
    ];
    /// The sharing key: Services with the same key may share an address.
    pub const ALLOW_SHARED_IP: [&str; 3] = [
        "lodestone.dev/allow-shared-ip",
        "metallb.io/allow-shared-ip",
        "metallb.universe.tf/allow-shared-ip",
    ];

    /// Every annotation Lodestone reads.
    pub fn all() -> impl Iterator<Item = &'static str> {
        LOAD_BALANCER_IPS
            .into_iter()
            .chain(ADDRESS_POOL)
            .chain(ALLOW_SHARED_IP)
    }

    /// The first of `names` present in `annotations`, with its value: the one that counts.
    pub fn first<'a>(
        annotations: Option<&'a BTreeMap<String, String>>,
        names: &[&'static str],
    ) -> Option<(&'static str, &'a str)> {
        let annotations = annotations?;
        names
            .iter()
            .find_map(|n| annotations.get(*n).map(|v| (*n, v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ingress_ips_skip_junk_and_repeats() {
        let s = svc(
            json!({"metadata": {"name": "a"}, "status": {"loadBalancer": {"ingress": [
            {"ip": "192.0.2.1"}, {"hostname": "lb.example"}, {"ip": "banana"},
            {"ip": " 2001:db8::1 "}, {"ip": "192.0.2.1"}, {"ip": "::ffff:192.0.2.9"}]}}}),
        );
        assert_eq!(
            ingress_ips(&s),
            ["192.0.2.1", "2001:db8::1", "192.0.2.9"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        assert!(ingress_ips(&svc(json!({"metadata": {"name": "a"}}))).is_empty());
    }

    #[test]
    fn lodestone_annotations_win_over_metallb_ones() {
        let a: BTreeMap<String, String> = [
            ("metallb.universe.tf/address-pool", "legacy"),
            ("metallb.io/address-pool", "current"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            annotations::first(Some(&a), &annotations::ADDRESS_POOL),
            Some(("metallb.io/address-pool", "current"))
        );
        let mut b = a.clone();
        b.insert("lodestone.dev/address-pool".into(), "own".into());
        assert_eq!(
            annotations::first(Some(&b), &annotations::ADDRESS_POOL),
            Some(("lodestone.dev/address-pool", "own"))
        );
        assert_eq!(
            annotations::first(Some(&a), &annotations::ALLOW_SHARED_IP),
            None
        );
        assert_eq!(annotations::first(None, &annotations::ADDRESS_POOL), None);
        assert_eq!(annotations::all().count(), 9);
    }

    proptest! {
        #[test]
        fn key_round_trips(ns in "[a-z0-9][a-z0-9-]{0,20}", name in "[a-z0-9][a-z0-9.-]{0,20}") {
            let key = ServiceKey::new(ns, name);
            prop_assert_eq!(ServiceKey::parse(&key.to_string()), Some(key));
        }
    }

    #[test]
    fn malformed_keys() {
        for bad in ["", "web", "/web", "ns/", "a/b/c"] {
            assert_eq!(ServiceKey::parse(bad), None, "{bad}");
        }
    }
}
