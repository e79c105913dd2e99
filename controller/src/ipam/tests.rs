use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use lodestone_crds::addresses::parse_pool;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| ip(s)).collect()
}

fn pool(name: &str, entries: &[&str]) -> PoolConfig {
    let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
    PoolConfig {
        name: name.into(),
        addresses: parse_pool(&entries).unwrap(),
        auto_assign: true,
        avoid_buggy_ips: false,
        allocation: None,
        accepts_new: true,
    }
}

/// The pool's `serviceAllocation`, created empty if absent.
fn alloc(p: &mut PoolConfig) -> &mut ServiceAllocation {
    p.allocation.get_or_insert_with(Default::default)
}

fn req(ns: &str, name: &str) -> ServiceRequest {
    ServiceRequest {
        key: ServiceKey::new(ns, name),
        labels: BTreeMap::new(),
        namespace_labels: Default::default(),
        families: FamilyPolicy::SingleStack(IpFamily::V4),
        requested: vec![],
        pool: None,
        sharing_key: None,
        ports: vec![(80, Protocol::Tcp)],
        traffic_local: false,
        pod_selector: BTreeMap::new(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

fn ipam(pools: Vec<PoolConfig>) -> Ipam {
    let mut i = Ipam::new();
    assert!(i.set_pools(pools).is_empty());
    i
}

fn got(i: &mut Ipam, r: &ServiceRequest) -> Vec<IpAddr> {
    i.assign(r)
        .unwrap_or_else(|e| panic!("{}: {e}", r.key))
        .addresses
}

#[test]
fn lowest_free_first_ranges_ascending_then_exhaustion_and_recovery() {
    let mut i = ipam(vec![pool("p", &["192.0.2.10-192.0.2.11", "192.0.2.0/31"])]);
    let order: Vec<IpAddr> = (0..4)
        .flat_map(|n| got(&mut i, &req("ns", &format!("s{n}"))))
        .collect();
    assert_eq!(
        order,
        ips(&["192.0.2.0", "192.0.2.1", "192.0.2.10", "192.0.2.11"])
    );
    let err = i.assign(&req("ns", "s4")).unwrap_err();
    assert_eq!(
        err,
        AllocError::PoolExhausted {
            pools: vec!["p".into()],
            family: IpFamily::V4
        }
    );
    assert_eq!(err.to_string(), "no free IPv4 address left in pool(s) p");
    assert!(i.assignment(&ServiceKey::new("ns", "s4")).is_none());
    let freed = i.release(&ServiceKey::new("ns", "s1")).unwrap();
    assert_eq!(freed.addresses, ips(&["192.0.2.1"]));
    assert!(i.is_free(ip("192.0.2.1")));
    assert_eq!(got(&mut i, &req("ns", "s4")), ips(&["192.0.2.1"]));
    assert!(!i.is_free(ip("192.0.2.1")));
}

#[test]
fn pools_ordered_by_priority_then_name_unprioritised_last() {
    let mut y = pool("y", &["192.0.2.1/32"]);
    alloc(&mut y).priority = Some(1);
    let mut z = pool("z", &["192.0.2.2/32"]);
    alloc(&mut z).priority = Some(5);
    let a = pool("a", &["192.0.2.3/32"]);
    let b = pool("b", &["192.0.2.4/32"]);
    let mut i = ipam(vec![b, z, a, y]);
    let order: Vec<String> = (0..4)
        .map(|n| i.assign(&req("ns", &format!("s{n}"))).unwrap().pool)
        .collect();
    assert_eq!(order, ["y", "z", "a", "b"]);
}

#[test]
fn namespace_listed_or_selected_and_service_selected() {
    let mut p = pool("restricted", &["192.0.2.0/30"]);
    alloc(&mut p).priority = Some(0);
    alloc(&mut p).namespaces = vec!["team-a".into(), "team-b".into()];
    alloc(&mut p).namespace_selectors = vec![sel(&[("tier", "gold")]), sel(&[("tier", "silver")])];
    alloc(&mut p).service_selectors = vec![sel(&[("expose", "yes")])];
    let fallback = pool("fallback", &["198.51.100.0/30"]);
    let mut i = ipam(vec![p, fallback]);

    let mut ok = req("team-b", "web");
    ok.namespace_labels = labels(&[("tier", "silver")]).into();
    ok.labels = labels(&[("expose", "yes")]);
    assert_eq!(i.assign(&ok).unwrap().pool, "restricted");

    // Listed but not selected, or selected but not listed: served (MetalLB's namespace set).
    let mut listed_only = ok.clone();
    listed_only.key.name = "listed".into();
    listed_only.namespace_labels = labels(&[("tier", "bronze")]).into();
    assert_eq!(i.assign(&listed_only).unwrap().pool, "restricted");
    let mut selected_only = ok.clone();
    selected_only.key = ServiceKey::new("team-c", "selected");
    assert_eq!(i.assign(&selected_only).unwrap().pool, "restricted");

    // Neither listed nor selected: not served.
    let mut neither = ok.clone();
    neither.key = ServiceKey::new("team-c", "web");
    neither.namespace_labels = labels(&[("tier", "bronze")]).into();
    assert_eq!(i.assign(&neither).unwrap().pool, "fallback");
    let mut wrong_svc_labels = ok.clone();
    wrong_svc_labels.key.name = "web3".into();
    wrong_svc_labels.labels = labels(&[]);
    assert_eq!(i.assign(&wrong_svc_labels).unwrap().pool, "fallback");

    // Naming the restricted pool does not bypass its restrictions.
    let mut named = wrong_svc_labels.clone();
    named.key.name = "web4".into();
    named.pool = Some("restricted".into());
    let err = i.assign(&named).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool restricted may not serve this Service: the Service's labels match none of its serviceSelectors"
    );
}

/// A Service held its address from a pool that lists its namespace but whose selectors do not
/// match it (what MetalLB gave it): the rebuild keeps it there.
#[test]
fn reserve_keeps_an_address_of_a_listed_but_unselected_namespace() {
    let mut p = pool("team-a", &["192.0.2.0/30"]);
    alloc(&mut p).namespaces = vec!["team-a".into()];
    alloc(&mut p).namespace_selectors = vec![sel(&[("tier", "gold")])];
    let mut i = ipam(vec![p, pool("default", &["198.51.100.0/30"])]);
    let r = req("team-a", "web");
    let a = i.reserve(&r, &ips(&["192.0.2.2"])).unwrap();
    assert_eq!(a.pool, "team-a");
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.2"]));
}

/// MetalLB tries the pools whose serviceAllocation serves the Service before the unrestricted
/// ones, whatever their names and priorities; a new Service in team-a lands in team-a's pool.
#[test]
fn pools_with_a_matching_service_allocation_come_first() {
    let default = pool("a-default", &["198.51.100.0/30"]);
    let mut team = pool("team-a", &["192.0.2.0/30"]);
    alloc(&mut team).namespaces = vec!["team-a".into()];
    let mut only_priority = pool("b-prio", &["203.0.113.0/30"]);
    alloc(&mut only_priority).priority = Some(7);
    let mut i = ipam(vec![default, team, only_priority]);
    // b-prio has a serviceAllocation (serving everyone) with a priority: first for everyone.
    assert_eq!(i.assign(&req("team-a", "s1")).unwrap().pool, "b-prio");
    assert_eq!(i.assign(&req("team-b", "s1")).unwrap().pool, "b-prio");
    let mut i = ipam(vec![pool("a-default", &["198.51.100.0/30"]), {
        let mut t = pool("team-a", &["192.0.2.0/30"]);
        alloc(&mut t).namespaces = vec!["team-a".into()];
        t
    }]);
    assert_eq!(i.assign(&req("team-a", "web")).unwrap().pool, "team-a");
    assert_eq!(i.assign(&req("team-b", "web")).unwrap().pool, "a-default");
}

/// The unrestricted tier is tried only when the restricted one cannot serve at all: a
/// PreferDualStack Service gets one family from its team's pool rather than both from the
/// default pool, as in MetalLB.
#[test]
fn tiers_are_tried_in_turn() {
    // Not overlapping the default pool's IPv4 range, else filling it fills that too.
    let mut team = pool("team", &["198.51.100.0/30"]);
    alloc(&mut team).namespaces = vec!["ns".into()];
    let mut i = ipam(vec![dual_pool("default"), team]);
    let mut r = req("ns", "dual");
    r.families = FamilyPolicy::PreferDualStack(IpFamily::V4);
    let a = i.assign(&r).unwrap();
    assert_eq!(
        (a.pool.as_str(), a.addresses),
        ("team", ips(&["198.51.100.0"]))
    );
    // Team pool full: the default pool serves.
    let mut r2 = req("ns", "other");
    r2.families = FamilyPolicy::PreferDualStack(IpFamily::V4);
    for n in 0..3 {
        i.assign(&req("ns", &format!("fill{n}"))).unwrap();
    }
    let a = i.assign(&r2).unwrap();
    assert_eq!(a.pool, "default");
    assert_eq!(a.addresses.len(), 2);
}

/// PreferDualStack with only single-stack pools: the primary family, whichever pool comes first.
#[test]
fn prefer_dual_stack_with_single_stack_pools_gives_the_primary_family() {
    let mut v6 = pool("a-v6", &["2001:db8::/126"]);
    alloc(&mut v6).priority = Some(1);
    let mut v4 = pool("b-v4", &["192.0.2.0/30"]);
    alloc(&mut v4).priority = Some(2);
    let mut i = ipam(vec![v6, v4]);
    let mut r = req("ns", "web");
    r.families = FamilyPolicy::PreferDualStack(IpFamily::V4);
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.0"]));
    let mut r6 = req("ns", "web6");
    r6.families = FamilyPolicy::PreferDualStack(IpFamily::V6);
    assert_eq!(got(&mut i, &r6), ips(&["2001:db8::"]));
    // Only the other family exists: that one, rather than nothing.
    let mut i = ipam(vec![pool("v6", &["2001:db8::/126"])]);
    assert_eq!(got(&mut i, &r), ips(&["2001:db8::"]));
}

/// A Service that asks for addresses gets exactly those: RequireDualStack asking for one family
/// is refused (as MetalLB refuses it), PreferDualStack gets its one address and nothing more.
#[test]
fn requested_addresses_are_the_whole_answer() {
    let mut i = ipam(vec![dual_pool("dual")]);
    let mut require = req("ns", "require");
    require.families = FamilyPolicy::RequireDualStack(IpFamily::V4);
    require.requested = ips(&["192.0.2.1"]);
    let err = i.assign(&require).unwrap_err();
    assert_eq!(err.reason(), "InvalidRequest");
    assert_eq!(
        err.to_string(),
        "the Service is RequireDualStack but asks only for 192.0.2.1: ask for an IPv6 address too, or for none"
    );
    require.requested = ips(&["192.0.2.1", "2001:db8::1"]);
    assert_eq!(got(&mut i, &require), ips(&["192.0.2.1", "2001:db8::1"]));

    let mut prefer = req("ns", "prefer");
    prefer.families = FamilyPolicy::PreferDualStack(IpFamily::V6);
    prefer.requested = ips(&["2001:db8::2"]);
    assert_eq!(got(&mut i, &prefer), ips(&["2001:db8::2"]));
    // Asked again later, still not completed.
    assert_eq!(got(&mut i, &prefer), ips(&["2001:db8::2"]));
    // Without a request it is completed as before.
    prefer.requested.clear();
    assert_eq!(got(&mut i, &prefer), ips(&["2001:db8::2", "192.0.2.0"]));
}

/// The only address the pool could give is held under the Service's own sharing key, by a
/// Service it cannot share with: the refusal names the holder and the rule, and the Service gets
/// the address once the holder's terms change.
#[test]
fn sharing_conflict_names_the_holder() {
    let mut i = ipam(vec![pool("one", &["192.0.2.1/32"])]);
    let mut a = req("ns", "a");
    a.sharing_key = Some("k".into());
    a.traffic_local = true;
    a.pod_selector = labels(&[("app", "a")]);
    assert_eq!(got(&mut i, &a), ips(&["192.0.2.1"]));
    let mut b = req("ns", "b");
    b.sharing_key = Some("k".into());
    b.ports = vec![(53, Protocol::Udp)];
    b.pod_selector = labels(&[("app", "b")]);
    let err = i.assign(&b).unwrap_err();
    assert_eq!(err.reason(), "SharingConflict");
    assert_eq!(
        err.to_string(),
        "address 192.0.2.1 is in use by ns/a and cannot be shared: externalTrafficPolicy is Local and the pod selectors differ"
    );
    // Aligned again: a's traffic policy back to Cluster.
    a.traffic_local = false;
    assert_eq!(got(&mut i, &a), ips(&["192.0.2.1"]));
    assert_eq!(got(&mut i, &b), ips(&["192.0.2.1"]));
    // A different key is simply in use: the pool is exhausted.
    let mut c = req("ns", "c");
    c.sharing_key = Some("other".into());
    assert_eq!(i.assign(&c).unwrap_err().reason(), "PoolExhausted");
}

/// A move caused by the Service's own change says why it could not keep its address.
#[test]
fn holding_error_says_why_a_holder_must_move() {
    let mut i = ipam(vec![pool("p", &["192.0.2.0/30"])]);
    let mut a = req("ns", "a");
    a.sharing_key = Some("k".into());
    a.ports = vec![(53, Protocol::Udp)];
    let mut b = req("ns", "b");
    b.sharing_key = Some("k".into());
    b.ports = vec![(53, Protocol::Tcp)];
    assert_eq!(got(&mut i, &a), ips(&["192.0.2.0"]));
    assert_eq!(got(&mut i, &b), ips(&["192.0.2.0"]));
    assert_eq!(i.holding_error(&b), None);
    b.ports = vec![(53, Protocol::Udp)];
    let why = i.holding_error(&b).unwrap();
    assert_eq!(
        why.to_string(),
        "address 192.0.2.0 is in use by ns/a and cannot be shared: both use port 53/UDP"
    );
    assert_eq!(got(&mut i, &b), ips(&["192.0.2.1"]));
}

#[test]
fn no_pool_matches_lists_every_reason() {
    let mut p = pool("only-a", &["192.0.2.0/30"]);
    alloc(&mut p).namespaces = vec!["a".into()];
    let mut m = pool("manual", &["198.51.100.0/30"]);
    m.auto_assign = false;
    let mut i = ipam(vec![p, m]);
    let err = i.assign(&req("b", "svc")).unwrap_err();
    assert!(
        matches!(&err, AllocError::NoPoolMatches { reasons } if reasons.len() == 2),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("pool only-a: namespace b is not among its namespaces"),
        "{msg}"
    );
    assert!(msg.contains("pool manual: autoAssign is false"), "{msg}");
    let mut empty = Ipam::new();
    assert_eq!(
        empty.assign(&req("b", "svc")).unwrap_err().to_string(),
        "there are no address pools"
    );
}

#[test]
fn auto_assign_false_only_on_explicit_request() {
    let mut manual = pool("manual", &["192.0.2.0/30"]);
    manual.auto_assign = false;
    alloc(&mut manual).priority = Some(0);
    let auto = pool("auto", &["198.51.100.0/30"]);
    let mut i = ipam(vec![manual, auto]);
    assert_eq!(got(&mut i, &req("ns", "plain")), ips(&["198.51.100.0"]));
    let mut named = req("ns", "named");
    named.pool = Some("manual".into());
    assert_eq!(got(&mut i, &named), ips(&["192.0.2.0"]));
    let mut asked = req("ns", "asked");
    asked.requested = ips(&["192.0.2.3"]);
    let a = i.assign(&asked).unwrap();
    assert_eq!(
        (a.pool.as_str(), a.addresses),
        ("manual", ips(&["192.0.2.3"]))
    );
}

fn dual_pool(name: &str) -> PoolConfig {
    pool(name, &["192.0.2.0/30", "2001:db8::/126"])
}

#[test]
fn families_times_policies() {
    use FamilyPolicy::*;
    use IpFamily::*;
    let mut v4only = pool("v4only", &["198.51.100.0/30"]);
    alloc(&mut v4only).priority = Some(1);
    let mut dual = dual_pool("dual");
    alloc(&mut dual).priority = Some(2);
    let mut i = ipam(vec![v4only, dual]);
    let cases: Vec<(FamilyPolicy, &str, Vec<&str>)> = vec![
        (SingleStack(V4), "v4only", vec!["198.51.100.0"]),
        (SingleStack(V6), "dual", vec!["2001:db8::"]),
        (
            PreferDualStack(V4),
            "dual",
            vec!["192.0.2.0", "2001:db8::1"],
        ),
        (
            PreferDualStack(V6),
            "dual",
            vec!["2001:db8::2", "192.0.2.1"],
        ),
        (
            RequireDualStack(V6),
            "dual",
            vec!["2001:db8::3", "192.0.2.2"],
        ),
        // IPv6 of the dual pool is now exhausted: Prefer falls back to the first pool with one family.
        (PreferDualStack(V6), "v4only", vec!["198.51.100.1"]),
    ];
    for (n, (policy, want_pool, want)) in cases.into_iter().enumerate() {
        let mut r = req("ns", &format!("s{n}"));
        r.families = policy;
        let a = i.assign(&r).unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        assert_eq!(
            (a.pool.as_str(), a.addresses),
            (want_pool, ips(&want)),
            "{policy:?}"
        );
    }
    let mut r = req("ns", "require");
    r.families = RequireDualStack(V4);
    assert_eq!(
        i.assign(&r).unwrap_err(),
        AllocError::PoolExhausted {
            pools: vec!["dual".into()],
            family: V6
        }
    );
    let mut j = ipam(vec![pool("v4only", &["198.51.100.0/30"])]);
    assert_eq!(
        j.assign(&r).unwrap_err(),
        AllocError::FamilyUnavailable { family: V6 }
    );
    r.families = SingleStack(V6);
    assert_eq!(
        j.assign(&r).unwrap_err().to_string(),
        "no pool this Service may use has IPv6 addresses"
    );
}

#[test]
fn prefer_dual_stack_gains_the_missing_family_without_moving() {
    let mut i = ipam(vec![pool("dual", &["192.0.2.0/30", "2001:db8::/128"])]);
    let mut hog = req("ns", "hog");
    hog.families = FamilyPolicy::SingleStack(IpFamily::V6);
    assert_eq!(got(&mut i, &hog), ips(&["2001:db8::"]));
    let mut r = req("ns", "pref");
    r.families = FamilyPolicy::PreferDualStack(IpFamily::V4);
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.0"]));
    i.release(&hog.key);
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.0", "2001:db8::"]));
}

#[test]
fn requested_addresses_honoured_or_refused_with_reason() {
    let mut avoid = pool("avoid", &["203.0.113.0/24"]);
    avoid.avoid_buggy_ips = true;
    let mut ns_only = pool("ns-only", &["198.51.100.0/30"]);
    alloc(&mut ns_only).namespaces = vec!["other".into()];
    let mut i = ipam(vec![pool("p", &["192.0.2.0/28"]), avoid, ns_only]);

    let mut r = req("ns", "a");
    r.requested = ips(&["192.0.2.7"]);
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.7"]));

    let check = |i: &mut Ipam, name: &str, f: &dyn Fn(&mut ServiceRequest), want: &str| {
        let mut r = req("ns", name);
        f(&mut r);
        let err = i.assign(&r).unwrap_err();
        assert_eq!(err.to_string(), want, "{name}");
        assert!(i.assignment(&r.key).is_none());
    };
    check(
        &mut i,
        "taken",
        &|r| r.requested = ips(&["192.0.2.7"]),
        "address 192.0.2.7 is in use by ns/a",
    );
    check(
        &mut i,
        "outside",
        &|r| r.requested = ips(&["192.0.2.100"]),
        "address 192.0.2.100 is in no address pool",
    );
    check(
        &mut i,
        "wrong-pool",
        &|r| {
            r.requested = ips(&["192.0.2.8"]);
            r.pool = Some("avoid".into());
        },
        "address 192.0.2.8 is not in pool avoid",
    );
    check(
        &mut i,
        "unknown",
        &|r| r.pool = Some("nope".into()),
        "pool nope does not exist",
    );
    check(
        &mut i,
        "buggy",
        &|r| r.requested = ips(&["203.0.113.255"]),
        "address 203.0.113.255 ends in .0 or .255, which pool avoid avoids (avoidBuggyIPs)",
    );
    check(
        &mut i,
        "ns",
        &|r| r.requested = ips(&["198.51.100.1"]),
        "pool ns-only may not serve this Service: namespace ns is not among its namespaces (other)",
    );
    check(
        &mut i,
        "two-v4",
        &|r| {
            r.families = FamilyPolicy::PreferDualStack(IpFamily::V4);
            r.requested = ips(&["192.0.2.1", "192.0.2.2"]);
        },
        "the Service requests more than one IPv4 address (192.0.2.1, 192.0.2.2)",
    );
    check(
        &mut i,
        "v6-on-v4",
        &|r| r.requested = ips(&["2001:db8::1"]),
        "the Service requests 2001:db8::1, an IPv6 address, but is single-stack IPv4",
    );
    check(
        &mut i,
        "split",
        &|r| {
            r.families = FamilyPolicy::RequireDualStack(IpFamily::V4);
            r.requested = ips(&["192.0.2.1", "2001:db8::1"]);
        },
        "address 2001:db8::1 is in no address pool",
    );
}

/// A requested family is never completed with an automatic other family (MetalLB does not
/// either): the pool is chosen for the requested address alone.
#[test]
fn requested_family_is_not_completed_with_the_other() {
    let mut i = ipam(vec![pool("v6", &["2001:db8:1::/126"]), dual_pool("dual")]);
    let mut r = req("ns", "a");
    r.families = FamilyPolicy::PreferDualStack(IpFamily::V6);
    r.requested = ips(&["192.0.2.2"]);
    let a = i.assign(&r).unwrap();
    assert_eq!(
        (a.pool.as_str(), a.addresses),
        ("dual", ips(&["192.0.2.2"]))
    );
    r.families = FamilyPolicy::RequireDualStack(IpFamily::V6);
    assert_eq!(i.assign(&r).unwrap_err().reason(), "InvalidRequest");
    assert!(i.assignment(&r.key).is_none());
}

fn sharer(name: &str, key: &str, port: u16, proto: Protocol) -> ServiceRequest {
    let mut r = req("ns", name);
    r.sharing_key = Some(key.into());
    r.ports = vec![(port, proto)];
    r
}

#[test]
fn sharing_allowed_for_requested_and_automatic() {
    let mut i = ipam(vec![pool("p", &["192.0.2.0/29"])]);
    let first = req("ns", "plain");
    assert_eq!(got(&mut i, &first), ips(&["192.0.2.0"]));
    let mut a = sharer("a", "k", 80, Protocol::Tcp);
    a.requested = ips(&["192.0.2.5"]);
    assert_eq!(got(&mut i, &a), ips(&["192.0.2.5"]));
    // Automatic allocation with the same key prefers the shared address over the lowest free one.
    let b = sharer("b", "k", 53, Protocol::Udp);
    assert_eq!(got(&mut i, &b), ips(&["192.0.2.5"]));
    // Same port number, other protocol: no collision.
    let mut c = sharer("c", "k", 80, Protocol::Udp);
    c.requested = ips(&["192.0.2.5"]);
    assert_eq!(got(&mut i, &c), ips(&["192.0.2.5"]));
    assert_eq!(
        i.holders(ip("192.0.2.5")),
        vec![
            ServiceKey::new("ns", "a"),
            ServiceKey::new("ns", "b"),
            ServiceKey::new("ns", "c")
        ]
    );
    // A colliding sharer gets the next address automatically, not the shared one.
    let d = sharer("d", "k", 80, Protocol::Tcp);
    assert_eq!(got(&mut i, &d), ips(&["192.0.2.1"]));
    // Releasing one sharer keeps the address for the others.
    i.release(&a.key);
    assert!(!i.is_free(ip("192.0.2.5")));
    i.release(&b.key);
    i.release(&c.key);
    assert!(i.is_free(ip("192.0.2.5")));
}

#[test]
fn sharing_refused_for_each_reason() {
    let mut i = ipam(vec![pool("p", &["192.0.2.0/29"])]);
    let mut holder = sharer("holder", "k", 80, Protocol::Tcp);
    holder.requested = ips(&["192.0.2.5"]);
    holder.traffic_local = true;
    holder.pod_selector = labels(&[("app", "web")]);
    got(&mut i, &holder);
    type Case = (&'static str, Box<dyn Fn(&mut ServiceRequest)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "nokey",
            Box::new(|r| r.sharing_key = None),
            "address 192.0.2.5 is in use by ns/holder",
        ),
        (
            "otherkey",
            Box::new(|r| r.sharing_key = Some("other".into())),
            "address 192.0.2.5 is in use by ns/holder and cannot be shared: its sharing key \"k\" differs from \"other\"",
        ),
        (
            "port",
            Box::new(|r| r.ports = vec![(443, Protocol::Tcp), (80, Protocol::Tcp)]),
            "address 192.0.2.5 is in use by ns/holder and cannot be shared: both use port 80/TCP",
        ),
        (
            "selector",
            Box::new(|r| r.pod_selector = labels(&[("app", "db")])),
            "address 192.0.2.5 is in use by ns/holder and cannot be shared: externalTrafficPolicy is Local and the pod selectors differ",
        ),
    ];
    for (name, f, want) in cases {
        let mut r = sharer(name, "k", 8080, Protocol::Tcp);
        r.pod_selector = labels(&[("app", "web")]);
        r.requested = ips(&["192.0.2.5"]);
        f(&mut r);
        assert_eq!(i.assign(&r).unwrap_err().to_string(), want, "{name}");
    }
    // Same selector with Local on one side: allowed.
    let mut ok = sharer("ok", "k", 8080, Protocol::Tcp);
    ok.pod_selector = labels(&[("app", "web")]);
    ok.requested = ips(&["192.0.2.5"]);
    assert_eq!(got(&mut i, &ok), ips(&["192.0.2.5"]));
    // A sharer whose ports change to collide must move (it is the one whose request changed).
    ok.requested = vec![];
    ok.ports = vec![(80, Protocol::Tcp)];
    assert_eq!(got(&mut i, &ok), ips(&["192.0.2.0"]));
    assert_eq!(i.holders(ip("192.0.2.5")), vec![holder.key.clone()]);
}

#[test]
fn avoid_buggy_ips_skips_dot0_and_dot255_but_not_ipv6() {
    let mut p = pool("p", &["192.0.2.254-192.0.3.1", "2001:db8::/127"]);
    p.avoid_buggy_ips = true;
    let mut i = ipam(vec![p]);
    let v4: Vec<IpAddr> = (0..2)
        .flat_map(|n| got(&mut i, &req("ns", &format!("v4-{n}"))))
        .collect();
    assert_eq!(v4, ips(&["192.0.2.254", "192.0.3.1"]));
    assert!(matches!(
        i.assign(&req("ns", "more")),
        Err(AllocError::PoolExhausted { .. })
    ));
    let mut r = req("ns", "v6");
    r.families = FamilyPolicy::SingleStack(IpFamily::V6);
    assert_eq!(got(&mut i, &r), ips(&["2001:db8::"]), "::0 is fine in IPv6");
    let stats = i.pool_stats("p").unwrap();
    assert_eq!(
        (stats.assigned(IpFamily::V4), stats.available(IpFamily::V4)),
        (2, 0)
    );
    assert_eq!(
        (stats.assigned(IpFamily::V6), stats.available(IpFamily::V6)),
        (1, 1)
    );
}

#[test]
fn overlapping_pools_share_no_address() {
    let mut a = pool("a", &["192.0.2.0/30"]);
    alloc(&mut a).priority = Some(1);
    let b = pool("b", &["192.0.2.2-192.0.2.5"]);
    let mut i = ipam(vec![b, a]);
    assert_eq!(i.overlaps(), vec![("a".to_string(), "b".to_string())]);
    let mut seen = BTreeSet::new();
    for n in 0..6 {
        let a = i.assign(&req("ns", &format!("s{n}"))).unwrap();
        for ip in a.addresses {
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
    }
    assert_eq!(seen.len(), 6);
    assert!(i.assign(&req("ns", "s6")).is_err());
    let sa = i.pool_stats("a").unwrap();
    let sb = i.pool_stats("b").unwrap();
    assert_eq!(
        (sa.assigned(IpFamily::V4), sa.available(IpFamily::V4)),
        (4, 0)
    );
    assert_eq!(
        (sb.assigned(IpFamily::V4), sb.available(IpFamily::V4)),
        (4, 0)
    );
}

#[test]
fn set_pools_moves_only_services_outside_the_new_pools() {
    let mut i = ipam(vec![
        pool("p", &["192.0.2.0/29"]),
        pool("q", &["198.51.100.0/30"]),
    ]);
    let keys: Vec<ServiceKey> = (0..4)
        .map(|n| {
            let r = req("ns", &format!("s{n}"));
            got(&mut i, &r);
            r.key
        })
        .collect();
    let mut named = req("ns", "on-q");
    named.pool = Some("q".into());
    got(&mut i, &named);
    let displaced = i.set_pools(vec![
        pool("p", &["192.0.2.0/31"]),
        pool("q", &["198.51.100.0/30"]),
    ]);
    assert_eq!(
        displaced,
        vec![
            (keys[2].clone(), ips(&["192.0.2.2"])),
            (keys[3].clone(), ips(&["192.0.2.3"]))
        ]
    );
    assert_eq!(
        i.assignment(&keys[0]).unwrap().addresses,
        ips(&["192.0.2.0"])
    );
    assert_eq!(
        i.assignment(&keys[1]).unwrap().addresses,
        ips(&["192.0.2.1"])
    );
    assert!(i.is_free(ip("192.0.2.2")));
    // A new higher-priority pool moves nobody.
    let mut hi = pool("hi", &["203.0.113.0/30"]);
    alloc(&mut hi).priority = Some(0);
    let displaced = i.set_pools(vec![
        hi,
        pool("p", &["192.0.2.0/31"]),
        pool("q", &["198.51.100.0/30"]),
    ]);
    assert!(displaced.is_empty());
    assert_eq!(got(&mut i, &req("ns", "s0")), ips(&["192.0.2.0"]));
    // Deleting the pool a Service named displaces it, even though its address is elsewhere too.
    let displaced = i.set_pools(vec![pool("p", &["192.0.2.0/31", "198.51.100.0/30"])]);
    assert_eq!(displaced, vec![(named.key.clone(), ips(&["198.51.100.0"]))]);
}

#[test]
fn set_pools_keeps_holders_of_renamed_or_no_longer_accepting_pools() {
    let mut i = ipam(vec![pool("old", &["192.0.2.0/30"])]);
    let r = req("ns", "a");
    got(&mut i, &r);
    let mut closed = pool("new", &["192.0.2.0/29"]);
    closed.accepts_new = false;
    closed.auto_assign = false;
    assert!(i.set_pools(vec![closed]).is_empty());
    assert_eq!(i.assignment(&r.key).unwrap().pool, "new");
    // Unchanged request: kept, though the pool takes no new Services.
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.0"]));
    let err = i.assign(&req("ns", "b")).unwrap_err();
    assert!(
        err.to_string().contains("hands out no new addresses"),
        "{err}"
    );
    // avoidBuggyIPs switched on: .0 holders must go.
    let mut avoid = pool("new", &["192.0.2.0/29"]);
    avoid.avoid_buggy_ips = true;
    assert_eq!(
        i.set_pools(vec![avoid]),
        vec![(r.key.clone(), ips(&["192.0.2.0"]))]
    );
}

#[test]
fn naming_a_closed_pool_is_not_a_way_into_it() {
    // Found by ipam_props: "closed" overlaps "open"; a holder of "open" that names "closed"
    // would otherwise be re-recorded as a new holder of a pool that takes none.
    let mut closed = pool("closed", &["192.0.2.0/30"]);
    closed.accepts_new = false;
    let mut i = ipam(vec![closed, pool("open", &["192.0.2.0/30"])]);
    let r = req("ns", "a");
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.0"]));
    assert_eq!(i.assignment(&r.key).unwrap().pool, "open");
    let mut named = r.clone();
    named.pool = Some("closed".into());
    let err = i.assign(&named).unwrap_err();
    assert!(
        matches!(err, AllocError::PoolNotEligible { ref pool, .. } if pool == "closed"),
        "{err}"
    );
}

#[test]
fn malformed_selector_stops_new_addresses_only() {
    let mut i = ipam(vec![pool("p", &["192.0.2.0/30"])]);
    let r = req("ns", "a");
    got(&mut i, &r);
    let mut bad = pool("p", &["192.0.2.0/30"]);
    alloc(&mut bad).service_selectors = vec![LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "x".into(),
            operator: "Sometimes".into(),
            values: None,
        }]),
    }];
    let dup = pool("p", &["198.51.100.0/30"]);
    assert!(i.set_pools(vec![bad, dup]).is_empty());
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.0"]));
    assert!(i.assign(&req("ns", "b")).is_err());
}

#[test]
fn stability_against_others_and_request_changes() {
    let mut i = ipam(vec![
        pool("p", &["192.0.2.0/29"]),
        pool("q", &["198.51.100.0/30"]),
    ]);
    let a = req("ns", "a");
    let b = req("ns", "b");
    assert_eq!(got(&mut i, &a), ips(&["192.0.2.0"]));
    assert_eq!(got(&mut i, &b), ips(&["192.0.2.1"]));
    i.release(&a.key);
    // b does not slide down into the freed lower address.
    assert_eq!(got(&mut i, &b), ips(&["192.0.2.1"]));
    // Request change: a specific address.
    let mut b2 = b.clone();
    b2.requested = ips(&["192.0.2.6"]);
    assert_eq!(got(&mut i, &b2), ips(&["192.0.2.6"]));
    assert!(i.is_free(ip("192.0.2.1")));
    // Request change: another pool.
    let mut b3 = b.clone();
    b3.pool = Some("q".into());
    assert_eq!(got(&mut i, &b3), ips(&["198.51.100.0"]));
    // Request change: family; and family order follows ipFamilies.
    let mut i = ipam(vec![dual_pool("d")]);
    let mut c = req("ns", "c");
    assert_eq!(got(&mut i, &c), ips(&["192.0.2.0"]));
    c.families = FamilyPolicy::SingleStack(IpFamily::V6);
    assert_eq!(got(&mut i, &c), ips(&["2001:db8::"]));
    assert!(i.is_free(ip("192.0.2.0")));
    c.families = FamilyPolicy::RequireDualStack(IpFamily::V6);
    assert_eq!(got(&mut i, &c), ips(&["2001:db8::", "192.0.2.0"]));
    c.families = FamilyPolicy::RequireDualStack(IpFamily::V4);
    assert_eq!(got(&mut i, &c), ips(&["192.0.2.0", "2001:db8::"]));
}

#[test]
fn failed_reassignment_leaves_nothing_held() {
    let mut i = ipam(vec![pool("p", &["192.0.2.0/30"])]);
    let mut a = req("ns", "a");
    got(&mut i, &a);
    a.requested = ips(&["198.51.100.1"]);
    assert!(i.assign(&a).is_err());
    assert!(i.assignment(&a.key).is_none());
    assert!(i.is_free(ip("192.0.2.0")));
}

#[test]
fn reserve_validates_held_addresses() {
    let mut manual = pool("manual", &["198.51.100.0/30"]);
    manual.auto_assign = false;
    manual.accepts_new = false;
    let mut i = ipam(vec![manual, dual_pool("d")]);
    // Holding from an autoAssign:false, closed pool without asking for it is fine on rebuild.
    let a = req("ns", "a");
    assert_eq!(
        i.reserve(&a, &ips(&["198.51.100.1"])).unwrap().pool,
        "manual"
    );
    let cases: Vec<(&str, Vec<&str>, AllocError)> = vec![
        (
            "dup",
            vec!["198.51.100.1"],
            AllocError::AddressInUse {
                address: ip("198.51.100.1"),
                by: a.key.clone(),
            },
        ),
        (
            "nowhere",
            vec!["203.0.113.1"],
            AllocError::AddressInNoPool {
                address: ip("203.0.113.1"),
            },
        ),
        (
            "wrongfam",
            vec!["2001:db8::1"],
            AllocError::InvalidRequest(
                "the Service holds 2001:db8::1, an IPv6 address, but is single-stack IPv4".into(),
            ),
        ),
        (
            "empty",
            vec![],
            AllocError::InvalidRequest("no addresses to hold".into()),
        ),
    ];
    for (name, held, want) in cases {
        let r = req("ns", name);
        assert_eq!(i.reserve(&r, &ips(&held)), Err(want), "{name}");
        assert!(i.assignment(&r.key).is_none());
    }
    // A request for a different address than the one held is invalid for reserve.
    let mut asks = req("ns", "asks");
    asks.requested = ips(&["192.0.2.2"]);
    assert!(i.reserve(&asks, &ips(&["192.0.2.3"])).is_err());
    // Dual-stack addresses in family order whatever the status order.
    let mut d = req("ns", "dual");
    d.families = FamilyPolicy::RequireDualStack(IpFamily::V4);
    let got = i.reserve(&d, &ips(&["2001:db8::2", "192.0.2.2"])).unwrap();
    assert_eq!(
        (got.pool.as_str(), got.addresses),
        ("d", ips(&["192.0.2.2", "2001:db8::2"]))
    );
}

#[test]
fn reserve_all_is_order_independent_for_conflicts() {
    let pools = vec![pool("p", &["192.0.2.0/30"])];
    let items = vec![
        (req("ns", "b"), ips(&["192.0.2.1"])),
        (req("ns", "a"), ips(&["192.0.2.1"])),
        (req("ns", "c"), ips(&["192.0.2.2"])),
    ];
    let mut forward = ipam(pools.clone());
    let mut backward = ipam(pools);
    let rf = forward.reserve_all(items.clone());
    let rb = backward.reserve_all(items.into_iter().rev().collect());
    assert_eq!(rf, rb);
    assert_eq!(
        forward.holders(ip("192.0.2.1")),
        vec![ServiceKey::new("ns", "a")]
    );
    let fa: Vec<_> = forward
        .assignments()
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    let ba: Vec<_> = backward
        .assignments()
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    assert_eq!(fa, ba);
}

#[test]
fn pool_stats_count_and_list_holders() {
    let mut p = pool("p", &["192.0.2.0/24", "2001:db8::/64"]);
    p.avoid_buggy_ips = true;
    let mut i = ipam(vec![p]);
    let mut a = req("ns", "a");
    a.families = FamilyPolicy::RequireDualStack(IpFamily::V4);
    got(&mut i, &a);
    let s = i.pool_stats("p").unwrap();
    assert_eq!(s.assigned(IpFamily::V4), 1);
    assert_eq!(s.available(IpFamily::V4), 253);
    assert_eq!(s.available(IpFamily::V6), (1u128 << 64) - 1);
    assert!(s.in_use());
    assert_eq!(
        i.pool_holders("p"),
        vec![
            (ip("192.0.2.1"), a.key.clone()),
            (ip("2001:db8::"), a.key.clone())
        ]
    );
    assert!(i.pool_stats("nope").is_none());
    assert!(i.pool_holders("nope").is_empty());
    i.release(&a.key);
    assert!(!i.pool_stats("p").unwrap().in_use());
    assert!(i.pool_holders("p").is_empty());
}

#[test]
fn count_buggy_matches_brute_force() {
    for (a, b) in [
        (0u128, 0u128),
        (0, 255),
        (1, 254),
        (255, 256),
        (250, 1030),
        (256, 511),
        (3, 3),
    ] {
        let brute = (a..=b).filter(|k| buggy_key(*k)).count() as u128;
        assert_eq!(count_buggy(a, b), brute, "{a}..={b}");
    }
}

#[test]
fn large_pools_allocate_without_scanning() {
    // A /8 and a /64: allocation state stays a handful of runs.
    let mut p = pool("big", &["10.0.0.0/8", "2001:db8::/64"]);
    p.avoid_buggy_ips = true;
    let mut i = ipam(vec![p]);
    for n in 0..600 {
        let mut r = req("ns", &format!("s{n}"));
        r.families = FamilyPolicy::RequireDualStack(IpFamily::V4);
        got(&mut i, &r);
    }
    // 600 usable addresses skip .0 and .255: the 600th is in the third /24.
    let last = i.assignment(&ServiceKey::new("ns", "s599")).unwrap();
    assert_eq!(last.addresses, ips(&["10.0.2.92", "2001:db8::257"]));
    assert_eq!(i.used_v4_avoid.run_count(), 1);
    assert_eq!(i.used_v6.run_count(), 1);
}

#[test]
fn reserved_partial_dual_stack_is_completed_by_assign_or_released() {
    let mut i = ipam(vec![pool("d", &["192.0.2.0/30", "2001:db8::/128"])]);
    let mut r = req("ns", "dual");
    r.families = FamilyPolicy::RequireDualStack(IpFamily::V4);
    let held = i.reserve(&r, &ips(&["192.0.2.3"])).unwrap();
    assert_eq!(held.addresses, ips(&["192.0.2.3"]));
    assert_eq!(got(&mut i, &r), ips(&["192.0.2.3", "2001:db8::"]));
    // A second one cannot be completed: the only IPv6 address is taken.
    let mut s = req("ns", "dual2");
    s.families = FamilyPolicy::RequireDualStack(IpFamily::V4);
    assert!(i.reserve(&s, &ips(&["192.0.2.2"])).is_ok());
    assert_eq!(
        i.assign(&s).unwrap_err(),
        AllocError::PoolExhausted {
            pools: vec!["d".into()],
            family: IpFamily::V6
        }
    );
    assert!(i.is_free(ip("192.0.2.2")));
}

#[test]
fn keys_policies_and_protocols_display() {
    assert_eq!(ServiceKey::new("default", "web").to_string(), "default/web");
    assert_eq!(
        FamilyPolicy::PreferDualStack(IpFamily::V6).families(),
        [IpFamily::V6, IpFamily::V4]
    );
    assert_eq!(
        FamilyPolicy::SingleStack(IpFamily::V4).families(),
        [IpFamily::V4]
    );
    assert_eq!(
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].map(|p| p.to_string()),
        ["TCP", "UDP", "SCTP"]
    );
}

fn nodes(pairs: &[(&str, &str)]) -> BTreeMap<IpAddr, String> {
    pairs.iter().map(|(a, n)| (ip(a), n.to_string())).collect()
}

#[test]
fn node_addresses_are_skipped_refused_and_kept_by_holders() {
    let mut i = ipam(vec![pool("p", &["192.0.2.0/29", "2001:db8::/126"])]);
    // A Service took 192.0.2.1 before a Node with that address joined.
    let mut early = req("ns", "early");
    early.requested = ips(&["192.0.2.1"]);
    got(&mut i, &early);
    i.set_node_addresses(nodes(&[
        ("192.0.2.0", "node-a"),
        ("192.0.2.1", "node-b"),
        ("192.0.2.3", "node-c"),
        ("2001:db8::", "node-a"),
    ]));
    assert_eq!(i.node_of(ip("192.0.2.3")), Some("node-c"));
    // Lowest free, stepping over Node addresses (and the held one).
    assert_eq!(got(&mut i, &req("ns", "a")), ips(&["192.0.2.2"]));
    assert_eq!(got(&mut i, &req("ns", "b")), ips(&["192.0.2.4"]));
    let mut v6 = req("ns", "v6");
    v6.families = FamilyPolicy::SingleStack(IpFamily::V6);
    assert_eq!(got(&mut i, &v6), ips(&["2001:db8::1"]));
    // Asking for a Node's address is refused and says whose it is.
    let mut ask = req("ns", "ask");
    ask.requested = ips(&["192.0.2.3"]);
    let err = i.assign(&ask).unwrap_err();
    assert_eq!(
        err,
        AllocError::NodeAddress {
            address: ip("192.0.2.3"),
            node: "node-c".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "address 192.0.2.3 is the address of Node node-c; it is never given to a Service"
    );
    // The early holder keeps its address, on assign as on a restart's reserve.
    assert_eq!(got(&mut i, &early), ips(&["192.0.2.1"]));
    assert!(i.reserve(&early, &ips(&["192.0.2.1"])).is_ok());
    // Node addresses are not counted as available: 8 - 3 held - 2 unheld Node addresses.
    let s = i.pool_stats("p").unwrap();
    assert_eq!(s.available(IpFamily::V4), 3);
    assert_eq!(s.available(IpFamily::V6), 2);
    // Exhaustion never falls back to a Node address.
    for n in 0..3 {
        got(&mut i, &req("ns", &format!("fill{n}")));
    }
    assert!(matches!(
        i.assign(&req("ns", "more")),
        Err(AllocError::PoolExhausted { .. })
    ));
    for (_, a) in i.assignments().filter(|(k, _)| k.name != "early") {
        for ip in &a.addresses {
            assert!(i.node_of(*ip).is_none(), "{ip} is a Node's");
        }
    }
}

#[test]
fn a_node_address_at_the_end_of_a_range_ends_the_search() {
    let mut i = ipam(vec![pool("p", &["192.0.2.0/31", "198.51.100.7/32"])]);
    i.set_node_addresses(nodes(&[("192.0.2.1", "n"), ("198.51.100.7", "n")]));
    assert_eq!(got(&mut i, &req("ns", "a")), ips(&["192.0.2.0"]));
    assert!(i.assign(&req("ns", "b")).is_err());
}

/// Deleting one of two overlapping pools waits only for its own Services: a holder of a shared
/// address moves to the other pool (same address) when its own pool stops handing out.
#[test]
fn a_terminating_pool_lists_only_its_own_holders_and_hands_shared_ones_over() {
    let mut a = pool("a", &["192.0.2.0/30"]);
    alloc(&mut a).priority = Some(1);
    let b = pool("b", &["192.0.2.2-192.0.2.5"]);
    let mut i = ipam(vec![a.clone(), b.clone()]);
    // From a: .0 .1 .2 .3; from b: .4 (the shared .2 and .3 were taken from a).
    for n in 0..5 {
        got(&mut i, &req("ns", &format!("s{n}")));
    }
    let holders = |i: &Ipam, p: &str| -> Vec<String> {
        i.pool_holders(p)
            .into_iter()
            .map(|(ip, k)| format!("{ip}={}", k.name))
            .collect()
    };
    assert_eq!(holders(&i, "b"), ["192.0.2.4=s4"]);
    assert_eq!(holders(&i, "a").len(), 4);
    // Pool a is being deleted: s2 and s3 move to b with their addresses; s0 and s1 stay.
    let mut a_gone = a.clone();
    a_gone.accepts_new = false;
    assert!(i.set_pools(vec![a_gone, b.clone()]).is_empty());
    assert_eq!(holders(&i, "a"), ["192.0.2.0=s0", "192.0.2.1=s1"]);
    assert_eq!(
        holders(&i, "b"),
        ["192.0.2.2=s2", "192.0.2.3=s3", "192.0.2.4=s4"]
    );
    assert_eq!(
        i.assignment(&ServiceKey::new("ns", "s2"))
            .unwrap()
            .addresses,
        ips(&["192.0.2.2"])
    );
    // Pool b's deletion does not wait for a's holders either.
    let mut b_gone = b;
    b_gone.accepts_new = false;
    assert!(i.set_pools(vec![a, b_gone]).is_empty());
    assert_eq!(holders(&i, "b"), ["192.0.2.4=s4"]);
    // What the finalizer asks agrees with the holders listed.
    assert!(i.pool_in_use("a") && i.pool_in_use("b"));
    i.release(&ServiceKey::new("ns", "s4"));
    assert!(
        !i.pool_in_use("b"),
        "b's range still holds a's s2, s3; they do not keep b"
    );
    assert!(i.pool_in_use("a"));
}
