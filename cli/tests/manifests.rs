//! The install manifests under `deploy/`: every object is a known Kubernetes type with no
//! unknown fields, RBAC is least privilege, the workloads are locked down, and
//! `kubectl kustomize deploy/` renders (and applies to the test cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const NAMESPACE: &str = "lodestone-system";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every manifest file `kubectl apply -k` reads, relative to `deploy/`.
fn manifest_files() -> Vec<String> {
    let mut files = Vec::new();
    for sub in ["", "crds"] {
        let dir = deploy_dir().join(sub);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                files.push(if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                });
            }
        }
    }
    files.sort();
    files
}

fn docs_of(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn load(file: &str) -> Vec<Value> {
    docs_of(&std::fs::read_to_string(deploy_dir().join(file)).unwrap())
}

/// Paths present in `input` but missing or different in `output`.
fn differences(input: &Value, output: &Value, path: &str, found: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => differences(v, w, &format!("{path}.{k}"), found),
                    None => found.push(format!("{path}.{k} (unknown field)")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(v, w, &format!("{path}[{i}]"), found);
            }
        }
        // JSON Schema bounds are f64 in k8s-openapi: 0 comes back as 0.0, which is the same.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a != b => found.push(format!("{path}: {a} became {b}")),
        _ => {}
    }
}

/// Parse into `T`, write back, and fail on any field that did not survive.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    differences(doc, &back, "", &mut found);
    if found.is_empty() {
        Ok(typed)
    } else {
        Err(found.join("; "))
    }
}

/// Check one object against its typed Kubernetes struct; `Err` names the problem.
fn check_typed(doc: &Value) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<Namespace>(doc).map(drop),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc).map(drop),
        ("v1", "Secret") => round_trip::<Secret>(doc).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc).map(drop)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc).map(drop),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc).map(drop),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(doc).map(drop),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(doc).map(drop),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(doc).map(drop),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
            round_trip::<ValidatingAdmissionPolicy>(doc).map(drop)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
            round_trip::<ValidatingAdmissionPolicyBinding>(doc).map(drop)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(doc).map(drop)
        }
        _ => Err(format!(
            "{api_version} {kind} is not a kind this test knows; add it to check_typed"
        )),
    }
}

fn find<T: DeserializeOwned>(docs: &[Value], kind: &str, name: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    serde_json::from_value(doc.clone()).unwrap()
}

#[test]
fn every_manifest_is_a_known_kind_without_unknown_fields() {
    let mut problems = Vec::new();
    let mut count = 0;
    for file in manifest_files() {
        for (i, doc) in load(&file).iter().enumerate() {
            count += 1;
            if let Err(e) = check_typed(doc) {
                problems.push(format!("{file} document {}: {e}", i + 1));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Namespace, 4 CRDs, 2 ServiceAccounts, 2 ClusterRoles + bindings, 2 Roles + bindings,
    // Deployment, PDB, DaemonSet, the speaker's admission policy + binding.
    assert_eq!(count, 20);
}

#[test]
fn the_round_trip_check_catches_unknown_and_misspelt_fields() {
    let doc: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "x", "namespace": NAMESPACE},
        "automountServiceAccountTokens": false,
    });
    let err = check_typed(&doc).unwrap_err();
    assert!(
        err.contains(".automountServiceAccountTokens (unknown field)"),
        "{err}"
    );
}

#[test]
fn kustomization_lists_every_manifest_and_namespaces_them() {
    let kustomization = load("kustomization.yaml").remove(0);
    assert_eq!(kustomization["namespace"], NAMESPACE);
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = manifest_files().into_iter().collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs files under deploy/"
    );
    let generator = &kustomization["secretGenerator"][0];
    assert_eq!(generator["name"], "lodestone-memberlist");
    assert_eq!(
        generator["files"][0], "key=memberlist.key",
        "the key comes from a file the user creates"
    );
    assert!(
        generator.get("literals").is_none(),
        "a literal would put one key in every cluster"
    );
    let ignore = std::fs::read_to_string(deploy_dir().join(".gitignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "memberlist.key"),
        "the key must never be committed"
    );
}

fn rules_of(docs: &[Value], kind: &str, name: &str) -> Vec<PolicyRule> {
    match kind {
        "ClusterRole" => find::<ClusterRole>(docs, kind, name)
            .rules
            .unwrap_or_default(),
        "Role" => find::<Role>(docs, kind, name).rules.unwrap_or_default(),
        _ => unreachable!(),
    }
}

/// `(apiGroup, resource) → verbs`, failing on a pair that appears in two rules.
fn grants(rules: &[PolicyRule]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                let verbs: BTreeSet<String> = rule.verbs.iter().cloned().collect();
                let key = (group.clone(), resource.clone());
                assert!(
                    out.insert(key.clone(), verbs).is_none(),
                    "{key:?} in two rules"
                );
            }
        }
    }
    out
}

fn expect(entries: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), BTreeSet<String>> {
    entries
        .iter()
        .map(|(g, r, v)| {
            (
                (g.to_string(), r.to_string()),
                v.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_programs_call() {
    let docs = load("rbac.yaml");
    let text = std::fs::read_to_string(deploy_dir().join("rbac.yaml")).unwrap();
    assert!(!text.contains('*'), "no wildcards in RBAC");
    // Each rule says which calls need it, on the line(s) above.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "rule at line {} has no comment",
                i + 1
            );
        }
    }

    let controller = grants(&rules_of(&docs, "ClusterRole", "lodestone-controller"));
    assert_eq!(
        controller,
        expect(&[
            ("", "services", &["list", "watch"]),
            ("", "services/status", &["patch"]),
            ("", "namespaces", &["list", "watch"]),
            ("", "nodes", &["list", "watch"]),
            (
                "lodestone.dev",
                "ipaddresspools",
                &["list", "watch", "patch"]
            ),
            ("lodestone.dev", "ipaddresspools/status", &["patch"]),
            ("events.k8s.io", "events", &["create"]),
        ])
    );
    let election: Role = find(&docs, "Role", "lodestone-controller-leader-election");
    assert_eq!(
        election.metadata.namespace.as_deref(),
        Some(NAMESPACE),
        "the Lease lives in one namespace"
    );
    assert_eq!(
        grants(election.rules.as_deref().unwrap_or_default()),
        expect(&[("coordination.k8s.io", "leases", &["get", "create", "patch"])])
    );

    let speaker = grants(&rules_of(&docs, "ClusterRole", "lodestone-speaker"));
    assert_eq!(
        speaker,
        expect(&[
            ("", "services", &["list", "watch"]),
            ("", "services/status", &["patch"]),
            ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
            ("", "nodes", &["list", "watch"]),
            ("lodestone.dev", "ipaddresspools", &["list", "watch"]),
            ("lodestone.dev", "l2advertisements", &["list", "watch"]),
            ("lodestone.dev", "bgppeers", &["list", "watch"]),
            ("lodestone.dev", "bgpadvertisements", &["list", "watch"]),
            ("lodestone.dev", "bgppeers/status", &["patch"]),
            ("events.k8s.io", "events", &["create"]),
        ])
    );
    assert!(
        !speaker.keys().any(|(_, r)| r == "secrets"),
        "the speaker reads its key from a mounted file, and no Secret cluster-wide"
    );
    // BGP passwords: get, in its own namespace only.
    let passwords: Role = find(&docs, "Role", "lodestone-speaker-bgp-passwords");
    assert_eq!(passwords.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        grants(passwords.rules.as_deref().unwrap_or_default()),
        expect(&[("", "secrets", &["get"])])
    );

    // Each binding gives its role to the program's own ServiceAccount, and nothing else exists.
    for (kind, name, role_kind, role) in [
        (
            "ClusterRoleBinding",
            "lodestone-controller",
            "ClusterRole",
            "lodestone-controller",
        ),
        (
            "RoleBinding",
            "lodestone-controller-leader-election",
            "Role",
            "lodestone-controller-leader-election",
        ),
        (
            "ClusterRoleBinding",
            "lodestone-speaker",
            "ClusterRole",
            "lodestone-speaker",
        ),
        (
            "RoleBinding",
            "lodestone-speaker-bgp-passwords",
            "Role",
            "lodestone-speaker-bgp-passwords",
        ),
    ] {
        let doc = docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap();
        assert_eq!(
            (
                doc["roleRef"]["kind"].as_str(),
                doc["roleRef"]["name"].as_str()
            ),
            (Some(role_kind), Some(role))
        );
        let subjects = doc["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1);
        let sa = if name.starts_with("lodestone-speaker") {
            "lodestone-speaker"
        } else {
            "lodestone-controller"
        };
        assert_eq!(
            (subjects[0]["kind"].as_str(), subjects[0]["name"].as_str()),
            (Some("ServiceAccount"), Some(sa))
        );
        assert_eq!(subjects[0]["namespace"], NAMESPACE);
    }
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| k.ends_with("Binding")).count(), 4);
    assert_eq!(kinds.iter().filter(|k| k.ends_with("Role")).count(), 4);
}

fn only_container(spec: &k8s_openapi::api::core::v1::PodSpec) -> &Container {
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

fn arg<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    c.args
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}

fn env_field(c: &Container, name: &str) -> Option<String> {
    let var = c
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == name)?;
    Some(
        var.value_from
            .as_ref()?
            .field_ref
            .as_ref()?
            .field_path
            .clone(),
    )
}

#[test]
fn controller_deployment_is_unprivileged_and_probed() {
    let docs = load("controller.yaml");
    let d: Deployment = find(&docs, "Deployment", "lodestone-controller");
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("lodestone-controller")
    );
    let psc = pod.security_context.clone().unwrap();
    assert_eq!(
        (psc.run_as_non_root, psc.run_as_user),
        (Some(true), Some(65532))
    );
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let c = only_container(&pod);
    assert!(
        c.image
            .as_deref()
            .unwrap()
            .starts_with("ghcr.io/lodestone-lb/controller:")
    );
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!((caps.drop, caps.add), (Some(vec!["ALL".to_owned()]), None));
    assert_eq!(arg(c, "--health-addr"), Some("0.0.0.0:9090"));
    assert_eq!(env_field(c, "POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        env_field(c, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    let port = &c.ports.as_deref().unwrap()[0];
    assert_eq!(port.container_port, 9090);
    let live = c.liveness_probe.clone().unwrap().http_get.unwrap();
    let ready = c.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(
        (live.path.as_deref(), ready.path.as_deref()),
        (Some("/healthz"), Some("/readyz"))
    );
    let res = c.resources.clone().unwrap();
    assert!(res.requests.is_some() && res.limits.unwrap().contains_key("memory"));
}

#[test]
fn speaker_daemonset_holds_net_raw_and_bind_only_and_reads_the_key_from_a_file() {
    let docs = load("speaker.yaml");
    let ds: DaemonSet = find(&docs, "DaemonSet", "lodestone-speaker");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("lodestone-speaker")
    );
    let tolerated: BTreeSet<String> = pod
        .tolerations
        .as_deref()
        .unwrap()
        .iter()
        .filter_map(|t| t.key.clone())
        .collect();
    assert!(
        tolerated.contains("node-role.kubernetes.io/control-plane"),
        "{tolerated:?}"
    );

    let c = only_container(&pod);
    let sc = c.security_context.clone().unwrap();
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    // NET_BIND_SERVICE: passive BGP peers connect to port 179 (docs/bgp.md). SYS_NICE: the
    // membership thread's real-time priority (docs/announcing.md).
    assert_eq!(
        caps.add,
        Some(vec![
            "NET_RAW".to_owned(),
            "NET_BIND_SERVICE".to_owned(),
            "SYS_NICE".to_owned()
        ])
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.privileged, None);
    assert_eq!(env_field(c, "NODE_NAME").as_deref(), Some("spec.nodeName"));
    // BGP password Secrets are read from the speaker's own namespace.
    assert_eq!(
        env_field(c, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(arg(c, "--health-addr"), Some("0.0.0.0:7473"));
    let ports: BTreeSet<(i32, String)> = c
        .ports
        .as_deref()
        .unwrap()
        .iter()
        .map(|p| (p.container_port, p.protocol.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([(7473, "TCP".to_owned()), (7946, "UDP".to_owned())])
    );
    assert_eq!(arg(c, "--membership-port"), Some("7946"));

    // The key: a read-only file from the generated Secret, at the path the flag names.
    let key_file = arg(c, "--memberlist-key-file").unwrap();
    let mount = c
        .volume_mounts
        .as_deref()
        .unwrap()
        .iter()
        .find(|m| key_file.starts_with(&m.mount_path))
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .as_deref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let secret = volume.secret.clone().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("lodestone-memberlist"));
    assert_eq!(secret.default_mode, Some(0o400));
    let item = &secret.items.unwrap()[0];
    assert_eq!(
        Path::new(&mount.mount_path).join(&item.path),
        Path::new(key_file)
    );
    assert_eq!(item.key, "key", "the secretGenerator's file key");
}

/// `kubectl` with a clear skip when it is not installed.
fn kubectl() -> Option<&'static str> {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: kubectl is not installed; the kustomize rendering is not checked");
    }
    ok.then_some("kubectl")
}

/// A copy of `deploy/` (a user's checkout), with the key created as docs/install.md says.
fn deploy_copy(with_key: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("crds")).unwrap();
    for file in manifest_files()
        .into_iter()
        .chain(["kustomization.yaml".to_owned()])
    {
        std::fs::copy(deploy_dir().join(&file), dir.path().join(&file)).unwrap();
    }
    if with_key {
        let status = Command::new("sh")
            .arg("-c")
            .arg("head -c 32 /dev/urandom | base64 > memberlist.key")
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    dir
}

fn render(dir: &Path) -> std::process::Output {
    Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn kustomize_renders_with_the_generated_key() {
    let Some(_) = kubectl() else { return };
    let dir = deploy_copy(true);
    let out = render(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = docs_of(std::str::from_utf8(&out.stdout).unwrap());
    for doc in &docs {
        check_typed(doc).unwrap_or_else(|e| {
            panic!("rendered {} {}: {e}", doc["kind"], doc["metadata"]["name"])
        });
        if !matches!(
            doc["kind"].as_str(),
            Some(
                "Namespace"
                    | "CustomResourceDefinition"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            )
        ) {
            assert_eq!(
                doc["metadata"]["namespace"], NAMESPACE,
                "{} {}",
                doc["kind"], doc["metadata"]["name"]
            );
        }
    }
    let secret: Secret = find(&docs, "Secret", "lodestone-memberlist");
    let key = std::fs::read(dir.path().join("memberlist.key")).unwrap();
    assert_eq!(
        secret.data.unwrap()["key"].0,
        key,
        "the Secret carries the file, byte for byte"
    );
    assert!(
        key.len() >= 16,
        "the speaker needs at least 16 bytes of key"
    );
    assert_eq!(docs.len(), 21, "the 20 manifests and the generated Secret");
}

#[test]
fn kustomize_refuses_to_render_without_a_key() {
    let Some(_) = kubectl() else { return };
    let dir = deploy_copy(false);
    let out = render(dir.path());
    assert!(
        !out.status.success(),
        "rendering must fail rather than invent or share a key"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("memberlist.key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl apply -f -` of what `kubectl apply -k` would send, as an operator runs it.
fn kubectl_apply(kubectl: &str, kubeconfig: &Path, yaml: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn rendered_manifests_apply_to_the_test_cluster() {
    let Some(kubectl) = kubectl() else { return };
    let dir = deploy_copy(true);
    let rendered = render(dir.path());
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let docs = docs_of(std::str::from_utf8(&rendered.stdout).unwrap());

    let cluster = lodestone_harness::cluster::TestCluster::start()
        .await
        .unwrap();
    let kubeconfig = cluster.kubeconfig_path().to_owned();
    // Twice: installing, then re-applying unchanged (as after rotating the key) must both work.
    for round in ["first", "second"] {
        let (kc, yaml, path) = (kubectl, rendered.stdout.clone(), kubeconfig.clone());
        let out = tokio::task::spawn_blocking(move || kubectl_apply(kc, &path, &yaml))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{round} kubectl apply failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every rendered object is there, under its own name and namespace.
    let client = cluster.client();
    for doc in &docs {
        let gvk: kube::api::GroupVersionKind =
            serde_json::from_value::<kube::api::TypeMeta>(doc.clone())
                .unwrap()
                .try_into()
                .unwrap();
        let (resource, caps) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        // kustomize namespaces kinds it does not know to be cluster-scoped (the admission
        // policy); the server drops that namespace, so the scope comes from discovery.
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .filter(|_| caps.scope == kube::discovery::Scope::Namespaced);
        let api: kube::Api<kube::api::DynamicObject> = match namespace {
            Some(ns) => kube::Api::namespaced_with(client.clone(), ns, &resource),
            None => kube::Api::all_with(client.clone(), &resource),
        };
        let got = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{} {name}: {e}", gvk.kind));
        assert_eq!(
            got.metadata.labels.unwrap_or_default()["app.kubernetes.io/part-of"],
            "lodestone"
        );
    }
}
