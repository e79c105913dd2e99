//! Shared by the RBAC-vs-code tests: `deploy/rbac.yaml` as the kustomization renders it, the
//! grants it gives a ServiceAccount, and the check of an audit log against them.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, PostParams};
use lodestone_harness::apiserver::Server;
use lodestone_harness::apiserver::rbac::AuditEntry;
use serde_json::{Value, json};

/// The namespace the kustomization installs into.
pub const NS: &str = "lodestone-system";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `target/<profile>/<name>`, built there if the workspace build has not built it yet.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    if let Some(d) = exe.ancestors().skip(1).find(|d| d.join(name).is_file()) {
        return d.join(name);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", name])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {name} failed");
    // `target/<profile>/deps/rbac_…` → `target/<profile>`.
    let bin = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(bin.is_file(), "no {name} at {}", bin.display());
    bin
}

/// The documents of `deploy/<file>`, as written.
pub fn deploy_docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The documents of `deploy/rbac.yaml`, namespaced ones placed in `lodestone-system` as the
/// kustomization does.
pub fn rbac_docs() -> Vec<Value> {
    deploy_docs("rbac.yaml")
        .into_iter()
        .map(|mut d| {
            if matches!(
                d["kind"].as_str(),
                Some("ServiceAccount" | "Role" | "RoleBinding")
            ) {
                d["metadata"]["namespace"] = json!(NS);
            }
            d
        })
        .collect()
}

/// Create every object of [`rbac_docs`] as the admin.
pub async fn apply_rbac(client: &kube::Client, docs: &[Value]) {
    let pp = PostParams::default();
    for d in docs {
        let c = client.clone();
        match d["kind"].as_str().unwrap() {
            "ServiceAccount" => Api::<ServiceAccount>::namespaced(c, NS)
                .create(&pp, &serde_json::from_value(d.clone()).unwrap())
                .await
                .map(drop),
            "Role" => Api::<Role>::namespaced(c, NS)
                .create(&pp, &serde_json::from_value(d.clone()).unwrap())
                .await
                .map(drop),
            "RoleBinding" => Api::<RoleBinding>::namespaced(c, NS)
                .create(&pp, &serde_json::from_value(d.clone()).unwrap())
                .await
                .map(drop),
            "ClusterRole" => Api::<ClusterRole>::all(c)
                .create(&pp, &serde_json::from_value(d.clone()).unwrap())
                .await
                .map(drop),
            "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(c)
                .create(&pp, &serde_json::from_value(d.clone()).unwrap())
                .await
                .map(drop),
            other => panic!("unexpected kind {other} in rbac.yaml"),
        }
        .unwrap_or_else(|e| panic!("applying {}: {e}", d["metadata"]["name"]));
    }
}

/// (verb, apiGroup, resource, granted through a RoleBinding?).
pub type Grant = (String, String, String, bool);

/// Every grant of the roles that rbac.yaml binds to ServiceAccount `sa`.
pub fn granted(docs: &[Value], sa: &str) -> BTreeSet<Grant> {
    let binds_sa = |d: &Value| {
        d["subjects"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)
        })
    };
    let mut out = BTreeSet::new();
    for b in docs.iter().filter(|d| binds_sa(d)) {
        let namespaced = b["kind"] == "RoleBinding";
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == b["roleRef"]["kind"] && d["metadata"]["name"] == b["roleRef"]["name"]
            })
            .unwrap_or_else(|| {
                panic!("{} refers to a role rbac.yaml lacks", b["metadata"]["name"])
            });
        let rules: Vec<PolicyRule> = serde_json::from_value(role["rules"].clone()).unwrap();
        for r in rules {
            for v in &r.verbs {
                for g in r.api_groups.as_deref().unwrap_or(&[]) {
                    for res in r.resources.as_deref().unwrap_or(&[]) {
                        out.insert((v.clone(), g.clone(), res.clone(), namespaced));
                    }
                }
            }
        }
    }
    out
}

/// What the audit log shows a user called, in the same shape as [`granted`]. A call in
/// `lodestone-system` counts as namespaced (a RoleBinding there can grant it).
fn called(audit: &[AuditEntry], rolebound: &BTreeSet<(String, String)>) -> BTreeSet<Grant> {
    audit
        .iter()
        .map(|e| {
            let namespaced = e.namespace.as_deref() == Some(NS)
                && rolebound.contains(&(e.api_group.clone(), e.resource.clone()));
            (
                e.verb.clone(),
                e.api_group.clone(),
                e.resource.clone(),
                namespaced,
            )
        })
        .collect()
}

/// The user name of ServiceAccount `sa` in [`NS`].
pub fn user(sa: &str) -> String {
    format!("system:serviceaccount:{NS}:{sa}")
}

/// Make `token` authenticate as ServiceAccount `sa`, with the groups kube-apiserver gives it.
pub fn add_sa_token(server: &Server, token: &str, sa: &str) {
    server.add_token(
        token,
        &user(sa),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{NS}"),
            "system:authenticated",
        ],
    );
}

/// The RBAC-vs-code check for ServiceAccount `sa`: nothing it called was denied (nor logged
/// as forbidden), and every grant rbac.yaml gives it was used.
pub fn check(docs: &[Value], sa: &str, audit: &[AuditEntry], log: &str) {
    let user = user(sa);
    let audit: Vec<&AuditEntry> = audit.iter().filter(|e| e.user == user).collect();
    assert!(!audit.is_empty(), "{sa} made no API call at all:\n{log}");
    let denied: Vec<&&AuditEntry> = audit.iter().filter(|e| !e.allowed).collect();
    assert!(
        denied.is_empty(),
        "{sa} called what deploy/rbac.yaml does not allow: {denied:#?}\nlog:\n{log}"
    );
    assert!(
        !log.contains("forbidden"),
        "{sa} logged a forbidden call:\n{log}"
    );
    let granted = granted(docs, sa);
    let rolebound: BTreeSet<(String, String)> = granted
        .iter()
        .filter(|g| g.3)
        .map(|g| (g.1.clone(), g.2.clone()))
        .collect();
    let audit: Vec<AuditEntry> = audit.into_iter().cloned().collect();
    let called = called(&audit, &rolebound);
    let unused: Vec<_> = granted.difference(&called).collect();
    assert!(
        unused.is_empty(),
        "deploy/rbac.yaml grants {sa} what it never called (verb, group, resource, via \
         RoleBinding): {unused:#?}\ncalled: {called:#?}"
    );
    // Whatever it called was granted (the server agreed; this checks the test's own reading).
    assert!(
        called.is_subset(&granted),
        "calls outside the grants: {:#?}",
        called.difference(&granted).collect::<Vec<_>>()
    );
}
