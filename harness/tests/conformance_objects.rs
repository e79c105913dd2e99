//! Conformance, written from the Kubernetes API conventions and API concepts (optimistic
//! concurrency, spec and status, finalizers, selectors, names and UIDs, error Status objects,
//! CustomResourceDefinition validation, defaulting and pruning), not from the embedded server's
//! code. Only `TestCluster` and kube's client are used, so with `TEST_ASSET_KUBE_APISERVER` and
//! `TEST_ASSET_ETCD` set the same tests run against a real kube-apiserver.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, LoadBalancerIngress, LoadBalancerStatus, Namespace, Service, ServicePort,
    ServiceSpec, ServiceStatus,
};
use kube::ResourceExt;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::ObjectMeta;
use lodestone_crds::{IPAddressPool, IPAddressPoolSpec, IPAddressPoolStatus};
use lodestone_harness::cluster::TestCluster;
use serde_json::{Value, json};

/// A raw request; returns the status code and the JSON body (Null when not JSON).
async fn raw(c: &TestCluster, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let resp = c
        .client()
        .send(req.body(kube::client::Body::from(bytes)).unwrap())
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn api_err<T: std::fmt::Debug>(r: kube::Result<T>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(e)) => *e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn lb_service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ingress_ips(s: &Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

fn with_ingress(mut s: Service, ip: &str) -> Service {
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ip.into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    s
}

async fn cluster_with_crds() -> TestCluster {
    let c = TestCluster::start().await.unwrap();
    c.apply_crds(&lodestone_crds::all_crds()).await.unwrap();
    c
}

fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
    let mut p = IPAddressPool::new(
        name,
        IPAddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        },
    );
    p.metadata.labels = Some(BTreeMap::from([("conf".to_string(), "yes".to_string())]));
    p
}

/// "Concurrency Control and Consistency": a write carrying a resourceVersion that is no longer
/// current fails with 409 Conflict, for update, for patch with a resourceVersion precondition
/// and for delete with a resourceVersion precondition; the Status names the object.
#[tokio::test]
async fn stale_resource_version_is_409_conflict_for_update_patch_and_delete() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let created = api
        .create(&PostParams::default(), &lb_service("occ"))
        .await
        .unwrap();
    let stale_rv = created.resource_version().unwrap();
    let mut first = created.clone();
    first.metadata.labels = Some(BTreeMap::from([("a".to_string(), "1".to_string())]));
    let current = api
        .replace("occ", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_ne!(current.resource_version().unwrap(), stale_rv);

    let mut second = created.clone();
    second.metadata.labels = Some(BTreeMap::from([("b".to_string(), "2".to_string())]));
    let e = api_err(api.replace("occ", &PostParams::default(), &second).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(e.message.contains("services \"occ\""), "{}", e.message);

    // The raw Status: kind Status, Failure, details naming the resource and the object.
    let mut body = serde_json::to_value(&second).unwrap();
    body["metadata"]["resourceVersion"] = json!(stale_rv);
    let (code, status) = raw(
        &c,
        "PUT",
        "/api/v1/namespaces/default/services/occ",
        Some(body),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(status["code"], 409);
    assert_eq!(status["details"]["name"], "occ");
    assert_eq!(status["details"]["kind"], "services");

    // A merge patch with a stale resourceVersion is a precondition that fails the same way.
    let patch = json!({"metadata": {"resourceVersion": stale_rv, "labels": {"c": "3"}}});
    let e = api_err(
        api.patch("occ", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));

    // Delete with a stale resourceVersion precondition: refused, object still there.
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some(stale_rv),
            uid: None,
        }),
        ..Default::default()
    };
    let e = api_err(api.delete("occ", &dp).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let live = api.get("occ").await.unwrap();
    assert_eq!(
        live.labels().get("a").map(String::as_str),
        Some("1"),
        "only the first write landed"
    );
    assert_eq!(live.resource_version(), current.resource_version());
}

/// "Spec and Status": with the status subresource, writes to the main resource ignore status and
/// writes to `/status` ignore everything but status. Service, a built-in kind.
#[tokio::test]
async fn service_status_subresource_is_isolated_both_ways() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let created = api
        .create(
            &PostParams::default(),
            &with_ingress(lb_service("iso"), "203.0.113.1"),
        )
        .await
        .unwrap();
    assert!(
        ingress_ips(&created).is_empty(),
        "status is not set on create"
    );

    // Main resource: spec change lands, status change is dropped.
    let mut o = with_ingress(created.clone(), "203.0.113.2");
    o.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
    let after = api
        .replace("iso", &PostParams::default(), &o)
        .await
        .unwrap();
    assert_eq!(
        after.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        81
    );
    assert!(ingress_ips(&after).is_empty());
    let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.3"}]}}});
    let after = api
        .patch("iso", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(
        ingress_ips(&after).is_empty(),
        "merge patch on the main resource"
    );
    // Status sent to the main resource is dropped before validation: even an invalid one.
    let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "not-an-ip"}]},
                                  "conditions": [{"type": "X", "status": "Maybe"}]}});
    let after = api
        .patch("iso", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(ingress_ips(&after).is_empty());

    // Status subresource: status lands, spec change is dropped.
    let mut o = with_ingress(after.clone(), "203.0.113.4");
    o.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 82;
    let after = api
        .replace_status("iso", &PostParams::default(), &o)
        .await
        .unwrap();
    assert_eq!(ingress_ips(&after), ["203.0.113.4"]);
    assert_eq!(
        after.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        81
    );
    let patch = json!({"spec": {"ports": [{"port": 83}]}, "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}});
    let after = api
        .patch_status("iso", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(ingress_ips(&after), ["203.0.113.5"]);
    assert_eq!(
        after.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        81
    );
    assert_eq!(ingress_ips(&api.get("iso").await.unwrap()), ["203.0.113.5"]);
}

/// "Spec and Status" and "metadata.generation" for a custom resource with the status
/// subresource: generation starts at 1 and moves only when the spec changes, never for
/// metadata or status; each endpoint ignores the other half.
#[tokio::test]
async fn custom_resource_status_isolation_and_generation() {
    let c = cluster_with_crds().await;
    let api: Api<IPAddressPool> = Api::all(c.client());
    let mut p = pool("gen", &["198.51.100.0/28"]);
    p.status = Some(IPAddressPoolStatus {
        assigned: 7,
        ..Default::default()
    });
    let created = api.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.status.as_ref().map(|s| s.assigned).unwrap_or(0),
        0,
        "status dropped on create"
    );

    // Metadata only: no bump.
    let mut o = created.clone();
    o.labels_mut().insert("extra".into(), "1".into());
    let o = api
        .replace("gen", &PostParams::default(), &o)
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1));

    // Status through /status, with a spec change riding along: status lands, spec and
    // generation do not move.
    let mut s = o.clone();
    s.spec.addresses = vec!["198.51.100.64/28".into()];
    s.status = Some(IPAddressPoolStatus {
        assigned: 3,
        ..Default::default()
    });
    let s = api
        .replace_status("gen", &PostParams::default(), &s)
        .await
        .unwrap();
    assert_eq!(s.status.as_ref().unwrap().assigned, 3);
    assert_eq!(s.spec.addresses, ["198.51.100.0/28"]);
    assert_eq!(s.metadata.generation, Some(1));

    // Spec through the main resource, with a status change riding along: spec lands and
    // generation bumps, status does not move.
    let mut m = s.clone();
    m.spec.addresses = vec!["198.51.100.128/28".into()];
    m.status.as_mut().unwrap().assigned = 99;
    let m = api
        .replace("gen", &PostParams::default(), &m)
        .await
        .unwrap();
    assert_eq!(m.spec.addresses, ["198.51.100.128/28"]);
    assert_eq!(m.status.as_ref().unwrap().assigned, 3);
    assert_eq!(m.metadata.generation, Some(2));

    // A no-op spec write does not bump.
    let same = api
        .replace("gen", &PostParams::default(), &m)
        .await
        .unwrap();
    assert_eq!(same.metadata.generation, Some(2));

    // A status write carries status only: a label change riding along is dropped too.
    let mut l = same.clone();
    l.labels_mut().insert("via-status".into(), "1".into());
    l.status.as_mut().unwrap().assigned = 4;
    let l = api
        .replace_status("gen", &PostParams::default(), &l)
        .await
        .unwrap();
    assert_eq!(l.status.as_ref().unwrap().assigned, 4);
    assert!(!l.labels().contains_key("via-status"), "{:?}", l.labels());

    // Deleting a custom resource that is held by a finalizer answers with the object, now
    // carrying its deletionTimestamp; once it is really gone, the answer is a Status naming it
    // (kube-apiserver 1.32: 200 with `status: Success` and details {name, group, kind: plural,
    // uid}), as for most built-in kinds.
    let mut held = l.clone();
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.replace("gen", &PostParams::default(), &held)
        .await
        .unwrap();
    let pending = api.delete("gen", &DeleteParams::default()).await.unwrap();
    let obj = pending
        .left()
        .expect("the custom resource, still held, is returned");
    assert_eq!(obj.name_any(), "gen");
    assert!(obj.metadata.deletion_timestamp.is_some());
    api.patch(
        "gen",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(api.get("gen").await).code, 404);
    api.create(&PostParams::default(), &pool("gen2", &["192.0.2.16/28"]))
        .await
        .unwrap();
    let (code, status) = raw(
        &c,
        "DELETE",
        "/apis/lodestone.dev/v1alpha1/ipaddresspools/gen2",
        None,
    )
    .await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["status"], "Success", "{status}");
    assert_eq!(status["details"]["name"], "gen2", "{status}");
    assert_eq!(status["details"]["group"], "lodestone.dev", "{status}");
    assert_eq!(status["details"]["kind"], "ipaddresspools", "{status}");
    assert!(status["details"]["uid"].is_string(), "{status}");
    assert_eq!(api_err(api.get("gen2").await).code, 404);
}

/// "Finalizers": delete sets deletionTimestamp and leaves the object while finalizers remain;
/// no new finalizer may be added then; removing the last one removes the object, which a watch
/// reports as DELETED.
#[tokio::test]
async fn finalizers_hold_the_object_until_removed() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let mut o = cm("held", &[]);
    o.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let created = api.create(&PostParams::default(), &o).await.unwrap();
    let mut w = api
        .watch(
            &WatchParams::default(),
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();

    let deleted = api.delete("held", &DeleteParams::default()).await.unwrap();
    let returned = deleted
        .left()
        .expect("the object, still present, is returned");
    assert!(returned.metadata.deletion_timestamp.is_some());
    let live = api.get("held").await.unwrap();
    assert!(live.metadata.deletion_timestamp.is_some());
    assert_eq!(live.finalizers(), ["example.com/hold"]);
    assert_eq!(live.uid(), created.uid());

    // Adding a finalizer to an object being deleted is refused.
    let patch = json!({"metadata": {"finalizers": ["example.com/hold", "example.com/late"]}});
    let e = api_err(
        api.patch("held", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(
        (e.code, e.reason.as_str()),
        (422, "Invalid"),
        "{}",
        e.message
    );

    // Deleting again changes nothing.
    api.delete("held", &DeleteParams::default()).await.unwrap();
    assert!(api.get("held").await.is_ok());

    let patch = json!({"metadata": {"finalizers": null}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(api_err(api.get("held").await).code, 404);

    let mut types = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .expect("event within 30s")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Modified(o) => {
                assert!(o.metadata.deletion_timestamp.is_some());
                types.push("MODIFIED");
            }
            WatchEvent::Deleted(o) => {
                assert_eq!(o.name_any(), "held");
                types.push("DELETED");
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // At least the deletionTimestamp and the finalizer removal; then DELETED, once.
    assert!(types.len() >= 2 && types[0] == "MODIFIED", "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "DELETED").count(), 1);
}

async fn names(api: &Api<ConfigMap>, labels: &str, fields: &str) -> BTreeSet<String> {
    let mut lp = ListParams::default().labels(labels);
    if !fields.is_empty() {
        lp = lp.fields(fields);
    }
    api.list(&lp)
        .await
        .unwrap_or_else(|e| panic!("list {labels:?} {fields:?}: {e}"))
        .items
        .iter()
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// "Labels and Selectors" (equality- and set-based) and the field selectors every kind supports
/// (`metadata.name`, `metadata.namespace`). Every object carries `conf=yes`, and every query
/// includes it, so objects a real server makes on its own never match.
#[tokio::test]
async fn label_selector_operators_and_metadata_field_selectors() {
    let c = TestCluster::start().await.unwrap();
    let ns: Api<Namespace> = Api::all(c.client());
    ns.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some("conf-other".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let d: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let o: Api<ConfigMap> = Api::namespaced(c.client(), "conf-other");
    let all: Api<ConfigMap> = Api::all(c.client());
    let pp = PostParams::default();
    d.create(
        &pp,
        &cm(
            "prod-web",
            &[("conf", "yes"), ("env", "prod"), ("tier", "web")],
        ),
    )
    .await
    .unwrap();
    d.create(
        &pp,
        &cm(
            "dev-web",
            &[("conf", "yes"), ("env", "dev"), ("tier", "web")],
        ),
    )
    .await
    .unwrap();
    d.create(&pp, &cm("qa", &[("conf", "yes"), ("env", "qa")]))
        .await
        .unwrap();
    d.create(&pp, &cm("plain", &[("conf", "yes")]))
        .await
        .unwrap();
    o.create(
        &pp,
        &cm(
            "prod-web",
            &[("conf", "yes"), ("env", "prod"), ("tier", "web")],
        ),
    )
    .await
    .unwrap();

    let cases: &[(&str, &[&str])] = &[
        (
            "conf=yes,env=prod",
            &["default/prod-web", "conf-other/prod-web"],
        ),
        (
            "conf=yes,env==prod",
            &["default/prod-web", "conf-other/prod-web"],
        ),
        // `!=` and `notin` also match objects without the key.
        (
            "conf=yes,env!=prod",
            &["default/dev-web", "default/qa", "default/plain"],
        ),
        (
            "conf=yes,env in (prod,dev)",
            &["default/prod-web", "default/dev-web", "conf-other/prod-web"],
        ),
        (
            "conf=yes,env notin (prod,dev)",
            &["default/qa", "default/plain"],
        ),
        (
            "conf=yes,tier",
            &["default/prod-web", "default/dev-web", "conf-other/prod-web"],
        ),
        ("conf=yes,!tier", &["default/qa", "default/plain"]),
        ("conf=yes,env,!tier", &["default/qa"]),
        ("conf=yes,env in (qa),tier", &[]),
    ];
    for (sel, want) in cases {
        assert_eq!(names(&all, sel, "").await, set(want), "selector {sel}");
    }
    assert_eq!(
        names(&all, "conf=yes", "metadata.name=prod-web").await,
        set(&["default/prod-web", "conf-other/prod-web"])
    );
    assert_eq!(
        names(&all, "conf=yes", "metadata.namespace=conf-other").await,
        set(&["conf-other/prod-web"])
    );
    assert_eq!(
        names(
            &all,
            "conf=yes",
            "metadata.namespace!=conf-other,metadata.name!=plain"
        )
        .await,
        set(&["default/prod-web", "default/dev-web", "default/qa"])
    );
    assert_eq!(
        names(&d, "conf=yes", "metadata.name==qa").await,
        set(&["default/qa"])
    );
    // An unknown field is refused rather than ignored.
    let e = api_err(all.list(&ListParams::default().fields("data.x=1")).await);
    assert_eq!(e.code, 400, "{}", e.message);
}

/// "Names and UIDs" / "generateName": the server appends 5 random characters from
/// apimachinery's alphabet; every object gets a fresh UID, also when a name is reused, and a
/// creationTimestamp in RFC 3339 at second precision.
#[tokio::test]
async fn generate_name_uid_and_creation_timestamp() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let alphabet = "bcdfghjklmnpqrstvwxz2456789";
    let mut names = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for _ in 0..5 {
        let mut o = cm("", &[]);
        o.metadata.name = None;
        o.metadata.generate_name = Some("gen-".into());
        let made = api.create(&PostParams::default(), &o).await.unwrap();
        let name = made.name_any();
        let suffix = name.strip_prefix("gen-").expect("prefix kept");
        assert_eq!(suffix.len(), 5, "{name}");
        assert!(suffix.chars().all(|ch| alphabet.contains(ch)), "{name}");
        assert_eq!(made.metadata.generate_name.as_deref(), Some("gen-"));
        names.insert(name);
        uids.insert(made.uid().unwrap());
    }
    assert_eq!((names.len(), uids.len()), (5, 5));

    // A name given alongside generateName wins.
    let mut o = cm("explicit", &[]);
    o.metadata.generate_name = Some("gen-".into());
    assert_eq!(
        api.create(&PostParams::default(), &o)
            .await
            .unwrap()
            .name_any(),
        "explicit"
    );

    // Re-creating a name gives a new UID.
    let uid1 = api.get("explicit").await.unwrap().uid().unwrap();
    api.delete("explicit", &DeleteParams::default())
        .await
        .unwrap();
    let uid2 = api
        .create(&PostParams::default(), &cm("explicit", &[]))
        .await
        .unwrap()
        .uid()
        .unwrap();
    assert_ne!(uid1, uid2);
    assert!(!uids.contains(&uid2));
    // UIDs are RFC 4122 strings.
    let uuid = regex::Regex::new("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        .unwrap();
    assert!(uuid.is_match(&uid2), "{uid2}");

    let (code, body) = raw(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps/explicit",
        None,
    )
    .await;
    assert_eq!(code, 200);
    let ts = body["metadata"]["creationTimestamp"].as_str().unwrap();
    let rfc3339 = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$").unwrap();
    assert!(rfc3339.is_match(ts), "{ts}");
    // Clients cannot set it: a value sent on create is replaced.
    let (code, body) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "old", "creationTimestamp": "2001-01-01T00:00:00Z",
                         "uid": "00000000-0000-0000-0000-000000000000"}})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_ne!(
        body["metadata"]["creationTimestamp"],
        "2001-01-01T00:00:00Z"
    );
    assert_ne!(
        body["metadata"]["uid"],
        "00000000-0000-0000-0000-000000000000"
    );
}

/// "Error responses": failures are a `Status` with `status: Failure`, the HTTP code, a
/// CamelCase reason and `details` naming the object and the resource (plural), and, for custom
/// resources, the group.
#[tokio::test]
async fn not_found_and_already_exists_status_shapes() {
    let c = cluster_with_crds().await;
    let (code, s) = raw(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps/nope",
        None,
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["reason"], "NotFound");
    assert_eq!(s["code"], 404);
    assert_eq!(s["message"], "configmaps \"nope\" not found");
    assert_eq!(s["details"]["name"], "nope");
    assert_eq!(s["details"]["kind"], "configmaps");

    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dup"}});
    let (code, _) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(body.clone()),
    )
    .await;
    assert_eq!(code, 201);
    let (code, s) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(body),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["reason"], "AlreadyExists");
    assert_eq!(s["code"], 409);
    assert_eq!(s["message"], "configmaps \"dup\" already exists");
    assert_eq!(s["details"]["name"], "dup");
    assert_eq!(s["details"]["kind"], "configmaps");

    let (code, s) = raw(
        &c,
        "GET",
        "/apis/lodestone.dev/v1alpha1/ipaddresspools/nope",
        None,
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(s["reason"], "NotFound");
    assert_eq!(
        s["message"],
        "ipaddresspools.lodestone.dev \"nope\" not found"
    );
    assert_eq!(s["details"]["group"], "lodestone.dev");
    assert_eq!(s["details"]["kind"], "ipaddresspools");

    let pools: Api<IPAddressPool> = Api::all(c.client());
    pools
        .create(&PostParams::default(), &pool("twice", &["192.0.2.0/28"]))
        .await
        .unwrap();
    let e = api_err(
        pools
            .create(&PostParams::default(), &pool("twice", &["192.0.2.0/28"]))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        e.message,
        "ipaddresspools.lodestone.dev \"twice\" already exists"
    );
}

/// CustomResourceDefinition structural schemas: invalid objects get 422 Invalid with one cause
/// per failing field (CEL rules and OpenAPI constraints alike); defaults are applied; fields
/// the schema does not know are pruned, at every level.
#[tokio::test]
async fn custom_resource_validation_defaulting_and_pruning() {
    let c = cluster_with_crds().await;
    let path = "/apis/lodestone.dev/v1alpha1/ipaddresspools";
    let (code, s) = raw(
        &c,
        "POST",
        path,
        Some(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "bad"},
            "spec": {"addresses": ["not-an-address"], "autoAssign": "yes",
                     "serviceAllocation": {"priority": -1}}}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["name"], "bad");
    assert_eq!(s["details"]["group"], "lodestone.dev");
    assert_eq!(s["details"]["kind"], "IPAddressPool");
    let msg = s["message"].as_str().unwrap();
    assert!(
        msg.starts_with("IPAddressPool.lodestone.dev \"bad\" is invalid: "),
        "{msg}"
    );
    let causes = s["details"]["causes"].as_array().expect("causes");
    let fields: BTreeSet<&str> = causes.iter().filter_map(|c| c["field"].as_str()).collect();
    for f in ["spec.autoAssign", "spec.serviceAllocation.priority"] {
        assert!(fields.contains(f), "a cause for {f}: {causes:?}");
    }
    for cause in causes {
        assert!(
            cause["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("Field")),
            "{cause}"
        );
        assert!(
            cause["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{cause}"
        );
    }

    // The CEL rule on its own (types valid): one cause on spec.addresses with the rule's message.
    let (code, s) = raw(
        &c,
        "POST",
        path,
        Some(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "bad2"}, "spec": {"addresses": ["not-an-address"]}}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    let causes = s["details"]["causes"].as_array().expect("causes");
    assert!(
        causes.iter().any(|c| c["field"] == "spec.addresses"
            && c["message"]
                .as_str()
                .is_some_and(|m| m.contains("each entry must be a CIDR"))),
        "{causes:?}"
    );
    // minItems.
    let (code, s) = raw(
        &c,
        "POST",
        path,
        Some(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "empty"}, "spec": {"addresses": []}}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert!(
        s["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["field"] == "spec.addresses")
    );

    // Defaults and pruning.
    let (code, o) = raw(
        &c,
        "POST",
        path,
        Some(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "good"}, "topLevel": 1,
            "spec": {"addresses": ["203.0.113.0/28"], "bogus": true,
                     "serviceAllocation": {"priority": 1, "nested": "x"}}}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{o}");
    assert_eq!(o["spec"]["autoAssign"], true, "defaulted");
    assert_eq!(o["spec"]["avoidBuggyIPs"], false, "defaulted");
    assert!(o.get("topLevel").is_none(), "pruned: {o}");
    assert!(o["spec"].get("bogus").is_none(), "pruned: {o}");
    assert!(
        o["spec"]["serviceAllocation"].get("nested").is_none(),
        "pruned: {o}"
    );
    assert_eq!(o["spec"]["serviceAllocation"]["priority"], 1);
    // What was stored is what was returned.
    let (_, stored) = raw(&c, "GET", &format!("{path}/good"), None).await;
    assert_eq!(stored["spec"], o["spec"]);
}

/// "Concurrency Control": without a resourceVersion an update is unconditional (ConfigMaps
/// allow it); PUT does not create (404); the name and namespace in the body must match the URL
/// (400); an invalid name is 422 with a cause on `metadata.name`; kinds whose strategy does not
/// track it have no `metadata.generation`.
#[tokio::test]
async fn update_preconditions_identity_and_name_validation() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let created = api
        .create(&PostParams::default(), &cm("plain", &[]))
        .await
        .unwrap();
    assert_eq!(
        created.metadata.generation, None,
        "ConfigMaps have no generation"
    );
    let mut o = cm("plain", &[("k", "v")]);
    o.metadata.resource_version = None;
    let updated = api
        .replace("plain", &PostParams::default(), &o)
        .await
        .unwrap();
    assert_eq!(updated.labels().get("k").map(String::as_str), Some("v"));
    assert_eq!(updated.uid(), created.uid());
    assert_eq!(updated.metadata.generation, None);

    // PUT of a missing object is 404 (no create-on-update for ConfigMaps).
    let e = api_err(
        api.replace("missing", &PostParams::default(), &cm("missing", &[]))
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    // Merge patch and delete of a missing object: 404 too.
    let e = api_err(
        api.patch(
            "missing",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "b"}})),
        )
        .await,
    );
    assert_eq!(e.code, 404);
    assert_eq!(
        api_err(api.delete("missing", &DeleteParams::default()).await).code,
        404
    );

    // Body name differs from the URL: 400 BadRequest.
    let (code, s) = raw(
        &c,
        "PUT",
        "/api/v1/namespaces/default/configmaps/plain",
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}})),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (400, Some("BadRequest")),
        "{s}"
    );
    // Body namespace differs from the URL: 400 BadRequest.
    let (code, s) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "kube-system"}})),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (400, Some("BadRequest")),
        "{s}"
    );

    // Names are DNS subdomains: upper case is refused with a cause on metadata.name.
    let (code, s) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}})),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")), "{s}");
    assert_eq!(s["details"]["kind"], "ConfigMap");
    assert!(
        s["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["field"] == "metadata.name"),
        "{s}"
    );
}

/// A watch with a field selector on `metadata.name` sees only that object.
#[tokio::test]
async fn watch_with_a_name_field_selector_sees_only_that_object() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = api
        .watch(&WatchParams::default().fields("metadata.name=wanted"), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("other", &[]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("wanted", &[]))
        .await
        .unwrap();
    api.delete("other", &DeleteParams::default()).await.unwrap();
    api.delete("wanted", &DeleteParams::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .expect("event within 30s")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.name_any())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.name_any())),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED wanted", "DELETED wanted"]);
}

/// "Retrieving large results sets in chunks": following `continue` yields every object exactly
/// once, and a page that has a `continue` is within `limit`. The conventions let a server ignore
/// `limit` and answer everything at once, which the embedded server does; kube-apiserver pages.
#[tokio::test]
async fn paging_with_limit_and_continue_yields_each_object_once() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    for i in 0..7 {
        api.create(
            &PostParams::default(),
            &cm(&format!("page-{i}"), &[("conf", "yes")]),
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().labels("conf=yes").limit(3);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.unwrap();
        seen.extend(page.items.iter().map(|o| o.name_any()));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(t) => {
                // A server that pages keeps pages within the limit.
                assert!(page.items.len() <= 3, "page of {}", page.items.len());
                token = Some(t);
            }
            None => break,
        }
    }
    seen.sort();
    let want: Vec<String> = (0..7).map(|i| format!("page-{i}")).collect();
    assert_eq!(seen, want);
}

/// Collection deletes honour the label selector; `dryRun=All` validates and answers without
/// persisting; a malformed selector is 400 BadRequest; `fieldValidation=Strict` refuses
/// unknown fields of a custom resource with 400 instead of pruning them.
#[tokio::test]
async fn delete_collection_dry_run_bad_selector_and_strict_field_validation() {
    let c = cluster_with_crds().await;
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    for (n, l) in [("d1", "gone"), ("d2", "gone"), ("k1", "kept")] {
        api.create(
            &PostParams::default(),
            &cm(n, &[("conf", "yes"), ("fate", l)]),
        )
        .await
        .unwrap();
    }
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("fate=gone"),
    )
    .await
    .unwrap();
    assert_eq!(names(&api, "conf=yes", "").await, set(&["default/k1"]));

    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let answered = api
        .create(&dry, &cm("dry", &[("conf", "yes")]))
        .await
        .unwrap();
    assert_eq!(answered.name_any(), "dry");
    assert_eq!(
        api_err(api.get("dry").await).code,
        404,
        "dry run persisted nothing"
    );

    let e = api_err(api.list(&ListParams::default().labels("a in (b")).await);
    assert_eq!(
        (e.code, e.reason.as_str()),
        (400, "BadRequest"),
        "{}",
        e.message
    );

    let (code, s) = raw(
        &c,
        "POST",
        "/apis/lodestone.dev/v1alpha1/ipaddresspools?fieldValidation=Strict",
        Some(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "strict"},
            "spec": {"addresses": ["203.0.113.0/28"], "bogus": true}}),
        ),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (400, Some("BadRequest")),
        "{s}"
    );
    assert!(
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field \"spec.bogus\"")),
        "{s}"
    );
}

/// Service defaulting and allocation as the API reference describes it for a `LoadBalancer`
/// Service with one port: a cluster IP from the service CIDR (10.96.0.0/12 on both servers), a
/// node port in 30000-32767, single-stack IPv4, protocol TCP, targetPort = port, Cluster traffic
/// policies, no session affinity, node ports allocated; changing the type to ClusterIP drops the
/// node ports.
#[tokio::test]
async fn load_balancer_service_defaults_and_allocations() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let s = api
        .create(&PostParams::default(), &lb_service("defaults"))
        .await
        .unwrap();
    let spec = s.spec.clone().unwrap();
    let cidr: ipnet::Ipv4Net = "10.96.0.0/12".parse().unwrap();
    let ip: std::net::Ipv4Addr = spec.cluster_ip.as_deref().unwrap().parse().unwrap();
    assert!(cidr.contains(&ip), "{ip}");
    assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(spec.allocate_load_balancer_node_ports, Some(true));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
    );
    let node_port = port.node_port.expect("a node port");
    assert!((30000..=32767).contains(&node_port), "{node_port}");

    let patch = json!({"spec": {"type": "ClusterIP"}});
    let s = api
        .patch("defaults", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let spec = s.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.ports.unwrap()[0].node_port, None, "node port released");
    assert_eq!(
        spec.cluster_ip.as_deref(),
        Some(ip.to_string().as_str()),
        "cluster IP kept"
    );
}

/// "Semantics for watch": a watch from resourceVersion "0" starts with a synthetic ADDED event
/// for every existing object, then continues with changes.
#[tokio::test]
async fn watch_from_zero_starts_with_the_current_objects() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    for n in ["one", "two"] {
        api.create(&PostParams::default(), &cm(n, &[]))
            .await
            .unwrap();
    }
    let mut w = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .expect("event within 30s")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => {
                seen.insert(o.name_any());
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, set(&["one", "two"]));
    api.create(&PostParams::default(), &cm("three", &[]))
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .expect("event within 30s")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => {
                assert_eq!(o.name_any(), "three");
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Label keys and values follow the documented syntax (value at most 63 characters, alphanumeric
/// at both ends): a bad one is 422 with a cause under `metadata.labels`.
#[tokio::test]
async fn malformed_labels_are_422() {
    let c = TestCluster::start().await.unwrap();
    for (k, v) in [
        ("ok", "x".repeat(64)),
        ("ok", "-leading".to_string()),
        ("bad key!", "v".to_string()),
    ] {
        let (code, s) = raw(
            &c,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "labelled", "labels": {k: v}}})),
        )
        .await;
        assert_eq!(
            (code, s["reason"].as_str()),
            (422, Some("Invalid")),
            "{k}={v}: {s}"
        );
        assert!(
            s["details"]["causes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["field"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("metadata.labels"))),
            "{s}"
        );
    }
}

/// System fields cannot be rewritten by an update: a different `uid` is a failed precondition
/// (409), a different `creationTimestamp` is ignored.
#[tokio::test]
async fn updates_cannot_rewrite_system_metadata() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let created = api
        .create(&PostParams::default(), &cm("sys", &[]))
        .await
        .unwrap();
    let mut o = created.clone();
    o.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    let e = api_err(api.replace("sys", &PostParams::default(), &o).await);
    assert_eq!(
        (e.code, e.reason.as_str()),
        (409, "Conflict"),
        "{}",
        e.message
    );

    let mut body = serde_json::to_value(&created).unwrap();
    body["metadata"]["creationTimestamp"] = json!("2001-01-01T00:00:00Z");
    body["metadata"]["labels"] = json!({"touched": "yes"});
    let (code, after) = raw(
        &c,
        "PUT",
        "/api/v1/namespaces/default/configmaps/sys",
        Some(body),
    )
    .await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["metadata"]["labels"]["touched"], "yes");
    assert_eq!(
        after["metadata"]["creationTimestamp"],
        serde_json::to_value(&created.metadata.creation_timestamp).unwrap()
    );
}

/// "Resource versions" for list: `resourceVersionMatch=Exact` returns the state at that version,
/// or 410 Gone when the server no longer has it; never the current state.
#[tokio::test]
async fn exact_list_is_the_old_state_or_410() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    api.create(&PostParams::default(), &cm("early", &[("conf", "yes")]))
        .await
        .unwrap();
    let rv = api
        .list(&ListParams::default().labels("conf=yes"))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &cm("late", &[("conf", "yes")]))
        .await
        .unwrap();
    let (code, body) = raw(
        &c,
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?labelSelector=conf%3Dyes&resourceVersion={rv}&resourceVersionMatch=Exact"
        ),
        None,
    )
    .await;
    match code {
        200 => {
            let names: Vec<&str> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| o["metadata"]["name"].as_str())
                .collect();
            assert_eq!(names, ["early"], "the state at {rv}");
            assert_eq!(body["metadata"]["resourceVersion"], rv.as_str());
        }
        410 => assert_eq!(body["reason"], "Expired", "{body}"),
        other => panic!("{other}: {body}"),
    }
}

/// Strategic merge patch is defined only for built-in kinds: a custom resource answers 415.
#[tokio::test]
async fn strategic_merge_patch_on_a_custom_resource_is_415() {
    let c = cluster_with_crds().await;
    let api: Api<IPAddressPool> = Api::all(c.client());
    api.create(&PostParams::default(), &pool("smp", &["192.0.2.0/28"]))
        .await
        .unwrap();
    let e = api_err(
        api.patch(
            "smp",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"autoAssign": false}})),
        )
        .await,
    );
    assert_eq!(e.code, 415, "{}", e.message);
}

async fn create_service(c: &TestCluster, name: &str) {
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    api.create(&PostParams::default(), &lb_service(name))
        .await
        .unwrap();
}

/// Service status is validated like the rest of the object: ingress entries must carry valid IP
/// addresses and a known ipMode (the fields Lodestone writes).
#[tokio::test]
async fn service_status_ingress_is_validated() {
    let c = TestCluster::start().await.unwrap();
    create_service(&c, "st").await;
    let path = "/api/v1/namespaces/default/services/st/status";
    for (ingress, field) in [
        (
            json!({"ip": "not-an-ip"}),
            "status.loadBalancer.ingress[0].ip",
        ),
        (
            json!({"ip": "203.0.113.7", "ipMode": "Bogus"}),
            "status.loadBalancer.ingress[0].ipMode",
        ),
    ] {
        let resp = c
            .client()
            .send(
                http::Request::patch(path)
                    .header("Content-Type", "application/merge-patch+json")
                    .body(kube::client::Body::from(
                        json!({"status": {"loadBalancer": {"ingress": [ingress]}}})
                            .to_string()
                            .into_bytes(),
                    ))
                    .unwrap(),
            )
            .await
            .unwrap();
        let code = resp.status().as_u16();
        let s: Value =
            serde_json::from_slice(&resp.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(
            (code, s["reason"].as_str()),
            (422, Some("Invalid")),
            "{field}: {s}"
        );
        assert!(
            s["details"]["causes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["field"] == field),
            "{field}: {s}"
        );
    }
}

/// events.k8s.io/v1 Events require `eventTime`, `reportingController`, `reportingInstance`,
/// `action`, `reason` and a `type` of Normal or Warning; EndpointSlices require `addressType`.
#[tokio::test]
async fn events_and_endpoint_slices_are_validated() {
    let c = TestCluster::start().await.unwrap();
    let good_event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "ev", "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "lodestone.dev/controller", "reportingInstance": "controller-0",
        "action": "Assign", "reason": "Assigned", "type": "Normal", "note": "ok",
        "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "default", "name": "x"}});
    let path = "/apis/events.k8s.io/v1/namespaces/default/events";
    let (code, body) = raw(&c, "POST", path, Some(good_event.clone())).await;
    assert_eq!(code, 201, "{body}");
    for (drop, field) in [
        ("eventTime", "eventTime"),
        ("reportingController", "reportingController"),
        ("reportingInstance", "reportingInstance"),
    ] {
        let mut bad = good_event.clone();
        bad["metadata"]["name"] = json!(format!("ev-{}", drop.to_lowercase()));
        bad.as_object_mut().unwrap().remove(drop);
        let (code, s) = raw(&c, "POST", path, Some(bad)).await;
        assert_eq!(code, 422, "without {drop}: {s}");
        assert!(
            s["details"]["causes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["field"] == field),
            "without {drop}: {s}"
        );
    }
    let mut bad = good_event.clone();
    bad["metadata"]["name"] = json!("ev-type");
    bad["type"] = json!("Info");
    let (code, s) = raw(&c, "POST", path, Some(bad)).await;
    assert_eq!(code, 422, "{s}");

    let (code, s) = raw(
        &c,
        "POST",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        Some(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "es"}, "endpoints": []}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert!(
        s["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["field"] == "addressType"),
        "{s}"
    );
}

fn events_v1(meta: Value) -> Value {
    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": meta,
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "lodestone.dev/test",
        "reportingInstance": "conformance", "action": "Test", "reason": "Tested", "type": "Normal",
        "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "default", "name": "web"}})
}

fn cause_fields(s: &Value) -> Vec<(String, String)> {
    s["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["field"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// "Names": a `generateName` is validated as a name prefix of the kind (so it may end in '-' but
/// not in '.'), and events.k8s.io Events, unlike core ones, need DNS-subdomain names. Every
/// Event Lodestone wrote was refused on kube-apiserver for `generateName: "<service>."`.
#[tokio::test]
async fn generate_name_is_a_name_prefix_and_event_names_are_subdomains() {
    let c = TestCluster::start().await.unwrap();
    let events = "/apis/events.k8s.io/v1/namespaces/default/events";
    let (code, s) = raw(
        &c,
        "POST",
        events,
        Some(events_v1(json!({"generateName": "web."}))),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")), "{s}");
    let causes = cause_fields(&s);
    assert!(
        causes.iter().any(|(f, m)| f == "metadata.generateName"
            && m.starts_with(
                "Invalid value: \"web.\": a lowercase RFC 1123 subdomain must consist of"
            )),
        "{s}"
    );
    for bad in ["Web.1", "web_1", "web..1", "web."] {
        let (code, s) = raw(&c, "POST", events, Some(events_v1(json!({"name": bad})))).await;
        assert_eq!(code, 422, "{bad}: {s}");
        assert!(
            cause_fields(&s).iter().any(|(f, _)| f == "metadata.name"),
            "{s}"
        );
    }
    // How the controller and the speaker name their Events.
    let name = lodestone_crds::events::event_name("web", 1_764_720_000_123_456_789);
    let (code, s) = raw(&c, "POST", events, Some(events_v1(json!({"name": name})))).await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(s["metadata"]["name"], name.as_str());
    let (code, s) = raw(
        &c,
        "POST",
        events,
        Some(events_v1(json!({"generateName": "web-"}))),
    )
    .await;
    assert_eq!(code, 201, "{s}");

    // The core API keeps its legacy rule: a trailing dot and upper case are accepted there.
    let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "web."},
        "involvedObject": {"kind": "Service", "namespace": "default", "name": "web"},
        "reason": "Tested", "type": "Normal", "firstTimestamp": "2026-01-01T00:00:00Z"});
    let (code, s) = raw(&c, "POST", "/api/v1/namespaces/default/events", Some(core)).await;
    assert_eq!(code, 201, "{s}");

    // Other kinds: a ConfigMap prefix follows the subdomain rule, a Service's the DNS-1035 one.
    let (code, s) = raw(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen."}}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{s}");
    assert!(
        cause_fields(&s)
            .iter()
            .any(|(f, _)| f == "metadata.generateName"),
        "{s}"
    );
    let mut svc = serde_json::to_value(lb_service("x")).unwrap();
    svc["metadata"] = json!({"generateName": "web."});
    let (code, s) = raw(&c, "POST", "/api/v1/namespaces/default/services", Some(svc)).await;
    assert_eq!(code, 422, "{s}");
    assert!(
        cause_fields(&s)
            .iter()
            .any(|(f, m)| f == "metadata.generateName" && m.contains("DNS-1035")),
        "{s}"
    );
}

fn probe_crd(spec_schema: Value) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "probes.conformance.example.com"},
        "spec": {"group": "conformance.example.com", "scope": "Cluster",
            "names": {"kind": "Probe", "plural": "probes", "singular": "probe", "listKind": "ProbeList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}}}]}})
}

/// Every message of a 422: the causes' messages with their fields, and the Status message.
fn all_messages(s: &Value) -> String {
    let mut out = s["message"].as_str().unwrap_or_default().to_owned();
    for (f, m) in cause_fields(s) {
        out.push_str(&format!("\n{f}: {m}"));
    }
    out
}

/// "CustomResourceDefinition validation": a schema must be structural (every field typed, no
/// types inside junctors), and its CEL rules must fit the static cost budget, which kube-apiserver
/// estimates from maxItems, maxProperties and maxLength. The paths differ between the servers
/// (kube-apiserver reports `spec.validation.openAPIV3Schema...` for a single version), so the
/// test reads the part from `openAPIV3Schema` on.
#[tokio::test]
async fn crds_must_be_structural_and_their_rules_within_the_cost_budget() {
    let c = TestCluster::start().await.unwrap();
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let refused = [
        (
            json!({"type": "object", "properties": {"x": {"description": "untyped"}}}),
            "openAPIV3Schema.properties[spec].properties[x].type: Required value: must not be empty for specified object fields",
        ),
        (
            json!({"type": "object", "properties": {"x": {"type": "array", "items": {}}}}),
            "openAPIV3Schema.properties[spec].properties[x].items.type: Required value: must not be empty for specified array items",
        ),
        (
            json!({"type": "object", "properties": {"x": {"type": "string", "anyOf": [{"type": "string"}]}}}),
            "openAPIV3Schema.properties[spec].properties[x].anyOf[0].type: Forbidden: must be empty to be structural",
        ),
        // A rule over strings without maxLength: each is taken to be as long as a request.
        (
            json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": 1024,
                "items": {"type": "string"},
                "x-kubernetes-validations": [{"rule": "self.all(a, isCIDR(a))"}]}}}),
            "openAPIV3Schema.properties[spec].properties[l].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of 32.2x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
        ),
        // A list without maxItems: as many items as fit in a request.
        (
            json!({"type": "object", "properties": {"l": {"type": "array",
                "items": {"type": "string", "maxLength": 100},
                "x-kubernetes-validations": [{"rule": "self.all(a, self.exists(b, a == b))"}]}}}),
            "openAPIV3Schema.properties[spec].properties[l].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x",
        ),
        // Bounded, but still over: 1,118 items compared pairwise.
        (
            json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": 1118,
                "items": {"type": "string", "maxLength": 10},
                "x-kubernetes-validations": [{"rule": "self.all(a, self.exists_one(b, a == b))"}]}}}),
            "x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of 1.000610x",
        ),
    ];
    for (schema, want) in refused {
        let (code, s) = raw(&c, "POST", crds, Some(probe_crd(schema.clone()))).await;
        assert_eq!(
            (code, s["reason"].as_str()),
            (422, Some("Invalid")),
            "{schema}: {s}"
        );
        let got = all_messages(&s);
        assert!(got.contains(want), "{schema}: wanted {want:?} in\n{got}");
    }
    // The same rules with bounds are accepted (one item fewer for the pairwise one).
    let accepted = [
        json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": 1024,
            "items": {"type": "string", "maxLength": 100},
            "x-kubernetes-validations": [{"rule": "self.all(a, isCIDR(a))"}]}}}),
        json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": 1117,
            "items": {"type": "string", "maxLength": 10},
            "x-kubernetes-validations": [{"rule": "self.all(a, self.exists_one(b, a == b))"}]}}}),
    ];
    for schema in accepted {
        let (code, s) = raw(
            &c,
            "POST",
            &format!("{crds}?dryRun=All"),
            Some(probe_crd(schema.clone())),
        )
        .await;
        assert_eq!(code, 201, "{schema}: {s}");
    }
    // Lodestone's own CRDs fit (they did not, before their lists and strings were bounded).
    c.apply_crds(&lodestone_crds::all_crds()).await.unwrap();
}

/// An L2Advertisement with no spec at all (the install example) is accepted and stored with
/// `spec: {}`, which reads as "every pool, from every node".
#[tokio::test]
async fn an_advertisement_without_spec_is_accepted_and_defaulted() {
    let c = cluster_with_crds().await;
    let (code, s) = raw(
        &c,
        "POST",
        "/apis/lodestone.dev/v1alpha1/l2advertisements",
        Some(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "L2Advertisement",
            "metadata": {"name": "default"}}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(s["spec"], json!({}));
    let api: Api<lodestone_crds::L2Advertisement> = Api::all(c.client());
    let stored = api.get("default").await.unwrap();
    assert_eq!(stored.spec, lodestone_crds::L2AdvertisementSpec::default());
}
