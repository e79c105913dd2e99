//! `lodestonectl why`: one Service and what surrounds it in, findings out, step by step.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use lodestone_crds::addresses::IpFamily;
use lodestone_crds::announced::{self, AnnouncedBy};
use lodestone_crds::class::ClassFilter;
use lodestone_crds::conditions::{ADDRESS_ASSIGNED, ANNOUNCED, AssignedFrom};
use lodestone_crds::election;
use lodestone_crds::eligibility::{self, EXCLUDE_LABEL, Interfaces, NodeRef, PoolRef, Reason};
use lodestone_crds::service::{annotations, ingress_ips};
use lodestone_crds::{IPAddressPool, L2Advertisement};
use serde::Serialize;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    /// Works as intended.
    Ok,
    /// Context.
    Info,
    /// A reason the Service has no address or is not announced.
    Problem,
}

/// One line of `why`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What it was read from: `Service`, `Event`, `IPAddressPool blue`, `L2Advertisement l2`,
    /// `EndpointSlices`.
    pub source: String,
    /// What it says.
    pub message: String,
}

fn finding(severity: Severity, source: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        severity,
        source: source.into(),
        message: message.into(),
    }
}

/// Everything `why` reads about one Service besides the Service itself.
#[derive(Debug, Clone, Default)]
pub struct WhyInput {
    /// Every IPAddressPool.
    pub pools: Vec<IPAddressPool>,
    /// Every L2Advertisement.
    pub l2advertisements: Vec<L2Advertisement>,
    /// Labels of the Service's namespace.
    pub namespace_labels: BTreeMap<String, String>,
    /// Events regarding the Service.
    pub events: Vec<Event>,
    /// The Service's EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Every Node (for L2Advertisement node selectors and the per-node verdicts).
    pub nodes: Vec<Node>,
    /// Which Services are Lodestone's (`--lb-class`).
    pub class: ClassFilter,
}

fn labels(m: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    m.clone().unwrap_or_default()
}

/// Whether a pool takes this Service's automatic assignments, and why not: the controller's own
/// rule ([`lodestone_crds::allocation::serves`]).
fn pool_serves(
    pool: &IPAddressPool,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
    svc_labels: &BTreeMap<String, String>,
) -> Result<(), String> {
    let facts = lodestone_crds::allocation::ServiceFacts {
        namespace: ns,
        labels: svc_labels,
        namespace_labels: ns_labels,
    };
    lodestone_crds::allocation::serves(pool.spec.service_allocation.as_ref(), &facts)
        .map_err(|e| e.to_string())
}

fn pool_condition<'a>(pool: &'a IPAddressPool, type_: &str) -> Option<&'a Condition> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Nodes an L2Advertisement lets announce (no node selectors: all), by the speakers' rule.
fn l2_nodes(l2: &L2Advertisement, nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| eligibility::advertisement_selects_node(l2, n))
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

/// Why the Service is not Lodestone's under `class`, if it is not.
fn not_ours(svc: &Service, class: &ClassFilter) -> Option<String> {
    if class.is_ours(svc) {
        return None;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    Some(
        match (spec.type_.as_deref(), spec.load_balancer_class.as_deref()) {
            (Some("LoadBalancer"), Some(other)) => format!(
                "loadBalancerClass is {other}: another implementation serves it, not Lodestone ({}; see --lb-class)",
                class.class
            ),
            (Some("LoadBalancer"), None) => format!(
                "no loadBalancerClass, and Lodestone serves only {} here (--default-class=false)",
                class.class
            ),
            (t, _) => format!(
                "type is {}, not LoadBalancer: Lodestone gives it no address",
                t.unwrap_or("ClusterIP")
            ),
        },
    )
}

fn reason_text(reason: Reason) -> &'static str {
    match reason {
        Reason::NotSelected => "no L2Advertisement selects both its pool and this node",
        Reason::Excluded => "labelled node.kubernetes.io/exclude-from-external-load-balancers",
        Reason::NetworkUnavailable => "its NetworkUnavailable condition is True",
        Reason::SpeakerDown => "its speaker is not alive",
        Reason::NoLocalEndpoint => {
            "externalTrafficPolicy is Local and no endpoint that can serve runs on it"
        }
        Reason::NoReadyEndpoints => "no endpoint of the Service can serve",
    }
}

/// The speakers' verdict, node by node, for one address of the Service: the same
/// [`eligibility::evaluate`] they run. `why` cannot see which speakers are alive (the Announced
/// condition tells that), so every node counts as alive here.
/// Returns the eligible nodes.
fn node_verdicts(
    svc: &Service,
    ip: std::net::IpAddr,
    input: &WhyInput,
    out: &mut Vec<Finding>,
) -> Vec<String> {
    use Severity::{Info, Ok, Problem};
    let Some(pool) = eligibility::pool_for_address(&input.pools, ip) else {
        out.push(finding(
            Problem,
            "Service",
            format!("{ip} is in no IPAddressPool: no speaker announces it"),
        ));
        return Vec::new();
    };
    let nodes: Vec<NodeRef<'_>> = input.nodes.iter().filter_map(NodeRef::of).collect();
    let alive: BTreeSet<String> = nodes.iter().map(|n| n.name.to_owned()).collect();
    let verdicts = eligibility::evaluate(&eligibility::Input {
        service: svc,
        endpoint_slices: &input.endpoint_slices,
        pool: PoolRef::of(pool),
        nodes: &nodes,
        advertisements: &input.l2advertisements,
        alive: &alive,
    });
    for p in &verdicts.selector_errors {
        out.push(finding(
            Problem,
            format!("L2Advertisement {}", p.advertisement),
            format!("{}[{}] matches nothing: {}", p.field, p.index, p.error),
        ));
    }
    if nodes.is_empty() {
        return Vec::new();
    }
    for (node, verdict) in &verdicts.nodes {
        let src = format!("Node {node}");
        match verdict {
            eligibility::Verdict::Eligible(Interfaces::Automatic) => out.push(finding(
                Ok,
                src,
                format!("may announce {ip}, on every suitable interface"),
            )),
            eligibility::Verdict::Eligible(Interfaces::Only(ifs)) => out.push(finding(
                Ok,
                src,
                format!(
                    "may announce {ip}, on {}",
                    ifs.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
            eligibility::Verdict::Ineligible(reason) => out.push(finding(
                Info,
                src,
                format!("may not announce {ip} ({reason}): {}", reason_text(*reason)),
            )),
        }
    }
    if verdicts.eligible().next().is_none() {
        out.push(finding(
            Problem,
            "Nodes",
            format!("no node may announce {ip}"),
        ));
    }
    verdicts.eligible().map(str::to_owned).collect()
}

/// The node the speakers' rule picks among `eligible` (see
/// [`lodestone_crds::election::sticky_owner`]): the current announcer while it stays eligible,
/// else the winner of the election for the Service's first address.
fn owner_finding(svc: &Service, first: IpAddr, eligible: &[String]) -> Option<Finding> {
    let current = AnnouncedBy::of_service(svc).map(|b| b.node);
    let owner = election::sticky_owner(
        current.as_deref(),
        &first.to_string(),
        eligible.iter().map(String::as_str),
    )?;
    let how = if current.as_deref() == Some(owner) {
        "it announces now and keeps the Service while it stays eligible"
    } else {
        "elected among the eligible nodes by MetalLB's hash order"
    };
    Some(finding(
        Severity::Ok,
        "Nodes",
        format!("the speakers' owner is {owner}: {how}"),
    ))
}

/// Why a Service has no address or is not announced: findings from its conditions, Events,
/// the pools, the L2Advertisements, the Nodes and its EndpointSlices, most important first.
pub fn why(svc: &Service, input: &WhyInput) -> Vec<Finding> {
    let mut out = Vec::new();
    let spec = svc.spec.clone().unwrap_or_default();

    // Is it Lodestone's at all? The controller's and the speakers' class rule.
    if let Some(why_not) = not_ours(svc, &input.class) {
        let not_lb = spec.type_.as_deref() != Some("LoadBalancer");
        out.push(finding(Severity::Problem, "Service", why_not));
        if not_lb {
            return out;
        }
    }
    let addresses = ingress_ips(svc);
    let pool_name = verdicts(svc, &addresses, &mut out);
    recent_events(input, &mut out);
    let serving = pools(svc, input, pool_name.as_ref(), &mut out);
    let advertised_pools: Vec<&IPAddressPool> = match &pool_name {
        Some(n) => input
            .pools
            .iter()
            .filter(|p| p.metadata.name.as_ref() == Some(n))
            .collect(),
        None => serving,
    };
    let announcing_nodes = announcement(&advertised_pools, input, &mut out);
    ownership(svc, &addresses, input, &mut out);
    endpoints(svc, &spec, input, announcing_nodes, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The controller's and the speaker's verdicts, read with the formats they write; the pool the
/// controller says it assigned from.
fn verdicts(svc: &Service, addresses: &[IpAddr], out: &mut Vec<Finding>) -> Option<String> {
    use Severity::{Ok, Problem};
    let mut pool_name = None;
    match condition(svc, ADDRESS_ASSIGNED) {
        Some(c) if c.status == "True" => {
            pool_name = AssignedFrom::parse(&c.message).map(|a| a.pool);
            out.push(finding(Ok, "Service", format!("address assigned: {}", c.message)));
        }
        Some(c) => out.push(finding(
            Problem,
            "Service",
            format!("no address assigned ({}): {}", c.reason, c.message),
        )),
        None if addresses.is_empty() => out.push(finding(
            Problem,
            "Service",
            format!("the controller has not written {ADDRESS_ASSIGNED}: is lodestone-controller running and leading?"),
        )),
        None => {}
    }
    match condition(svc, ANNOUNCED) {
        Some(c) if c.status == "True" => {
            out.push(finding(Ok, "Service", c.message.clone()));
        }
        Some(c) => out.push(finding(
            Problem,
            "Service",
            format!(
                "not announced ({}): {}",
                c.reason,
                announced::not_announced_why(&c.message)
            ),
        )),
        None if !addresses.is_empty() => out.push(finding(
            Problem,
            "Service",
            format!(
                "{} has an address but no speaker has written {ANNOUNCED}: are the speakers running?",
                ingress_texts(svc).join(", ")
            ),
        )),
        None => {}
    }
    pool_name
}

/// The Service's latest Events, newest first; warnings are problems.
fn recent_events(input: &WhyInput, out: &mut Vec<Finding>) {
    use Severity::{Info, Problem};
    let mut events: Vec<&Event> = input.events.iter().collect();
    events.sort_by_key(|e| {
        std::cmp::Reverse(
            e.event_time
                .as_ref()
                .map(|t| t.0.to_string())
                .or_else(|| {
                    e.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                })
                .unwrap_or_default(),
        )
    });
    for e in events.iter().take(5) {
        let sev = if e.type_.as_deref() == Some("Warning") {
            Problem
        } else {
            Info
        };
        out.push(finding(
            sev,
            "Event",
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or("?"),
                e.note.as_deref().unwrap_or("")
            ),
        ));
    }
}

/// Which pools could serve it, and whether they have room; the annotations read as the
/// controller reads them, MetalLB's spellings included. Returns the pools that serve it.
fn pools<'a>(
    svc: &Service,
    input: &'a WhyInput,
    pool_name: Option<&String>,
    out: &mut Vec<Finding>,
) -> Vec<&'a IPAddressPool> {
    use Severity::{Info, Ok, Problem};
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let annotations = svc.metadata.annotations.as_ref();
    let svc_labels = labels(&svc.metadata.labels);
    let wanted = annotations::first(annotations, &annotations::ADDRESS_POOL);
    let wanted_pool = wanted.map(|(_, v)| v.to_owned());
    if let Some((name, ips)) = annotations::first(annotations, &annotations::LOAD_BALANCER_IPS) {
        out.push(finding(Info, "Service", format!("asks for {ips} ({name})")));
    }
    if input.pools.is_empty() {
        out.push(finding(
            Problem,
            "IPAddressPools",
            "there is no IPAddressPool",
        ));
    }
    let mut serving = Vec::new();
    for p in &input.pools {
        let name = p.metadata.name.clone().unwrap_or_default();
        let src = format!("IPAddressPool {name}");
        if let Some(w) = &wanted_pool
            && *w != name
        {
            continue;
        }
        if let Some(c) = pool_condition(p, "Invalid") {
            out.push(finding(Problem, &src, format!("invalid: {}", c.message)));
            continue;
        }
        if let Some(c) = pool_condition(p, "Overlapping") {
            out.push(finding(
                Problem,
                &src,
                format!("overlapping: {}", c.message),
            ));
        }
        if p.metadata.deletion_timestamp.is_some() {
            out.push(finding(Info, &src, "being deleted: takes no new Services"));
            continue;
        }
        if !p.spec.auto_assign && wanted_pool.is_none() && Some(&name) != pool_name {
            out.push(finding(
                Info,
                &src,
                format!(
                    "autoAssign is false: only Services naming it ({}) get its addresses",
                    annotations::ADDRESS_POOL[0]
                ),
            ));
            continue;
        }
        match pool_serves(p, &ns, &input.namespace_labels, &svc_labels) {
            Err(why) => out.push(finding(Info, &src, why)),
            Result::Ok(()) => {
                serving.push(p);
                let st = p.status.clone().unwrap_or_default();
                let holds_it = Some(&name) == pool_name;
                if st.available <= 0 && !holds_it {
                    out.push(finding(
                        Problem,
                        &src,
                        format!("exhausted: {} assigned, none available", st.assigned),
                    ));
                } else {
                    out.push(finding(
                        if holds_it { Ok } else { Info },
                        &src,
                        format!(
                            "serves this Service: IPv4 {} used, IPv6 {} used",
                            usage(
                                st.assigned_ipv4,
                                st.available_ipv4,
                                &p.spec.addresses,
                                IpFamily::V4
                            ),
                            usage(
                                st.assigned_ipv6,
                                st.available_ipv6,
                                &p.spec.addresses,
                                IpFamily::V6
                            ),
                        ),
                    ));
                }
            }
        }
    }
    if let Some((annotation, w)) = wanted
        && !input
            .pools
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(w))
    {
        out.push(finding(
            Problem,
            "Service",
            format!("names pool {w} ({annotation}), which does not exist"),
        ));
    }
    if !input.pools.is_empty() && serving.is_empty() && pool_name.is_none() {
        out.push(finding(
            Problem,
            "IPAddressPools",
            format!("no pool serves namespace {ns} with this Service's labels"),
        ));
    }
    serving
}

/// The pools holding it (or that could) must be advertised somewhere: which L2Advertisements
/// select them, from which nodes. Returns those nodes (None: no advertisement selects them).
fn announcement(
    advertised_pools: &[&IPAddressPool],
    input: &WhyInput,
    out: &mut Vec<Finding>,
) -> Option<Vec<String>> {
    use Severity::{Ok, Problem};
    let mut announcing_nodes: Option<Vec<String>> = None;
    for p in advertised_pools {
        let pname = p.metadata.name.clone().unwrap_or_default();
        let selecting: Vec<&L2Advertisement> = input
            .l2advertisements
            .iter()
            .filter(|l| eligibility::advertisement_selects_pool(l, p))
            .collect();
        if selecting.is_empty() {
            out.push(finding(
                Problem,
                format!("IPAddressPool {pname}"),
                "no L2Advertisement selects this pool: its addresses are not announced",
            ));
        }
        for l in selecting {
            let lname = l.metadata.name.clone().unwrap_or_default();
            let src = format!("L2Advertisement {lname}");
            let nodes = l2_nodes(l, &input.nodes);
            if !input.nodes.is_empty() && nodes.is_empty() {
                out.push(finding(
                    Problem,
                    &src,
                    format!("selects pool {pname}, but its nodeSelectors match no node"),
                ));
            } else {
                let on = if l.spec.node_selectors.is_empty() {
                    "every node".to_string()
                } else {
                    format!("nodes {}", nodes.join(", "))
                };
                out.push(finding(
                    Ok,
                    &src,
                    format!("announces pool {pname} from {on}"),
                ));
            }
            announcing_nodes
                .get_or_insert_with(Vec::new)
                .extend(if input.nodes.is_empty() {
                    Vec::new()
                } else {
                    nodes
                });
        }
    }
    announcing_nodes
}

/// Node by node, what the speakers decide for each address, and who owns the Service: a node
/// eligible for every address.
fn ownership(svc: &Service, addresses: &[IpAddr], input: &WhyInput, out: &mut Vec<Finding>) {
    use Severity::Info;
    let mut eligible_for_all: Option<Vec<String>> = None;
    for ip in addresses {
        let eligible = node_verdicts(svc, *ip, input, out);
        eligible_for_all = Some(match eligible_for_all {
            None => eligible,
            Some(prev) => prev.into_iter().filter(|n| eligible.contains(n)).collect(),
        });
    }
    if let (Some(first), Some(eligible)) = (addresses.first(), eligible_for_all)
        && let Some(f) = owner_finding(svc, *first, &eligible)
    {
        out.push(f);
    }
    let excluded: Vec<&str> = input
        .nodes
        .iter()
        .filter(|n| eligibility::is_excluded(n))
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    if addresses.is_empty() && !excluded.is_empty() {
        out.push(finding(
            Info,
            "Nodes",
            format!("{} never announce ({EXCLUDE_LABEL})", excluded.join(", ")),
        ));
    }
}

/// Somebody must serve the traffic; with Local, on an announcing node. An endpoint counts as
/// the speakers count it: ready, or serving and not terminating.
fn endpoints(
    svc: &Service,
    spec: &ServiceSpec,
    input: &WhyInput,
    announcing_nodes: Option<Vec<String>>,
    out: &mut Vec<Finding>,
) {
    use Severity::{Info, Ok, Problem};
    let can_serve: Vec<Option<String>> = input
        .endpoint_slices
        .iter()
        .filter(|s| eligibility::slice_belongs_to(s, svc))
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| eligibility::endpoint_counts(e))
        .map(|e| e.node_name.clone())
        .collect();
    if can_serve.is_empty() {
        out.push(finding(
            Problem,
            "EndpointSlices",
            "no endpoint can serve (ready, or serving and not terminating): no node announces a Service nobody could serve",
        ));
    } else {
        out.push(finding(
            Ok,
            "EndpointSlices",
            format!("{} endpoint(s) can serve", can_serve.len()),
        ));
        if spec.external_traffic_policy.as_deref() == Some("Local") {
            let local: BTreeSet<String> = can_serve.iter().flatten().cloned().collect();
            let local: Vec<String> = local.into_iter().collect();
            if local.is_empty() {
                out.push(finding(
                    Problem,
                    "EndpointSlices",
                    "externalTrafficPolicy is Local but no endpoint that can serve names its node",
                ));
            } else if let Some(nodes) = announcing_nodes.filter(|n| !n.is_empty())
                && !local.iter().any(|n| nodes.contains(n))
            {
                out.push(finding(
                    Problem,
                    "EndpointSlices",
                    format!(
                        "externalTrafficPolicy is Local: endpoints that can serve are on {} but the L2Advertisements only allow {}",
                        local.join(", "),
                        nodes.join(", ")
                    ),
                ));
            } else {
                out.push(finding(
                    Info,
                    "EndpointSlices",
                    format!(
                        "externalTrafficPolicy is Local: nodes with an endpoint that can serve: {}",
                        local.join(", ")
                    ),
                ));
            }
        }
    }
}

/// The `why` table.
pub fn render_why(service: &str, findings: &[Finding]) -> String {
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            vec![
                match f.severity {
                    Severity::Ok => "ok",
                    Severity::Info => "info",
                    Severity::Problem => "PROBLEM",
                }
                .to_string(),
                f.source.clone(),
                f.message.clone(),
            ]
        })
        .collect();
    let problems = findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .count();
    format!(
        "Service {service}: {}\n\n{}",
        if problems == 0 {
            "no problem found".to_string()
        } else {
            format!("{problems} problem(s)")
        },
        table(&["RESULT", "SOURCE", "FINDING"], &rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::fixtures::*;

    use serde_json::json;

    fn problems(f: &[Finding]) -> Vec<String> {
        f.iter()
            .filter(|f| f.severity == Severity::Problem)
            .map(|f| format!("{}: {}", f.source, f.message))
            .collect()
    }

    #[test]
    fn healthy_service_has_no_problem() {
        let input = WhyInput {
            pools: vec![pool(
                "blue",
                json!({"addresses": ["192.0.2.0/30"]}),
                roomy(),
            )],
            l2advertisements: vec![l2("all", json!({}))],
            endpoint_slices: vec![slice(
                json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "node-a"}]),
            )],
            ..Default::default()
        };
        let f = why(
            &svc(
                json!({}),
                json!({}),
                served("192.0.2.1", "blue", Some("node-a")),
            ),
            &input,
        );
        assert!(problems(&f).is_empty(), "{f:#?}");
        assert!(
            f.iter()
                .any(|x| x.message.contains("announced from node-a"))
        );
    }

    #[test]
    fn no_pool_serves_the_namespace() {
        let input = WhyInput {
            pools: vec![
                pool(
                    "blue",
                    json!({"addresses": ["192.0.2.0/30"], "serviceAllocation": {"namespaces": ["prod"]}}),
                    roomy(),
                ),
                pool(
                    "red",
                    json!({"addresses": ["198.51.100.0/30"], "serviceAllocation": {
                    "namespaceSelectors": [{"matchLabels": {"env": "prod"}}]}}),
                    roomy(),
                ),
            ],
            namespace_labels: BTreeMap::from([("env".into(), "dev".into())]),
            ..Default::default()
        };
        let s = svc(
            json!({}),
            json!({}),
            json!({"conditions": [cond(ADDRESS_ASSIGNED, "False", "NoPool", "no pool serves team/web")]}),
        );
        let p = problems(&why(&s, &input));
        assert!(
            p.iter()
                .any(|m| m.contains("no pool serves namespace team")),
            "{p:#?}"
        );
        assert!(p.iter().any(|m| m.contains("NoPool")), "{p:#?}");
        // The same pools with the namespace labelled serve it: the finding goes.
        let input = WhyInput {
            namespace_labels: BTreeMap::from([("env".into(), "prod".into())]),
            ..input
        };
        let p = problems(&why(&s, &input));
        assert!(
            !p.iter().any(|m| m.contains("no pool serves namespace")),
            "{p:#?}"
        );
    }

    #[test]
    fn exhausted_pool_and_warning_event() {
        let ev: Event = serde_json::from_value(json!({
            "metadata": {"name": "web.1", "namespace": "team"}, "eventTime": "2026-11-22T00:00:00.000000Z",
            "type": "Warning", "reason": "AllocationFailed", "note": "pool blue is exhausted",
            "reportingController": "lodestone-controller", "reportingInstance": "x", "action": "Allocate",
        }))
        .unwrap();
        let input = WhyInput {
            pools: vec![pool(
                "blue",
                json!({"addresses": ["192.0.2.0/31"]}),
                json!({"assigned": 2, "available": 0, "assignedIPv4": 2, "availableIPv4": 0}),
            )],
            events: vec![ev],
            ..Default::default()
        };
        let p = problems(&why(&svc(json!({}), json!({}), json!({})), &input));
        assert!(
            p.iter()
                .any(|m| m.contains("IPAddressPool blue: exhausted")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("AllocationFailed: pool blue is exhausted")),
            "{p:#?}"
        );
        assert!(p.iter().any(|m| m.contains("has not written")), "{p:#?}");
    }

    #[test]
    fn not_advertised_and_node_selectors() {
        let base = WhyInput {
            pools: vec![pool(
                "blue",
                json!({"addresses": ["192.0.2.0/30"]}),
                roomy(),
            )],
            l2advertisements: vec![l2("red-only", json!({"ipAddressPools": ["red"]}))],
            endpoint_slices: vec![slice(
                json!([{"addresses": ["10.0.0.1"], "nodeName": "node-a"}]),
            )],
            nodes: vec![
                node("node-a", json!({"zone": "a"})),
                node("node-b", json!({"zone": "b"})),
            ],
            ..Default::default()
        };
        let s = svc(json!({}), json!({}), served("192.0.2.1", "blue", None));
        let p = problems(&why(&s, &base));
        assert!(
            p.iter()
                .any(|m| m.contains("no L2Advertisement selects this pool")),
            "{p:#?}"
        );
        assert!(
            p.iter().any(|m| m.contains("no speaker has written")),
            "{p:#?}"
        );

        // Selected by pool label, but only on zone c: no node.
        let input = WhyInput {
            l2advertisements: vec![l2(
                "c",
                json!({"ipAddressPoolSelectors": [{"matchLabels": {"tier": "blue"}}],
                "nodeSelectors": [{"matchLabels": {"zone": "c"}}]}),
            )],
            ..base.clone()
        };
        let p = problems(&why(&s, &input));
        assert!(
            p.iter().any(|m| m.contains("nodeSelectors match no node")),
            "{p:#?}"
        );
        assert!(
            !p.iter().any(|m| m.contains("no L2Advertisement selects")),
            "{p:#?}"
        );

        // Zone b only, Local policy, endpoint on node-a: nobody can announce it.
        let input = WhyInput {
            l2advertisements: vec![l2(
                "b",
                json!({"nodeSelectors": [{"matchLabels": {"zone": "b"}}]}),
            )],
            ..base
        };
        let local = svc(
            json!({}),
            json!({"externalTrafficPolicy": "Local"}),
            served("192.0.2.1", "blue", None),
        );
        let p = problems(&why(&local, &input));
        assert!(
            p.iter().any(|m| m.contains(
                "endpoints that can serve are on node-a but the L2Advertisements only allow node-b"
            )),
            "{p:#?}"
        );
    }

    #[test]
    fn endpoints_and_class() {
        let input = WhyInput {
            pools: vec![pool(
                "blue",
                json!({"addresses": ["192.0.2.0/30"]}),
                roomy(),
            )],
            l2advertisements: vec![l2("all", json!({}))],
            endpoint_slices: vec![slice(
                json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]),
            )],
            ..Default::default()
        };
        let s = svc(
            json!({}),
            json!({"loadBalancerClass": "other.io/lb"}),
            json!({}),
        );
        let p = problems(&why(&s, &input));
        assert!(
            p.iter().any(|m| m.contains("no endpoint can serve")),
            "{p:#?}"
        );
        assert!(
            p.iter().any(|m| m.contains("another implementation")),
            "{p:#?}"
        );
        let p = problems(&why(
            &svc(json!({}), json!({"type": "NodePort"}), json!({})),
            &input,
        ));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("type is NodePort"));
    }

    #[test]
    fn named_pool_that_does_not_exist() {
        let input = WhyInput {
            pools: vec![pool(
                "blue",
                json!({"addresses": ["192.0.2.0/30"]}),
                roomy(),
            )],
            ..Default::default()
        };
        let s = svc(
            json!({"lodestone.dev/address-pool": "gold"}),
            json!({}),
            json!({}),
        );
        let p = problems(&why(&s, &input));
        assert!(p.iter().any(|m| m.contains("names pool gold")), "{p:#?}");
    }

    /// The speakers announce a Service whose only endpoint is serving but not ready (a pod
    /// shutting down gracefully is the other way round): `why` must count it as they do.
    #[test]
    fn serving_endpoints_count_as_the_speakers_count_them() {
        let input = WhyInput {
            pools: vec![pool(
                "blue",
                json!({"addresses": ["192.0.2.0/30"]}),
                roomy(),
            )],
            l2advertisements: vec![l2("all", json!({}))],
            endpoint_slices: vec![slice(
                json!([{"addresses": ["10.0.0.1"], "nodeName": "node-a",
                "conditions": {"ready": false, "serving": true, "terminating": false}}]),
            )],
            nodes: vec![node("node-a", json!({}))],
            ..Default::default()
        };
        let s = svc(
            json!({}),
            json!({}),
            served("192.0.2.1", "blue", Some("node-a")),
        );
        let f = why(&s, &input);
        assert!(problems(&f).is_empty(), "{:#?}", problems(&f));
        assert!(
            f.iter()
                .any(|f| f.source == "EndpointSlices" && f.message == "1 endpoint(s) can serve"),
            "{f:#?}"
        );
        assert!(
            f.iter().any(|f| f.source == "Node node-a"
                && f.message == "may announce 192.0.2.1, on every suitable interface"),
            "{f:#?}"
        );

        // Serving but terminating does not count, for the speakers nor for `why`.
        let mut gone = input.clone();
        gone.endpoint_slices = vec![slice(
            json!([{"addresses": ["10.0.0.1"], "nodeName": "node-a",
            "conditions": {"ready": false, "serving": true, "terminating": true}}]),
        )];
        let p = problems(&why(&s, &gone));
        assert!(
            p.iter().any(|m| m.contains("no endpoint can serve")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("no node may announce 192.0.2.1")),
            "{p:#?}"
        );
    }

    /// `migrate-metallb` leaves Services with their `metallb.io/*` annotations, which the
    /// controller honours: `why` reads them the same way.
    #[test]
    fn metallb_annotations_are_read_like_the_controller_reads_them() {
        let input = WhyInput {
            pools: vec![
                pool("blue", json!({"addresses": ["192.0.2.0/30"]}), roomy()),
                pool("gold", json!({"addresses": ["198.51.100.0/30"]}), roomy()),
            ],
            l2advertisements: vec![l2("all", json!({}))],
            ..Default::default()
        };
        for key in [
            "metallb.io/address-pool",
            "metallb.universe.tf/address-pool",
        ] {
            let s = svc(
                json!({key: "gold", "metallb.io/loadBalancerIPs": "198.51.100.1"}),
                json!({}),
                json!({}),
            );
            let f = why(&s, &input);
            assert!(
                !f.iter().any(|f| f.source == "IPAddressPool blue"),
                "{key}: only the named pool is considered: {f:#?}"
            );
            assert!(
                f.iter().any(|f| f.source == "IPAddressPool gold"
                    && f.message.starts_with("serves this Service")),
                "{f:#?}"
            );
            assert!(
                f.iter()
                    .any(|f| f.message == "asks for 198.51.100.1 (metallb.io/loadBalancerIPs)"),
                "{f:#?}"
            );
            let missing = svc(json!({key: "silver"}), json!({}), json!({}));
            let p = problems(&why(&missing, &input));
            assert!(
                p.iter()
                    .any(|m| m.contains(&format!("names pool silver ({key})"))),
                "{p:#?}"
            );
        }
    }

    #[test]
    fn the_class_is_the_one_given() {
        let s = svc(
            json!({}),
            json!({"loadBalancerClass": "example.com/lb"}),
            served("192.0.2.1", "blue", Some("node-a")),
        );
        let default = WhyInput::default();
        assert!(
            problems(&why(&s, &default))
                .iter()
                .any(|m| m.contains("loadBalancerClass is example.com/lb")),
        );
        let ours = WhyInput {
            class: ClassFilter {
                class: "example.com/lb".into(),
                default_class: false,
            },
            ..Default::default()
        };
        assert!(
            !problems(&why(&s, &ours))
                .iter()
                .any(|m| m.contains("loadBalancerClass")),
        );
        let unclassed = svc(json!({}), json!({}), json!({}));
        assert!(
            problems(&why(&unclassed, &ours))
                .iter()
                .any(|m| m.contains("no loadBalancerClass")),
        );
    }
}
