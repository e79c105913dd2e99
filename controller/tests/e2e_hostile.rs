//! The real `lodestone-controller` binary against careless and hostile input (issue 14): pools
//! that reach into special-purpose blocks, Nodes' own addresses, the pool CRD deleted and
//! re-created, overlapping pools deleted, a 200 KB annotation, a wrong certificate authority.
//! Each runs on the embedded API server and, under the envtest switch, on kube-apiserver.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn condition(p: &Value, type_: &str) -> Value {
    p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// A Node with `addresses` in its status, as a kubelet would report them.
async fn node(env: &Env, name: &str, addresses: &[&str]) {
    let api: Api<Node> = Api::all(env.client.clone());
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &n)
        .await
        .expect("node created");
    let addrs: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .chain([json!({"type": "Hostname", "address": name})])
        .collect();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"addresses": addrs}})),
    )
    .await
    .expect("node status written");
}

/// The addresses of this test's `svc-*` Services (a real cluster also has `default/kubernetes`).
async fn ours(env: &Env) -> BTreeMap<String, Vec<String>> {
    let mut all = all_ingress(&env.client).await;
    all.retain(|k, _| k.starts_with("default/svc-"));
    all
}

/// The value of the metric line starting with `prefix`, if exposed.
async fn metric(c: &Controller, prefix: &str) -> Option<f64> {
    let (_, body) = c.http_get("/metrics").await?;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `0.0.0.0/0` was Ready and handed out 0.0.0.0, 127.0.0.1, 224.0.0.1, 255.255.255.255 and
/// 169.254.169.254. Now the pool is Invalid with a condition naming the entry and each reason,
/// and nobody gets an address from it; link-local is allowed only by `allowLinkLocal`.
#[tokio::test]
async fn zero_slash_zero_is_refused_with_a_condition_naming_it() {
    let env = env().await;
    env.pool(
        "everything",
        json!({"addresses": ["0.0.0.0/0"], "serviceAllocation": {"priority": 0}}),
    )
    .await;
    env.pool(
        "lab",
        json!({"addresses": ["169.254.100.0/30"], "allowLinkLocal": true, "autoAssign": false}),
    )
    .await;
    env.pool(
        "sloppy-lab",
        json!({"addresses": ["169.254.200.0/30"], "autoAssign": false}),
    )
    .await;
    env.pool(
        "blue",
        json!({"addresses": ["192.0.2.0/30"], "serviceAllocation": {"priority": 9}}),
    )
    .await;
    let _c = env.controller(&["--leader-elect=false"]);
    let p = env
        .wait_pool("everything", |p| {
            condition(p, "Invalid")["status"] == "True"
        })
        .await;
    let invalid = condition(&p, "Invalid");
    assert_eq!(invalid["reason"], "RefusedAddresses", "{invalid}");
    let message = invalid["message"].as_str().unwrap();
    for needle in [
        r#"spec.addresses[0] "0.0.0.0/0": spans more addresses than a /8, the largest IPv4 entry a pool may have"#,
        r#"spec.addresses[0] "0.0.0.0/0": overlaps 127.0.0.0/8: loopback addresses never leave a host"#,
        r#"spec.addresses[0] "0.0.0.0/0": overlaps 224.0.0.0/4"#,
        r#"spec.addresses[0] "0.0.0.0/0": overlaps 255.255.255.255/32"#,
        r#"spec.addresses[0] "0.0.0.0/0": overlaps 169.254.0.0/16"#,
        r#"spec.addresses[0] "0.0.0.0/0": overlaps 0.0.0.0/8"#,
    ] {
        assert!(message.contains(needle), "{needle} not in {message}");
    }
    assert_eq!(condition(&p, "Ready")["status"], "False");
    let sloppy = env
        .wait_pool("sloppy-lab", |p| {
            condition(p, "Invalid")["status"] == "True"
        })
        .await;
    assert!(
        condition(&sloppy, "Invalid")["message"]
            .as_str()
            .unwrap()
            .contains("allowLinkLocal: true"),
        "{sloppy}"
    );
    env.wait_pool("lab", |p| condition(p, "Ready")["status"] == "True")
        .await;

    // The refused pool has the lowest priority number, yet every Service gets a blue address.
    for name in ["a", "b"] {
        env.service("default", name, json!({}), json!({})).await;
        let ips = env.wait_ingress("default", name, |i| !i.is_empty()).await;
        assert!(ips[0].starts_with("192.0.2."), "{name}: {ips:?}");
    }
    // Asking for a dangerous address is refused, saying why.
    for (name, ip) in [
        ("loop", "127.0.0.1"),
        ("bcast", "255.255.255.255"),
        ("meta", "169.254.169.254"),
    ] {
        env.service(
            "default",
            name,
            json!({"lodestone.dev/loadBalancerIPs": ip}),
            json!({}),
        )
        .await;
        let cond = env
            .wait_condition("default", name, |c| c["status"] == "False")
            .await;
        assert_eq!(cond["reason"], "PoolNotEligible", "{name}: {cond}");
        assert!(
            cond["message"].as_str().unwrap().contains("everything"),
            "{cond}"
        );
        let svc = env.services("default").get(name).await.unwrap();
        assert!(ingress(&svc).is_empty(), "{name} got {:?}", ingress(&svc));
    }
    // The opted-in link-local pool serves who asks for it.
    env.service(
        "default",
        "lab-svc",
        json!({"lodestone.dev/address-pool": "lab"}),
        json!({}),
    )
    .await;
    let ips = env
        .wait_ingress("default", "lab-svc", |i| !i.is_empty())
        .await;
    assert_eq!(ips, vec!["169.254.100.0"]);
}

/// A Node's own address is never handed out, nor granted when asked for; a Service that held
/// an address before a Node came with it keeps it, with a Warning Event.
#[tokio::test]
async fn a_node_address_is_never_assigned() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/29"]}))
        .await;
    node(&env, "node-a", &["192.0.2.0", "2001:db8::a"]).await;
    node(&env, "node-b", &["192.0.2.2"]).await;
    let _c = env.controller(&["--leader-elect=false"]);
    let mut got = Vec::new();
    for name in ["s1", "s2", "s3"] {
        env.service("default", name, json!({}), json!({})).await;
        got.extend(env.wait_ingress("default", name, |i| !i.is_empty()).await);
    }
    got.sort();
    assert_eq!(got, ["192.0.2.1", "192.0.2.3", "192.0.2.4"]);
    env.service(
        "default",
        "greedy",
        json!({"lodestone.dev/loadBalancerIPs": "192.0.2.2"}),
        json!({}),
    )
    .await;
    let cond = env
        .wait_condition("default", "greedy", |c| c["status"] == "False")
        .await;
    assert_eq!(cond["reason"], "NodeAddress", "{cond}");
    env.wait_event(
        "default",
        "greedy",
        "AllocationFailed",
        "address 192.0.2.2 is the address of Node node-b",
    )
    .await;
    // A Node joining with an address nobody holds: it is skipped from then on.
    node(&env, "node-c", &["192.0.2.5"]).await;
    // One with the address a Service already holds: the Service keeps it and is told.
    node(&env, "node-d", &["192.0.2.4"]).await;
    let holder = ["s1", "s2", "s3"];
    let mut who = None;
    for name in holder {
        let svc = env.services("default").get(name).await.unwrap();
        if ingress(&svc) == ["192.0.2.4"] {
            who = Some(name);
        }
    }
    let who = who.expect("someone holds 192.0.2.4");
    env.wait_event("default", who, "IPKept", "also the address of Node node-d")
        .await;
    let cond = env
        .wait_condition("default", who, |c| {
            c["message"].as_str().is_some_and(|m| m.contains("warning"))
        })
        .await;
    assert_eq!(cond["status"], "True", "{cond}");
    let svc = env.services("default").get(who).await.unwrap();
    assert_eq!(ingress(&svc), ["192.0.2.4"]);
    env.service("default", "late", json!({}), json!({})).await;
    let late = env.wait_ingress("default", "late", |i| !i.is_empty()).await;
    assert_eq!(late, ["192.0.2.6"], "192.0.2.5 belongs to node-c");
}

/// Deleting the pools CRD cleared every Service's ingress, and after re-creating it 11 of 20
/// Services came back with other addresses. Now no Service loses or changes its address: pools
/// that vanish without releasing their Services are held in the controller until pools
/// containing those addresses exist again.
#[tokio::test]
async fn the_pool_crd_deleted_and_recreated_moves_no_address() {
    const N: usize = 20;
    let env = env().await;
    let blue = json!({"addresses": ["192.0.2.0/28"], "serviceAllocation": {"priority": 1}});
    let red = json!({"addresses": ["198.51.100.0/28"], "serviceAllocation": {"priority": 2}});
    env.pool("blue", blue.clone()).await;
    env.pool("red", red.clone()).await;
    let c = env.controller(&["--leader-elect=false"]);
    for i in 0..N {
        let ann = if i % 3 == 0 {
            json!({"lodestone.dev/address-pool": "red"})
        } else {
            json!({})
        };
        env.service("default", &format!("svc-{i:02}"), ann, json!({}))
            .await;
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let before = loop {
        let all = ours(&env).await;
        if all.len() == N && all.values().all(|v| v.len() == 1) {
            break all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all assigned: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(before.values().any(|v| v[0].starts_with("198.51.100.")));
    assert!(before.values().any(|v| v[0].starts_with("192.0.2.")));
    env.wait_pool("blue", |p| p["metadata"]["finalizers"].is_array())
        .await;

    // Delete the CRD. kube-apiserver deletes the pools but our finalizer holds them (and the
    // CRD) while Services use them; a forced uninstall then strips the finalizers, which this
    // does too. The embedded server drops the pools at once.
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.delete("ipaddresspools.lodestone.dev", &DeleteParams::default())
        .await
        .expect("CRD deleted");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while crds
        .get_opt("ipaddresspools.lodestone.dev")
        .await
        .ok()
        .flatten()
        .is_some()
    {
        for name in ["blue", "red"] {
            let _ = env
                .pools()
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
        assert!(tokio::time::Instant::now() < deadline, "the CRD never went");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The controller notices the kind is gone and holds still (what it saw of the pools'
    // deletion before that, it holds in memory).
    c.wait_metric("lodestone_controller_pool_kind_served", "0")
        .await;
    assert_eq!(
        c.http_get("/readyz").await.map(|r| r.0),
        Some(503),
        "not ready while the CRD is missing"
    );
    assert_eq!(
        ours(&env).await,
        before,
        "an address moved while the CRD was gone"
    );

    // Re-create the CRD, then the pools in the other order, a new Service in between.
    env.cluster
        .apply_crds(&lodestone_crds::all_crds())
        .await
        .expect("CRDs served again");
    c.wait_metric("lodestone_controller_pool_kind_served", "1")
        .await;
    env.pool("red", red).await;
    env.service("default", "newcomer", json!({}), json!({}))
        .await;
    let newcomer = env
        .wait_ingress("default", "newcomer", |i| !i.is_empty())
        .await;
    assert!(
        !before.values().any(|v| *v == newcomer),
        "the newcomer got a held address: {newcomer:?}"
    );
    env.pool("blue", blue).await;
    c.wait_metric("lodestone_controller_services_held_without_pool", "0")
        .await;
    let after = ours(&env).await;
    let moved: BTreeMap<&String, (&Vec<String>, Option<&Vec<String>>)> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, v)| (k, (v, after.get(k))))
        .collect();
    assert!(moved.is_empty(), "moved: {moved:?}");
    // Every Service is back in a pool that exists, and says so.
    for name in before.keys() {
        let name = name.trim_start_matches("default/");
        let cond = env
            .wait_condition("default", name, |c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| !m.contains("warning"))
            })
            .await;
        assert_eq!(cond["status"], "True", "{name}: {cond}");
    }
    let log = c.log();
    assert!(
        log.contains("is gone but Services still hold its addresses"),
        "{log}"
    );
}

/// An overlapping pool's finalizer waited for every Service whose address lay in its range,
/// even those assigned from the other pool, so `kubectl delete` hung. Now it waits only for its
/// own; a Service whose address the other pool also holds moves there, address unchanged.
#[tokio::test]
async fn deleting_an_overlapping_pool_completes() {
    let env = env().await;
    let narrow = json!({"addresses": ["192.0.2.0/30"], "serviceAllocation": {"priority": 1}});
    let wide = json!({"addresses": ["192.0.2.0/29"], "serviceAllocation": {"priority": 2}});
    env.pool("narrow", narrow.clone()).await;
    env.pool("wide", wide).await;
    let _c = env.controller(&["--leader-elect=false"]);
    for name in ["s0", "s1"] {
        env.service("default", name, json!({}), json!({})).await;
    }
    let s0 = env.wait_ingress("default", "s0", |i| !i.is_empty()).await;
    let s1 = env.wait_ingress("default", "s1", |i| !i.is_empty()).await;
    for name in ["narrow", "wide"] {
        env.wait_pool(name, |p| p["metadata"]["finalizers"].is_array())
            .await;
    }
    // "wide" holds nobody of its own: it goes at once.
    env.pools()
        .delete("wide", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_pool("wide", |p| p.is_null()).await;
    // Back again, and now "narrow" goes: s0 and s1 move to "wide" with their addresses.
    env.pool(
        "wide",
        json!({"addresses": ["192.0.2.0/29"], "serviceAllocation": {"priority": 2}}),
    )
    .await;
    env.wait_pool("wide", |p| p["metadata"]["finalizers"].is_array())
        .await;
    env.pools()
        .delete("narrow", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_pool("narrow", |p| p.is_null()).await;
    for (name, held) in [("s0", &s0), ("s1", &s1)] {
        let cond = env
            .wait_condition("default", name, |c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("from pool wide"))
            })
            .await;
        assert_eq!(cond["status"], "True");
        let svc = env.services("default").get(name).await.unwrap();
        assert_eq!(&ingress(&svc), held, "{name} moved");
    }
    env.wait_pool("wide", |p| {
        p["status"]["assignedIPv4"] == 2 && condition(p, "Overlapping")["status"] == "False"
    })
    .await;
}

/// A 200 KB annotation made a condition over the API's 32 KiB limit: the status write failed
/// with 422 and was retried every 2 s forever, and the first log line was 200,241 characters.
/// Now the condition and the Event are cut to fit, written once, and log lines stay short.
#[tokio::test]
async fn a_200kb_annotation_gives_a_truncated_condition_and_no_write_loop() {
    let env = env().await;
    env.pool("blue", json!({"addresses": ["192.0.2.0/30"]}))
        .await;
    let c = env.controller(&["--leader-elect=false"]);
    let huge = "9".repeat(200_000);
    env.service(
        "default",
        "huge",
        json!({"lodestone.dev/loadBalancerIPs": huge}),
        json!({}),
    )
    .await;
    let cond = env
        .wait_condition("default", "huge", |c| c["status"] == "False")
        .await;
    assert_eq!(cond["reason"], "InvalidRequest");
    let message = cond["message"].as_str().unwrap();
    assert!(message.len() <= 32 * 1024, "{}", message.len());
    assert!(
        message.starts_with("annotation lodestone.dev/loadBalancerIPs: \"999"),
        "{}",
        &message[..80]
    );
    assert!(
        message.contains(" ... [truncated: 2000") && message.ends_with(" bytes in all]"),
        "{}",
        &message[message.len() - 80..]
    );
    let note = env
        .wait_event("default", "huge", "AllocationFailed", "truncated")
        .await;
    assert!(note.len() <= 1024, "{}", note.len());

    // No write fails, and none is repeated: the count stays put across several retry periods.
    let ok = r#"lodestone_controller_status_writes_total{result="ok"}"#;
    let error = r#"lodestone_controller_status_writes_total{result="error"}"#;
    let mut first = metric(&c, ok).await.expect("writes counted");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = metric(&c, ok).await;
        if now == Some(first) {
            break;
        }
        first = now.expect("writes counted");
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(metric(&c, ok).await, Some(first), "writes kept happening");
    assert_eq!(metric(&c, error).await.unwrap_or(0.0), 0.0);
    // Other Services are served as usual.
    env.service("default", "fine", json!({}), json!({})).await;
    env.wait_ingress("default", "fine", |i| !i.is_empty()).await;
    let log = c.log();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 5 * 1024, "a log line of {longest} bytes");
    assert!(
        log.contains(" ... [truncated: 2000"),
        "{}",
        &log[..log.len().min(4000)]
    );
}

/// A wrong certificate authority said only `client error (Connect)`; the log now names the
/// certificate problem.
#[tokio::test]
async fn a_tls_failure_is_named_in_the_log() {
    let env = env().await;
    let stranger = lodestone_harness::tls::serving_cert("someone-else", "elsewhere").unwrap();
    let kubeconfig = env.dir.path().join("wrong-ca.kubeconfig");
    std::fs::write(
        &kubeconfig,
        lodestone_harness::cluster::kubeconfig_yaml(&env.cluster.url(), &stranger.ca_pem, "t"),
    )
    .unwrap();
    let c = Controller::start(&kubeconfig, env.dir.path(), &["--leader-elect=false"]);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !c.log().contains("UnknownIssuer") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate error in the log:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = c.log();
    let line = log
        .lines()
        .find(|l| l.contains("UnknownIssuer"))
        .unwrap_or_default();
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert!(line.contains("watch failed"), "{line}");
}
