//! Which routes this node advertises to which peer: a pure decision over plain cluster data.
//!
//! MetalLB's BGP semantics:
//!
//! - a node peers with every [`BGPPeer`] whose `nodeSelectors` select it (none: every node);
//! - a Service address of our class is advertised when it lies in a pool that a
//!   [`BGPAdvertisement`] selects (`ipAddressPools` by name or `ipAddressPoolSelectors`;
//!   neither given: every pool), that advertisement selects this node (`nodeSelectors`), and
//!   then to the advertisement's `peers` (none: every peer of this node);
//! - the node must not carry the exclusion label, and the Service must have a ready endpoint:
//!   anywhere with `externalTrafficPolicy: Cluster` (every eligible node advertises, the router
//!   spreads the traffic), on this node with `Local` (only nodes that can serve advertise);
//! - the route is the address's `aggregationLength` (`aggregationLengthV6`) prefix, default /32
//!   (/128); routes for one prefix from several advertisements are merged: communities are
//!   joined, the highest local preference wins.
//!
//! Liveness of other nodes plays no part: each node decides only for itself, and a node that
//! dies takes its routes with it when its sessions go down (hold time, or BFD).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use lodestone_crds::addresses::parse_pool;
use lodestone_crds::bgp::Community;
use lodestone_crds::class::ClassFilter;
use lodestone_crds::selector;
use lodestone_crds::{BGPAdvertisement, BGPPeer, IPAddressPool};

use super::wire::{RouteAttrs, prefix_of};
use crate::eligibility::EXCLUDE_LABEL;
use crate::plan::ReadyEndpoints;

/// The routes of one peer: prefix → attributes.
pub type Routes = BTreeMap<IpNet, RouteAttrs>;

/// Everything the decision reads.
#[derive(Clone, Copy, Debug)]
pub struct RoutesInput<'a> {
    /// This node's name.
    pub node_name: &'a str,
    /// All Nodes (this one is looked up by name).
    pub nodes: &'a [Arc<Node>],
    /// All Services.
    pub services: &'a [Arc<Service>],
    /// Ready endpoints per Service, as layer 2's plan read them from the EndpointSlices
    /// ([`crate::plan::ready_endpoints`]): one reading for both modes.
    pub ready: &'a ReadyEndpoints,
    /// All IPAddressPools.
    pub pools: &'a [Arc<IPAddressPool>],
    /// All BGPAdvertisements.
    pub advertisements: &'a [Arc<BGPAdvertisement>],
    /// All BGPPeers.
    pub peers: &'a [Arc<BGPPeer>],
    /// Which Services are ours.
    pub class: &'a ClassFilter,
}

/// The decision: per peer of this node (by name), its routes; plus what could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Every peer this node must have a session with, even those it advertises nothing to.
    pub peers: BTreeMap<String, Routes>,
    /// Problems to log, each naming the object.
    pub problems: Vec<String>,
}

fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// Any selector matching (none given: everything). A malformed selector matches nothing and
/// is reported.
fn any_selects(
    selectors: &[LabelSelector],
    labels: &BTreeMap<String, String>,
    what: &str,
    problems: &mut Vec<String>,
) -> bool {
    if selectors.is_empty() {
        return true;
    }
    selectors
        .iter()
        .any(|s| match selector::matches(s, labels) {
            Ok(m) => m,
            Err(e) => {
                let p = format!("{what}: {e}");
                if !problems.contains(&p) {
                    problems.push(p);
                }
                false
            }
        })
}

/// Whether the peer's `nodeSelectors` select `node`.
pub fn peer_selects_node(peer: &BGPPeer, node: &Node, problems: &mut Vec<String>) -> bool {
    let what = format!(
        "BGPPeer {} nodeSelectors",
        peer.metadata.name.as_deref().unwrap_or_default()
    );
    any_selects(
        &peer.spec.node_selectors,
        &labels_of(&node.metadata),
        &what,
        problems,
    )
}

fn advert_selects_pool(
    adv: &BGPAdvertisement,
    pool: &IPAddressPool,
    problems: &mut Vec<String>,
) -> bool {
    let s = &adv.spec;
    if s.ip_address_pools.is_empty() && s.ip_address_pool_selectors.is_empty() {
        return true;
    }
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    if s.ip_address_pools.iter().any(|p| p == name) {
        return true;
    }
    let what = format!(
        "BGPAdvertisement {} ipAddressPoolSelectors",
        adv.metadata.name.as_deref().unwrap_or_default()
    );
    !s.ip_address_pool_selectors.is_empty()
        && any_selects(
            &s.ip_address_pool_selectors,
            &labels_of(&pool.metadata),
            &what,
            problems,
        )
}

fn is_local(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local")
}

/// Decide this node's peers and the routes each gets.
pub fn desired(input: &RoutesInput<'_>) -> Desired {
    let mut out = Desired::default();
    let Some(node) = input
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(input.node_name))
    else {
        return out;
    };
    let problems = &mut out.problems;
    let my_peers: BTreeSet<String> = input
        .peers
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| peer_selects_node(p, node, problems))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let mut peers: BTreeMap<String, Routes> = my_peers
        .iter()
        .map(|p| (p.clone(), Routes::new()))
        .collect();
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
    if excluded || my_peers.is_empty() {
        out.peers = peers;
        return out;
    }

    // Advertisements that apply to this node, with their parsed attributes.
    struct Advert<'a> {
        adv: &'a BGPAdvertisement,
        attrs: RouteAttrs,
        peers: Vec<&'a String>,
    }
    let mut adverts: Vec<Advert<'_>> = Vec::new();
    for adv in input.advertisements.iter().map(|a| a.as_ref()) {
        let name = adv.metadata.name.as_deref().unwrap_or_default();
        let what = format!("BGPAdvertisement {name} nodeSelectors");
        if !any_selects(
            &adv.spec.node_selectors,
            &labels_of(&node.metadata),
            &what,
            problems,
        ) {
            continue;
        }
        let mut communities = BTreeSet::new();
        for c in &adv.spec.communities {
            match c.parse::<Community>() {
                Ok(c) => {
                    communities.insert(c);
                }
                Err(e) => problems.push(format!("BGPAdvertisement {name}: {e}; left out")),
            }
        }
        let targets: Vec<&String> = if adv.spec.peers.is_empty() {
            my_peers.iter().collect()
        } else {
            my_peers
                .iter()
                .filter(|p| adv.spec.peers.contains(p))
                .collect()
        };
        adverts.push(Advert {
            adv,
            attrs: RouteAttrs {
                local_pref: adv.spec.local_pref,
                communities,
            },
            peers: targets,
        });
    }

    // Pools with the advertisements (of this node) that select them.
    let pools: Vec<(lodestone_crds::addresses::PoolAddresses, Vec<&Advert<'_>>)> = input
        .pools
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let parsed = parse_pool(&p.spec.addresses).ok()?;
            let selecting: Vec<&Advert<'_>> = adverts
                .iter()
                .filter(|a| advert_selects_pool(a.adv, p, problems))
                .collect();
            Some((parsed, selecting))
        })
        .collect();

    for svc in input.services.iter().filter(|s| input.class.is_ours(s)) {
        let key = lodestone_crds::ServiceKey::of(&svc.metadata);
        let ready = input.ready.get(&key);
        let anywhere = ready.is_some_and(|r| !r.is_empty());
        let here = ready.is_some_and(|r| r.iter().any(|n| n.as_deref() == Some(input.node_name)));
        if !anywhere || (is_local(svc) && !here) {
            continue;
        }
        for ip in crate::plan::ingress_ips(svc) {
            for (_, selecting) in pools.iter().filter(|(a, _)| a.contains(ip)) {
                for a in selecting {
                    let len = match ip {
                        IpAddr::V4(_) => a.adv.spec.aggregation_length.unwrap_or(32),
                        IpAddr::V6(_) => a.adv.spec.aggregation_length_v6.unwrap_or(128),
                    };
                    let Some(prefix) = prefix_of(ip, len).filter(super::wire::is_unicast) else {
                        problems.push(format!(
                            "Service {key}: {ip}/{len} is not a unicast prefix; not advertised"
                        ));
                        continue;
                    };
                    for peer in &a.peers {
                        let routes = peers.entry((*peer).clone()).or_default();
                        let merged = routes.entry(prefix).or_default();
                        merged
                            .communities
                            .extend(a.attrs.communities.iter().copied());
                        merged.local_pref = merged.local_pref.max(a.attrs.local_pref);
                    }
                }
            }
        }
    }
    out.peers = peers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use proptest::prelude::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
    }

    fn svc(name: &str, ips: &[&str], local: bool) -> Arc<Service> {
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": if local {"Local"} else {"Cluster"}},
                "status": {"loadBalancer": {"ingress": ingress}},
            }))
            .unwrap(),
        )
    }

    fn slice(service: &str, nodes: &[&str]) -> Arc<EndpointSlice> {
        let eps: Vec<_> = nodes
            .iter()
            .map(|n| json!({"addresses": ["10.0.0.1"], "nodeName": n, "conditions": {"ready": true}}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{service}-x"), "namespace": "default",
                              "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": eps,
            }))
            .unwrap(),
        )
    }

    fn pool(name: &str, addresses: &[&str], labels: serde_json::Value) -> Arc<IPAddressPool> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"addresses": addresses},
            }))
            .unwrap(),
        )
    }

    fn peer(name: &str, selectors: serde_json::Value) -> Arc<BGPPeer> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1",
                         "nodeSelectors": selectors},
            }))
            .unwrap(),
        )
    }

    fn adv(name: &str, spec: serde_json::Value) -> Arc<BGPAdvertisement> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap())
    }

    struct World {
        nodes: Vec<Arc<Node>>,
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
        pools: Vec<Arc<IPAddressPool>>,
        adverts: Vec<Arc<BGPAdvertisement>>,
        peers: Vec<Arc<BGPPeer>>,
        class: ClassFilter,
    }

    impl World {
        fn new() -> World {
            World {
                nodes: vec![
                    node("a", json!({"rack": "1"})),
                    node("b", json!({"rack": "2"})),
                ],
                services: vec![svc("web", &["203.0.113.10", "2001:db8:f::10"], false)],
                slices: vec![slice("web", &["b"])],
                pools: vec![pool(
                    "public",
                    &["203.0.113.0/24", "2001:db8:f::/64"],
                    json!({"tier": "public"}),
                )],
                adverts: vec![adv("all", json!({}))],
                peers: vec![peer("tor", json!([]))],
                class: ClassFilter::default(),
            }
        }

        fn for_node(&self, n: &str) -> Desired {
            desired(&RoutesInput {
                node_name: n,
                nodes: &self.nodes,
                services: &self.services,
                ready: &crate::plan::ready_endpoints(&self.slices),
                pools: &self.pools,
                advertisements: &self.adverts,
                peers: &self.peers,
                class: &self.class,
            })
        }
    }

    fn prefixes(d: &Desired, peer: &str) -> Vec<String> {
        d.peers
            .get(peer)
            .map(|r| r.keys().map(|p| p.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn cluster_policy_advertises_from_every_node_local_only_where_an_endpoint_is() {
        let mut w = World::new();
        for n in ["a", "b"] {
            assert_eq!(
                prefixes(&w.for_node(n), "tor"),
                ["203.0.113.10/32", "2001:db8:f::10/128"],
                "{n}"
            );
        }
        w.services = vec![svc("web", &["203.0.113.10"], true)];
        assert!(prefixes(&w.for_node("a"), "tor").is_empty());
        assert_eq!(prefixes(&w.for_node("b"), "tor"), ["203.0.113.10/32"]);
        // The session stays configured even with nothing to advertise.
        assert!(w.for_node("a").peers.contains_key("tor"));
        // No ready endpoint anywhere: nobody advertises.
        w.slices.clear();
        w.services = vec![svc("web", &["203.0.113.10"], false)];
        assert!(prefixes(&w.for_node("a"), "tor").is_empty());
    }

    #[test]
    fn selectors_choose_peers_nodes_and_pools() {
        let mut w = World::new();
        w.peers = vec![
            peer("tor1", json!([{"matchLabels": {"rack": "1"}}])),
            peer("tor2", json!([{"matchLabels": {"rack": "2"}}])),
        ];
        assert_eq!(w.for_node("a").peers.keys().collect::<Vec<_>>(), ["tor1"]);
        assert_eq!(w.for_node("b").peers.keys().collect::<Vec<_>>(), ["tor2"]);
        // An advertisement for rack 2 only, to tor2 only, of the pool labelled public.
        w.adverts = vec![adv(
            "rack2",
            json!({"nodeSelectors": [{"matchLabels": {"rack": "2"}}], "peers": ["tor2"],
                   "ipAddressPoolSelectors": [{"matchLabels": {"tier": "public"}}]}),
        )];
        assert!(prefixes(&w.for_node("a"), "tor1").is_empty());
        assert_eq!(prefixes(&w.for_node("b"), "tor2").len(), 2);
        // A pool named elsewhere is not selected.
        w.adverts = vec![adv("other", json!({"ipAddressPools": ["private"]}))];
        assert!(prefixes(&w.for_node("b"), "tor2").is_empty());
        // An excluded node advertises nothing but keeps its sessions.
        w.adverts = vec![adv("all", json!({}))];
        w.nodes[1] = node("b", json!({"rack": "2", EXCLUDE_LABEL: ""}));
        let d = w.for_node("b");
        assert!(d.peers.contains_key("tor2") && prefixes(&d, "tor2").is_empty());
    }

    #[test]
    fn aggregation_and_attributes_merge() {
        let mut w = World::new();
        w.services.push(svc("api", &["203.0.113.11"], false));
        w.slices.push(slice("api", &["a"]));
        w.adverts = vec![
            adv(
                "agg",
                json!({"aggregationLength": 24, "localPref": 50, "communities": ["65000:1"]}),
            ),
            adv(
                "hosts",
                json!({"localPref": 200, "communities": ["65000:2", "large:1:2:3"]}),
            ),
            adv(
                "agg2",
                json!({"aggregationLength": 24, "localPref": 70, "communities": ["no-export"]}),
            ),
        ];
        let d = w.for_node("a");
        let routes = &d.peers["tor"];
        let agg = &routes[&"203.0.113.0/24".parse::<IpNet>().unwrap()];
        assert_eq!(agg.local_pref, Some(70));
        assert_eq!(agg.communities.len(), 2);
        let host = &routes[&"203.0.113.11/32".parse::<IpNet>().unwrap()];
        assert_eq!(host.local_pref, Some(200));
        assert!(host.communities.contains(&Community::Large(1, 2, 3)));
        // Two services, one /24 aggregate, two /32s, one /128.
        assert_eq!(routes.len(), 4, "{routes:?}");
    }

    #[test]
    fn bad_input_is_reported_not_fatal() {
        let mut w = World::new();
        w.peers = vec![peer(
            "tor",
            json!([{"matchExpressions": [{"key": "rack", "operator": "Sometimes", "values": ["1"]}]}]),
        )];
        let d = w.for_node("a");
        assert!(d.peers.is_empty());
        assert!(
            d.problems[0].contains("BGPPeer tor nodeSelectors"),
            "{:?}",
            d.problems
        );
        w.peers = vec![peer("tor", json!([]))];
        w.adverts = vec![adv("c", json!({"communities": ["70000:1"]}))];
        let d = w.for_node("a");
        assert_eq!(prefixes(&d, "tor").len(), 2);
        assert!(
            d.problems[0].contains("BGPAdvertisement c"),
            "{:?}",
            d.problems
        );
        // An unknown node: nothing at all.
        assert_eq!(w.for_node("zz"), Desired::default());
    }

    proptest! {
        /// With Local policy a node advertises a Service's addresses exactly when one of its
        /// ready endpoints runs there; with Cluster, when any does.
        #[test]
        fn advertises_exactly_when_it_can_serve(
            local in any::<bool>(),
            endpoint_nodes in proptest::collection::btree_set(prop_oneof![Just("a"), Just("b"), Just("c")], 0..3),
        ) {
            let mut w = World::new();
            w.services = vec![svc("web", &["203.0.113.10"], local)];
            let eps: Vec<&str> = endpoint_nodes.iter().copied().collect();
            w.slices = vec![slice("web", &eps)];
            for n in ["a", "b"] {
                let advertised = !prefixes(&w.for_node(n), "tor").is_empty();
                let want = if local { endpoint_nodes.contains(n) } else { !endpoint_nodes.is_empty() };
                prop_assert_eq!(advertised, want);
            }
        }
    }
}
