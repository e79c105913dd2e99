//! Property tests of the IPAM core over random sequences of assign / release / set_pools /
//! reserve on small, overlapping pools (crossing a `.255`/`.0` boundary), checked against the
//! rules after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use lodestone_controller::ipam::{
    AllocError, Assignment, FamilyPolicy, Ipam, PoolConfig, Protocol, ServiceKey, ServiceRequest,
};
use lodestone_crds::addresses::{AddressRange, IpFamily, PoolAddresses};
use lodestone_crds::{ServiceAllocation, allocation};
use proptest::prelude::*;

const SERVICES: usize = 6;
const POOL_NAMES: [&str; 4] = ["a", "b", "c", "gone"];

/// Address `n` (0..16) of the family: IPv4 from 192.0.2.248, crossing into 192.0.3.x.
fn addr(v6: bool, n: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n)))
    } else {
        IpAddr::V4(Ipv4Addr::from(0xc000_02f8_u32 + u32::from(n)))
    }
}

fn universe() -> Vec<IpAddr> {
    (0..16)
        .flat_map(|n| [addr(false, n), addr(true, n)])
        .collect()
}

fn key(i: usize) -> ServiceKey {
    ServiceKey::new(
        if i.is_multiple_of(2) { "ns1" } else { "ns2" },
        format!("s{i}"),
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn arb_pools() -> impl Strategy<Value = Vec<PoolConfig>> {
    let pool = (
        proptest::collection::vec((any::<bool>(), 0u8..16, 1u8..6), 1..3),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0i32..3),
        proptest::bool::weighted(0.25),
        proptest::bool::weighted(0.25),
        proptest::bool::weighted(0.85),
        proptest::bool::weighted(0.8),
    );
    proptest::collection::vec(pool, 1..4).prop_map(|parts| {
        parts
            .into_iter()
            .enumerate()
            .map(
                |(i, (ranges, auto_assign, avoid, priority, ns, svc, accepts, auto_weight))| {
                    let mut rs: Vec<AddressRange> = Vec::new();
                    for (v6, start, len) in ranges {
                        let end = (start + len - 1).min(15);
                        let r = AddressRange::new(addr(v6, start), addr(v6, end)).unwrap();
                        if !rs.iter().any(|o| o.overlaps(&r)) {
                            rs.push(r);
                        }
                    }
                    PoolConfig {
                        name: POOL_NAMES[i].to_string(),
                        addresses: PoolAddresses::from_ranges(rs).unwrap(),
                        auto_assign: auto_assign || auto_weight,
                        avoid_buggy_ips: avoid,
                        // A serviceAllocation only when it says something, so both tiers
                        // (pools with one and pools without) are exercised.
                        allocation: (priority.is_some() || ns || svc).then(|| ServiceAllocation {
                            priority,
                            namespaces: if ns { vec!["ns1".into()] } else { vec![] },
                            namespace_selectors: vec![],
                            service_selectors: if svc {
                                vec![LabelSelector {
                                    match_labels: Some(labels(&[("tier", "x")])),
                                    match_expressions: None,
                                }]
                            } else {
                                vec![]
                            },
                        }),
                        accepts_new: accepts,
                    }
                },
            )
            .collect()
    })
}

fn arb_request() -> impl Strategy<Value = ServiceRequest> {
    (
        0..SERVICES,
        0u8..6,
        proptest::collection::vec((any::<bool>(), 0u8..16), 0..3),
        proptest::option::weighted(0.3, 0..POOL_NAMES.len()),
        proptest::option::weighted(0.5, 0u8..2),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        proptest::bool::weighted(0.7),
    )
        .prop_map(
            |(svc, pol, requested, pool, share, port, local, sel, tier)| {
                let primary = if pol % 2 == 0 {
                    IpFamily::V4
                } else {
                    IpFamily::V6
                };
                let families = match pol / 2 {
                    0 => FamilyPolicy::SingleStack(primary),
                    1 => FamilyPolicy::PreferDualStack(primary),
                    _ => FamilyPolicy::RequireDualStack(primary),
                };
                // Mostly valid requests (one per allowed family), sometimes not.
                let requested: Vec<IpAddr> =
                    if requested.len() == 2 && requested[0].0 == requested[1].0 {
                        requested
                            .iter()
                            .take(1)
                            .map(|(v6, n)| addr(*v6, *n))
                            .collect()
                    } else {
                        requested.iter().map(|(v6, n)| addr(*v6, *n)).collect()
                    };
                ServiceRequest {
                    key: key(svc),
                    labels: if tier {
                        labels(&[("tier", "x")])
                    } else {
                        BTreeMap::new()
                    },
                    namespace_labels: Default::default(),
                    families,
                    requested: if requested.len() > 1 && requested[0] == requested[1] {
                        vec![]
                    } else {
                        requested
                    },
                    pool: pool.map(|p| POOL_NAMES[p].to_string()),
                    sharing_key: share.map(|s| format!("k{s}")),
                    ports: match port {
                        0 => vec![(80, Protocol::Tcp)],
                        1 => vec![(53, Protocol::Udp)],
                        _ => vec![(53, Protocol::Udp), (443, Protocol::Tcp)],
                    },
                    traffic_local: local,
                    pod_selector: labels(&[("app", if sel { "a" } else { "b" })]),
                }
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Assign(ServiceRequest),
    Release(usize),
    /// Assign again with the Service's current request (what every resync does).
    Reassign(usize),
    SetPools(Vec<PoolConfig>),
    Reserve(ServiceRequest, Vec<IpAddr>),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => arb_request().prop_map(Op::Assign),
        2 => (0..SERVICES).prop_map(Op::Release),
        3 => (0..SERVICES).prop_map(Op::Reassign),
        1 => arb_pools().prop_map(Op::SetPools),
        1 => (arb_request(), proptest::collection::vec((any::<bool>(), 0u8..16), 0..3))
            .prop_map(|(r, h)| Op::Reserve(r, h.into_iter().map(|(v6, n)| addr(v6, n)).collect())),
    ]
}

fn is_buggy(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
}

fn may_hold(pool: &PoolConfig, req: &ServiceRequest) -> bool {
    let facts = allocation::ServiceFacts {
        namespace: &req.key.namespace,
        labels: &req.labels,
        namespace_labels: &req.namespace_labels,
    };
    allocation::serves(pool.allocation.as_ref(), &facts).is_ok()
        && req.pool.as_ref().is_none_or(|p| *p == pool.name)
}

fn may_share(a: &ServiceRequest, b: &ServiceRequest) -> bool {
    a.sharing_key.is_some()
        && a.sharing_key == b.sharing_key
        && !a.ports.iter().any(|p| b.ports.contains(p))
        && (!(a.traffic_local || b.traffic_local) || a.pod_selector == b.pod_selector)
}

fn satisfies(policy: &FamilyPolicy, addrs: &[IpAddr]) -> bool {
    let fams: Vec<IpFamily> = addrs.iter().map(|ip| IpFamily::of(*ip)).collect();
    match policy {
        FamilyPolicy::SingleStack(f) => fams == [*f],
        FamilyPolicy::PreferDualStack(f) => {
            fams == [*f] || fams == [f.other()] || fams == [*f, f.other()]
        }
        FamilyPolicy::RequireDualStack(f) => fams == [*f, f.other()],
    }
}

/// The rules that must hold in every state.
fn check_state(
    ipam: &Ipam,
    pools: &[PoolConfig],
    reqs: &BTreeMap<ServiceKey, ServiceRequest>,
) -> Result<(), TestCaseError> {
    let held: BTreeMap<ServiceKey, Assignment> = ipam
        .assignments()
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    prop_assert_eq!(
        held.keys().collect::<Vec<_>>(),
        reqs.keys().collect::<Vec<_>>(),
        "the IPAM holds exactly the Services we believe it does"
    );
    for (k, a) in &held {
        let req = &reqs[k];
        // Inside a pool the Service may use; never an avoided address.
        let pool = pools.iter().find(|p| p.name == a.pool);
        prop_assert!(pool.is_some(), "{} holds from unknown pool {}", k, a.pool);
        let pool = pool.unwrap();
        prop_assert!(may_hold(pool, req), "{} may not use pool {}", k, pool.name);
        for ip in &a.addresses {
            prop_assert!(
                pool.addresses.contains(*ip),
                "{} outside pool {}",
                ip,
                pool.name
            );
            prop_assert!(
                !(pool.avoid_buggy_ips && is_buggy(*ip)),
                "{} is avoided",
                ip
            );
            prop_assert!(ipam.holders(*ip).contains(k));
        }
        // Families: one per family, allowed by the policy, primary first (a dual-stack
        // Service may hold one family after a reserve).
        let fams: Vec<IpFamily> = a.addresses.iter().map(|ip| IpFamily::of(*ip)).collect();
        let allowed = req.families.families();
        prop_assert!(!fams.is_empty());
        prop_assert!(fams.iter().all(|f| allowed.contains(f)));
        prop_assert!(fams.windows(2).all(|w| w[0] != w[1]));
        if fams.len() == 2 {
            prop_assert_eq!(fams[0], allowed[0]);
        }
        // Requested addresses honoured.
        for r in &req.requested {
            prop_assert!(
                a.addresses.contains(r),
                "{} asked for {} got {:?}",
                k,
                r,
                a.addresses
            );
        }
    }
    // No address held twice unless sharing allows it; is_free agrees.
    for ip in universe() {
        let hs = ipam.holders(ip);
        let by_records: Vec<&ServiceKey> = held
            .iter()
            .filter(|(_, a)| a.addresses.contains(&ip))
            .map(|(k, _)| k)
            .collect();
        prop_assert_eq!(hs.iter().collect::<Vec<_>>(), by_records);
        prop_assert_eq!(ipam.is_free(ip), hs.is_empty());
        for (i, a) in hs.iter().enumerate() {
            for b in hs.iter().skip(i + 1) {
                prop_assert!(
                    may_share(&reqs[a], &reqs[b]),
                    "{} held by {} and {}",
                    ip,
                    a,
                    b
                );
            }
        }
    }
    Ok(())
}

/// Rebuild from the current assignments in a given order: every reservation succeeds and the
/// addresses are the same.
fn check_rebuild(
    ipam: &Ipam,
    pools: &[PoolConfig],
    reqs: &BTreeMap<ServiceKey, ServiceRequest>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut items: Vec<(ServiceKey, Assignment)> = ipam
        .assignments()
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    // A deterministic shuffle driven by the case's seed.
    let mut s = seed | 1;
    for i in (1..items.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        items.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let mut rebuilt = Ipam::new();
    prop_assert!(rebuilt.set_pools(pools.to_vec()).is_empty());
    for (k, a) in &items {
        let r = rebuilt.reserve(&reqs[k], &a.addresses);
        prop_assert!(r.is_ok(), "reserve {} {:?}: {:?}", k, a.addresses, r);
        prop_assert_eq!(&r.unwrap().addresses, &a.addresses);
    }
    let before: Vec<(ServiceKey, Vec<IpAddr>)> = ipam
        .assignments()
        .map(|(k, a)| (k.clone(), a.addresses.clone()))
        .collect();
    let after: Vec<(ServiceKey, Vec<IpAddr>)> = rebuilt
        .assignments()
        .map(|(k, a)| (k.clone(), a.addresses.clone()))
        .collect();
    prop_assert_eq!(before, after);
    for ip in universe() {
        prop_assert_eq!(ipam.is_free(ip), rebuilt.is_free(ip));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn ipam_rules_hold_over_random_histories(
        initial in arb_pools(),
        ops in proptest::collection::vec(arb_op(), 1..40),
        seed in any::<u64>(),
    ) {
        let mut ipam = Ipam::new();
        let mut pools = initial.clone();
        prop_assert!(ipam.set_pools(initial).is_empty());
        let mut reqs: BTreeMap<ServiceKey, ServiceRequest> = BTreeMap::new();
        for op in ops {
            let op = match op {
                Op::Reassign(i) => match reqs.get(&key(i)) {
                    Some(r) => Op::Assign(r.clone()),
                    None => continue,
                },
                other => other,
            };
            match op {
                Op::Reassign(_) => {}
                Op::Assign(req) => {
                    let before = ipam.assignment(&req.key).cloned();
                    let same_request = reqs.get(&req.key) == Some(&req);
                    match ipam.assign(&req) {
                        Ok(a) => {
                            prop_assert!(satisfies(&req.families, &a.addresses), "{:?} for {:?}", a, req.families);
                            for r in &req.requested {
                                prop_assert!(a.addresses.contains(r), "requested {} replaced: {:?}", r, a);
                            }
                            if same_request && let Some(b) = &before {
                                // Stability: nothing held is taken away.
                                for ip in &b.addresses {
                                    prop_assert!(a.addresses.contains(ip), "{} moved: {:?} -> {:?}", req.key, b, a);
                                }
                            }
                            reqs.insert(req.key.clone(), req);
                        }
                        Err(e) => {
                            prop_assert!(ipam.assignment(&req.key).is_none());
                            if same_request && let Some(b) = &before {
                                // Only a dual-stack holding that cannot be completed may fail.
                                prop_assert!(
                                    !satisfies(&req.families, &b.addresses),
                                    "{} lost valid {:?}: {}", req.key, b, e
                                );
                            }
                            if let AllocError::AddressInUse { address, by } = &e {
                                prop_assert!(ipam.holders(*address).contains(by));
                            }
                            reqs.remove(&req.key);
                        }
                    }
                }
                Op::Release(i) => {
                    let k = key(i);
                    let had = ipam.assignment(&k).cloned();
                    prop_assert_eq!(ipam.release(&k), had);
                    prop_assert!(ipam.assignment(&k).is_none());
                    reqs.remove(&k);
                }
                Op::SetPools(new) => {
                    let before: BTreeMap<ServiceKey, Vec<IpAddr>> =
                        ipam.assignments().map(|(k, a)| (k.clone(), a.addresses.clone())).collect();
                    let displaced = ipam.set_pools(new.clone());
                    pools = new;
                    for (k, addrs) in &displaced {
                        prop_assert_eq!(before.get(k), Some(addrs));
                        // Displaced only if truly outside every pool it may use.
                        let fits = pools.iter().any(|p| {
                            may_hold(p, &reqs[k])
                                && addrs.iter().all(|ip| p.addresses.contains(*ip)
                                    && !(p.avoid_buggy_ips && is_buggy(*ip)))
                        });
                        prop_assert!(!fits, "{} displaced needlessly", k);
                        reqs.remove(k);
                    }
                    for (k, addrs) in &before {
                        if !displaced.iter().any(|(d, _)| d == k) {
                            prop_assert_eq!(ipam.assignment(k).map(|a| &a.addresses), Some(addrs));
                        }
                    }
                }
                Op::Reserve(req, held) => {
                    match ipam.reserve(&req, &held) {
                        Ok(a) => {
                            let mut want = held.clone();
                            want.sort_by_key(|ip| req.families.families().iter().position(|f| *f == IpFamily::of(*ip)));
                            prop_assert_eq!(a.addresses, want);
                            reqs.insert(req.key.clone(), req);
                        }
                        Err(_) => {
                            prop_assert!(ipam.assignment(&req.key).is_none());
                            reqs.remove(&req.key);
                        }
                    }
                }
            }
            check_state(&ipam, &pools, &reqs)?;
        }
        check_rebuild(&ipam, &pools, &reqs, seed)?;
        // Releasing everything frees everything.
        for i in 0..SERVICES {
            ipam.release(&key(i));
        }
        for ip in universe() {
            prop_assert!(ipam.is_free(ip));
        }
    }

    /// Allocation never hands out an address still held, however the history of releases went,
    /// and the lowest free address is the one handed out.
    #[test]
    fn allocation_takes_the_lowest_free_address(
        releases in proptest::collection::vec(0usize..45, 0..25),
        avoid in any::<bool>(),
    ) {
        let p = PoolConfig {
            name: "p".into(),
            addresses: PoolAddresses::from_ranges(vec![AddressRange::new(
                "192.0.2.240".parse().unwrap(),
                "192.0.3.20".parse().unwrap(),
            ).unwrap()]).unwrap(),
            auto_assign: true,
            avoid_buggy_ips: avoid,
            allocation: None,
            accepts_new: true,
        };
        let pool_addrs: Vec<IpAddr> = p.addresses.iter().filter(|ip| !(avoid && is_buggy(*ip))).collect();
        let mut ipam = Ipam::new();
        ipam.set_pools(vec![p]);
        let req = |n: usize| ServiceRequest {
            key: ServiceKey::new("ns", format!("s{n}")),
            labels: BTreeMap::new(),
            namespace_labels: Default::default(),
            families: FamilyPolicy::SingleStack(IpFamily::V4),
            requested: vec![],
            pool: None,
            sharing_key: None,
            ports: vec![],
            traffic_local: false,
            pod_selector: BTreeMap::new(),
        };
        // 37 addresses, 35 without .255 and .0: fill 30 of them.
        for n in 0..30 {
            prop_assert!(ipam.assign(&req(n)).is_ok());
        }
        for (next, r) in (40..).zip(releases) {
            ipam.release(&req(r).key);
            let lowest = pool_addrs.iter().copied().find(|ip| ipam.is_free(*ip));
            match ipam.assign(&req(next)) {
                Ok(a) => {
                    prop_assert_eq!(Some(a.addresses[0]), lowest);
                    prop_assert_eq!(ipam.holders(a.addresses[0]).len(), 1);
                }
                Err(_) => prop_assert_eq!(lowest, None),
            }
        }
        let held: BTreeSet<IpAddr> = ipam.assignments().flat_map(|(_, a)| a.addresses.clone()).collect();
        let count: usize = ipam.assignments().map(|(_, a)| a.addresses.len()).sum();
        prop_assert_eq!(held.len(), count);
    }
}

/// Entries near and in every refused block, and plain ones, from which random pools are made.
const ENTRIES: [&str; 16] = [
    "0.0.0.0/30",
    "127.0.0.0/30",
    "169.254.0.0/30",
    "224.0.0.0/30",
    "255.255.255.252/30",
    "126.255.255.254-127.0.0.1",
    "192.0.2.0/30",
    "198.51.100.0/30",
    "0.0.0.0/0",
    "10.0.0.0/7",
    "::/126",
    "fe80::/126",
    "ff02::/126",
    "2001:db8::/126",
    "2001:db8:1::/63",
    "2001:db8:2::/126",
];

/// Node addresses, some inside the plain entries.
const NODE_ADDRESSES: [&str; 6] = [
    "192.0.2.0",
    "192.0.2.2",
    "198.51.100.3",
    "2001:db8::1",
    "169.254.0.1",
    "10.0.0.0",
];

fn arb_lodestone_pools() -> impl Strategy<Value = Vec<lodestone_crds::IPAddressPool>> {
    let pool = (
        proptest::sample::subsequence(ENTRIES.to_vec(), 1..4),
        any::<bool>(),
        any::<bool>(),
    );
    proptest::collection::vec(pool, 1..4).prop_map(|pools| {
        pools
            .into_iter()
            .enumerate()
            .map(|(i, (entries, link_local, avoid))| {
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
                    "metadata": {"name": format!("p{i}")},
                    "spec": {"addresses": entries, "allowLinkLocal": link_local, "avoidBuggyIPs": avoid},
                }))
                .expect("pool object")
            })
            .collect()
    })
}

fn arb_asking() -> impl Strategy<Value = ServiceRequest> {
    let wanted: Vec<IpAddr> = NODE_ADDRESSES
        .iter()
        .chain(&[
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "ff02::1",
            "192.0.2.1",
        ])
        .map(|s| s.parse().unwrap())
        .collect();
    (
        0..SERVICES,
        0u8..6,
        proptest::option::weighted(0.4, proptest::sample::select(wanted)),
        proptest::option::weighted(0.2, 0..3usize),
    )
        .prop_map(|(svc, pol, requested, pool)| {
            let primary = match requested {
                Some(IpAddr::V6(_)) => IpFamily::V6,
                Some(IpAddr::V4(_)) => IpFamily::V4,
                None if pol % 2 == 0 => IpFamily::V4,
                None => IpFamily::V6,
            };
            ServiceRequest {
                key: key(svc),
                labels: BTreeMap::new(),
                namespace_labels: Default::default(),
                families: match pol / 2 {
                    0 => FamilyPolicy::SingleStack(primary),
                    1 => FamilyPolicy::PreferDualStack(primary),
                    _ => FamilyPolicy::RequireDualStack(primary),
                },
                requested: requested.into_iter().collect(),
                pool: pool.map(|p| format!("p{p}")),
                sharing_key: None,
                ports: vec![(80, Protocol::Tcp)],
                traffic_local: false,
                pod_selector: BTreeMap::new(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the pools and requests: no address handed out is a Node's, in a special-purpose
    /// block (link-local only from a pool that allows it), or in an entry larger than the bound.
    #[test]
    fn never_hands_out_a_node_address_or_a_refused_one(
        objects in arb_lodestone_pools(),
        nodes in proptest::sample::subsequence(NODE_ADDRESSES.to_vec(), 0..6),
        asks in proptest::collection::vec((arb_asking(), any::<bool>()), 1..30),
    ) {
        use lodestone_controller::pools;
        use lodestone_crds::addresses::{SpecialKind, special_block_of};
        let evals: Vec<pools::PoolEval> = objects.iter().map(pools::evaluate).collect();
        let mut ipam = Ipam::new();
        ipam.set_node_addresses(nodes.iter().map(|n| (n.parse().unwrap(), format!("node-{n}"))).collect());
        ipam.set_pools(evals.iter().filter_map(|e| e.config.clone()).collect());
        for (ask, release) in asks {
            if release {
                ipam.release(&ask.key);
            }
            let result = ipam.assign(&ask);
            if let (Err(e), Some(r)) = (&result, ask.requested.first())
                && ipam.node_of(*r).is_some()
            {
                // An invalid request is refused before its addresses are looked at.
                let is_node_error = matches!(e, AllocError::NodeAddress { .. } | AllocError::InvalidRequest(_));
                prop_assert!(is_node_error, "{} asked for a Node address: {}", ask.key, e);
            }
            for (k, a) in ipam.assignments() {
                let eval = evals.iter().find(|e| e.name == a.pool).expect("a real pool");
                prop_assert!(eval.accepts_new(), "{} got {:?} from a pool that refuses: {:?}", k, a, eval.problems);
                for ip in &a.addresses {
                    prop_assert!(ipam.node_of(*ip).is_none(), "{} got Node address {}", k, ip);
                    let allowed = match special_block_of(*ip) {
                        None => true,
                        Some((SpecialKind::LinkLocal, _)) => objects
                            .iter()
                            .any(|o| o.metadata.name.as_deref() == Some(&a.pool) && o.spec.allow_link_local),
                        Some(_) => false,
                    };
                    prop_assert!(allowed, "{} got special-purpose address {}", k, ip);
                }
            }
        }
    }
}
