//! What this node announces, decided from plain data: no client, no socket, no clock.
//!
//! Every speaker runs [`plan`] over the same cluster objects and the same alive set, so they all
//! agree on one owner per address without talking to each other. The steps:
//!
//! 1. Services of our class ([`ClassFilter`]) with IP addresses in `status.loadBalancer.ingress`.
//! 2. Each address must lie in an [`IPAddressPool`] that some [`L2Advertisement`] selects; the
//!    nodes that may announce it are those some such advertisement selects by `nodeSelectors`,
//!    that do not carry [`EXCLUDE_LABEL`], whose speaker is alive, and that have a ready endpoint
//!    of the Service (`externalTrafficPolicy: Local`) — with `Cluster` the Service needs a ready
//!    endpoint anywhere, or nobody announces it (traffic would be dropped anyway).
//! 3. A Service's candidates are the nodes eligible for *all* its announced addresses (alive,
//!    not excluded, `NetworkUnavailable` not `True`, selected, hosting an endpoint under
//!    `Local`). The owner is the node its `lodestone.dev/Announced` condition names, while that
//!    node stays a candidate ("sticky": an address does not move back to a returning node, nor
//!    hop while endpoints become ready one by one); otherwise `election::owner` over the
//!    candidates for the Service's *first* ingress address (MetalLB's order, for a fresh
//!    assignment), so the addresses of a dual-stack Service land on one node. The condition is
//!    part of the Service object, so every node reads the same current owner: the decision
//!    stays a function of shared inputs.
//! 4. An address shared by several Services goes to the owner chosen by the first of them (by
//!    `namespace/name` text, see [`by_text`]) that has one, so no address ever has two owners,
//!    even when the sharing Services disagree about eligibility.
//!
//! The rules themselves (which advertisement selects which pool and node, the exclusion label,
//! which endpoints can serve) live in [`eligibility`]; this module applies them to every Service.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lodestone_crds::addresses::{PoolAddresses, parse_pool};
use lodestone_crds::announced;
use lodestone_crds::{IPAddressPool, L2Advertisement, ServiceKey};

use crate::eligibility;

/// The labels the rules read, defined with the rules in [`eligibility`].
pub use crate::eligibility::{EXCLUDE_LABEL, SERVICE_NAME_LABEL, node_ready};
/// The one reading of `status.loadBalancer.ingress`, shared with the controller and the CLI.
pub use lodestone_crds::service::ingress_ips;

/// The class rule, shared with the controller so both binaries agree on which Services are ours.
pub use lodestone_crds::class::{ClassFilter, DEFAULT_CLASS as DEFAULT_LB_CLASS};

/// Everything the decision depends on. Objects are shared (`Arc`) because they come straight
/// from reflector stores; nothing here is mutated.
#[derive(Clone, Debug, Default)]
pub struct PlanInput {
    /// This node's name.
    pub node_name: String,
    /// All Services (any class; filtered here).
    pub services: Vec<Arc<Service>>,
    /// All EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// All Nodes.
    pub nodes: Vec<Arc<Node>>,
    /// All IPAddressPools.
    pub pools: Vec<Arc<IPAddressPool>>,
    /// All L2Advertisements.
    pub advertisements: Vec<Arc<L2Advertisement>>,
    /// Nodes whose speaker is alive (see [`alive_set`]).
    pub alive: BTreeSet<String>,
    /// Which Services are ours.
    pub class: ClassFilter,
}

/// Why a Service of ours has no owner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoOwner {
    /// `status.loadBalancer.ingress` holds no IP address yet.
    NoAddress,
    /// None of its addresses lies in a pool.
    NotInPool,
    /// Its pools are not selected by any L2Advertisement.
    NotAdvertised,
    /// No ready endpoint anywhere (any policy) — nobody could serve the traffic.
    NoReadyEndpoints,
    /// Endpoints exist, but no node is selected, alive, not excluded and (Local) hosting one.
    NoEligibleNode,
}

impl std::fmt::Display for NoOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoOwner::NoAddress => "no IP address assigned yet",
            NoOwner::NotInPool => "its addresses are in no IPAddressPool",
            NoOwner::NotAdvertised => "no L2Advertisement selects its pool",
            NoOwner::NoReadyEndpoints => "no ready endpoint",
            NoOwner::NoEligibleNode => "no eligible node with a live speaker",
        })
    }
}

/// The decision for one Service of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    /// IP addresses that are announced (in a pool selected by an advertisement), ingress order.
    pub addresses: Vec<IpAddr>,
    /// Node that announces them, or why none does.
    pub owner: Result<String, NoOwner>,
    /// The Service's `lodestone.dev/Announced` condition as the API server last showed it.
    pub observed: Observed,
}

/// What a Service's `lodestone.dev/Announced` condition says now, with the Service's
/// `resourceVersion` (the precondition of the next write).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `Some(true)`/`Some(false)` for the condition's status; `None` without a condition.
    pub status: Option<bool>,
    /// The condition's reason.
    pub reason: String,
    /// The condition's message.
    pub message: String,
    /// `lastTransitionTime`, kept on a write that does not flip the status.
    pub last_transition: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The node a `True` condition names: the Service's current owner.
    pub owner: Option<String>,
    /// The Service's `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

/// The Service's own condition (see [`Observed`]).
pub fn observed(svc: &Service) -> Observed {
    let condition = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == announced::CONDITION_TYPE));
    let mut out = Observed {
        resource_version: svc.metadata.resource_version.clone(),
        ..Observed::default()
    };
    if let Some(c) = condition {
        let status = c.status == "True";
        out.status = Some(status);
        out.reason = c.reason.clone();
        out.message = c.message.clone();
        out.last_transition = Some(c.last_transition_time.clone());
        if status {
            out.owner = announced::announcer_of(&c.message).map(str::to_owned);
        }
    }
    out
}

/// The decision for this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Addresses this node announces → the interfaces to announce on (`None` = automatic).
    pub owned: BTreeMap<IpAddr, Option<Vec<String>>>,
    /// Every Service of ours.
    pub services: BTreeMap<ServiceKey, ServicePlan>,
}

impl Plan {
    /// The Services of each address this node announces: what the announcer's log lines name
    /// (through [`service_names`]).
    pub fn services_by_address(&self) -> BTreeMap<IpAddr, Vec<ServiceKey>> {
        let mut out: BTreeMap<IpAddr, Vec<ServiceKey>> = BTreeMap::new();
        for (key, svc) in &self.services {
            for ip in svc
                .addresses
                .iter()
                .filter(|ip| self.owned.contains_key(ip))
            {
                out.entry(*ip).or_default().push(key.clone());
            }
        }
        out
    }
}

/// The order of the Services' `namespace/name` texts, which decides which of several Services
/// sharing an address picks its owner (step 4 of [`plan`], [`crate::run::address_owners`]).
/// It is not [`ServiceKey`]'s own order (namespace, then name): the two differ when a
/// namespace is another's prefix followed by `-` (`team-a/x` sorts before `team/x` as text).
/// Speakers of different versions meet during an upgrade and must pick the same owner, so the
/// text order of the earlier, string-keyed speaker stays.
pub fn by_text(a: &ServiceKey, b: &ServiceKey) -> Ordering {
    fn text(k: &ServiceKey) -> impl Iterator<Item = u8> + '_ {
        k.namespace
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(k.name.bytes())
    }
    text(a).cmp(text(b))
}

/// The entries of a map by Service in [`by_text`] order.
pub fn in_text_order<V>(map: &BTreeMap<ServiceKey, V>) -> Vec<(&ServiceKey, &V)> {
    let mut out: Vec<(&ServiceKey, &V)> = map.iter().collect();
    // Nearly sorted already (the orders differ only around `-`): the sort costs about a pass.
    out.sort_by(|a, b| by_text(a.0, b.0));
    out
}

/// Several Services in one log field: `namespace/name` each, in [`by_text`] order,
/// comma-separated.
pub fn service_names<'a>(keys: impl IntoIterator<Item = &'a ServiceKey>) -> String {
    use std::fmt::Write as _;
    let mut keys: Vec<&ServiceKey> = keys.into_iter().collect();
    keys.sort_by(|a, b| by_text(a, b));
    keys.dedup();
    let mut out = String::new();
    for key in keys {
        if !out.is_empty() {
            out.push(',');
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "{key}");
    }
    out
}

/// Where the alive set came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliveSource {
    /// The membership protocol (fast).
    Membership,
    /// Node `Ready` conditions, while membership is not formed (slow: tens of seconds).
    NodeReady,
    /// The membership is formed but this speaker hears no peer, while other Nodes exist: it
    /// cannot tell "they are all down" from "I am cut off", so every Node the API server still
    /// shows `Ready` counts as alive and this speaker keeps only what is its own.
    Alone,
}

/// What the membership says, as [`alive_set`] needs it.
#[derive(Clone, Copy, Debug)]
pub struct MembershipInput<'a> {
    /// Alive members (self included).
    pub alive: &'a BTreeSet<String>,
    /// Whether the membership is formed (a peer has answered).
    pub formed: bool,
    /// Every node the membership has shown alive since this speaker started.
    pub seen: &'a BTreeSet<String>,
    /// Whether this speaker is still in its joining grace period (see [`alive_set`]).
    pub joining: bool,
    /// Peers that declared themselves out of the election (API server lost, shutting down):
    /// never candidates, and known to be gone even to a speaker that hears nobody.
    pub withdrawn: &'a BTreeSet<String>,
}

/// The alive set of speaker `me`: the membership's when it is formed, otherwise the Nodes whose
/// `Ready` condition is `True`; never a peer that withdrew from the election.
///
/// "Formed" only means one peer answered; the others may not have been heard yet. During the
/// joining grace period a Ready node that the membership has never shown is therefore counted
/// alive, so that a starting speaker does not take over addresses of peers it has simply not
/// met yet. After the grace period the membership alone decides (a Ready node without a
/// speaker must not win elections it cannot serve).
///
/// A speaker that hears no peer at all while other Nodes exist ([`AliveSource::Alone`]) does
/// not trust its membership: its own link may be down, or it may be cut off. It counts every
/// Node the API server shows `Ready` as alive, so it announces only what it would own anyway,
/// and takes over another node's addresses only once the API server says that node is gone
/// (not `Ready`, or deleted) or the node withdrew itself.
pub fn alive_set(
    me: &str,
    membership: Option<MembershipInput<'_>>,
    nodes: &[Arc<Node>],
) -> (BTreeSet<String>, AliveSource) {
    let ready = || {
        nodes
            .iter()
            .filter(|n| node_ready(n))
            .filter_map(|n| n.metadata.name.clone())
    };
    let others_exist = nodes
        .iter()
        .any(|n| n.metadata.name.as_deref().is_some_and(|name| name != me));
    let (mut alive, source, withdrawn) = match membership {
        Some(m) if m.formed => {
            if others_exist && m.alive.iter().all(|n| n == me) {
                let mut alive: BTreeSet<String> = ready().collect();
                alive.insert(me.to_owned());
                (alive, AliveSource::Alone, Some(m.withdrawn))
            } else {
                let mut alive = m.alive.clone();
                if m.joining {
                    alive.extend(ready().filter(|n| !m.seen.contains(n)));
                }
                (alive, AliveSource::Membership, Some(m.withdrawn))
            }
        }
        Some(m) => (ready().collect(), AliveSource::NodeReady, Some(m.withdrawn)),
        None => (ready().collect(), AliveSource::NodeReady, None),
    };
    if let Some(withdrawn) = withdrawn {
        alive.retain(|n| n == me || !withdrawn.contains(n));
    }
    (alive, source)
}

/// The Node's first `InternalIP`, if it parses.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.trim().parse().ok())
}

/// A parsed pool with the advertisements that select it.
struct PoolView<'a> {
    addresses: PoolAddresses,
    adverts: Vec<&'a L2Advertisement>,
}

/// Ready endpoints of each Service: the nodes hosting one (`None` for an endpoint without
/// `nodeName`, which counts for "anywhere" but for no node).
pub type ReadyEndpoints = BTreeMap<ServiceKey, BTreeSet<Option<String>>>;

/// Reads [`ReadyEndpoints`] from every EndpointSlice: once per recomputation, for layer 2's
/// [`plan_with`] and BGP alike.
pub fn ready_endpoints(slices: &[Arc<EndpointSlice>]) -> ReadyEndpoints {
    let mut out: ReadyEndpoints = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let key = ServiceKey::new(
            slice.metadata.namespace.as_deref().unwrap_or_default(),
            service.as_str(),
        );
        let entry = out.entry(key).or_default();
        for ep in &slice.endpoints {
            if eligibility::endpoint_counts(ep) {
                entry.insert(ep.node_name.clone());
            }
        }
    }
    out
}

/// Per address: the advertisements (of pools containing it) that apply.
fn adverts_for<'a>(ip: IpAddr, pools: &[PoolView<'a>]) -> Option<Vec<&'a L2Advertisement>> {
    let mut in_pool = false;
    let mut adverts = Vec::new();
    for pool in pools.iter().filter(|p| p.addresses.contains(ip)) {
        in_pool = true;
        adverts.extend(pool.adverts.iter().copied());
    }
    in_pool.then_some(adverts)
}

/// Decide, for every Service of ours, which node announces it, and what this node announces.
pub fn plan(input: &PlanInput) -> Plan {
    plan_with(input, &ready_endpoints(&input.endpoint_slices))
}

/// [`plan`] with the ready endpoints already read from `input.endpoint_slices`.
pub fn plan_with(input: &PlanInput, endpoints: &ReadyEndpoints) -> Plan {
    let pools: Vec<PoolView<'_>> = input
        .pools
        .iter()
        .filter_map(|p| {
            // An invalid pool serves nothing; the controller reports it on the pool.
            let addresses = parse_pool(&p.spec.addresses).ok()?;
            let adverts = input
                .advertisements
                .iter()
                .map(|a| a.as_ref())
                .filter(|a| eligibility::advertisement_selects_pool(a, p))
                .collect();
            Some(PoolView { addresses, adverts })
        })
        .collect();
    let nodes: BTreeMap<&str, &Node> = input
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.as_ref())))
        .collect();

    // Step 1-3: a candidate owner per Service, plus this node's interfaces per address.
    struct Candidate {
        addresses: Vec<IpAddr>,
        owner: Result<String, NoOwner>,
        // Interfaces on *this* node per address, when this node is eligible.
        local_interfaces: BTreeMap<IpAddr, Option<Vec<String>>>,
        observed: Observed,
    }
    let mut candidates: BTreeMap<ServiceKey, Candidate> = BTreeMap::new();
    for svc in input.services.iter().filter(|s| input.class.is_ours(s)) {
        let key = ServiceKey::of(&svc.metadata);
        let ips = ingress_ips(svc);
        let mut cand = Candidate {
            addresses: Vec::new(),
            owner: Err(NoOwner::NoAddress),
            local_interfaces: BTreeMap::new(),
            observed: observed(svc),
        };
        if ips.is_empty() {
            candidates.insert(key, cand);
            continue;
        }
        let mut any_in_pool = false;
        let mut per_address: Vec<(IpAddr, Vec<&L2Advertisement>)> = Vec::new();
        for ip in &ips {
            match adverts_for(*ip, &pools) {
                None => {}
                Some(a) => {
                    any_in_pool = true;
                    if !a.is_empty() {
                        per_address.push((*ip, a));
                    }
                }
            }
        }
        if per_address.is_empty() {
            cand.owner = Err(if any_in_pool {
                NoOwner::NotAdvertised
            } else {
                NoOwner::NotInPool
            });
            candidates.insert(key, cand);
            continue;
        }
        cand.addresses = per_address.iter().map(|(ip, _)| *ip).collect();
        let ready = endpoints.get(&key);
        if ready.is_none_or(|r| r.is_empty()) {
            cand.owner = Err(NoOwner::NoReadyEndpoints);
            candidates.insert(key, cand);
            continue;
        }
        let local = svc
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_deref())
            == Some("Local");

        let node_ok = |name: &str, node: &Node| {
            input.alive.contains(name)
                && !eligibility::is_excluded(node)
                && !eligibility::network_unavailable(node)
                && (!local || ready.is_some_and(|r| r.contains(&Some(name.to_owned()))))
        };
        // Nodes eligible for every announced address.
        let eligible: Vec<&str> = nodes
            .iter()
            .filter(|(name, node)| node_ok(name, node))
            .filter(|(_, node)| {
                per_address.iter().all(|(_, adverts)| {
                    adverts
                        .iter()
                        .any(|a| eligibility::advertisement_selects_node(a, node))
                })
            })
            .map(|(name, _)| *name)
            .collect();
        let first = ips.first().map(|ip| ip.to_string()).unwrap_or_default();
        cand.owner = sticky_owner(
            cand.observed.owner.as_deref(),
            &first,
            eligible.iter().copied(),
        )
        .map(str::to_owned)
        .ok_or(NoOwner::NoEligibleNode);
        if let Some(me) = nodes.get(input.node_name.as_str()) {
            for (ip, adverts) in &per_address {
                cand.local_interfaces
                    .insert(*ip, interfaces_of(adverts.iter().copied(), me));
            }
        }
        candidates.insert(key, cand);
    }

    // Step 4: one owner per address, from the first Service (by text) that has one.
    let mut address_owner: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for (_, cand) in in_text_order(&candidates) {
        if let Ok(owner) = &cand.owner {
            for ip in &cand.addresses {
                address_owner.entry(*ip).or_insert(owner.as_str());
            }
        }
    }
    let mut out = Plan::default();
    for (key, cand) in &candidates {
        let owner = match (&cand.owner, cand.addresses.first()) {
            (Ok(_), Some(first)) => address_owner
                .get(first)
                .map(|o| (*o).to_owned())
                .ok_or(NoOwner::NoEligibleNode),
            (other, _) => other.clone(),
        };
        for ip in &cand.addresses {
            if address_owner.get(ip) == Some(&input.node_name.as_str()) {
                let ifaces = cand.local_interfaces.get(ip).cloned().flatten();
                merge_interfaces(
                    out.owned.entry(*ip),
                    ifaces,
                    cand.local_interfaces.contains_key(ip),
                );
            }
        }
        out.services.insert(
            key.clone(),
            ServicePlan {
                addresses: cand.addresses.clone(),
                owner,
                observed: cand.observed.clone(),
            },
        );
    }
    out
}

/// The owner rule, shared with `lodestonectl why`.
pub use crate::election::sticky_owner;

/// Interfaces to use on `node` given the advertisements: `None` (automatic) when any applicable
/// advertisement names none, else the union of the names.
fn interfaces_of<'a>(
    adverts: impl Iterator<Item = &'a L2Advertisement>,
    node: &Node,
) -> Option<Vec<String>> {
    let mut names = BTreeSet::new();
    let mut any = false;
    for adv in adverts.filter(|a| eligibility::advertisement_selects_node(a, node)) {
        any = true;
        if adv.spec.interfaces.is_empty() {
            return None;
        }
        names.extend(adv.spec.interfaces.iter().cloned());
    }
    // Not selected at all cannot happen for an owner; automatic is the safe reading.
    if !any {
        return None;
    }
    Some(names.into_iter().collect())
}

/// Combines the interfaces two Services sharing an address ask for: automatic wins.
fn merge_interfaces(
    entry: std::collections::btree_map::Entry<'_, IpAddr, Option<Vec<String>>>,
    ifaces: Option<Vec<String>>,
    known: bool,
) {
    use std::collections::btree_map::Entry;
    // An address this node owns through another Service's election but is not itself
    // eligible for: it follows the address, on automatic interfaces.
    let ifaces = if known { ifaces } else { None };
    match entry {
        Entry::Vacant(v) => {
            v.insert(ifaces);
        }
        Entry::Occupied(mut o) => {
            let merged = match (o.get().clone(), ifaces) {
                (Some(mut a), Some(b)) => {
                    a.extend(b);
                    a.sort();
                    a.dedup();
                    Some(a)
                }
                _ => None,
            };
            o.insert(merged);
        }
    }
}

/// The owned addresses whose L2Advertisements name `interfaces` of which this node has none
/// (`links` are its interface names), with those names: the node owns them but answers for them
/// nowhere, which must be said (MetalLB's speaker says so too, `announceFailed`).
pub fn unanswerable<'a>(
    owned: &BTreeMap<IpAddr, Option<Vec<String>>>,
    links: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<IpAddr, Vec<String>> {
    let links: BTreeSet<&str> = links.into_iter().collect();
    owned
        .iter()
        .filter_map(|(ip, names)| {
            let names = names.as_ref()?;
            (!names.iter().any(|n| links.contains(n.as_str()))).then(|| (*ip, names.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeCondition, NodeStatus,
        ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use lodestone_crds::{IPAddressPoolSpec, L2AdvertisementSpec};
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn node(name: &str, pairs: &[(&str, &str)]) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: labels(pairs),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.0.2.1".into(),
                }]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn service(name: &str, ips: &[&str], local: bool) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                external_traffic_policy: Some(if local { "Local" } else { "Cluster" }.into()),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ips.iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some((*ip).into()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
        })
    }

    fn slice(service: &str, ready_on: &[(&str, bool)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-abc")),
                namespace: Some("default".into()),
                labels: labels(&[(SERVICE_NAME_LABEL, service)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: ready_on
                .iter()
                .map(|(n, ready)| Endpoint {
                    addresses: vec!["10.0.0.1".into()],
                    node_name: Some((*n).into()),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        })
    }

    fn pool(name: &str, addrs: &[&str]) -> Arc<IPAddressPool> {
        Arc::new(IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: addrs.iter().map(|a| (*a).into()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                allow_link_local: false,
                service_allocation: None,
            },
        ))
    }

    fn advert(name: &str, spec: L2AdvertisementSpec) -> Arc<L2Advertisement> {
        Arc::new(L2Advertisement::new(name, spec))
    }

    fn base(me: &str) -> PlanInput {
        let names = ["node-a", "node-b", "node-c"];
        PlanInput {
            node_name: me.into(),
            services: vec![service("web", &["198.51.100.10"], false)],
            endpoint_slices: vec![slice("web", &[("node-a", true)])],
            nodes: names.iter().map(|n| node(n, &[])).collect(),
            pools: vec![pool("p", &["198.51.100.0/24", "2001:db8::/120"])],
            advertisements: vec![advert("all", L2AdvertisementSpec::default())],
            alive: names.iter().map(|n| (*n).to_owned()).collect(),
            class: ClassFilter::default(),
        }
    }

    fn owner_of(p: &Plan, svc: &str) -> Result<String, NoOwner> {
        p.services[&ServiceKey::new("default", svc)].owner.clone()
    }

    #[test]
    fn owner_is_the_election_winner_and_only_it_owns() {
        let input = base("node-a");
        let expected = election::owner("198.51.100.10", ["node-a", "node-b", "node-c"]).unwrap();
        let ip: IpAddr = "198.51.100.10".parse().unwrap();
        for me in ["node-a", "node-b", "node-c"] {
            let p = plan(&PlanInput {
                node_name: me.into(),
                ..input.clone()
            });
            assert_eq!(owner_of(&p, "web").as_deref(), Ok(expected));
            assert_eq!(p.owned.contains_key(&ip), me == expected, "{me}");
            if me == expected {
                assert_eq!(p.owned[&ip], None, "no interfaces named means automatic");
            }
        }
    }

    /// A pool being deleted (held by the controller's finalizer while Services use it) is
    /// announced until it is gone: dropping it took every address down at once (issue 14).
    #[test]
    fn a_terminating_pool_stays_announced() {
        let mut input = base("node-a");
        let mut p = (*input.pools[0]).clone();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        input.pools = vec![Arc::new(p)];
        assert!(owner_of(&plan(&input), "web").is_ok());
    }

    #[test]
    fn class_filter() {
        let f = ClassFilter::default();
        let mut svc = (*service("s", &["198.51.100.1"], false)).clone();
        assert!(f.is_ours(&svc));
        svc.spec.as_mut().unwrap().load_balancer_class = Some("other.example/lb".into());
        assert!(!f.is_ours(&svc));
        svc.spec.as_mut().unwrap().load_balancer_class = Some(DEFAULT_LB_CLASS.into());
        assert!(f.is_ours(&svc));
        svc.spec.as_mut().unwrap().load_balancer_class = None;
        let strict = ClassFilter {
            default_class: false,
            ..f.clone()
        };
        assert!(!strict.is_ours(&svc));
        svc.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert!(!f.is_ours(&svc));

        let mut input = base("node-a");
        input.services = vec![Arc::new(svc)];
        assert!(plan(&input).services.is_empty());
    }

    #[test]
    fn no_ready_endpoint_means_no_owner() {
        let mut input = base("node-a");
        input.endpoint_slices = vec![slice("web", &[("node-a", false)])];
        for me in ["node-a", "node-b", "node-c"] {
            input.node_name = me.into();
            let p = plan(&input);
            assert_eq!(owner_of(&p, "web"), Err(NoOwner::NoReadyEndpoints));
            assert!(p.owned.is_empty());
        }
        input.endpoint_slices.clear();
        assert_eq!(
            owner_of(&plan(&input), "web"),
            Err(NoOwner::NoReadyEndpoints)
        );
    }

    #[test]
    fn serving_endpoints_count_unless_terminating() {
        // EndpointSlice semantics: an endpoint that is not ready but still serving and not
        // terminating can take traffic; a serving one that is terminating cannot.
        let with = |serving: bool, terminating: bool| {
            let mut s = (*slice("web", &[("node-a", false)])).clone();
            s.endpoints[0].conditions = Some(EndpointConditions {
                ready: Some(false),
                serving: Some(serving),
                terminating: Some(terminating),
            });
            Arc::new(s)
        };
        let mut input = base("node-a");
        input.endpoint_slices = vec![with(true, false)];
        assert!(owner_of(&plan(&input), "web").is_ok());
        input.endpoint_slices = vec![with(true, true)];
        assert_eq!(
            owner_of(&plan(&input), "web"),
            Err(NoOwner::NoReadyEndpoints)
        );
    }

    #[test]
    fn local_policy_follows_the_ready_endpoint() {
        let mut input = base("node-a");
        input.services = vec![service("web", &["198.51.100.10"], true)];
        for host in ["node-a", "node-b", "node-c"] {
            input.endpoint_slices = vec![slice(
                "web",
                &[
                    (host, true),
                    // Not ready elsewhere: must not count.
                    (if host == "node-a" { "node-b" } else { "node-a" }, false),
                ],
            )];
            assert_eq!(owner_of(&plan(&input), "web").as_deref(), Ok(host));
        }
    }

    #[test]
    fn dead_speakers_excluded_nodes_and_selectors() {
        let mut input = base("node-a");
        let winner = election::owner("198.51.100.10", ["node-a", "node-b", "node-c"]).unwrap();
        input.alive.remove(winner);
        let second = owner_of(&plan(&input), "web").unwrap();
        assert_ne!(second, winner);

        let mut input = base("node-a");
        input.nodes = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|n| {
                if *n == winner {
                    node(n, &[(EXCLUDE_LABEL, "")])
                } else {
                    node(n, &[])
                }
            })
            .collect();
        assert_eq!(owner_of(&plan(&input), "web").unwrap(), second);

        let mut input = base("node-a");
        input.nodes = vec![
            node("node-a", &[("zone", "x")]),
            node("node-b", &[("zone", "y")]),
            node("node-c", &[]),
        ];
        input.advertisements = vec![advert(
            "only-y",
            L2AdvertisementSpec {
                node_selectors: vec![LabelSelector {
                    match_labels: labels(&[("zone", "y")]),
                    ..Default::default()
                }],
                interfaces: vec!["eth0".into()],
                ..Default::default()
            },
        )];
        input.node_name = "node-b".into();
        let p = plan(&input);
        assert_eq!(owner_of(&p, "web").as_deref(), Ok("node-b"));
        assert_eq!(
            p.owned[&"198.51.100.10".parse::<IpAddr>().unwrap()],
            Some(vec!["eth0".to_owned()])
        );
        input.alive.remove("node-b");
        assert_eq!(owner_of(&plan(&input), "web"), Err(NoOwner::NoEligibleNode));
    }

    #[test]
    fn pools_and_advertisements() {
        let mut input = base("node-a");
        input.pools = vec![pool("other", &["203.0.113.0/24"])];
        assert_eq!(owner_of(&plan(&input), "web"), Err(NoOwner::NotInPool));
        input.pools = vec![pool("p", &["198.51.100.0/24"])];
        input.advertisements = vec![advert(
            "q-only",
            L2AdvertisementSpec {
                ip_address_pools: vec!["q".into()],
                ..Default::default()
            },
        )];
        assert_eq!(owner_of(&plan(&input), "web"), Err(NoOwner::NotAdvertised));
        let mut labelled = (*pool("p", &["198.51.100.0/24"])).clone();
        labelled.metadata.labels = labels(&[("tier", "front")]);
        input.pools = vec![Arc::new(labelled)];
        input.advertisements = vec![advert(
            "by-label",
            L2AdvertisementSpec {
                ip_address_pool_selectors: vec![LabelSelector {
                    match_labels: labels(&[("tier", "front")]),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )];
        assert!(owner_of(&plan(&input), "web").is_ok());
        input.services = vec![service("web", &[], false)];
        assert_eq!(owner_of(&plan(&input), "web"), Err(NoOwner::NoAddress));
    }

    #[test]
    fn dual_stack_lands_on_one_node() {
        let mut input = base("node-a");
        input.services = vec![service("web", &["2001:db8::10", "198.51.100.10"], false)];
        let expected = election::owner("2001:db8::10", ["node-a", "node-b", "node-c"]).unwrap();
        input.node_name = expected.into();
        let p = plan(&input);
        assert_eq!(owner_of(&p, "web").as_deref(), Ok(expected));
        assert_eq!(p.owned.len(), 2);
    }

    #[test]
    fn shared_address_has_one_owner() {
        let mut input = base("node-a");
        // Two Services share an address; Local policy makes their candidate owners differ.
        input.services = vec![
            service("a", &["198.51.100.20"], true),
            service("b", &["198.51.100.20"], true),
        ];
        input.endpoint_slices = vec![
            slice("a", &[("node-a", true)]),
            slice("b", &[("node-c", true)]),
        ];
        let ip: IpAddr = "198.51.100.20".parse().unwrap();
        let owners: Vec<bool> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|me| {
                input.node_name = (*me).into();
                plan(&input).owned.contains_key(&ip)
            })
            .collect();
        assert_eq!(owners, [true, false, false]);
        assert_eq!(owner_of(&plan(&input), "b").as_deref(), Ok("node-a"));
    }

    #[test]
    fn alive_falls_back_on_ready() {
        let mut nodes = vec![node("node-a", &[]), node("node-b", &[])];
        let mut not_ready = (*node("node-c", &[])).clone();
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        nodes.push(Arc::new(not_ready));
        let members: BTreeSet<String> = ["node-b".to_owned(), "node-c".to_owned()].into();
        let seen: BTreeSet<String> = ["node-b".to_owned(), "node-c".to_owned()].into();
        let none = BTreeSet::new();
        let m = |formed, joining| MembershipInput {
            alive: &members,
            formed,
            seen: &seen,
            joining,
            withdrawn: &none,
        };
        let (alive, src) = alive_set("node-c", Some(m(true, false)), &nodes);
        assert_eq!((alive, src), (members.clone(), AliveSource::Membership));
        // Joining: node-a is Ready and never seen, so it counts.
        let (alive, src) = alive_set("node-c", Some(m(true, true)), &nodes);
        assert_eq!(src, AliveSource::Membership);
        assert_eq!(alive.len(), 3);
        let (alive, src) = alive_set("node-c", Some(m(false, false)), &nodes);
        assert_eq!(src, AliveSource::NodeReady);
        assert_eq!(alive, ["node-a".to_owned(), "node-b".to_owned()].into());
        assert_eq!(alive_set("node-c", None, &nodes).1, AliveSource::NodeReady);
        assert_eq!(internal_ip(&nodes[0]), Some("192.0.2.1".parse().unwrap()));

        // Hearing nobody while other Nodes exist: the Ready ones count, not-Ready node-c
        // does not (the API server says it is gone), this speaker does.
        let alone: BTreeSet<String> = ["node-a".to_owned()].into();
        let m = MembershipInput {
            alive: &alone,
            formed: true,
            seen: &seen,
            joining: false,
            withdrawn: &none,
        };
        let (alive, src) = alive_set("node-a", Some(m), &nodes);
        assert_eq!(src, AliveSource::Alone);
        assert_eq!(alive, ["node-a".to_owned(), "node-b".to_owned()].into());
        // A peer that withdrew is gone even for a speaker alone.
        let withdrawn: BTreeSet<String> = ["node-b".to_owned()].into();
        let m = MembershipInput {
            withdrawn: &withdrawn,
            ..m
        };
        assert_eq!(
            alive_set("node-a", Some(m), &nodes).0,
            ["node-a".to_owned()].into()
        );
        // Alone by configuration (no other Node): the membership's own answer.
        let (alive, src) = alive_set("node-a", Some(m), &nodes[..1]);
        assert_eq!((alive, src), (alone.clone(), AliveSource::Membership));
    }

    fn with_owner(svc: &Arc<Service>, owner: &str) -> Arc<Service> {
        use k8s_openapi::api::core::v1::ServiceStatus;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        let mut s = (**svc).clone();
        let status = s.status.get_or_insert_with(ServiceStatus::default);
        status.conditions = Some(vec![Condition {
            type_: announced::CONDITION_TYPE.into(),
            status: "True".into(),
            reason: announced::REASON_ANNOUNCED.into(),
            message: announced::announced_message(owner, &["eth0".into()]),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }]);
        Arc::new(s)
    }

    #[test]
    fn the_current_owner_keeps_the_address_while_it_stays_a_candidate() {
        let mut input = base("node-a");
        let all = ["node-a", "node-b", "node-c"];
        let hashed = election::owner("198.51.100.10", all).unwrap();
        let other = all.iter().copied().find(|n| *n != hashed).unwrap();
        input.services = vec![with_owner(&input.services[0], other)];
        for me in all {
            input.node_name = me.into();
            let p = plan(&input);
            assert_eq!(owner_of(&p, "web").as_deref(), Ok(other), "{me}");
            assert_eq!(p.owned.is_empty(), me != other);
            assert_eq!(
                p.services[&ServiceKey::new("default", "web")]
                    .observed
                    .owner
                    .as_deref(),
                Some(other)
            );
        }
        // The named owner is gone: the hash order decides among the others.
        input.alive.remove(other);
        let survivors: Vec<&str> = all.iter().copied().filter(|n| *n != other).collect();
        assert_eq!(
            owner_of(&plan(&input), "web").as_deref(),
            Ok(election::owner("198.51.100.10", survivors).unwrap())
        );
        // A condition naming a node that is not a Node at all changes nothing.
        let mut input = base("node-a");
        input.services = vec![with_owner(&input.services[0], "node-z")];
        assert_eq!(owner_of(&plan(&input), "web").as_deref(), Ok(hashed));
    }

    #[test]
    fn local_scale_up_does_not_hop() {
        // Endpoints become ready one node at a time; the first owner writes its condition.
        let mut input = base("node-a");
        input.services = vec![service("web", &["198.51.100.10"], true)];
        let order = ["node-b", "node-c", "node-a"];
        let mut ready: Vec<(&str, bool)> = Vec::new();
        let mut first_owner: Option<String> = None;
        for n in order {
            ready.push((n, true));
            input.endpoint_slices = vec![slice("web", &ready)];
            let owner = owner_of(&plan(&input), "web").unwrap();
            match &first_owner {
                None => {
                    assert_eq!(owner, "node-b");
                    input.services = vec![with_owner(&input.services[0], &owner)];
                    first_owner = Some(owner);
                }
                Some(first) => assert_eq!(&owner, first, "moved when {n} became ready"),
            }
        }
    }

    #[test]
    fn nodes_without_network_do_not_announce() {
        use k8s_openapi::api::core::v1::NodeCondition;
        let mut input = base("node-a");
        let winner = election::owner("198.51.100.10", ["node-a", "node-b", "node-c"]).unwrap();
        input.nodes = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|n| {
                let mut node = (*node(n, &[])).clone();
                if *n == winner {
                    let conds = node.status.as_mut().unwrap().conditions.as_mut().unwrap();
                    conds.push(NodeCondition {
                        type_: "NetworkUnavailable".into(),
                        status: "True".into(),
                        ..Default::default()
                    });
                }
                Arc::new(node)
            })
            .collect();
        let owner = owner_of(&plan(&input), "web").unwrap();
        assert_ne!(owner, winner);
        // Even when its condition still names it.
        input.services = vec![with_owner(&input.services[0], winner)];
        assert_eq!(owner_of(&plan(&input), "web").unwrap(), owner);
    }

    // Property: random clusters, every node computes the plan; they agree.
    fn arb_input() -> impl Strategy<Value = PlanInput> {
        let nodes = prop::collection::btree_set("n[a-e]", 1..5);
        (
            nodes,
            prop::collection::vec((0u8..6, any::<bool>(), 0u8..32, 0u8..32, 0u8..8), 1..8),
            0u8..32,
            0u8..32,
        )
            .prop_map(|(nodes, svcs, alive_mask, zone_mask)| {
                let nodes: Vec<String> = nodes.into_iter().collect();
                let mut input = PlanInput {
                    pools: vec![pool("p", &["198.51.100.0/29", "2001:db8::/125"])],
                    advertisements: vec![advert(
                        "zone-x",
                        L2AdvertisementSpec {
                            node_selectors: vec![LabelSelector {
                                match_labels: labels(&[("zone", "x")]),
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                    )],
                    ..Default::default()
                };
                for (i, n) in nodes.iter().enumerate() {
                    let zone = if zone_mask & (1 << i) != 0 { "x" } else { "y" };
                    input.nodes.push(node(n, &[("zone", zone)]));
                    if alive_mask & (1 << i) != 0 {
                        input.alive.insert(n.clone());
                    }
                }
                for (i, (addr, local, ep_mask, ready_mask, prev)) in svcs.into_iter().enumerate() {
                    let name = format!("s{i}");
                    // Addresses 4 and 5 are IPv6, 0..=3 IPv4: dual-stack and sharing both occur.
                    let ip = if addr < 4 {
                        format!("198.51.100.{addr}")
                    } else {
                        format!("2001:db8::{addr}")
                    };
                    let second = format!("2001:db8::{}", addr % 2 + 4);
                    let ips: Vec<&str> = if addr % 3 == 0 {
                        vec![ip.as_str(), second.as_str()]
                    } else {
                        vec![ip.as_str()]
                    };
                    // A current owner from an earlier round: any node, one that is no Node, or none.
                    let svc = service(&name, &ips, local);
                    let svc = match usize::from(prev) {
                        p if p < nodes.len() => with_owner(&svc, &nodes[p]),
                        6 => with_owner(&svc, "gone"),
                        _ => svc,
                    };
                    input.services.push(svc);
                    let eps: Vec<(&str, bool)> = nodes
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| ep_mask & (1 << j) != 0)
                        .map(|(j, n)| (n.as_str(), ready_mask & (1 << j) != 0))
                        .collect();
                    input.endpoint_slices.push(slice(&name, &eps));
                }
                input.node_name = nodes[0].clone();
                input
            })
    }

    proptest! {
        #[test]
        fn all_nodes_agree_and_no_address_has_two_owners(input in arb_input()) {
            let names: Vec<String> = input.nodes.iter().filter_map(|n| n.metadata.name.clone()).collect();
            let plans: Vec<(String, Plan)> = names.iter().map(|me| {
                (me.clone(), plan(&PlanInput { node_name: me.clone(), ..input.clone() }))
            }).collect();
            let first = &plans[0].1;
            let mut claimed: BTreeMap<IpAddr, String> = BTreeMap::new();
            for (me, p) in &plans {
                prop_assert_eq!(&p.services, &first.services, "services differ on {}", me);
                for ip in p.owned.keys() {
                    if let Some(other) = claimed.insert(*ip, me.clone()) {
                        prop_assert!(false, "{} owned by {} and {}", ip, other, me);
                    }
                }
            }
            // Every owned address belongs to a Service whose owner is the one announcing it,
            // and every owner is alive.
            for (me, p) in &plans {
                for ip in p.owned.keys() {
                    prop_assert!(input.alive.contains(me));
                    prop_assert!(first.services.values().any(|s| s.addresses.contains(ip)));
                }
            }
            // A Service with no ready endpoint is announced by nobody (unless its address is
            // shared with a Service that has one).
            let ready = ready_endpoints(&input.endpoint_slices);
            for (key, sp) in &first.services {
                if ready.get(key).is_none_or(|r| r.is_empty()) {
                    prop_assert_eq!(&sp.owner, &Err(NoOwner::NoReadyEndpoints));
                    for ip in &sp.addresses {
                        let shared = first.services.iter().any(|(k, s)| k != key && s.owner.is_ok() && s.addresses.contains(ip));
                        if !shared {
                            prop_assert!(plans.iter().all(|(_, p)| !p.owned.contains_key(ip)));
                        }
                    }
                }
                if let Ok(owner) = &sp.owner {
                    prop_assert!(input.alive.contains(owner));
                }
            }
        }

        /// Once the owners have written their conditions, a node coming back (alive again) or
        /// an endpoint becoming ready moves no address that is not shared.
        #[test]
        fn owners_stay_when_nodes_return_or_endpoints_become_ready(
            input in arb_input(), back in 0usize..5, ep_on in 0usize..5, ep_svc in 0usize..8
        ) {
            let first = plan(&input);
            // The owners write their conditions.
            let mut settled = input.clone();
            settled.services = input.services.iter().map(|svc| {
                match &first.services[&ServiceKey::of(&svc.metadata)].owner {
                    Ok(owner) => with_owner(svc, owner),
                    Err(_) => svc.clone(),
                }
            }).collect();
            let before = plan(&settled);
            let names: Vec<String> = input.nodes.iter().filter_map(|n| n.metadata.name.clone()).collect();
            let mut after_input = settled.clone();
            after_input.alive.insert(names[back % names.len()].clone());
            if let Some(slice) = after_input.endpoint_slices.get_mut(ep_svc % input.services.len().max(1)) {
                let mut s = (**slice).clone();
                s.endpoints.push(slice_endpoint(&names[ep_on % names.len()]));
                *slice = Arc::new(s);
            }
            let after = plan(&after_input);
            for (key, sp) in &before.services {
                let Ok(owner) = &sp.owner else { continue };
                let shared = before.services.iter().any(|(k, s)| {
                    k != key && s.addresses.iter().any(|ip| sp.addresses.contains(ip))
                });
                if !shared {
                    prop_assert_eq!(&after.services[key].owner, &Ok(owner.clone()), "{} moved", key);
                }
            }
        }

        #[test]
        fn sticky_owner_is_a_candidate_and_order_free(
            cands in prop::collection::btree_set("n[a-f]", 0..6),
            current in prop::option::of("n[a-g]"),
            rotate in 0usize..6,
        ) {
            let list: Vec<&str> = cands.iter().map(String::as_str).collect();
            let mut rotated = list.clone();
            if !rotated.is_empty() {
                let k = rotate % rotated.len();
                rotated.rotate_left(k);
            }
            let got = sticky_owner(current.as_deref(), "198.51.100.7", list.iter().copied());
            prop_assert_eq!(got, sticky_owner(current.as_deref(), "198.51.100.7", rotated));
            match got {
                None => prop_assert!(list.is_empty()),
                Some(o) => {
                    prop_assert!(list.contains(&o));
                    match current.as_deref() {
                        Some(c) if list.contains(&c) => prop_assert_eq!(o, c),
                        _ => prop_assert_eq!(Some(o), election::owner("198.51.100.7", list.iter().copied())),
                    }
                }
            }
        }
    }

    fn slice_endpoint(node: &str) -> Endpoint {
        Endpoint {
            addresses: vec!["10.0.0.9".into()],
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn services_by_address_names_every_holder_of_an_owned_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let svc = |ips: &[&str]| ServicePlan {
            addresses: ips.iter().map(|s| ip(s)).collect(),
            owner: Ok("node-a".into()),
            observed: Observed::default(),
        };
        let plan = Plan {
            owned: [(ip("192.0.2.1"), None), (ip("2001:db8::1"), None)].into(),
            services: [
                (ServiceKey::new("default", "dns-tcp"), svc(&["192.0.2.1"])),
                (ServiceKey::new("default", "dns-udp"), svc(&["192.0.2.1"])),
                (
                    ServiceKey::new("shop", "web"),
                    svc(&["2001:db8::1", "192.0.2.9"]),
                ),
            ]
            .into(),
        };
        let got = plan.services_by_address();
        assert_eq!(
            service_names(&got[&ip("192.0.2.1")]),
            "default/dns-tcp,default/dns-udp"
        );
        assert_eq!(service_names(&got[&ip("2001:db8::1")]), "shop/web");
        // Not owned here: not named.
        assert!(!got.contains_key(&ip("192.0.2.9")));
    }

    /// Step 4 follows the first sharing Service by `namespace/name` text, as the string-keyed
    /// speaker did: `team-a/web` before `team/web`, though [`ServiceKey`] orders `team` first.
    #[test]
    fn a_shared_address_follows_the_first_service_by_text() {
        let key = |ns: &str| ServiceKey::new(ns, "web");
        assert!(key("team") < key("team-a"));
        assert_eq!(by_text(&key("team-a"), &key("team")), Ordering::Less);
        assert_eq!(
            service_names([&key("team"), &key("team-a"), &key("team")]),
            "team-a/web,team/web"
        );
        let in_ns = |ns: &str, obj: &ObjectMeta| ObjectMeta {
            namespace: Some(ns.into()),
            ..obj.clone()
        };
        let mut input = base("node-a");
        let web = service("web", &["198.51.100.20"], true);
        let ready = slice("web", &[]);
        input.services.clear();
        input.endpoint_slices.clear();
        for (ns, host) in [("team", "node-a"), ("team-a", "node-c")] {
            let mut svc = (*web).clone();
            svc.metadata = in_ns(ns, &svc.metadata);
            input.services.push(Arc::new(svc));
            let mut s = (*ready).clone();
            s.metadata = in_ns(ns, &s.metadata);
            s.endpoints.push(slice_endpoint(host));
            input.endpoint_slices.push(Arc::new(s));
        }
        let ip: IpAddr = "198.51.100.20".parse().unwrap();
        for me in ["node-a", "node-b", "node-c"] {
            input.node_name = me.into();
            let p = plan(&input);
            assert_eq!(p.owned.contains_key(&ip), me == "node-c", "{me}");
            assert_eq!(p.services[&key("team")].owner.as_deref(), Ok("node-c"));
            assert_eq!(
                crate::run::address_owners(&p)[&ip],
                "node-c",
                "the shell's view of the owner agrees"
            );
        }
    }

    proptest! {
        #[test]
        fn text_order_is_the_order_of_the_keys_text(
            a in ("[a-z0-9-]{1,6}", "[a-z0-9-]{1,6}"), b in ("[a-z0-9-]{1,6}", "[a-z0-9-]{1,6}")
        ) {
            let (a, b) = (ServiceKey::new(a.0, a.1), ServiceKey::new(b.0, b.1));
            prop_assert_eq!(by_text(&a, &b), a.to_string().cmp(&b.to_string()));
        }
    }

    #[test]
    fn owned_addresses_without_any_named_interface_are_unanswerable() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let owned = BTreeMap::from([
            (a, None),
            (b, Some(vec!["eth1".to_string(), "bond0".to_string()])),
            (c, Some(vec!["eth0".to_string(), "eth9".to_string()])),
        ]);
        let got = unanswerable(&owned, ["lo", "eth0"]);
        assert_eq!(
            got,
            BTreeMap::from([(b, vec!["eth1".to_string(), "bond0".to_string()])]),
            "automatic interfaces always answer; one named interface present is enough"
        );
        assert!(unanswerable(&owned, ["eth0", "bond0"]).is_empty());
    }
}
