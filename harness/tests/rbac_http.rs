//! RBAC in the embedded API server, through a real kube client: a ServiceAccount token is
//! denied with kube-apiserver's 403 until a binding grants it, RoleBindings grant only in their
//! namespace, discovery is open to it, self reviews answer for it, and the audit log records
//! what it called.

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use lodestone_harness::apiserver::{Server, ServerConfig};
use serde_json::json;

const USER: &str = "system:serviceaccount:lodestone-system:reader";

async fn client_with(server: &Server, token: &str) -> kube::Client {
    let kc =
        kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml_with_token(token)).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn service_account_tokens_are_authorized_by_rbac() {
    let server = Server::start(ServerConfig::default()).await.unwrap();
    let admin = server.client().await.unwrap();
    server.add_token(
        "reader-token",
        USER,
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:lodestone-system",
            "system:authenticated",
        ],
    );
    let sa = client_with(&server, "reader-token").await;
    let pp = PostParams::default();

    // Nothing bound yet: a list is refused exactly as kube-apiserver words it.
    let services: Api<Service> = Api::all(sa.clone());
    let st = api_error(services.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(st.code, 403);
    assert_eq!(st.reason, "Forbidden");
    assert_eq!(
        st.message,
        format!(
            "services is forbidden: User \"{USER}\" cannot list resource \"services\" in API \
             group \"\" at the cluster scope"
        )
    );
    // Discovery is open to every authenticated user; an unknown token is not.
    assert!(sa.list_api_groups().await.is_ok());
    let stranger = client_with(&server, "nobody").await;
    let st = api_error(stranger.list_api_groups().await.unwrap_err());
    assert_eq!(st.code, 401);

    // A ClusterRole bound to the ServiceAccount: list and watch everywhere, nothing else.
    let cr: ClusterRole = serde_json::from_value(json!({"metadata": {"name": "svc-reader"},
        "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]}]}))
    .unwrap();
    Api::<ClusterRole>::all(admin.clone())
        .create(&pp, &cr)
        .await
        .unwrap();
    let crb: ClusterRoleBinding = serde_json::from_value(json!({"metadata": {"name": "svc-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "svc-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "lodestone-system"}]}))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&pp, &crb)
        .await
        .unwrap();
    assert!(services.list(&ListParams::default()).await.is_ok());
    let svc: Service =
        serde_json::from_value(json!({"metadata": {"name": "x", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
    Api::<Service>::namespaced(admin.clone(), "default")
        .create(&pp, &svc)
        .await
        .unwrap();
    let st = api_error(
        Api::<Service>::namespaced(sa.clone(), "default")
            .patch_status(
                "x",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        st.message,
        format!(
            "services \"x\" is forbidden: User \"{USER}\" cannot patch resource \
             \"services/status\" in API group \"\" in the namespace \"default\""
        )
    );

    // A Role and RoleBinding in lodestone-system: ConfigMaps there, not in default.
    let role: Role = serde_json::from_value(
        json!({"metadata": {"name": "cm", "namespace": "lodestone-system"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]}]}),
    )
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), "lodestone-system")
        .create(&pp, &role)
        .await
        .unwrap();
    let rb: RoleBinding = serde_json::from_value(
        json!({"metadata": {"name": "cm", "namespace": "lodestone-system"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm"},
        "subjects": [{"kind": "Group", "name": "system:serviceaccounts:lodestone-system"}]}),
    )
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "lodestone-system")
        .create(&pp, &rb)
        .await
        .unwrap();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
    Api::<ConfigMap>::namespaced(sa.clone(), "lodestone-system")
        .create(&pp, &cm)
        .await
        .unwrap();
    let st = api_error(
        Api::<ConfigMap>::namespaced(sa.clone(), "default")
            .create(&pp, &cm)
            .await
            .unwrap_err(),
    );
    assert_eq!(st.code, 403);

    // `kubectl auth can-i` as the ServiceAccount.
    let can_i = |verb: &str, resource: &str, ns: &str| {
        serde_json::from_value::<SelfSubjectAccessReview>(json!({"spec": {"resourceAttributes":
            {"verb": verb, "resource": resource, "namespace": ns}}}))
        .unwrap()
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(sa.clone());
    let r = reviews
        .create(&pp, &can_i("get", "configmaps", "lodestone-system"))
        .await
        .unwrap();
    assert!(r.status.unwrap().allowed);
    let r = reviews
        .create(&pp, &can_i("delete", "configmaps", "lodestone-system"))
        .await
        .unwrap();
    assert!(!r.status.unwrap().allowed);

    // The audit log: every resource request of the ServiceAccount, allowed or not; none of
    // the admin's.
    let audit = server.audit();
    assert!(audit.iter().all(|e| e.user == USER));
    let seen: Vec<(String, String, bool)> = audit
        .iter()
        .filter(|e| e.resource != "selfsubjectaccessreviews")
        .map(|e| (e.verb.clone(), e.resource.clone(), e.allowed))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("list".to_string(), "services".to_string(), false),
            ("list".into(), "services".into(), true),
            ("patch".into(), "services/status".into(), false),
            ("create".into(), "configmaps".into(), true),
            ("create".into(), "configmaps".into(), false),
        ]
    );
}
