//! The real `lodestone-controller` binary against an API server: every promise of
//! docs/addresses.md, one test each.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures::StreamExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn assigns_the_lowest_free_address_and_reports_it() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service("default", "web", json!({}), json!({})).await;
    let ips = env.wait_ingress("default", "web", |i| !i.is_empty()).await;
    assert_eq!(ips, vec!["192.0.2.0"]);
    let cond = env
        .wait_condition("default", "web", |c| c["status"] == "True")
        .await;
    assert_eq!(cond["reason"], "Assigned");
    assert!(
        cond["message"].as_str().unwrap().contains("pool blue"),
        "{cond}"
    );
    env.wait_event("default", "web", "IPAllocated", "192.0.2.0")
        .await;
    env.wait_pool("blue", |p| {
        p["status"]["assignedIPv4"] == 1 && p["status"]["availableIPv4"] == 3
    })
    .await;
    // ipMode is VIP, as kube-proxy expects for an address it should route locally.
    let svc = env.services("default").get("web").await.unwrap();
    let lb = svc.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(lb[0].ip_mode.as_deref(), Some("VIP"));
}

#[tokio::test]
async fn honours_requested_addresses_and_pools() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/29"]}))
        .await;
    env.pool(
        "manual",
        json!({"addresses": ["198.51.100.0/29"], "autoAssign": false}),
    )
    .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "by-annotation",
        json!({"lodestone.dev/loadBalancerIPs": "192.0.2.5"}),
        json!({}),
    )
    .await;
    env.service(
        "default",
        "by-field",
        json!({}),
        json!({"loadBalancerIP": "198.51.100.3"}),
    )
    .await;
    env.service(
        "default",
        "by-metallb-pool",
        json!({"metallb.io/address-pool": "manual"}),
        json!({}),
    )
    .await;
    env.service("default", "auto", json!({}), json!({})).await;
    assert_eq!(
        env.wait_ingress("default", "by-annotation", |i| !i.is_empty())
            .await,
        vec!["192.0.2.5"]
    );
    assert_eq!(
        env.wait_ingress("default", "by-field", |i| !i.is_empty())
            .await,
        vec!["198.51.100.3"]
    );
    let manual = env
        .wait_ingress("default", "by-metallb-pool", |i| !i.is_empty())
        .await;
    assert!(manual[0].starts_with("198.51.100."), "{manual:?}");
    // autoAssign: false keeps "auto" out of the manual pool.
    let auto = env.wait_ingress("default", "auto", |i| !i.is_empty()).await;
    assert!(auto[0].starts_with("192.0.2."), "{auto:?}");
}

#[tokio::test]
async fn selectors_and_priority_decide_the_pool() {
    let env = env().await;
    env.namespace("shop", json!({"team": "storefront"})).await;
    env.pool(
        "low",
        json!({"addresses": ["192.0.2.0/29"], "serviceAllocation": {"priority": 50}}),
    )
    .await;
    env.pool(
        "high",
        json!({"addresses": ["198.51.100.0/29"], "serviceAllocation": {"priority": 1,
            "namespaceSelectors": [{"matchLabels": {"team": "storefront"}}]}}),
    )
    .await;
    env.pool(
        "frontend",
        json!({"addresses": ["203.0.113.0/29"], "serviceAllocation": {"priority": 0,
            "serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend"]}]}]}}),
    )
    .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service("shop", "cart", json!({}), json!({})).await;
    env.service("default", "other", json!({}), json!({})).await;
    let mut labelled = lb_service("default", "front", json!({}), json!({}));
    labelled.metadata.labels = Some(BTreeMap::from([("tier".into(), "frontend".into())]));
    env.services("default")
        .create(&Default::default(), &labelled)
        .await
        .unwrap();
    let cart = env.wait_ingress("shop", "cart", |i| !i.is_empty()).await;
    assert!(
        cart[0].starts_with("198.51.100."),
        "namespace selector + priority: {cart:?}"
    );
    let other = env
        .wait_ingress("default", "other", |i| !i.is_empty())
        .await;
    assert!(
        other[0].starts_with("192.0.2."),
        "only the unrestricted pool fits: {other:?}"
    );
    let front = env
        .wait_ingress("default", "front", |i| !i.is_empty())
        .await;
    assert!(
        front[0].starts_with("203.0.113."),
        "service selector: {front:?}"
    );
}

#[tokio::test]
async fn sharing_allowed_and_refused() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    let _c = env.controller(&["--leader-elect=false"]);
    let ann = json!({"lodestone.dev/allow-shared-ip": "dns", "lodestone.dev/loadBalancerIPs": "192.0.2.2"});
    env.service(
        "default",
        "dns-udp",
        ann.clone(),
        json!({"ports": [{"port": 53, "protocol": "UDP"}]}),
    )
    .await;
    env.service(
        "default",
        "dns-tcp",
        ann.clone(),
        json!({"ports": [{"port": 53, "protocol": "TCP"}]}),
    )
    .await;
    assert_eq!(
        env.wait_ingress("default", "dns-udp", |i| !i.is_empty())
            .await,
        vec!["192.0.2.2"]
    );
    assert_eq!(
        env.wait_ingress("default", "dns-tcp", |i| !i.is_empty())
            .await,
        vec!["192.0.2.2"]
    );
    // Same port and protocol: refused, and the Event names who holds it.
    env.service(
        "default",
        "dns-udp-2",
        ann.clone(),
        json!({"ports": [{"port": 53, "protocol": "UDP"}]}),
    )
    .await;
    let cond = env
        .wait_condition("default", "dns-udp-2", |c| c["status"] == "False")
        .await;
    assert!(
        cond["message"].as_str().unwrap().contains("192.0.2.2"),
        "{cond}"
    );
    env.wait_event("default", "dns-udp-2", "AllocationFailed", "192.0.2.2")
        .await;
    // No sharing key: the taken address is refused.
    env.service(
        "default",
        "intruder",
        json!({"lodestone.dev/loadBalancerIPs": "192.0.2.2"}),
        json!({"ports": [{"port": 8080}]}),
    )
    .await;
    env.wait_event(
        "default",
        "intruder",
        "AllocationFailed",
        "in use by default/dns-",
    )
    .await;
    let svc = env.services("default").get("intruder").await.unwrap();
    assert!(ingress(&svc).is_empty());
}

#[tokio::test]
async fn dual_stack_policies() {
    let env = env().await;
    env.pool("v4", json!({"addresses": ["192.0.2.0/30"]})).await;
    env.pool(
        "both",
        json!({"addresses": ["198.51.100.0/30", "2001:db8::/126"],
        "serviceAllocation": {"priority": 1}}),
    )
    .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "require",
        json!({}),
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}),
    )
    .await;
    let ips = env
        .wait_ingress("default", "require", |i| i.len() == 2)
        .await;
    assert!(
        ips[0].starts_with("2001:db8::"),
        "primary family first: {ips:?}"
    );
    assert!(ips[1].starts_with("198.51.100."), "{ips:?}");
    env.service(
        "default",
        "single6",
        json!({}),
        json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}),
    )
    .await;
    let ips = env
        .wait_ingress("default", "single6", |i| !i.is_empty())
        .await;
    assert_eq!(ips.len(), 1);
    assert!(ips[0].starts_with("2001:db8::"), "{ips:?}");
}

#[tokio::test]
async fn exhaustion_then_recovery() {
    let env = env().await;
    env.pool("tiny", json!({"addresses": ["192.0.2.8-192.0.2.9"]}))
        .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service("default", "a", json!({}), json!({})).await;
    env.service("default", "b", json!({}), json!({})).await;
    env.wait_ingress("default", "a", |i| !i.is_empty()).await;
    env.wait_ingress("default", "b", |i| !i.is_empty()).await;
    env.service("default", "c", json!({}), json!({})).await;
    let cond = env
        .wait_condition("default", "c", |c| c["status"] == "False")
        .await;
    assert_eq!(cond["reason"], "PoolExhausted", "{cond}");
    env.wait_event("default", "c", "AllocationFailed", "tiny")
        .await;
    let a = env.services("default").get("a").await.unwrap();
    let freed = ingress(&a);
    env.delete_service("default", "a").await;
    let got = env.wait_ingress("default", "c", |i| !i.is_empty()).await;
    assert_eq!(got, freed, "the freed address goes to the waiting Service");
}

#[tokio::test]
async fn other_classes_are_never_touched_and_leaving_releases() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "theirs",
        json!({}),
        json!({"loadBalancerClass": "example.com/other"}),
    )
    .await;
    env.service(
        "default",
        "ours",
        json!({}),
        json!({"loadBalancerClass": "lodestone.dev/lb"}),
    )
    .await;
    env.service("default", "leaving", json!({}), json!({}))
        .await;
    env.wait_ingress("default", "ours", |i| !i.is_empty()).await;
    let held = env
        .wait_ingress("default", "leaving", |i| !i.is_empty())
        .await;
    let theirs = env.services("default").get("theirs").await.unwrap();
    assert!(
        theirs
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_none()
    );
    assert!(ingress(&theirs).is_empty());
    // Switching "leaving" to ClusterIP releases its address and removes what we wrote.
    env.services("default")
        .patch(
            "leaving",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    env.wait_ingress("default", "leaving", |i| i.is_empty())
        .await;
    env.wait_event("default", "leaving", "IPReleased", &held[0])
        .await;
    env.wait_pool("blue", |p| p["status"]["assignedIPv4"] == 1)
        .await;
}

#[tokio::test]
async fn default_class_can_be_declined() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    let _c = env.controller(&["--leader-elect=false", "--default-class=false"]);
    env.service("default", "classless", json!({}), json!({}))
        .await;
    env.service(
        "default",
        "ours",
        json!({}),
        json!({"loadBalancerClass": "lodestone.dev/lb"}),
    )
    .await;
    env.wait_ingress("default", "ours", |i| !i.is_empty()).await;
    let svc = env.services("default").get("classless").await.unwrap();
    assert!(ingress(&svc).is_empty());
}

#[tokio::test]
async fn a_pool_in_use_is_not_pulled_from_under_its_services() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    let c = env.controller(&["--leader-elect=false"]);
    env.service("default", "web", json!({}), json!({})).await;
    let held = env.wait_ingress("default", "web", |i| !i.is_empty()).await;
    env.wait_pool("blue", |p| {
        p["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "lodestone.dev/pool-in-use"))
    })
    .await;
    env.pools()
        .delete("blue", &DeleteParams::default())
        .await
        .unwrap();
    let p = env
        .wait_pool("blue", |p| {
            p["status"]["inUse"]
                .as_array()
                .is_some_and(|u| !u.is_empty())
        })
        .await;
    assert_eq!(p["status"]["inUse"][0]["service"], "default/web");
    assert!(p["metadata"]["deletionTimestamp"].is_string());
    // The Service keeps its address while the pool is Terminating; a new one gets nothing from it.
    env.service("default", "late", json!({}), json!({})).await;
    env.wait_condition("default", "late", |c| c["status"] == "False")
        .await;
    let web = env.services("default").get("web").await.unwrap();
    assert_eq!(ingress(&web), held);
    // Once the last holder goes, so does the pool.
    env.delete_service("default", "web").await;
    env.wait_pool("blue", |p| p.is_null()).await;
    // Letting go of a pool that is already gone is not a failure worth a warning.
    let log = c.log();
    assert!(!log.contains("updating the pool finalizer failed"), "{log}");
}

#[tokio::test]
async fn overlapping_pools_are_flagged_and_never_double_assign() {
    let env = env().await;
    env.pool(
        "a",
        json!({"addresses": ["192.0.2.0-192.0.2.1"], "serviceAllocation": {"priority": 1}}),
    )
    .await;
    env.pool(
        "b",
        json!({"addresses": ["192.0.2.1-192.0.2.2"], "serviceAllocation": {"priority": 2}}),
    )
    .await;
    let _c = env.controller(&["--leader-elect=false"]);
    for name in ["s1", "s2", "s3"] {
        env.service("default", name, json!({}), json!({})).await;
    }
    let mut seen = Vec::new();
    for name in ["s1", "s2", "s3"] {
        seen.extend(env.wait_ingress("default", name, |i| !i.is_empty()).await);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec!["192.0.2.0", "192.0.2.1", "192.0.2.2"]);
    let p = env
        .wait_pool("a", |p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Overlapping" && c["status"] == "True")
            })
        })
        .await;
    let ov = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Overlapping")
        .unwrap()
        .clone();
    assert!(ov["message"].as_str().unwrap().contains('b'), "{ov}");
}

#[tokio::test]
async fn malformed_input_is_reported_and_harms_nobody_else() {
    let env = env().await;
    env.pool("good", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    // Passes the API server's CEL (it is a CIDR) but has host bits set.
    env.pool("sloppy", json!({"addresses": ["198.51.100.1/24"]}))
        .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "typo",
        json!({"lodestone.dev/loadBalancerIPs": "192.0.2.300"}),
        json!({}),
    )
    .await;
    env.service(
        "default",
        "unknown-pool",
        json!({"lodestone.dev/address-pool": "nope"}),
        json!({}),
    )
    .await;
    env.service("default", "fine", json!({}), json!({})).await;
    env.wait_ingress("default", "fine", |i| !i.is_empty()).await;
    let cond = env
        .wait_condition("default", "typo", |c| c["status"] == "False")
        .await;
    assert!(
        cond["message"].as_str().unwrap().contains("192.0.2.300"),
        "{cond}"
    );
    env.wait_event("default", "typo", "AllocationFailed", "not an IP address")
        .await;
    env.wait_event("default", "unknown-pool", "AllocationFailed", "nope")
        .await;
    let p = env
        .wait_pool("sloppy", |p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Invalid" && c["status"] == "True")
            })
        })
        .await;
    let invalid = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Invalid")
        .unwrap()
        .clone();
    assert!(
        invalid["message"]
            .as_str()
            .unwrap()
            .contains("spec.addresses[0]"),
        "{invalid}"
    );
}

#[tokio::test]
async fn a_pool_edit_that_drops_an_address_moves_only_that_service() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/29"]}))
        .await;
    let _c = env.controller(&["--leader-elect=false"]);
    env.service(
        "default",
        "keep",
        json!({"lodestone.dev/loadBalancerIPs": "192.0.2.1"}),
        json!({}),
    )
    .await;
    env.service("default", "move", json!({}), json!({})).await;
    env.wait_ingress("default", "keep", |i| !i.is_empty()).await;
    let before = env.wait_ingress("default", "move", |i| !i.is_empty()).await;
    assert_eq!(before, vec!["192.0.2.0"]);
    env.pools()
        .patch(
            "blue",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"addresses": ["192.0.2.1-192.0.2.7"]}})),
        )
        .await
        .unwrap();
    let after = env
        .wait_ingress("default", "move", |i| !i.is_empty() && i[0] != "192.0.2.0")
        .await;
    assert_ne!(after, before);
    env.wait_event("default", "move", "IPAllocated", "no longer in a pool")
        .await;
    let keep = env.services("default").get("keep").await.unwrap();
    assert_eq!(ingress(&keep), vec!["192.0.2.1"]);
}

#[tokio::test]
async fn restart_moves_no_address() {
    const N: usize = 1000;
    let env = env().await;
    // 768 IPv4 addresses and 256 IPv6 ones: every fourth Service is IPv6-only.
    env.pool(
        "big",
        json!({"addresses": ["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24", "2001:db8::/120"]}),
    )
    .await;
    let mut c = env.controller(&["--leader-elect=false"]);
    // Create in a scrambled order so the lowest-free rule alone cannot reproduce the assignment.
    let api = env.services("default");
    let mut names: Vec<String> = (0..N)
        .map(|i| format!("svc-{:04}", (i * 617) % N))
        .collect();
    names.dedup();
    futures::stream::iter(names.iter().enumerate().map(|(i, n)| {
        let spec = if i % 4 == 0 {
            json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"})
        } else {
            json!({})
        };
        let svc = lb_service("default", n, json!({}), spec);
        let api = api.clone();
        async move { api.create(&Default::default(), &svc).await.expect("create") }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await;
    // Free a few addresses in the middle so a fresh allocation would differ.
    for victim in ["svc-0003", "svc-0500", "svc-0777"] {
        env.delete_service("default", victim).await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    let before = loop {
        let all = all_ingress(&env.client).await;
        if all.len() == N - 3 && all.values().all(|v| v.len() == 1) {
            break all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all assigned: {}",
            c.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    c.kill9();
    let _c2 = env.controller(&["--leader-elect=false"]);
    // A new Service after the restart proves the new controller is working before we compare.
    env.service("default", "after-restart", json!({}), json!({}))
        .await;
    let new_ip = env
        .wait_ingress("default", "after-restart", |i| !i.is_empty())
        .await;
    let after = all_ingress(&env.client).await;
    for (name, ips) in &before {
        assert_eq!(after.get(name), Some(ips), "{name} moved");
    }
    assert!(
        !before.values().any(|v| v == &new_ip),
        "the new Service got an address already held"
    );
}

#[tokio::test]
async fn two_replicas_one_leader_and_a_clean_takeover() {
    use k8s_openapi::api::coordination::v1::Lease;
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/28"]}))
        .await;
    let args = [
        "--leader-elect=true",
        "--lease-namespace=lodestone-system",
        "--lease-duration=2",
    ];
    let mut a = env.controller(&[&args[..], &["--identity=replica-a"]].concat());
    let mut b = env.controller(&[&args[..], &["--identity=replica-b"]].concat());
    env.service("default", "first", json!({}), json!({})).await;
    let first = env
        .wait_ingress("default", "first", |i| !i.is_empty())
        .await;
    let leases: kube::Api<Lease> = kube::Api::namespaced(env.client.clone(), "lodestone-system");
    let holder = leases
        .get("lodestone-controller")
        .await
        .expect("the Lease exists")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("someone holds the Lease");
    env.wait_event("default", "first", "IPAllocated", "").await;
    // Only the leader writes: every controller Event so far comes from it. (Other reporters may
    // write Events too: kube-apiserver builds post their own in `default`.)
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), "default");
    let ours: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|ev| ev.reporting_controller.as_deref() == Some("lodestone-controller"))
        .collect();
    assert!(!ours.is_empty(), "no Event from the controller");
    for ev in ours {
        assert_eq!(ev.reporting_instance.as_deref(), Some(holder.as_str()));
    }
    // kill -9 the leader; the standby takes over, keeps what exists and serves what is new.
    if holder == "replica-a" {
        a.kill9();
    } else {
        b.kill9();
    }
    env.service("default", "second", json!({}), json!({})).await;
    let second = env
        .wait_ingress("default", "second", |i| !i.is_empty())
        .await;
    assert_ne!(second, first);
    let svc = env.services("default").get("first").await.unwrap();
    assert_eq!(ingress(&svc), first, "the takeover moved an address");
    let new_holder = leases
        .get("lodestone-controller")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert!(new_holder.is_some() && new_holder.as_deref() != Some(holder.as_str()));
}

#[tokio::test]
async fn probes_and_metrics_follow_services() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    let c = env.controller(&["--leader-elect=false"]);
    let in_use = r#"lodestone_controller_pool_addresses_in_use{pool="blue",family="IPv4"}"#;
    let available = r#"lodestone_controller_pool_addresses_available{pool="blue",family="IPv4"}"#;
    c.wait_metric(in_use, "0").await;
    c.wait_metric(available, "4").await;
    assert_eq!(c.http_get("/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(c.http_get("/readyz").await.map(|r| r.0), Some(200));
    c.wait_metric("lodestone_controller_leader", "1").await;
    for name in ["a", "b", "c", "d", "e"] {
        env.service("default", name, json!({}), json!({})).await;
    }
    c.wait_metric(in_use, "4").await;
    c.wait_metric(available, "0").await;
    c.wait_metric(
        r#"lodestone_controller_allocation_failures_total{reason="PoolExhausted"}"#,
        "1",
    )
    .await;
    env.delete_service("default", "a").await;
    env.delete_service("default", "b").await;
    // "e" takes one freed address.
    c.wait_metric(in_use, "3").await;
    c.wait_metric("lodestone_controller_services_assigned", "3")
        .await;
}

/// Text logs written to a file (as `kubectl logs` reads them: not a terminal) carry no colour
/// escape codes, only the words.
#[tokio::test]
async fn text_logs_off_a_terminal_have_no_colour_codes() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/31"]}))
        .await;
    let c = env.controller(&["--leader-elect=false"]);
    env.service("default", "web", json!({}), json!({})).await;
    env.wait_ingress("default", "web", |i| !i.is_empty()).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !c.log().contains("default/web") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = c.log();
    assert!(
        log.contains("default/web"),
        "no line about the Service:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");
    assert!(
        log.lines().any(|l| l.contains(" INFO ")),
        "levels as plain words: {log}"
    );
}

/// With `--log-json` every line is JSON, and every line about a Service or a pool names it in
/// a field (`service = "namespace/name"`, `pool = "name"`), so one query finds all of them.
#[tokio::test]
async fn json_logs_name_every_object() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/31"]}))
        .await;
    env.pool(
        "spare",
        json!({"addresses": ["198.51.100.0/31"], "autoAssign": false}),
    )
    .await;
    let c = env.controller(&["--leader-elect=false", "--log-json"]);
    for name in ["a", "b", "c"] {
        env.service("default", name, json!({}), json!({})).await;
    }
    env.wait_ingress("default", "a", |i| !i.is_empty()).await;
    env.wait_ingress("default", "b", |i| !i.is_empty()).await;
    env.wait_event("default", "c", "AllocationFailed", "").await;
    // Released three ways: deletion, leaving LoadBalancer, and a pool let go.
    env.delete_service("default", "a").await;
    env.wait_ingress("default", "c", |i| !i.is_empty()).await;
    env.services("default")
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    env.wait_event("default", "b", "IPReleased", "").await;
    env.pools()
        .delete("spare", &DeleteParams::default())
        .await
        .unwrap();
    let pools = env.pools();
    let gone = tokio::time::timeout(DEADLINE, async {
        while pools.get_opt("spare").await.ok().flatten().is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "pool spare was never let go\n{}", c.log());

    let log = c.log();
    let addresses = ["192.0.2.0".parse().unwrap(), "192.0.2.1".parse().unwrap()];
    let bad = lodestone_harness::e2e::logs::unnamed_object_lines(
        &log,
        &lodestone_harness::e2e::logs::ObjectNames {
            fields: &["service", "pool"],
            objects: &["default/a", "default/b", "default/c", "blue", "spare"],
            addresses: &addresses,
            exempt_targets: &[],
        },
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    for field in [
        r#""service":"default/a""#,
        r#""service":"default/b""#,
        r#""service":"default/c""#,
        r#""pool":"spare""#,
    ] {
        assert!(log.contains(field), "no line with {field}\n{log}");
    }
}
