//! kube-runtime against the embedded server: watcher and Controller over Services and the
//! Lodestone custom resources, CRD schema validation, status subresource of a custom resource,
//! and surviving an API-server restart.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use lodestone_crds::{IPAddressPool, IPAddressPoolSpec};
use lodestone_harness::cluster::TestCluster;
use serde_json::json;
use tokio::sync::mpsc;

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

fn svc(name: &str) -> Service {
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

async fn cluster() -> TestCluster {
    let c = TestCluster::start().await.unwrap();
    c.apply_crds(&lodestone_crds::all_crds()).await.unwrap();
    c
}

/// Drain a watcher until `want` events (as "kind:name" strings) arrived; Init events ignored.
async fn collect<K, S>(stream: &mut S, want: usize) -> Vec<String>
where
    K: kube::Resource,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    let mut out = Vec::new();
    while out.len() < want {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("event within 30s")
            .expect("stream open");
        match ev {
            Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                out.push(format!("apply:{}", o.name_any()))
            }
            Ok(watcher::Event::Delete(o)) => out.push(format!("delete:{}", o.name_any())),
            Ok(_) | Err(_) => {}
        }
    }
    out
}

/// Poll a watcher until its initial list is complete.
async fn init_done<K, S>(stream: &mut S)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("event within 30s")
            .expect("stream open");
        if let Ok(watcher::Event::InitDone) = ev {
            return;
        }
    }
}

#[tokio::test]
async fn watcher_sees_services_and_pools_in_order() {
    let c = cluster().await;
    let pools: Api<IPAddressPool> = Api::all(c.client());
    let svcs: Api<Service> = Api::namespaced(c.client(), "default");
    let mut pw = watcher(pools.clone(), watcher::Config::default()).boxed();
    let mut sw = watcher(Api::<Service>::all(c.client()), watcher::Config::default()).boxed();
    // Watchers are lazy: drive both through their initial list before changing anything.
    init_done(&mut pw).await;
    init_done(&mut sw).await;

    pools
        .create(&PostParams::default(), &pool("p1", &["192.0.2.0/28"]))
        .await
        .unwrap();
    svcs.create(&PostParams::default(), &svc("s1"))
        .await
        .unwrap();
    let patch = json!({"spec": {"addresses": ["192.0.2.0/27"]}});
    let p = pools
        .patch("p1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(2));
    pools.delete("p1", &DeleteParams::default()).await.unwrap();
    svcs.delete("s1", &DeleteParams::default()).await.unwrap();

    assert_eq!(
        collect(&mut pw, 3).await,
        vec!["apply:p1", "apply:p1", "delete:p1"]
    );
    assert_eq!(collect(&mut sw, 2).await, vec!["apply:s1", "delete:s1"]);
}

type Reconciled = (String, Option<i64>, bool);

/// Wait until the controller reconciled `name` at generation `generation`.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Reconciled>,
    name: &str,
    generation: i64,
) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (n, g, _) = rx.recv().await.expect("controller alive");
            if n == name && g == Some(generation) {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn controller_reconciles_custom_resources() {
    let c = cluster().await;
    let pools: Api<IPAddressPool> = Api::all(c.client());
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Option<i64>, bool)>();
    struct Ctx {
        tx: mpsc::UnboundedSender<(String, Option<i64>, bool)>,
    }
    async fn reconcile(p: Arc<IPAddressPool>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        let gone = p.metadata.deletion_timestamp.is_some();
        let _ = ctx.tx.send((p.name_any(), p.metadata.generation, gone));
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<IPAddressPool>, _: &kube::Error, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let ctrl = Controller::new(pools.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(Ctx { tx }))
        .for_each(|_| async {});
    let handle = tokio::spawn(ctrl);

    pools
        .create(&PostParams::default(), &pool("p2", &["198.51.100.0/24"]))
        .await
        .unwrap();
    wait_for(&mut rx, "p2", 1)
        .await
        .expect("reconciled generation 1");
    // A status write does not bump the generation; a spec change does.
    let status = json!({"status": {"assigned": 0, "available": 256}});
    let s = pools
        .patch_status("p2", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(s.metadata.generation, Some(1));
    assert_eq!(s.status.as_ref().map(|st| st.available), Some(256));
    let spec = json!({"spec": {"addresses": ["198.51.100.0/25"]}, "status": {"available": 1}});
    let s = pools
        .patch("p2", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    assert_eq!(s.metadata.generation, Some(2));
    assert_eq!(
        s.status.as_ref().map(|st| st.available),
        Some(256),
        "main resource write must not touch status"
    );
    wait_for(&mut rx, "p2", 2)
        .await
        .expect("reconciled generation 2");
    handle.abort();
}

#[tokio::test]
async fn invalid_pool_is_rejected_with_causes() {
    let c = cluster().await;
    let pools: Api<IPAddressPool> = Api::all(c.client());
    match pools
        .create(&PostParams::default(), &pool("bad", &["not-an-address"]))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
            assert!(
                e.message
                    .starts_with("IPAddressPool.lodestone.dev \"bad\" is invalid: spec.addresses"),
                "{}",
                e.message
            );
        }
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
    // Unknown fields are pruned from custom resources.
    let raw: Api<kube::api::DynamicObject> = Api::all_with(
        c.client(),
        &kube::api::ApiResource::erase::<IPAddressPool>(&()),
    );
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
        "metadata": {"name": "extra"},
        "spec": {"addresses": ["203.0.113.0/24"], "bogus": 1}
    }))
    .unwrap();
    let created = raw.create(&PostParams::default(), &obj).await.unwrap();
    assert!(created.data["spec"].get("bogus").is_none());
    assert_eq!(created.data["spec"]["addresses"][0], "203.0.113.0/24");
}

#[tokio::test]
async fn watcher_survives_restart() {
    let mut c = cluster().await;
    let svcs: Api<Service> = Api::namespaced(c.client(), "default");
    let mut w = watcher(Api::<Service>::all(c.client()), watcher::Config::default())
        .default_backoff()
        .boxed();
    init_done(&mut w).await;
    svcs.create(&PostParams::default(), &svc("before"))
        .await
        .unwrap();
    assert_eq!(collect(&mut w, 1).await, vec!["apply:before"]);
    c.restart().await.unwrap();
    // The old connection is gone; writes go through a fresh one and the watcher must
    // re-establish (resume or relist) and then see the change.
    let mut created = false;
    for _ in 0..100 {
        if svcs
            .create(&PostParams::default(), &svc("after"))
            .await
            .is_ok()
        {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created, "server reachable after restart");
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match w.try_next().await {
                Ok(Some(watcher::Event::Apply(s))) | Ok(Some(watcher::Event::InitApply(s)))
                    if s.name_any() == "after" =>
                {
                    return true;
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => return false,
            }
        }
    })
    .await;
    assert_eq!(seen, Ok(true));
}

#[tokio::test]
async fn status_apply_on_a_custom_resource_and_crd_removal() {
    let c = cluster().await;
    let pools: Api<IPAddressPool> = Api::all(c.client());
    let created = pools
        .create(&PostParams::default(), &pool("p3", &["192.0.2.0/28"]))
        .await
        .unwrap();
    // The controller's status write: server-side apply on the status subresource.
    let status = json!({
        "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": "p3"},
        "status": {"assigned": 1, "available": 15, "conditions": [{
            "type": "Ready", "status": "True", "reason": "AddressesValid", "message": "ok",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}
    });
    let pp = PatchParams::apply("lodestone-controller").force();
    let s = pools
        .patch_status("p3", &pp, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(s.status.as_ref().unwrap().assigned, 1);
    assert_eq!(s.metadata.generation, created.metadata.generation);
    let again = pools
        .patch_status("p3", &pp, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version, s.metadata.resource_version,
        "identical apply is a no-op"
    );

    // Deleting the CRD removes its objects, ends watches on them and stops serving the resource.
    let mut w = pools
        .watch(
            &kube::api::WatchParams::default(),
            &s.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(c.client());
    crds.delete("ipaddresspools.lodestone.dev", &DeleteParams::default())
        .await
        .unwrap();
    let mut events = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = w.try_next().await.unwrap() {
            events.push(ev);
        }
    })
    .await;
    assert!(ended.is_ok(), "watch ended when the CRD went");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, kube::api::WatchEvent::Deleted(p) if p.name_any() == "p3")),
        "{events:?}"
    );
    match pools.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("expected 404 once the CRD is gone, got {other:?}"),
    }
}

/// Wait until `want` arrives on the channel.
async fn wait_msg(
    rx: &mut mpsc::UnboundedReceiver<String>,
    want: &str,
) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = rx.recv().await {
            if m == want {
                return;
            }
        }
        panic!("controller stopped");
    })
    .await
}

#[tokio::test]
async fn kube_finalizer_helper_adds_and_removes_its_finalizer() {
    use kube::runtime::finalizer::{Event as Fin, finalizer};
    let c = cluster().await;
    let pools: Api<IPAddressPool> = Api::all(c.client());
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    struct Ctx {
        api: Api<IPAddressPool>,
        tx: mpsc::UnboundedSender<String>,
    }
    async fn reconcile(
        p: Arc<IPAddressPool>,
        ctx: Arc<Ctx>,
    ) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
        let tx = ctx.tx.clone();
        finalizer(
            &ctx.api,
            lodestone_crds::POOL_FINALIZER,
            p,
            |ev| async move {
                match ev {
                    Fin::Apply(p) => {
                        let _ = tx.send(format!("apply:{}", p.name_any()));
                    }
                    Fin::Cleanup(p) => {
                        let _ = tx.send(format!("cleanup:{}", p.name_any()));
                    }
                }
                Ok::<_, kube::Error>(Action::await_change())
            },
        )
        .await
    }
    fn error_policy(
        _: Arc<IPAddressPool>,
        _: &kube::runtime::finalizer::Error<kube::Error>,
        _: Arc<Ctx>,
    ) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let ctx = Arc::new(Ctx {
        api: pools.clone(),
        tx,
    });
    let handle = tokio::spawn(
        Controller::new(pools.clone(), watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {}),
    );
    pools
        .create(&PostParams::default(), &pool("fin", &["192.0.2.0/28"]))
        .await
        .unwrap();
    wait_msg(&mut rx, "apply:fin")
        .await
        .expect("reconciled with the finalizer in place");
    let live = pools.get("fin").await.unwrap();
    assert_eq!(
        live.finalizers(),
        &[lodestone_crds::POOL_FINALIZER.to_string()]
    );
    pools.delete("fin", &DeleteParams::default()).await.unwrap();
    wait_msg(&mut rx, "cleanup:fin").await.expect("cleanup ran");
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if pools.get_opt("fin").await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "pool removed once the finalizer was dropped");
    handle.abort();
}
