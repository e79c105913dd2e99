//! Conformance of server-side apply, written from the Kubernetes documentation "Server-Side
//! Apply" (field management, conflicts, forcing, shared ownership, removing fields a manager
//! stops applying, per-entry ownership of map lists), not from the embedded server's code. Only
//! `TestCluster` and kube's client are used, so with `TEST_ASSET_KUBE_APISERVER` and
//! `TEST_ASSET_ETCD` set the same tests run against a real kube-apiserver.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use lodestone_harness::cluster::TestCluster;
use serde_json::{Value, json};

fn api_err<T: std::fmt::Debug>(r: kube::Result<T>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(e)) => *e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm_config(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data})
}

async fn apply(api: &Api<ConfigMap>, manager: &str, data: Value) -> kube::Result<ConfigMap> {
    api.patch(
        "ssa",
        &PatchParams::apply(manager),
        &Patch::Apply(cm_config(data)),
    )
    .await
}

async fn force(api: &Api<ConfigMap>, manager: &str, data: Value) -> ConfigMap {
    api.patch(
        "ssa",
        &PatchParams::apply(manager).force(),
        &Patch::Apply(cm_config(data)),
    )
    .await
    .unwrap()
}

/// The fields `manager` owns through `operation` (and `subresource`), as `fieldsV1` JSON.
fn owned(obj: &impl kube::Resource, manager: &str, subresource: Option<&str>) -> Value {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .filter(|m| m.subresource.as_deref() == subresource)
        .map(|m| serde_json::to_value(&m.fields_v1).unwrap())
        .next()
        .unwrap_or(Value::Null)
}

fn owns_data_key(obj: &ConfigMap, manager: &str, key: &str) -> bool {
    owned(obj, manager, None)["f:data"]
        .get(format!("f:{key}"))
        .is_some()
}

fn data(obj: &ConfigMap) -> BTreeMap<String, String> {
    obj.data.clone().unwrap_or_default()
}

/// Two managers: apply creates; a different value for a field another applier owns is a 409
/// naming the field and the owner; forcing takes the field over; the same value is shared; a
/// field its only owner stops applying is removed, a shared one stays.
#[tokio::test]
async fn two_appliers_conflict_force_share_and_remove() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");

    let o = apply(&api, "alpha", json!({"x": "1", "y": "same", "z": "mine"}))
        .await
        .unwrap();
    assert_eq!(data(&o).len(), 3, "apply creates the object");
    let entry = o
        .metadata
        .managed_fields
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.manager.as_deref() == Some("alpha"))
        .unwrap();
    assert_eq!(entry.operation.as_deref(), Some("Apply"));
    assert_eq!(entry.fields_type.as_deref(), Some("FieldsV1"));
    assert_eq!(entry.api_version.as_deref(), Some("v1"));

    // Conflict: beta wants x=2, owned by alpha.
    let e = api_err(apply(&api, "beta", json!({"x": "2"})).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("conflict with \"alpha\""),
        "{}",
        e.message
    );
    assert!(e.message.contains(".data.x"), "{}", e.message);
    assert_eq!(
        data(&api.get("ssa").await.unwrap())["x"],
        "1",
        "nothing changed"
    );

    // The raw Status carries one cause per conflicting field.
    let resp = c
        .client()
        .send(
            http::Request::patch("/api/v1/namespaces/default/configmaps/ssa?fieldManager=beta")
                .header("Content-Type", "application/apply-patch+yaml")
                .body(kube::client::Body::from(
                    cm_config(json!({"x": "2", "y": "other"}))
                        .to_string()
                        .into_bytes(),
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let status: Value =
        serde_json::from_slice(&resp.into_body().collect_bytes().await.unwrap()).unwrap();
    let mut fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["reason"], "FieldManagerConflict");
            c["field"].as_str().unwrap()
        })
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, [".data.x", ".data.y"]);

    // Shared: the same value for y is no conflict; both own it.
    let o = apply(&api, "beta", json!({"y": "same"})).await.unwrap();
    assert!(owns_data_key(&o, "alpha", "y") && owns_data_key(&o, "beta", "y"));

    // Force: beta takes x; alpha no longer owns it.
    let o = force(&api, "beta", json!({"x": "2", "y": "same"})).await;
    assert_eq!(data(&o)["x"], "2");
    assert!(owns_data_key(&o, "beta", "x"));
    assert!(!owns_data_key(&o, "alpha", "x"));

    // alpha stops applying z (its alone) and y (shared with beta): z goes, y stays with beta.
    let o = apply(&api, "alpha", json!({"w": "new"})).await.unwrap();
    let d = data(&o);
    assert!(!d.contains_key("z"), "{d:?}");
    assert_eq!(d["y"], "same");
    assert_eq!(d["x"], "2");
    assert_eq!(d["w"], "new");
    assert!(!owns_data_key(&o, "alpha", "y") && owns_data_key(&o, "beta", "y"));

    // alpha no longer owns x, so a different value from it conflicts with beta now.
    let e = api_err(apply(&api, "alpha", json!({"w": "new", "x": "3"})).await);
    assert!(
        e.message.contains("conflict with \"beta\""),
        "{}",
        e.message
    );
}

/// A non-apply write (update or patch) never conflicts, but takes ownership of what it changes:
/// the applier then conflicts with the updater, named by its manager.
#[tokio::test]
async fn updates_take_ownership_and_appliers_then_conflict_with_them() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    apply(&api, "alpha", json!({"x": "1"})).await.unwrap();
    let patched = api
        .patch(
            "ssa",
            &PatchParams {
                field_manager: Some("editor".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"x": "edited"}})),
        )
        .await
        .unwrap();
    assert_eq!(data(&patched)["x"], "edited");
    let editor = patched
        .metadata
        .managed_fields
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.manager.as_deref() == Some("editor"))
        .unwrap();
    assert_eq!(editor.operation.as_deref(), Some("Update"));
    assert!(!owns_data_key(&patched, "alpha", "x"));

    let e = api_err(apply(&api, "alpha", json!({"x": "1"})).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("conflict with \"editor\""),
        "{}",
        e.message
    );
    // Re-applying the value now present is no conflict, and alpha shares it again.
    let o = apply(&api, "alpha", json!({"x": "edited"})).await.unwrap();
    assert!(owns_data_key(&o, "alpha", "x"));
}

fn condition(t: &str, status: &str, reason: &str) -> Value {
    json!({"type": t, "status": status, "reason": reason,
           "message": format!("{t} is {status}"),
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

async fn apply_conditions(
    api: &Api<Service>,
    manager: &str,
    conditions: Vec<Value>,
    force: bool,
) -> kube::Result<Service> {
    let mut pp = PatchParams::apply(manager);
    if force {
        pp = pp.force();
    }
    api.patch_status(
        "lb",
        &pp,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "lb"}, "status": {"conditions": conditions}})),
    )
    .await
}

fn conditions(s: &Service) -> BTreeMap<String, (String, String)> {
    s.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (c.type_.clone(), (c.status.clone(), c.reason.clone())))
        .collect()
}

fn owns_condition(s: &Service, manager: &str, t: &str) -> bool {
    owned(s, manager, Some("status"))["f:status"]["f:conditions"]
        .get(format!("k:{{\"type\":\"{t}\"}}"))
        .is_some()
}

/// `status.conditions` of a Service is a map list keyed by `type`: two managers (our controller
/// and speaker) each own their own condition through the status subresource, neither disturbs
/// the other, a conflict names the entry, and a condition its manager stops applying goes.
#[tokio::test]
async fn service_status_conditions_are_owned_per_entry() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();

    let ctrl = "conformance-controller";
    let spk = "conformance-speaker";
    apply_conditions(
        &api,
        ctrl,
        vec![condition("Allocated", "True", "Assigned")],
        false,
    )
    .await
    .unwrap();
    let s = apply_conditions(
        &api,
        spk,
        vec![condition("Announced", "False", "NoNode")],
        false,
    )
    .await
    .unwrap();
    assert_eq!(conditions(&s).len(), 2, "{:?}", conditions(&s));
    assert!(owns_condition(&s, ctrl, "Allocated") && !owns_condition(&s, ctrl, "Announced"));
    assert!(owns_condition(&s, spk, "Announced") && !owns_condition(&s, spk, "Allocated"));

    // Each updates its own entry without touching the other's, with no force needed.
    let s = apply_conditions(
        &api,
        spk,
        vec![condition("Announced", "True", "Announcing")],
        false,
    )
    .await
    .unwrap();
    let s2 = apply_conditions(
        &api,
        ctrl,
        vec![condition("Allocated", "True", "Reassigned")],
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        conditions(&s2),
        BTreeMap::from([
            (
                "Allocated".to_string(),
                ("True".to_string(), "Reassigned".to_string())
            ),
            (
                "Announced".to_string(),
                ("True".to_string(), "Announcing".to_string())
            ),
        ])
    );
    assert_eq!(conditions(&s)["Announced"], conditions(&s2)["Announced"]);

    // The speaker writing the controller's entry differently: a conflict naming that entry
    // (several fields differ, so the message lists them under "conflicts with").
    let e = api_err(
        apply_conditions(
            &api,
            spk,
            vec![
                condition("Announced", "True", "Announcing"),
                condition("Allocated", "False", "Stolen"),
            ],
            false,
        )
        .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains(&format!("with \"{ctrl}\"")),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("conditions[type=\"Allocated\"]"),
        "{}",
        e.message
    );

    // The controller stops applying its condition: it goes, the speaker's stays.
    let s = apply_conditions(&api, ctrl, vec![], false).await.unwrap();
    assert_eq!(
        conditions(&s),
        BTreeMap::from([(
            "Announced".to_string(),
            ("True".to_string(), "Announcing".to_string())
        )])
    );
    // Status applies do not touch the spec or its owners.
    assert_eq!(
        s.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    assert!(
        owned(&s, ctrl, None).is_null(),
        "no main-resource entry for a status applier"
    );
    assert_eq!(s.name_any(), "lb");
}

/// Service status conditions are `metav1.Condition`s. The servers differ here, on purpose (see
/// "Known differences" in `harness/src/apiserver`): kube-apiserver 1.32 does not validate them on
/// Services, and stores a status outside True/False/Unknown, a missing reason or a missing
/// lastTransitionTime as sent (200); the embedded server holds them to metav1's rules and answers
/// 422 naming the entry's field, so no test can pass with a condition that clients reading
/// `metav1.Condition`s would reject.
#[tokio::test]
async fn invalid_service_conditions_are_422_on_the_embedded_server_only() {
    let c = TestCluster::start().await.unwrap();
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
    let good = condition("Announced", "True", "Announcing");
    let mut maybe = good.clone();
    maybe["status"] = json!("Maybe");
    let mut no_reason = good.clone();
    no_reason.as_object_mut().unwrap().remove("reason");
    let mut no_time = good.clone();
    no_time
        .as_object_mut()
        .unwrap()
        .remove("lastTransitionTime");
    for (cond, field) in [
        (maybe, "status.conditions[0].status"),
        (no_reason, "status.conditions[0].reason"),
        (no_time, "status.conditions[0].lastTransitionTime"),
    ] {
        if c.is_embedded() {
            let result =
                apply_conditions(&api, "conformance-speaker", vec![cond.clone()], true).await;
            let e = api_err(result);
            assert_eq!(
                (e.code, e.reason.as_str()),
                (422, "Invalid"),
                "{field}: {}",
                e.message
            );
            assert!(e.message.contains(field), "{field}: {}", e.message);
        } else {
            // Raw: k8s-openapi's Condition cannot even be decoded without a reason.
            let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
                "status": {"conditions": [cond.clone()]}});
            let req = http::Request::patch(
                "/api/v1/namespaces/default/services/lb/status?fieldManager=conformance-speaker&force=true",
            )
            .header("Content-Type", "application/apply-patch+yaml")
            .body(body.to_string().into_bytes())
            .unwrap();
            let text = c
                .client()
                .request_text(req)
                .await
                .unwrap_or_else(|e| panic!("{field}: kube-apiserver refused: {e}"));
            // Stored (a missing reason reads back as "", Go's zero value).
            let stored: Value = serde_json::from_str(&text).unwrap();
            let got = &stored["status"]["conditions"][0];
            assert_eq!(
                (&got["type"], &got["status"]),
                (&cond["type"], &cond["status"]),
                "{field}: {got}"
            );
        }
    }
    apply_conditions(&api, "conformance-speaker", vec![good], true)
        .await
        .unwrap();
}
