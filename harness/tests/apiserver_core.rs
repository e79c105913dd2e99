//! Core proofs of the embedded API server through a real kube-rs client built from the
//! generated kubeconfig: CRUD, optimistic concurrency, status isolation, finalizers,
//! generateName, selectors, watches (resume, 410 after compaction), restart.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::ObjectMeta;
use lodestone_harness::apiserver::{Server, ServerConfig};
use serde_json::json;

async fn server() -> (Server, kube::Client) {
    let s = Server::start(ServerConfig::default()).await.unwrap();
    let c = s.client().await.unwrap();
    (s, c)
}

fn svc(name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
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

async fn next_event<S>(stream: &mut S) -> WatchEvent<Service>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Service>>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("watch event within 20s")
            .expect("stream open")
            .expect("event ok");
        if !matches!(ev, WatchEvent::Bookmark(_)) {
            return ev;
        }
    }
}

#[tokio::test]
async fn services_create_get_list_watch() {
    let (_s, client) = server().await;
    // Not `default`: it holds the API server's own `kubernetes` Service.
    let api: Api<Service> = Api::namespaced(client.clone(), "kube-public");
    let list = api.list(&ListParams::default()).await.unwrap();
    assert!(list.items.is_empty());
    let rv = list.metadata.resource_version.unwrap();
    let mut watch = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();

    let created = api
        .create(&PostParams::default(), &svc("web", &[("app", "web")]))
        .await
        .unwrap();
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert!(
        spec.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10."))
    );
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(spec.allocate_load_balancer_node_ports, Some(true));
    let np = spec.ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&np));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    let got = api.get("web").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    let all: Api<Service> = Api::all(client.clone());
    let mut every: Vec<String> = all
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    every.sort();
    assert_eq!(every, ["default/kubernetes", "kube-public/web"]);

    let mut changed = got.clone();
    changed
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("tier".into(), "front".into());
    let replaced = api
        .replace("web", &PostParams::default(), &changed)
        .await
        .unwrap();
    api.delete("web", &DeleteParams::default()).await.unwrap();

    match next_event(&mut watch).await {
        WatchEvent::Added(s) => assert_eq!(
            s.metadata.resource_version,
            created.metadata.resource_version
        ),
        e => panic!("expected ADDED, got {e:?}"),
    }
    match next_event(&mut watch).await {
        WatchEvent::Modified(s) => assert_eq!(
            s.metadata.resource_version,
            replaced.metadata.resource_version
        ),
        e => panic!("expected MODIFIED, got {e:?}"),
    }
    match next_event(&mut watch).await {
        WatchEvent::Deleted(s) => assert_eq!(s.metadata.name.as_deref(), Some("web")),
        e => panic!("expected DELETED, got {e:?}"),
    }
    match api.get("web").await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (404, "NotFound")),
        other => panic!("expected NotFound after delete, got {other:?}"),
    }
}

#[tokio::test]
async fn stale_resource_version_conflicts() {
    let (_s, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("c".into()),
            ..Default::default()
        },
        data: Some([("a".to_string(), "1".to_string())].into()),
        ..Default::default()
    };
    let created = api.create(&PostParams::default(), &cm).await.unwrap();
    let mut first = created.clone();
    first.data = Some([("a".to_string(), "2".to_string())].into());
    api.replace("c", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut stale = created.clone();
    stale.data = Some([("a".to_string(), "3".to_string())].into());
    match api.replace("c", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 409);
            assert_eq!(e.reason, "Conflict");
            assert!(
                e.message.contains("the object has been modified"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 409, got {other:?}"),
    }
    // Without a resourceVersion an update is unconditional.
    stale.metadata.resource_version = None;
    let forced = api
        .replace("c", &PostParams::default(), &stale)
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["a"], "3");
    // AlreadyExists on a second create.
    match api.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
}

#[tokio::test]
async fn status_subresource_is_isolated_both_ways() {
    let (_s, client) = server().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &svc("lb", &[]))
        .await
        .unwrap();
    // A status write that also tries to change the spec changes only the status.
    let patch = json!({"spec": {"sessionAffinity": "ClientIP"},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}});
    let after = api
        .patch_status("lb", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        after.spec.as_ref().unwrap().session_affinity.as_deref(),
        Some("None")
    );
    let ingress = after
        .status
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref()
        .unwrap()
        .ingress
        .clone()
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.10"));
    // A main-resource write that tries to clear the status keeps it.
    let patch = json!({"metadata": {"labels": {"x": "y"}}, "status": null});
    let after = api
        .patch("lb", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(after.labels()["x"], "y");
    assert!(
        after
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_some()
    );
    // Changing the type away from LoadBalancer does not clear the status either.
    let patch = json!({"spec": {"type": "ClusterIP"}});
    let after = api
        .patch("lb", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(
        after
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_some()
    );
    assert!(after.spec.unwrap().ports.unwrap()[0].node_port.is_none());
}

use kube::ResourceExt;

#[tokio::test]
async fn finalizer_holds_deletion_until_removed() {
    let (_s, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("held".into()),
            finalizers: Some(vec!["lodestone.dev/test".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &cm).await.unwrap();
    let res = api.delete("held", &DeleteParams::default()).await.unwrap();
    let pending = res.left().expect("object returned while finalizers remain");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let still = api.get("held").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    // Deleting again is a no-op returning the object.
    let again = api
        .delete("held", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        still.metadata.resource_version
    );
    let patch = json!({"metadata": {"finalizers": null}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    match api.get("held").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("expected 404 after the last finalizer went, got {other:?}"),
    }
    match api.delete("held", &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (404, "NotFound")),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn generate_name_and_label_selectors() {
    let (_s, client) = server().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let mut s = svc("", &[("app", "web"), ("tier", "front")]);
    s.metadata.name = None;
    s.metadata.generate_name = Some("web-".into());
    let a = api.create(&PostParams::default(), &s).await.unwrap();
    let b = api.create(&PostParams::default(), &s).await.unwrap();
    assert!(a.name_any().starts_with("web-") && a.name_any().len() == "web-".len() + 5);
    assert_ne!(a.name_any(), b.name_any());
    api.create(&PostParams::default(), &svc("db", &[("app", "db")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &svc("bare", &[]))
        .await
        .unwrap();
    let names = |sel: &str| {
        let api = api.clone();
        let sel = sel.to_string();
        async move {
            let mut v: Vec<String> = api
                .list(&ListParams::default().labels(&sel))
                .await
                .unwrap()
                .items
                .iter()
                .map(|s| s.name_any())
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(names("app=web").await.len(), 2);
    assert_eq!(names("app==db").await, vec!["db"]);
    // `default/kubernetes`, the API server's own Service, has no `app` label.
    assert_eq!(names("app!=web").await, vec!["bare", "db", "kubernetes"]);
    assert_eq!(names("app in (db, nope)").await, vec!["db"]);
    assert_eq!(
        names("app notin (web)").await,
        vec!["bare", "db", "kubernetes"]
    );
    assert_eq!(names("app").await.len(), 3);
    assert_eq!(names("!app").await, vec!["bare", "kubernetes"]);
    assert_eq!(names("app=web,tier=front").await.len(), 2);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=db"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
}

#[tokio::test]
async fn watch_resumes_from_rv_and_gets_410_after_compaction() {
    let (s, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mk = |n: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(n.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let a = api.create(&PostParams::default(), &mk("a")).await.unwrap();
    api.create(&PostParams::default(), &mk("b")).await.unwrap();
    api.create(&PostParams::default(), &mk("c")).await.unwrap();
    // Resume after "a": exactly b and c, in order.
    let rv_a = a.metadata.resource_version.clone().unwrap();
    let mut w = api
        .watch(&WatchParams::default(), &rv_a)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(20), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let WatchEvent::Added(cm) = ev {
            seen.push(cm.name_any());
        }
    }
    assert_eq!(seen, vec!["b", "c"]);
    drop(w);
    s.compact();
    let mut w = api
        .watch(&WatchParams::default(), &rv_a)
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(Duration::from_secs(20), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(
                e.message.starts_with("too old resource version: "),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn unauthenticated_requests_get_401() {
    let (s, _client) = server().await;
    let mut kc = kube::config::Kubeconfig::from_yaml(&s.kubeconfig_yaml()).unwrap();
    kc.auth_infos[0].auth_info.as_mut().unwrap().token = Some("wrong".to_string().into());
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let bad = kube::Client::try_from(cfg).unwrap();
    let api: Api<Service> = Api::namespaced(bad, "default");
    match api.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized")),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn server_side_apply_owns_fields_and_conflicts() {
    let (_s, client) = server().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let cfg = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ssa", "labels": {"a": "1"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}});
    let pp = PatchParams::apply("alice");
    let created = api.patch("ssa", &pp, &Patch::Apply(&cfg)).await.unwrap();
    let mf = created.metadata.managed_fields.clone().unwrap();
    assert!(
        mf.iter()
            .any(|e| e.manager.as_deref() == Some("alice")
                && e.operation.as_deref() == Some("Apply"))
    );
    // Re-applying the same configuration is a no-op: no new resourceVersion, no watch event.
    let again = api.patch("ssa", &pp, &Patch::Apply(&cfg)).await.unwrap();
    assert_eq!(
        again.metadata.resource_version,
        created.metadata.resource_version
    );
    // Another manager changing alice's field conflicts, unless forced.
    let bob = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ssa", "labels": {"a": "2"}}});
    match api
        .patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(&bob))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
            assert!(
                e.message.contains("conflict with \"alice\""),
                "{}",
                e.message
            );
        }
        other => panic!("expected an apply conflict, got {other:?}"),
    }
    let forced = api
        .patch(
            "ssa",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(&bob),
        )
        .await
        .unwrap();
    assert_eq!(forced.labels()["a"], "2");
    // Status through apply, as the controller writes it.
    let status = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ssa"},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}});
    let st = api
        .patch_status(
            "ssa",
            &PatchParams::apply("lodestone-controller").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let ingress = st.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.7"));
    assert_eq!(st.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
}

/// The Lease protocol kube-lease-manager builds on: a holder takes the lock by server-side
/// apply, renews it by strategic merge patch, a contender's apply conflicts, and a release
/// (strategic patch with nulls) frees the fields for the next applier.
#[tokio::test]
async fn lease_locking_through_server_side_apply() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (_s, client) = server().await;
    let api: Api<Lease> = Api::namespaced(client, "lodestone-system");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("lock".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &lease).await.unwrap();
    let take = |who: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "spec": {"holderIdentity": who, "leaseDurationSeconds": 15,
                "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z"}})
    };
    let pa = PatchParams {
        field_manager: Some("mgr-a".into()),
        ..Default::default()
    };
    let pb = PatchParams {
        field_manager: Some("mgr-b".into()),
        ..Default::default()
    };
    api.patch("lock", &pa, &Patch::Apply(take("a")))
        .await
        .unwrap();
    let renew = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "spec": {"renewTime": "2026-01-01T00:00:05.000000Z", "leaseDurationSeconds": 15}});
    api.patch("lock", &pa, &Patch::Strategic(renew))
        .await
        .unwrap();
    match api.patch("lock", &pb, &Patch::Apply(take("b"))).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "Conflict")),
        other => {
            panic!("a contender must conflict while the holder owns the fields, got {other:?}")
        }
    }
    assert_eq!(
        api.get("lock")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("a")
    );
    let release = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "spec": {"acquireTime": null, "renewTime": null, "holderIdentity": null, "leaseDurationSeconds": null}});
    let released = api
        .patch("lock", &pa, &Patch::Strategic(release))
        .await
        .unwrap();
    assert!(released.spec.unwrap().holder_identity.is_none());
    let taken = api
        .patch("lock", &pb, &Patch::Apply(take("b")))
        .await
        .unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("b"));
}
