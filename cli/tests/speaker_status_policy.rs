//! `deploy/admission.yaml` against a real kube-apiserver: the speaker's ServiceAccount may write
//! its own `lodestone.dev/Announced` condition, and nothing else of a Service's status.
//!
//! RBAC grants `services/status` whole; the ValidatingAdmissionPolicy is what keeps a
//! compromised node from rewriting `status.loadBalancer.ingress` cluster-wide. Only
//! kube-apiserver evaluates admission policies (the embedded server stores them without acting
//! on them), so this test needs the envtest switch (`TEST_ASSET_KUBE_APISERVER`,
//! `TEST_ASSET_ETCD`); CI runs it in its pass against kube-apiserver. Writes go through
//! impersonation of the ServiceAccount, with the groups kube-apiserver gives it, after
//! `deploy/rbac.yaml` is applied, so RBAC and the policy are judged together.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use lodestone_harness::cluster::{RealAssets, TestCluster};
use serde_json::{Value, json};

mod rbac_common;

use rbac_common::{NS, apply_rbac, deploy_docs, rbac_docs, user};

const SVC_NS: &str = "default";
const SVC: &str = "web";
const ANNOUNCED: &str = "lodestone.dev/Announced";
const ASSIGNED: &str = "lodestone.dev/AddressAssigned";

/// A client that acts as ServiceAccount `sa` of [`NS`], as a pod's token would.
async fn as_service_account(cluster: &TestCluster, sa: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.auth_info.impersonate = Some(user(sa));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{NS}"),
        "system:authenticated".into(),
    ]);
    kube::Client::try_from(config).unwrap()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

/// A server-side apply of Service status by `manager`, as the programs write it.
async fn apply_status(
    client: &kube::Client,
    manager: &str,
    status: Value,
) -> kube::Result<Service> {
    let body = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": SVC, "namespace": SVC_NS },
        "status": status,
    });
    Api::<Service>::namespaced(client.clone(), SVC_NS)
        .patch_status(
            SVC,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&body),
        )
        .await
}

fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

fn denied_with(result: kube::Result<Service>, what: &str, expected: &str) {
    match result {
        Err(kube::Error::Api(e)) => {
            assert!(
                e.message.contains(expected),
                "{what}: denied, but not by the policy's rule: {e:?}"
            );
            assert!(
                e.message.contains("lodestone-speaker-service-status"),
                "{what}: the denial names the policy: {e:?}"
            );
        }
        Err(e) => panic!("{what}: failed for another reason: {e}"),
        Ok(svc) => panic!("{what}: allowed; status now {:?}", svc.status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speaker_may_write_its_own_condition_and_nothing_else() {
    let Some(assets) = RealAssets::from_env() else {
        eprintln!(
            "skipped: only kube-apiserver enforces ValidatingAdmissionPolicies; set \
             TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD (CI's pass against kube-apiserver does)"
        );
        return;
    };
    let cluster = TestCluster::start_real(&assets).await.unwrap();
    let admin = cluster.client();
    // TestCluster creates lodestone-system as the embedded server does.
    apply_rbac(&admin, &rbac_docs()).await;
    for doc in deploy_docs("admission.yaml") {
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let types = obj.types.clone().unwrap();
        let gvk = kube::api::GroupVersionKind::try_from(&types).unwrap();
        let plural = match gvk.kind.as_str() {
            "ValidatingAdmissionPolicy" => "validatingadmissionpolicies",
            "ValidatingAdmissionPolicyBinding" => "validatingadmissionpolicybindings",
            other => panic!("unexpected {other} in deploy/admission.yaml"),
        };
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        Api::<DynamicObject>::all_with(admin.clone(), &ar)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("kube-apiserver refused {}: {e}", gvk.kind));
    }

    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": SVC, "namespace": SVC_NS},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(admin.clone(), SVC_NS)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();

    // What the controller writes, as the controller's ServiceAccount (the policy leaves it be).
    let controller = as_service_account(&cluster, "lodestone-controller").await;
    let written = apply_status(
        &controller,
        "lodestone-controller",
        json!({
            "loadBalancer": {"ingress": [{"ip": "203.0.113.10", "ipMode": "VIP"}]},
            "conditions": [condition(ASSIGNED, "True", "Assigned", "203.0.113.10 from pool lan")],
        }),
    )
    .await
    .expect("the controller writes ingress and its condition");
    assert_eq!(ingress(&written), ["203.0.113.10"]);

    let speaker = as_service_account(&cluster, "lodestone-speaker").await;
    // The binding takes effect once kube-apiserver's informers have compiled the policy: until
    // then a forged write would pass. Probe with a harmless forgery (a third condition type),
    // and undo it as the admin whenever it got through.
    let forged = condition("example.com/Forged", "True", "Forged", "by a node");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match apply_status(&speaker, "forger", json!({"conditions": [forged.clone()]})).await {
            Err(kube::Error::Api(e)) if e.message.contains("lodestone-speaker-service-status") => {
                assert!(
                    e.message.contains("only its own condition"),
                    "a foreign condition type is refused by the conditions rule: {e:?}"
                );
                break;
            }
            Err(e) => panic!("the probe failed for another reason: {e}"),
            Ok(_) => {
                // Through before the policy was active: take it out again.
                let api = Api::<Service>::namespaced(admin.clone(), SVC_NS);
                let mut current = api.get_status(SVC).await.unwrap();
                if let Some(c) = current.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                    c.retain(|c| c.type_ != "example.com/Forged");
                }
                api.replace_status(SVC, &PostParams::default(), &current)
                    .await
                    .unwrap();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the admission policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The speaker's own write, exactly as speaker/src/run.rs sends it: allowed, and a flip too.
    let own = apply_status(
        &speaker,
        "lodestone-speaker",
        json!({"conditions": [condition(ANNOUNCED, "True", "Announced", "announced from node-a on eth0")]}),
    )
    .await
    .expect("the speaker writes its own condition");
    assert_eq!(ingress(&own), ["203.0.113.10"], "ingress untouched");
    apply_status(
        &speaker,
        "lodestone-speaker",
        json!({"conditions": [condition(ANNOUNCED, "False", "NoEligibleNode", "not announced: no eligible node")]}),
    )
    .await
    .expect("the speaker flips its own condition");

    // Redirecting the Service's traffic: refused, whether by apply, merge patch or replace.
    denied_with(
        apply_status(
            &speaker,
            "lodestone-speaker",
            json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.66"}]}}),
        )
        .await,
        "ingress by server-side apply",
        "may not change status.loadBalancer",
    );
    let api = Api::<Service>::namespaced(speaker.clone(), SVC_NS);
    denied_with(
        api.patch_status(
            SVC,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.66"}]}}}),
            ),
        )
        .await,
        "ingress by merge patch",
        "may not change status.loadBalancer",
    );
    denied_with(
        api.patch_status(
            SVC,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": null}}})),
        )
        .await,
        "clearing ingress",
        "may not change status.loadBalancer",
    );
    // The controller's condition is the controller's. (Applying as the controller's field
    // manager would also drop the ingress it owns: refused by the first rule.)
    denied_with(
        apply_status(
            &speaker,
            "forger",
            json!({"conditions": [condition(ASSIGNED, "False", "Forged", "by a node")]}),
        )
        .await,
        "the controller's condition",
        "only its own condition",
    );

    // After all that, the Service is as the controller and the speaker's own write left it.
    let after = Api::<Service>::namespaced(admin, SVC_NS)
        .get_status(SVC)
        .await
        .unwrap();
    assert_eq!(ingress(&after), ["203.0.113.10"]);
    let conditions = after.status.and_then(|s| s.conditions).unwrap_or_default();
    let by_type = |t: &str| conditions.iter().find(|c| c.type_ == t).cloned();
    assert_eq!(by_type(ASSIGNED).map(|c| c.status), Some("True".into()));
    assert_eq!(by_type(ANNOUNCED).map(|c| c.status), Some("False".into()));
    assert!(by_type("example.com/Forged").is_none());
}
