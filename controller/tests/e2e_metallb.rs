//! MetalLB's allocation semantics through the real `lodestone-controller` binary: which pool
//! serves which namespace, the order pools are tried in, families, requested addresses, and
//! sharing conflicts (docs/addresses.md, docs/migrating-from-metallb.md).

mod common;

use common::*;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// Write `ips` into the Service's `status.loadBalancer.ingress`, as MetalLB left it.
async fn metallb_status(env: &Env, ns: &str, name: &str, ips: &[&str]) {
    let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    env.services(ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
        )
        .await
        .expect("status written");
}

/// A setup converted from MetalLB: a team pool serving the namespace it lists and the namespaces
/// its selector matches, and a default pool whose name sorts first. On the controller's first
/// start every Service keeps the address MetalLB gave it, and a new Service of the team lands in
/// the team's pool.
#[tokio::test]
async fn a_migrated_setup_keeps_every_address_and_the_team_pool_comes_first() {
    let env = env().await;
    env.namespace("team-a", json!({})).await;
    env.namespace("team-b", json!({"tier": "gold"})).await;
    env.pool(
        "team",
        json!({"addresses": ["192.0.2.0/29"], "serviceAllocation": {
            "namespaces": ["team-a"],
            "namespaceSelectors": [{"matchLabels": {"tier": "gold"}}]}}),
    )
    .await;
    env.pool("default", json!({"addresses": ["198.51.100.0/29"]}))
        .await;
    // Listed but not selected, and selected but not listed: MetalLB served both from "team".
    env.service("team-a", "listed", json!({}), json!({})).await;
    metallb_status(&env, "team-a", "listed", &["192.0.2.3"]).await;
    env.service("team-b", "selected", json!({}), json!({}))
        .await;
    metallb_status(&env, "team-b", "selected", &["192.0.2.4"]).await;
    env.service("default", "plain", json!({}), json!({})).await;
    metallb_status(&env, "default", "plain", &["198.51.100.5"]).await;

    let _c = env.controller(&["--leader-elect=false"]);
    env.service("team-a", "new", json!({}), json!({})).await;
    env.service("default", "new", json!({}), json!({})).await;
    assert_eq!(
        env.wait_ingress("team-a", "new", |i| !i.is_empty()).await,
        ["192.0.2.0"],
        "the pool with a serviceAllocation is tried before the default pool"
    );
    assert_eq!(
        env.wait_ingress("default", "new", |i| !i.is_empty()).await,
        ["198.51.100.0"]
    );
    for (ns, name, ip) in [
        ("team-a", "listed", "192.0.2.3"),
        ("team-b", "selected", "192.0.2.4"),
        ("default", "plain", "198.51.100.5"),
    ] {
        let cond = env
            .wait_condition(ns, name, |c| c["status"] == "True")
            .await;
        assert_eq!(
            env.wait_ingress(ns, name, |i| !i.is_empty()).await,
            [ip],
            "{ns}/{name} kept its address: {cond}"
        );
    }
}

/// PreferDualStack with only single-stack pools: the Service's first family, whichever pool
/// comes first in the order.
#[tokio::test]
async fn prefer_dual_stack_gets_the_first_family_from_single_stack_pools() {
    let env = env().await;
    env.pool(
        "a-v6",
        json!({"addresses": ["2001:db8::/126"], "serviceAllocation": {"priority": 1}}),
    )
    .await;
    env.pool(
        "b-v4",
        json!({"addresses": ["192.0.2.0/30"], "serviceAllocation": {"priority": 2}}),
    )
    .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "v4-first",
        json!({}),
        json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
    )
    .await;
    env.service(
        "default",
        "v6-first",
        json!({}),
        json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]}),
    )
    .await;
    assert_eq!(
        env.wait_ingress("default", "v4-first", |i| !i.is_empty())
            .await,
        ["192.0.2.0"]
    );
    assert_eq!(
        env.wait_ingress("default", "v6-first", |i| !i.is_empty())
            .await,
        ["2001:db8::"]
    );
}

/// A Service that asks for addresses gets exactly those: RequireDualStack asking for one family
/// is refused with the reason, PreferDualStack gets its one address and no second family.
#[tokio::test]
async fn requested_addresses_are_never_completed() {
    let env = env().await;
    env.pool(
        "dual",
        json!({"addresses": ["192.0.2.0/30", "2001:db8::/126"]}),
    )
    .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "require",
        json!({"lodestone.dev/loadBalancerIPs": "192.0.2.1"}),
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
    )
    .await;
    env.service(
        "default",
        "prefer",
        json!({"metallb.io/loadBalancerIPs": "2001:db8::2"}),
        json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]}),
    )
    .await;
    let cond = env
        .wait_condition("default", "require", |c| c["status"] == "False")
        .await;
    assert_eq!(cond["reason"], "InvalidRequest", "{cond}");
    assert_eq!(
        cond["message"],
        "the Service is RequireDualStack but asks only for 192.0.2.1: ask for an IPv6 address too, or for none"
    );
    env.wait_event("default", "require", "AllocationFailed", "RequireDualStack")
        .await;
    assert_eq!(
        env.wait_ingress("default", "prefer", |i| !i.is_empty())
            .await,
        ["2001:db8::2"]
    );
    // Asking for both is honoured.
    env.services("default")
        .patch(
            "require",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"lodestone.dev/loadBalancerIPs": "192.0.2.1,2001:db8::1"}}}),
            ),
        )
        .await
        .expect("annotation patched");
    assert_eq!(
        env.wait_ingress("default", "require", |i| !i.is_empty())
            .await,
        ["192.0.2.1", "2001:db8::1"]
    );
}

/// The pool's only address is held under the same sharing key by a Service whose pods differ
/// under `externalTrafficPolicy: Local`: the refusal is a SharingConflict naming the holder, and
/// the waiting Service gets the address as soon as the holder's selector is aligned.
#[tokio::test]
async fn a_sharing_conflict_names_the_holder_and_clears_when_the_holder_changes() {
    let env = env().await;
    env.pool("one", json!({"addresses": ["192.0.2.1/32"]}))
        .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "holder",
        json!({"lodestone.dev/allow-shared-ip": "k"}),
        json!({"externalTrafficPolicy": "Local"}),
    )
    .await;
    assert_eq!(
        env.wait_ingress("default", "holder", |i| !i.is_empty())
            .await,
        ["192.0.2.1"]
    );
    env.service(
        "default",
        "waiting",
        json!({"metallb.io/allow-shared-ip": "k"}),
        json!({"ports": [{"port": 53, "protocol": "UDP"}]}),
    )
    .await;
    let cond = env
        .wait_condition("default", "waiting", |c| c["status"] == "False")
        .await;
    assert_eq!(cond["reason"], "SharingConflict", "{cond}");
    assert_eq!(
        cond["message"],
        "address 192.0.2.1 is in use by default/holder and cannot be shared: externalTrafficPolicy is Local and the pod selectors differ"
    );
    // The holder now selects the same pods: nothing else happens, and the waiting Service is
    // served.
    env.services("default")
        .patch(
            "holder",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"app": "waiting"}}})),
        )
        .await
        .expect("selector patched");
    assert_eq!(
        env.wait_ingress("default", "waiting", |i| !i.is_empty())
            .await,
        ["192.0.2.1"]
    );
    env.wait_condition("default", "waiting", |c| c["status"] == "True")
        .await;
}

/// A Service whose port change collides with the Service it shares an address with moves, and
/// the Event says why.
#[tokio::test]
async fn a_move_caused_by_a_port_change_says_why() {
    let env = env().await;
    env.pool("p", json!({"addresses": ["192.0.2.0/30"]})).await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "dns-udp",
        json!({"lodestone.dev/allow-shared-ip": "dns"}),
        json!({"ports": [{"port": 53, "protocol": "UDP"}]}),
    )
    .await;
    assert_eq!(
        env.wait_ingress("default", "dns-udp", |i| !i.is_empty())
            .await,
        ["192.0.2.0"]
    );
    env.service(
        "default",
        "dns-tcp",
        json!({"lodestone.dev/allow-shared-ip": "dns"}),
        json!({"ports": [{"port": 53, "protocol": "TCP"}]}),
    )
    .await;
    assert_eq!(
        env.wait_ingress("default", "dns-tcp", |i| !i.is_empty())
            .await,
        ["192.0.2.0"]
    );
    env.services("default")
        .patch(
            "dns-tcp",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"port": 53, "protocol": "UDP"}]}})),
        )
        .await
        .expect("ports patched");
    assert_eq!(
        env.wait_ingress("default", "dns-tcp", |i| i != ["192.0.2.0"])
            .await,
        ["192.0.2.1"]
    );
    let note = env
        .wait_event("default", "dns-tcp", "IPAllocated", "192.0.2.1")
        .await;
    assert_eq!(
        note,
        "assigned 192.0.2.1 from pool p because address 192.0.2.0 is in use by default/dns-udp and cannot be shared: both use port 53/UDP"
    );
}
