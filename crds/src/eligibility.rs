//! Which nodes may announce a Service's address: a pure decision over plain cluster data.
//!
//! A node is eligible when all of these hold, checked in this order (the first that fails is
//! the [`Reason`] reported):
//!
//! 1. some [`L2Advertisement`] selects the pool holding the address (`spec.ipAddressPools` by
//!    name or `spec.ipAddressPoolSelectors` on the pool's labels; neither given = every pool)
//!    *and* selects the node (`spec.nodeSelectors`, any one matching; none = every node)
//!    — else [`Reason::NotSelected`];
//! 2. the node is not labelled [`EXCLUDE_LABEL`] (any value) — else [`Reason::Excluded`];
//!    and its `NetworkUnavailable` condition is not `True` (the node's network is not set up;
//!    MetalLB skips such nodes too) — else [`Reason::NetworkUnavailable`];
//! 3. its speaker is alive (the speakers' membership says so; without it, and in `lodestonectl
//!    why`, the nodes whose `Ready` condition is `True`, see [`node_ready`]) — else [`Reason::SpeakerDown`];
//! 4. the Service has a ready endpoint somewhere — else [`Reason::NoReadyEndpoints`] (nobody
//!    could serve the traffic, so nobody should attract it);
//! 5. with `externalTrafficPolicy: Local`, the node itself hosts a ready endpoint — else
//!    [`Reason::NoLocalEndpoint`] (kube-proxy would drop traffic arriving elsewhere).
//!
//! An eligible node announces on the union of the interfaces its matching advertisements list;
//! if any of them lists none, it announces on every suitable interface ([`Interfaces::Automatic`]),
//! as MetalLB does.
//!
//! A malformed label selector matches nothing and is reported in
//! [`Eligibility::selector_errors`], so the shell can surface it where the user looks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::selector::{self, SelectorError};
use crate::{IPAddressPool, L2Advertisement, addresses};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};

/// Nodes with this label never announce (the well-known Kubernetes label; its value is ignored).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
pub use crate::service::SERVICE_NAME_LABEL;

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The pool that holds `ip`. Pools whose addresses do not parse are skipped. Should pools
/// overlap (the controller reports that as a condition), the one with the smallest name wins, so
/// every speaker picks the same one whatever order its cache lists them in.
pub fn pool_for_address(pools: &[IPAddressPool], ip: IpAddr) -> Option<&IPAddressPool> {
    pools
        .iter()
        .filter(|pool| {
            addresses::parse_pool(&pool.spec.addresses).is_ok_and(|parsed| parsed.contains(ip))
        })
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
}

/// A pool as eligibility needs it: its name and labels.
#[derive(Clone, Copy, Debug)]
pub struct PoolRef<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.labels`.
    pub labels: &'a BTreeMap<String, String>,
}

impl<'a> PoolRef<'a> {
    /// Borrow name and labels from a pool object.
    pub fn of(pool: &'a IPAddressPool) -> Self {
        Self {
            name: pool.metadata.name.as_deref().unwrap_or_default(),
            labels: pool.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
        }
    }
}

/// A node as eligibility needs it: its name, labels and network state.
#[derive(Clone, Copy, Debug)]
pub struct NodeRef<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.labels`.
    pub labels: &'a BTreeMap<String, String>,
    /// Its `NetworkUnavailable` condition is `True` (see [`network_unavailable`]).
    pub network_unavailable: bool,
}

impl<'a> NodeRef<'a> {
    /// Borrow name and labels from a Node; `None` for a Node without a name.
    pub fn of(node: &'a Node) -> Option<Self> {
        Some(Self {
            name: node.metadata.name.as_deref().filter(|n| !n.is_empty())?,
            labels: node.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
            network_unavailable: network_unavailable(node),
        })
    }
}

/// Everything the decision looks at for one Service address.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The Service.
    pub service: &'a Service,
    /// EndpointSlices; those not labelled [`SERVICE_NAME_LABEL`] = the Service's name in its
    /// namespace are ignored, so the caller may pass a superset.
    pub endpoint_slices: &'a [EndpointSlice],
    /// The pool holding the address (see [`pool_for_address`]).
    pub pool: PoolRef<'a>,
    /// Every node that could announce.
    pub nodes: &'a [NodeRef<'a>],
    /// Every L2Advertisement.
    pub advertisements: &'a [L2Advertisement],
    /// Names of the nodes whose speaker is alive.
    pub alive: &'a BTreeSet<String>,
}

/// Why a node may not announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// No L2Advertisement selects both the address's pool and this node.
    NotSelected,
    /// The node carries [`EXCLUDE_LABEL`].
    Excluded,
    /// The node's `NetworkUnavailable` condition is `True`.
    NetworkUnavailable,
    /// The node's speaker is not alive.
    SpeakerDown,
    /// `externalTrafficPolicy: Local` and no ready endpoint of the Service runs on this node.
    NoLocalEndpoint,
    /// The Service has no ready endpoint at all.
    NoReadyEndpoints,
}

impl Reason {
    /// A short CamelCase reason, for Events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotSelected => "NotSelected",
            Reason::Excluded => "Excluded",
            Reason::NetworkUnavailable => "NetworkUnavailable",
            Reason::SpeakerDown => "SpeakerDown",
            Reason::NoLocalEndpoint => "NoLocalEndpoint",
            Reason::NoReadyEndpoints => "NoReadyEndpoints",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an eligible node announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Every suitable interface (some matching advertisement lists none).
    Automatic,
    /// Only these (the union over the matching advertisements).
    Only(BTreeSet<String>),
}

/// The decision for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// May announce, on these interfaces.
    Eligible(Interfaces),
    /// May not, for this reason.
    Ineligible(Reason),
}

/// A label selector that could not be evaluated (it then matched nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorProblem {
    /// The L2Advertisement's name.
    pub advertisement: String,
    /// `ipAddressPoolSelectors` or `nodeSelectors`.
    pub field: &'static str,
    /// Position in that list.
    pub index: usize,
    /// What is wrong.
    pub error: SelectorError,
}

/// The result for one Service address.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Eligibility {
    /// Every node of the input, by name.
    pub nodes: BTreeMap<String, Verdict>,
    /// Malformed selectors met on the way (each reported once).
    pub selector_errors: Vec<SelectorProblem>,
}

impl Eligibility {
    /// Names of the eligible nodes, ascending.
    pub fn eligible(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Eligible(_)))
            .map(|(n, _)| n.as_str())
    }
}

/// Whether an endpoint can take traffic, per the EndpointSlice API: `ready` unset means ready;
/// an endpoint that is not ready still counts while it is `serving` and not `terminating`.
/// No conditions at all means every condition unset, so ready.
pub fn endpoint_can_serve(conditions: Option<&EndpointConditions>) -> bool {
    let Some(c) = conditions else {
        return true;
    };
    c.ready != Some(false) || (c.serving == Some(true) && c.terminating != Some(true))
}

/// Whether an endpoint counts for the Service: it [can serve](endpoint_can_serve) and has an
/// address to send traffic to.
pub fn endpoint_counts(ep: &Endpoint) -> bool {
    endpoint_can_serve(ep.conditions.as_ref()) && !ep.addresses.is_empty()
}

/// Whether the Node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether `adv` selects `pool` (no pool names and no pool selectors: every pool). A malformed
/// selector selects nothing; [`evaluate`] reports it.
pub fn advertisement_selects_pool(adv: &L2Advertisement, pool: &IPAddressPool) -> bool {
    selects_pool(adv, PoolRef::of(pool), &mut Vec::new())
}

/// Whether `adv` lets `node` announce (no node selectors: every node). A malformed selector
/// selects nothing.
pub fn advertisement_selects_node(adv: &L2Advertisement, node: &Node) -> bool {
    NodeRef::of(node).is_some_and(|n| selects_node(adv, n, &mut Vec::new()))
}

/// Whether the node opted out of announcing with [`EXCLUDE_LABEL`] (any value).
pub fn is_excluded(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL))
}

/// Whether the Node's `NetworkUnavailable` condition is `True`: its network is not configured
/// (the CNI or the cloud routes are not ready), so traffic attracted to it would be lost. An
/// absent condition means available, as in Kubernetes.
pub fn network_unavailable(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
        })
}

/// Whether `slice` belongs to `service` (same namespace, [`SERVICE_NAME_LABEL`] = its name).
pub fn slice_belongs_to(slice: &EndpointSlice, service: &Service) -> bool {
    let Some(name) = service.metadata.name.as_deref() else {
        return false;
    };
    let labelled = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .is_some_and(|v| v == name);
    labelled && slice.metadata.namespace == service.metadata.namespace
}

fn is_local_policy(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local")
}

/// Ready endpoints: whether any exists, and the nodes that host one.
fn ready_endpoints<'a>(input: &Input<'a>) -> (bool, BTreeSet<&'a str>) {
    let mut any = false;
    let mut nodes = BTreeSet::new();
    for slice in input
        .endpoint_slices
        .iter()
        .filter(|s| slice_belongs_to(s, input.service))
    {
        for ep in slice.endpoints.iter().filter(|ep| endpoint_counts(ep)) {
            any = true;
            if let Some(node) = ep.node_name.as_deref() {
                nodes.insert(node);
            }
        }
    }
    (any, nodes)
}

/// Evaluate `sel` against `labels`, recording a malformed selector once.
fn selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
    problem: impl FnOnce(SelectorError) -> SelectorProblem,
    problems: &mut Vec<SelectorProblem>,
) -> bool {
    match selector::matches(sel, labels) {
        Ok(m) => m,
        Err(error) => {
            let p = problem(error);
            if !problems.contains(&p) {
                problems.push(p);
            }
            false
        }
    }
}

fn adv_name(adv: &L2Advertisement) -> String {
    adv.metadata.name.clone().unwrap_or_default()
}

fn selects_pool(
    adv: &L2Advertisement,
    pool: PoolRef<'_>,
    problems: &mut Vec<SelectorProblem>,
) -> bool {
    let spec = &adv.spec;
    if spec.ip_address_pools.is_empty() && spec.ip_address_pool_selectors.is_empty() {
        return true;
    }
    if spec.ip_address_pools.iter().any(|p| p == pool.name) {
        return true;
    }
    // Evaluate every selector (not just up to the first match) so all errors are reported.
    let mut any = false;
    for (index, sel) in spec.ip_address_pool_selectors.iter().enumerate() {
        let problem = |error| SelectorProblem {
            advertisement: adv_name(adv),
            field: "ipAddressPoolSelectors",
            index,
            error,
        };
        any |= selector_matches(sel, pool.labels, problem, problems);
    }
    any
}

fn selects_node(
    adv: &L2Advertisement,
    node: NodeRef<'_>,
    problems: &mut Vec<SelectorProblem>,
) -> bool {
    if adv.spec.node_selectors.is_empty() {
        return true;
    }
    let mut any = false;
    for (index, sel) in adv.spec.node_selectors.iter().enumerate() {
        let problem = |error| SelectorProblem {
            advertisement: adv_name(adv),
            field: "nodeSelectors",
            index,
            error,
        };
        any |= selector_matches(sel, node.labels, problem, problems);
    }
    any
}

/// Decide, for every node of `input`, whether it may announce the address and where.
pub fn evaluate(input: &Input<'_>) -> Eligibility {
    let mut problems = Vec::new();
    let for_pool: Vec<&L2Advertisement> = input
        .advertisements
        .iter()
        .filter(|adv| selects_pool(adv, input.pool, &mut problems))
        .collect();
    let (any_ready, ready_on) = ready_endpoints(input);
    let local = is_local_policy(input.service);

    let mut nodes = BTreeMap::new();
    for node in input.nodes {
        let matching: Vec<&L2Advertisement> = for_pool
            .iter()
            .copied()
            .filter(|adv| selects_node(adv, *node, &mut problems))
            .collect();
        let verdict = if matching.is_empty() {
            Verdict::Ineligible(Reason::NotSelected)
        } else if node.labels.contains_key(EXCLUDE_LABEL) {
            Verdict::Ineligible(Reason::Excluded)
        } else if node.network_unavailable {
            Verdict::Ineligible(Reason::NetworkUnavailable)
        } else if !input.alive.contains(node.name) {
            Verdict::Ineligible(Reason::SpeakerDown)
        } else if !any_ready {
            Verdict::Ineligible(Reason::NoReadyEndpoints)
        } else if local && !ready_on.contains(node.name) {
            Verdict::Ineligible(Reason::NoLocalEndpoint)
        } else if matching.iter().any(|adv| adv.spec.interfaces.is_empty()) {
            Verdict::Eligible(Interfaces::Automatic)
        } else {
            Verdict::Eligible(Interfaces::Only(
                matching
                    .iter()
                    .flat_map(|adv| adv.spec.interfaces.iter().cloned())
                    .collect(),
            ))
        };
        nodes.insert(node.name.to_owned(), verdict);
    }
    Eligibility {
        nodes,
        selector_errors: problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IPAddressPoolSpec, L2AdvertisementSpec};
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::api::discovery::v1::Endpoint;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn service(local: bool) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                external_traffic_policy: Some(if local { "Local" } else { "Cluster" }.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// (node, ready, serving, terminating)
    type Ep<'a> = (Option<&'a str>, Option<bool>, Option<bool>, Option<bool>);

    fn slice_for(svc: &str, ns: &str, eps: &[Ep<'_>]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-abc")),
                namespace: Some(ns.into()),
                labels: Some(labels(&[(SERVICE_NAME_LABEL, svc)])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .enumerate()
                .map(|(i, (node, ready, serving, terminating))| Endpoint {
                    addresses: vec![format!("10.0.0.{i}")],
                    node_name: node.map(str::to_owned),
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *serving,
                        terminating: *terminating,
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    fn ready_on(nodes: &[&str]) -> Vec<EndpointSlice> {
        let eps: Vec<Ep<'_>> = nodes
            .iter()
            .map(|n| (Some(*n), Some(true), Some(true), Some(false)))
            .collect();
        vec![slice_for("web", "shop", &eps)]
    }

    fn adv(name: &str, spec: L2AdvertisementSpec) -> L2Advertisement {
        L2Advertisement::new(name, spec)
    }

    fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        }
    }

    fn bad_sel() -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
        }
    }

    #[derive(Clone, Debug)]
    struct World {
        svc: Service,
        slices: Vec<EndpointSlice>,
        pool_labels: BTreeMap<String, String>,
        nodes: Vec<(String, BTreeMap<String, String>)>,
        advs: Vec<L2Advertisement>,
        alive: BTreeSet<String>,
    }

    impl World {
        /// Three alive nodes a, b, c (a in zone-1, b and c in zone-2), one advertisement for
        /// everything, endpoints ready on a and b.
        fn new() -> Self {
            Self {
                svc: service(false),
                slices: ready_on(&["a", "b"]),
                pool_labels: labels(&[("tier", "public")]),
                nodes: vec![
                    ("a".into(), labels(&[("zone", "1")])),
                    ("b".into(), labels(&[("zone", "2")])),
                    ("c".into(), labels(&[("zone", "2")])),
                ],
                advs: vec![adv("all", L2AdvertisementSpec::default())],
                alive: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
            }
        }

        fn run(&self) -> Eligibility {
            let nodes: Vec<NodeRef<'_>> = self
                .nodes
                .iter()
                .map(|(name, labels)| NodeRef {
                    name,
                    labels,
                    network_unavailable: name == "unavailable",
                })
                .collect();
            evaluate(&Input {
                service: &self.svc,
                endpoint_slices: &self.slices,
                pool: PoolRef {
                    name: "public",
                    labels: &self.pool_labels,
                },
                nodes: &nodes,
                advertisements: &self.advs,
                alive: &self.alive,
            })
        }
    }

    fn verdict(e: &Eligibility, node: &str) -> Verdict {
        e.nodes.get(node).cloned().expect("node evaluated")
    }

    fn no(reason: Reason) -> Verdict {
        Verdict::Ineligible(reason)
    }

    const AUTO: Verdict = Verdict::Eligible(Interfaces::Automatic);

    #[test]
    fn everything_allowed_by_default() {
        let e = World::new().run();
        assert_eq!(e.eligible().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(verdict(&e, "a"), AUTO);
        assert!(e.selector_errors.is_empty());
    }

    #[test]
    fn no_advertisement_means_nobody() {
        let mut w = World::new();
        w.advs.clear();
        let e = w.run();
        for n in ["a", "b", "c"] {
            assert_eq!(verdict(&e, n), no(Reason::NotSelected));
        }
    }

    #[test]
    fn pools_are_selected_by_name_or_labels() {
        let mut w = World::new();
        w.advs = vec![adv(
            "other",
            L2AdvertisementSpec {
                ip_address_pools: vec!["private".into()],
                ..Default::default()
            },
        )];
        assert_eq!(verdict(&w.run(), "a"), no(Reason::NotSelected));

        w.advs[0].spec.ip_address_pools.push("public".into());
        assert_eq!(verdict(&w.run(), "a"), AUTO);

        w.advs[0].spec.ip_address_pools = vec!["private".into()];
        w.advs[0].spec.ip_address_pool_selectors = vec![sel(&[("tier", "internal")])];
        assert_eq!(verdict(&w.run(), "a"), no(Reason::NotSelected));
        w.advs[0]
            .spec
            .ip_address_pool_selectors
            .push(sel(&[("tier", "public")]));
        assert_eq!(verdict(&w.run(), "a"), AUTO);
    }

    #[test]
    fn node_selectors_pick_nodes() {
        let mut w = World::new();
        w.advs[0].spec.node_selectors = vec![sel(&[("zone", "2")])];
        let e = w.run();
        assert_eq!(verdict(&e, "a"), no(Reason::NotSelected));
        assert_eq!(verdict(&e, "b"), AUTO);
        assert_eq!(verdict(&e, "c"), AUTO);
        // Any one selector matching is enough.
        w.advs[0].spec.node_selectors.push(sel(&[("zone", "1")]));
        assert_eq!(verdict(&w.run(), "a"), AUTO);
    }

    #[test]
    fn a_node_must_be_selected_by_an_advertisement_of_the_pool() {
        // One advertisement selects the pool but not node a; another selects node a but not
        // the pool. Neither makes a eligible.
        let mut w = World::new();
        w.advs = vec![
            adv(
                "pool-only",
                L2AdvertisementSpec {
                    ip_address_pools: vec!["public".into()],
                    node_selectors: vec![sel(&[("zone", "2")])],
                    ..Default::default()
                },
            ),
            adv(
                "node-only",
                L2AdvertisementSpec {
                    ip_address_pools: vec!["private".into()],
                    node_selectors: vec![sel(&[("zone", "1")])],
                    ..Default::default()
                },
            ),
        ];
        let e = w.run();
        assert_eq!(verdict(&e, "a"), no(Reason::NotSelected));
        assert_eq!(verdict(&e, "b"), AUTO);
    }

    #[test]
    fn excluded_nodes_never_announce_whatever_the_value() {
        let mut w = World::new();
        w.nodes[0].1.insert(EXCLUDE_LABEL.into(), String::new());
        w.nodes[1].1.insert(EXCLUDE_LABEL.into(), "false".into());
        let e = w.run();
        assert_eq!(verdict(&e, "a"), no(Reason::Excluded));
        assert_eq!(verdict(&e, "b"), no(Reason::Excluded));
        assert_eq!(verdict(&e, "c"), AUTO);
    }

    #[test]
    fn nodes_without_network_never_announce() {
        let mut w = World::new();
        w.nodes[1].0 = "unavailable".into();
        w.alive.insert("unavailable".into());
        let e = w.run();
        assert_eq!(verdict(&e, "unavailable"), no(Reason::NetworkUnavailable));
        assert_eq!(e.eligible().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn dead_speakers_do_not_announce() {
        let mut w = World::new();
        w.alive.remove("b");
        let e = w.run();
        assert_eq!(verdict(&e, "b"), no(Reason::SpeakerDown));
        assert_eq!(e.eligible().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn no_ready_endpoint_means_nobody() {
        let mut w = World::new();
        w.slices.clear();
        assert!(w.run().eligible().next().is_none());
        assert_eq!(verdict(&w.run(), "a"), no(Reason::NoReadyEndpoints));

        // Endpoints that cannot serve, and slices of other Services, do not count.
        w.slices = vec![
            slice_for(
                "web",
                "shop",
                &[(Some("a"), Some(false), Some(false), None)],
            ),
            slice_for(
                "web",
                "shop",
                &[(Some("a"), Some(false), Some(true), Some(true))],
            ),
            slice_for("api", "shop", &[(Some("a"), Some(true), None, None)]),
            slice_for("web", "other-ns", &[(Some("a"), Some(true), None, None)]),
        ];
        assert_eq!(verdict(&w.run(), "a"), no(Reason::NoReadyEndpoints));

        // An endpoint on no particular node still makes the Service servable (Cluster policy).
        w.slices
            .push(slice_for("web", "shop", &[(None, Some(true), None, None)]));
        assert_eq!(verdict(&w.run(), "c"), AUTO);
    }

    #[test]
    fn local_policy_needs_an_endpoint_on_the_node() {
        let mut w = World::new();
        w.svc = service(true);
        let e = w.run();
        assert_eq!(verdict(&e, "a"), AUTO);
        assert_eq!(verdict(&e, "b"), AUTO);
        assert_eq!(verdict(&e, "c"), no(Reason::NoLocalEndpoint));

        // A terminating-but-serving endpoint on c does not count; a serving, not terminating,
        // not ready one does.
        w.slices.push(slice_for(
            "web",
            "shop",
            &[(Some("c"), Some(false), Some(true), Some(true))],
        ));
        assert_eq!(verdict(&w.run(), "c"), no(Reason::NoLocalEndpoint));
        w.slices.push(slice_for(
            "web",
            "shop",
            &[(Some("c"), Some(false), Some(true), None)],
        ));
        assert_eq!(verdict(&w.run(), "c"), AUTO);

        // Endpoints without a node never make a node local.
        w.slices = ready_on(&["a"]);
        w.slices
            .push(slice_for("web", "shop", &[(None, Some(true), None, None)]));
        assert_eq!(verdict(&w.run(), "b"), no(Reason::NoLocalEndpoint));
    }

    #[test]
    fn endpoint_conditions_follow_the_api() {
        let c = |ready, serving, terminating| EndpointConditions {
            ready,
            serving,
            terminating,
        };
        assert!(endpoint_can_serve(None));
        assert!(endpoint_can_serve(Some(&c(None, None, None))));
        assert!(endpoint_can_serve(Some(&c(Some(true), None, None))));
        // `ready` wins even when the others say otherwise (e.g. publishNotReadyAddresses).
        assert!(endpoint_can_serve(Some(&c(
            Some(true),
            Some(false),
            Some(true)
        ))));
        assert!(endpoint_can_serve(Some(&c(Some(false), Some(true), None))));
        assert!(endpoint_can_serve(Some(&c(
            Some(false),
            Some(true),
            Some(false)
        ))));
        assert!(!endpoint_can_serve(Some(&c(
            Some(false),
            Some(true),
            Some(true)
        ))));
        assert!(!endpoint_can_serve(Some(&c(Some(false), None, None))));
        assert!(!endpoint_can_serve(Some(&c(
            Some(false),
            Some(false),
            None
        ))));
    }

    #[test]
    fn reasons_come_in_rule_order() {
        let mut w = World::new();
        w.slices.clear();
        w.alive.clear();
        w.nodes[0].1.insert(EXCLUDE_LABEL.into(), "true".into());
        w.advs[0].spec.node_selectors = vec![sel(&[("zone", "1")])];
        let e = w.run();
        // a: selected, excluded, down, no endpoints -> Excluded. b: not selected.
        assert_eq!(verdict(&e, "a"), no(Reason::Excluded));
        assert_eq!(verdict(&e, "b"), no(Reason::NotSelected));
        w.nodes[0].1.remove(EXCLUDE_LABEL);
        assert_eq!(verdict(&w.run(), "a"), no(Reason::SpeakerDown));
        w.alive.insert("a".into());
        assert_eq!(verdict(&w.run(), "a"), no(Reason::NoReadyEndpoints));
    }

    #[test]
    fn interfaces_are_the_union_of_matching_advertisements() {
        let mut w = World::new();
        let only = |ifs: &[&str]| L2AdvertisementSpec {
            interfaces: ifs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        w.advs = vec![
            adv("one", only(&["eth0"])),
            adv("two", only(&["eth1", "eth0"])),
            adv(
                "zone-1-only",
                L2AdvertisementSpec {
                    node_selectors: vec![sel(&[("zone", "1")])],
                    ..only(&["bond0"])
                },
            ),
        ];
        let e = w.run();
        let set = |ifs: &[&str]| {
            Verdict::Eligible(Interfaces::Only(
                ifs.iter().map(|s| s.to_string()).collect(),
            ))
        };
        assert_eq!(verdict(&e, "a"), set(&["bond0", "eth0", "eth1"]));
        assert_eq!(verdict(&e, "b"), set(&["eth0", "eth1"]));

        // An advertisement with no interfaces asks for all of them.
        w.advs.push(adv(
            "auto-zone-2",
            L2AdvertisementSpec {
                node_selectors: vec![sel(&[("zone", "2")])],
                ..Default::default()
            },
        ));
        let e = w.run();
        assert_eq!(verdict(&e, "a"), set(&["bond0", "eth0", "eth1"]));
        assert_eq!(verdict(&e, "b"), AUTO);
    }

    #[test]
    fn invalid_selectors_match_nothing_and_are_reported() {
        let mut w = World::new();
        w.advs = vec![
            adv(
                "broken-nodes",
                L2AdvertisementSpec {
                    node_selectors: vec![sel(&[("zone", "2")]), bad_sel()],
                    interfaces: vec!["eth9".into()],
                    ..Default::default()
                },
            ),
            adv(
                "broken-pools",
                L2AdvertisementSpec {
                    ip_address_pool_selectors: vec![bad_sel()],
                    ..Default::default()
                },
            ),
        ];
        let e = w.run();
        // The valid node selector of broken-nodes still works; broken-pools selects nothing.
        assert_eq!(verdict(&e, "a"), no(Reason::NotSelected));
        assert_eq!(
            verdict(&e, "b"),
            Verdict::Eligible(Interfaces::Only(["eth9".to_string()].into()))
        );
        let mut reported: Vec<(&str, &str, usize)> = e
            .selector_errors
            .iter()
            .map(|p| (p.advertisement.as_str(), p.field, p.index))
            .collect();
        reported.sort();
        assert_eq!(
            reported,
            [
                ("broken-nodes", "nodeSelectors", 1),
                ("broken-pools", "ipAddressPoolSelectors", 0)
            ]
        );
    }

    fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
        IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                allow_link_local: false,
                service_allocation: None,
            },
        )
    }

    #[test]
    fn pool_for_address_finds_the_holder() {
        let pools = vec![
            pool("v4", &["192.0.2.0/28"]),
            pool("broken", &["not an address", "198.51.100.0/24"]),
            pool("range", &["203.0.113.10-203.0.113.20", "2001:db8::/120"]),
        ];
        let name = |ip: &str| {
            pool_for_address(&pools, ip.parse().unwrap()).and_then(|p| p.metadata.name.clone())
        };
        assert_eq!(name("192.0.2.15").as_deref(), Some("v4"));
        assert_eq!(name("192.0.2.16"), None);
        assert_eq!(name("203.0.113.20").as_deref(), Some("range"));
        assert_eq!(name("2001:db8::ff").as_deref(), Some("range"));
        // A pool that does not parse holds nothing.
        assert_eq!(name("198.51.100.1"), None);
    }

    #[test]
    fn overlapping_pools_resolve_the_same_in_any_order() {
        let mut pools = vec![
            pool("zeta", &["192.0.2.0/24"]),
            pool("alpha", &["192.0.2.0/28"]),
        ];
        let ip = "192.0.2.3".parse().unwrap();
        let first = pool_for_address(&pools, ip).and_then(|p| p.metadata.name.clone());
        pools.reverse();
        let second = pool_for_address(&pools, ip).and_then(|p| p.metadata.name.clone());
        assert_eq!(first.as_deref(), Some("alpha"));
        assert_eq!(first, second);
    }

    #[test]
    fn refs_borrow_from_objects() {
        let p = pool("public", &["192.0.2.0/28"]);
        assert_eq!(PoolRef::of(&p).name, "public");
        assert!(PoolRef::of(&p).labels.is_empty());
        let mut node = Node::default();
        assert!(NodeRef::of(&node).is_none());
        node.metadata.name = Some("a".into());
        node.metadata.labels = Some(labels(&[("zone", "1")]));
        let r = NodeRef::of(&node).unwrap();
        assert_eq!((r.name, r.labels.len()), ("a", 1));
        assert!(!r.network_unavailable);
        let condition = |status: &str| k8s_openapi::api::core::v1::NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: status.into(),
            ..Default::default()
        };
        node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(vec![condition("False")]),
            ..Default::default()
        });
        assert!(!network_unavailable(&node));
        node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(vec![condition("True")]),
            ..Default::default()
        });
        assert!(network_unavailable(&node));
        assert!(NodeRef::of(&node).unwrap().network_unavailable);
    }

    /// A random world: up to 6 nodes with random zone / exclusion, random alive set, random
    /// endpoints, advertisement by zone or for all.
    fn worlds() -> impl Strategy<Value = World> {
        let node = (0u8..3, any::<bool>(), any::<bool>(), any::<bool>());
        (
            prop::collection::vec(node, 1..7),
            any::<bool>(),
            prop::option::of(0u8..3),
        )
            .prop_map(|(nodes, local, zone_sel)| {
                let mut w = World::new();
                w.svc = service(local);
                w.nodes.clear();
                w.alive.clear();
                let mut ready = Vec::new();
                for (i, (zone, excluded, alive, has_ep)) in nodes.into_iter().enumerate() {
                    let name = format!("n{i}");
                    let mut l = labels(&[("zone", &zone.to_string())]);
                    if excluded {
                        l.insert(EXCLUDE_LABEL.into(), "x".into());
                    }
                    if alive {
                        w.alive.insert(name.clone());
                    }
                    if has_ep {
                        ready.push(name.clone());
                    }
                    w.nodes.push((name, l));
                }
                let refs: Vec<&str> = ready.iter().map(String::as_str).collect();
                w.slices = ready_on(&refs);
                if let Some(z) = zone_sel {
                    w.advs[0].spec.node_selectors = vec![sel(&[("zone", &z.to_string())])];
                }
                w
            })
    }

    proptest! {
        #[test]
        fn eligible_nodes_satisfy_every_rule(w in worlds()) {
            let e = w.run();
            let local = is_local_policy(&w.svc);
            for (name, labels) in &w.nodes {
                if matches!(verdict(&e, name), Verdict::Eligible(_)) {
                    prop_assert!(w.alive.contains(name));
                    prop_assert!(!labels.contains_key(EXCLUDE_LABEL));
                    prop_assert!(!w.slices[0].endpoints.is_empty());
                    if local {
                        prop_assert!(w.slices[0].endpoints.iter().any(|ep| ep.node_name.as_deref() == Some(name)));
                    }
                }
            }
        }

        #[test]
        fn one_node_dying_changes_only_its_verdict(w in worlds(), pick in any::<usize>()) {
            let before = w.run();
            let victim = w.nodes[pick % w.nodes.len()].0.clone();
            let mut w2 = w;
            w2.alive.remove(&victim);
            let after = w2.run();
            for (name, v) in &after.nodes {
                if *name == victim {
                    prop_assert!(!matches!(v, Verdict::Eligible(_)));
                } else {
                    prop_assert_eq!(Some(v), before.nodes.get(name));
                }
            }
        }

        #[test]
        fn node_order_does_not_matter(w in worlds()) {
            let before = w.run();
            let mut w2 = w;
            w2.nodes.reverse();
            prop_assert_eq!(before, w2.run());
        }
    }
}
