//! Authentication identities and Kubernetes RBAC authorization, as kube-apiserver's RBAC
//! authorizer evaluates it.
//!
//! The decision is pure: [`authorize`] takes the user, the request's [`Attributes`] and the
//! RBAC objects ([`Policy`], parsed from what the store holds) and returns allow or deny. The
//! HTTP shell ([`super::server`]) builds the attributes, asks, records an [`AuditEntry`] and
//! answers 403 with [`forbidden`] on a deny.
//!
//! Not modelled: ClusterRole `aggregationRule` (aggregated roles are used as stored), the
//! default bootstrap roles (only `system:masters` and the discovery paths are built in), and
//! impersonation.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::{Value, json};

use super::errors::{ApiError, qualified};
use super::store::Store;

/// The group whose members bypass authorization, as in kube-apiserver.
pub const MASTERS: &str = "system:masters";

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name, e.g. `system:serviceaccount:lodestone-system:lodestone-controller`.
    pub name: String,
    /// Groups, e.g. `system:serviceaccounts`, `system:authenticated`.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A ServiceAccount's identity with the groups kube-apiserver gives it.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        UserInfo {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// Whether authorization is bypassed (`system:masters`).
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }
}

/// What a resource request asks for, as kube-apiserver's RequestInfo describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group, `""` for core.
    pub api_group: String,
    /// Plural resource name.
    pub resource: String,
    /// Subresource (`status`), if any.
    pub subresource: Option<String>,
    /// Namespace; `None` for cluster-scoped requests and requests across all namespaces.
    pub namespace: Option<String>,
    /// Object name; for list/watch, the name pinned by a `metadata.name` field selector.
    pub name: Option<String>,
}

impl Attributes {
    /// `resource` or `resource/subresource`, as RBAC rules spell it.
    pub fn full_resource(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// One binding, cluster-wide (ClusterRoleBinding) or in a namespace (RoleBinding).
#[derive(Debug, Clone)]
struct Binding {
    /// `None` for a ClusterRoleBinding.
    namespace: Option<String>,
    role_kind: String,
    role_name: String,
    subjects: Vec<k8s_openapi::api::rbac::v1::Subject>,
}

/// The RBAC objects an authorization decision reads.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: Vec<Role>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<Binding>,
}

impl Policy {
    /// Parse RBAC objects (JSON as stored or applied); objects that do not parse are skipped,
    /// as kube-apiserver's authorizer only ever sees valid ones.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut p = Policy::default();
        for obj in objects {
            match obj.get("kind").and_then(Value::as_str) {
                Some("Role") => p.roles.extend(serde_json::from_value(obj.clone()).ok()),
                Some("ClusterRole") => {
                    p.cluster_roles
                        .extend(serde_json::from_value(obj.clone()).ok());
                }
                Some("RoleBinding") => {
                    if let Ok(rb) = serde_json::from_value::<RoleBinding>(obj.clone()) {
                        p.bindings.push(Binding {
                            namespace: Some(rb.metadata.namespace.unwrap_or_default()),
                            role_kind: rb.role_ref.kind,
                            role_name: rb.role_ref.name,
                            subjects: rb.subjects.unwrap_or_default(),
                        });
                    }
                }
                Some("ClusterRoleBinding") => {
                    if let Ok(crb) = serde_json::from_value::<ClusterRoleBinding>(obj.clone()) {
                        p.bindings.push(Binding {
                            namespace: None,
                            role_kind: crb.role_ref.kind,
                            role_name: crb.role_ref.name,
                            subjects: crb.subjects.unwrap_or_default(),
                        });
                    }
                }
                _ => {}
            }
        }
        p
    }

    /// The RBAC objects currently in the store.
    pub fn from_store(store: &Store) -> Self {
        const KINDS: [(&str, &str); 4] = [
            ("rbac.authorization.k8s.io/roles", "Role"),
            ("rbac.authorization.k8s.io/clusterroles", "ClusterRole"),
            ("rbac.authorization.k8s.io/rolebindings", "RoleBinding"),
            (
                "rbac.authorization.k8s.io/clusterrolebindings",
                "ClusterRoleBinding",
            ),
        ];
        let mut objs = Vec::new();
        for (key, kind) in KINDS {
            for (_, v) in store.list(key, None) {
                // Stored objects carry their kind, but do not depend on it.
                let mut v = v.clone();
                v["kind"] = json!(kind);
                objs.push(v);
            }
        }
        Policy::from_objects(objs.iter())
    }

    /// Every rule that applies to `user` for a request in `namespace` (`None`: cluster scope),
    /// each with a description of where it came from.
    pub fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<(String, PolicyRule)> {
        let mut out = Vec::new();
        for b in &self.bindings {
            // A RoleBinding grants only inside its own namespace.
            if let Some(bns) = &b.namespace
                && namespace != Some(bns.as_str())
            {
                continue;
            }
            if !b.subjects.iter().any(|s| subject_matches(s, user, b)) {
                continue;
            }
            let rules: &[PolicyRule] = match b.role_kind.as_str() {
                "ClusterRole" => self
                    .cluster_roles
                    .iter()
                    .find(|r| r.metadata.name.as_deref() == Some(b.role_name.as_str()))
                    .and_then(|r| r.rules.as_deref())
                    .unwrap_or(&[]),
                // A RoleBinding's Role lives in the binding's namespace; a ClusterRoleBinding
                // cannot reference a Role.
                "Role" => match &b.namespace {
                    Some(bns) => self
                        .roles
                        .iter()
                        .find(|r| {
                            r.metadata.name.as_deref() == Some(b.role_name.as_str())
                                && r.metadata.namespace.as_deref() == Some(bns.as_str())
                        })
                        .and_then(|r| r.rules.as_deref())
                        .unwrap_or(&[]),
                    None => &[],
                },
                _ => &[],
            };
            let from = match &b.namespace {
                Some(ns) => format!("{} {ns}/{}", b.role_kind, b.role_name),
                None => format!("{} {}", b.role_kind, b.role_name),
            };
            out.extend(rules.iter().map(|r| (from.clone(), r.clone())));
        }
        out
    }
}

fn subject_matches(s: &k8s_openapi::api::rbac::v1::Subject, user: &UserInfo, b: &Binding) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            // kube defaults a RoleBinding's ServiceAccount subject namespace to the binding's.
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(b.namespace.as_deref())
                .unwrap_or("");
            user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

fn matches_any(values: &[String], want: &str) -> bool {
    values.iter().any(|v| v == "*" || v == want)
}

/// Whether one rule allows a resource request (kube's `RuleAllows`).
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !matches_any(&rule.verbs, &a.verb) {
        return false;
    }
    let groups = rule.api_groups.as_deref().unwrap_or(&[]);
    if !matches_any(groups, &a.api_group) {
        return false;
    }
    let resources = rule.resources.as_deref().unwrap_or(&[]);
    let full = a.full_resource();
    let resource_ok = resources.iter().any(|r| {
        r == "*"
            || *r == full
            // `*/status` grants that subresource of every resource.
            || a.subresource.as_deref().is_some_and(|s| *r == format!("*/{s}"))
    });
    if !resource_ok {
        return false;
    }
    match rule.resource_names.as_deref() {
        None | Some([]) => true,
        // A rule naming objects cannot allow a request without a name (create, plain list).
        Some(names) => a
            .name
            .as_deref()
            .is_some_and(|n| names.iter().any(|x| x == n)),
    }
}

/// Whether one rule allows a non-resource request (`nonResourceURLs`, with a trailing `*`
/// matching any suffix).
pub fn rule_allows_path(rule: &PolicyRule, verb: &str, path: &str) -> bool {
    matches_any(&rule.verbs, verb)
        && rule
            .non_resource_urls
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|u| {
                u == "*"
                    || u == path
                    || u.strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix))
            })
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the reason names the granting role.
    Allow(String),
    /// No rule allows it.
    Deny,
}

/// Authorize a resource request with RBAC semantics: `system:masters` bypasses; otherwise a
/// rule from a ClusterRoleBinding (any namespace) or a RoleBinding in the request's namespace
/// must allow it.
pub fn authorize(policy: &Policy, user: &UserInfo, a: &Attributes) -> Decision {
    if user.is_master() {
        return Decision::Allow(format!("group {MASTERS}"));
    }
    if is_self_review(a) {
        return Decision::Allow("ClusterRole system:basic-user".into());
    }
    policy
        .rules_for(user, a.namespace.as_deref())
        .into_iter()
        .find(|(_, r)| rule_allows(r, a))
        .map_or(Decision::Deny, |(from, _)| Decision::Allow(from))
}

/// Self reviews (`kubectl auth can-i`, `whoami`) are granted to every authenticated user by
/// kube-apiserver's `system:basic-user` binding.
fn is_self_review(a: &Attributes) -> bool {
    a.verb == "create"
        && matches!(
            (a.api_group.as_str(), a.resource.as_str()),
            (
                "authorization.k8s.io",
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
            ) | ("authentication.k8s.io", "selfsubjectreviews")
        )
}

/// Non-resource paths every authenticated user may GET (kube-apiserver's `system:discovery`
/// and `system:public-info-viewer` bindings).
pub fn discovery_path_allowed(verb: &str, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    verb == "get"
        && (matches!(
            path,
            "/api" | "/apis" | "/version" | "/healthz" | "/livez" | "/readyz"
        ) || [
            "/api/",
            "/apis/",
            "/openapi/",
            "/version/",
            "/healthz/",
            "/livez/",
            "/readyz/",
        ]
        .iter()
        .any(|p| path.starts_with(p))
            || path == "/openapi")
}

/// kube-apiserver's 403 for a denied resource request, message and details byte for byte:
/// `services "x" is forbidden: User "u" cannot patch resource "services/status" in API group ""
/// in the namespace "default"`.
pub fn forbidden(user: &UserInfo, a: &Attributes) -> ApiError {
    let q = qualified(&a.api_group, &a.resource);
    let subject = match &a.name {
        Some(n) => format!("{q} \"{n}\""),
        None => q,
    };
    let scope = match &a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let message = format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        user.name,
        a.verb,
        a.full_resource(),
        a.api_group
    );
    let mut details = json!({"kind": a.resource});
    if let Some(n) = &a.name {
        details["name"] = json!(n);
    }
    if !a.api_group.is_empty() {
        details["group"] = json!(a.api_group);
    }
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details: Some(details),
    }
}

/// kube-apiserver's 403 for a denied non-resource request.
pub fn forbidden_path(user: &UserInfo, verb: &str, path: &str) -> ApiError {
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
            user.name
        ),
        details: None,
    }
}

/// Answer a SelfSubjectAccessReview `spec` for `user` (`kubectl auth can-i`): `(allowed,
/// reason)`. `resourceAttributes` are evaluated like a request; `nonResourceAttributes` like a
/// non-resource path.
pub fn access_review(policy: &Policy, user: &UserInfo, spec: &Value) -> (bool, String) {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let opt = |v: &Value, k: &str| Some(text(v, k)).filter(|s| !s.is_empty());
    if let Some(ra) = spec.get("resourceAttributes") {
        let a = Attributes {
            verb: text(ra, "verb"),
            api_group: text(ra, "group"),
            resource: text(ra, "resource"),
            subresource: opt(ra, "subresource"),
            namespace: opt(ra, "namespace"),
            name: opt(ra, "name"),
        };
        return match authorize(policy, user, &a) {
            Decision::Allow(from) => (true, format!("RBAC: allowed by {from}")),
            Decision::Deny => (false, String::new()),
        };
    }
    if let Some(nr) = spec.get("nonResourceAttributes") {
        let (verb, path) = (text(nr, "verb"), text(nr, "path"));
        let allowed = user.is_master()
            || discovery_path_allowed(&verb, &path)
            || policy
                .rules_for(user, None)
                .iter()
                .any(|(_, r)| rule_allows_path(r, &verb, &path));
        return (allowed, String::new());
    }
    (
        false,
        "spec names neither resourceAttributes nor nonResourceAttributes".into(),
    )
}

/// One authorized (or denied) resource request, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// User name.
    pub user: String,
    /// Verb.
    pub verb: String,
    /// API group.
    pub api_group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    /// Namespace of the request; `None` at cluster scope.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
    /// Whether it was allowed.
    pub allowed: bool,
}

impl AuditEntry {
    /// The entry for one decision.
    pub fn new(user: &UserInfo, a: &Attributes, allowed: bool) -> Self {
        AuditEntry {
            user: user.name.clone(),
            verb: a.verb.clone(),
            api_group: a.api_group.clone(),
            resource: a.full_resource(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            allowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(
        verb: &str,
        group: &str,
        res: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        let (resource, subresource) = match res.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (res.to_string(), None),
        };
        Attributes {
            verb: verb.into(),
            api_group: group.into(),
            resource,
            subresource,
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    fn sa() -> UserInfo {
        UserInfo::service_account("lodestone-system", "lodestone-controller")
    }

    fn policy() -> Policy {
        let objs = [
            json!({"kind": "ClusterRole", "metadata": {"name": "ctl"}, "rules": [
                {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]},
                {"apiGroups": ["lodestone.dev"], "resources": ["ipaddresspools"], "verbs": ["*"],
                 "resourceNames": ["a"]},
            ]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "ctl"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ctl"},
                "subjects": [{"kind": "ServiceAccount", "name": "lodestone-controller", "namespace": "lodestone-system"}]}),
            json!({"kind": "Role", "metadata": {"name": "le", "namespace": "lodestone-system"}, "rules": [
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"]}]}),
            // No namespace on the subject: defaults to the binding's.
            json!({"kind": "RoleBinding", "metadata": {"name": "le", "namespace": "lodestone-system"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "le"},
                "subjects": [{"kind": "ServiceAccount", "name": "lodestone-controller"}]}),
            // A ClusterRole bound only in namespace "team": grants there and nowhere else.
            json!({"kind": "ClusterRole", "metadata": {"name": "ev"}, "rules": [
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "ev", "namespace": "team"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ev"},
                "subjects": [{"kind": "Group", "name": "system:serviceaccounts:lodestone-system"}]}),
        ];
        Policy::from_objects(objs.iter())
    }

    fn allowed(a: &Attributes) -> bool {
        matches!(authorize(&policy(), &sa(), a), Decision::Allow(_))
    }

    #[test]
    fn verbs_and_subresources() {
        assert!(allowed(&attrs("list", "", "services", None, None)));
        assert!(allowed(&attrs("watch", "", "services", Some("x"), None)));
        assert!(allowed(&attrs("get", "", "services", Some("x"), Some("s"))));
        assert!(!allowed(&attrs(
            "patch",
            "",
            "services",
            Some("x"),
            Some("s")
        )));
        assert!(allowed(&attrs(
            "patch",
            "",
            "services/status",
            Some("x"),
            Some("s")
        )));
        assert!(!allowed(&attrs(
            "get",
            "",
            "services/status",
            Some("x"),
            Some("s")
        )));
        // Same resource name in another group is another resource.
        assert!(!allowed(&attrs(
            "list",
            "example.com",
            "services",
            None,
            None
        )));
    }

    #[test]
    fn resource_names() {
        assert!(allowed(&attrs(
            "delete",
            "lodestone.dev",
            "ipaddresspools",
            None,
            Some("a")
        )));
        assert!(!allowed(&attrs(
            "delete",
            "lodestone.dev",
            "ipaddresspools",
            None,
            Some("b")
        )));
        // No name: create and an unpinned list cannot match a named rule.
        assert!(!allowed(&attrs(
            "create",
            "lodestone.dev",
            "ipaddresspools",
            None,
            None
        )));
        assert!(!allowed(&attrs(
            "list",
            "lodestone.dev",
            "ipaddresspools",
            None,
            None
        )));
        // A list pinned to the name by a field selector can.
        assert!(allowed(&attrs(
            "list",
            "lodestone.dev",
            "ipaddresspools",
            None,
            Some("a")
        )));
    }

    #[test]
    fn role_bindings_are_namespaced() {
        let lease = |ns| attrs("get", "coordination.k8s.io", "leases", ns, Some("l"));
        assert!(allowed(&lease(Some("lodestone-system"))));
        assert!(!allowed(&lease(Some("default"))));
        assert!(!allowed(&lease(None)));
        let ev = |ns| attrs("create", "events.k8s.io", "events", ns, None);
        assert!(allowed(&ev(Some("team"))));
        assert!(!allowed(&ev(Some("default"))));
        assert!(!allowed(&ev(None)));
    }

    #[test]
    fn other_users_and_masters() {
        let other = UserInfo::service_account("lodestone-system", "lodestone-speaker");
        let a = attrs("list", "", "services", None, None);
        assert_eq!(authorize(&policy(), &other, &a), Decision::Deny);
        let admin = UserInfo {
            name: "admin".into(),
            groups: vec![MASTERS.into()],
        };
        let anything = attrs("deletecollection", "x", "y", None, None);
        assert!(matches!(
            authorize(&Policy::default(), &admin, &anything),
            Decision::Allow(_)
        ));
        // Self reviews need no binding.
        let ssar = attrs(
            "create",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            None,
            None,
        );
        assert!(matches!(
            authorize(&Policy::default(), &other, &ssar),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn wildcards() {
        let p = Policy::from_objects(
            [
                json!({"kind": "ClusterRole", "metadata": {"name": "w"}, "rules": [
                    {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["patch"]},
                    {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["get"]}]}),
                json!({"kind": "ClusterRoleBinding", "metadata": {"name": "w"},
                    "roleRef": {"kind": "ClusterRole", "name": "w", "apiGroup": "rbac.authorization.k8s.io"},
                    "subjects": [{"kind": "User", "name": "u"}]}),
            ]
            .iter(),
        );
        let u = UserInfo {
            name: "u".into(),
            groups: vec![],
        };
        let ok = |a: &Attributes| matches!(authorize(&p, &u, a), Decision::Allow(_));
        assert!(ok(&attrs(
            "patch",
            "x.io",
            "things/status",
            Some("n"),
            Some("t")
        )));
        assert!(!ok(&attrs("patch", "x.io", "things", Some("n"), Some("t"))));
        assert!(ok(&attrs(
            "get",
            "apps",
            "deployments",
            Some("n"),
            Some("d")
        )));
        assert!(ok(&attrs(
            "get",
            "apps",
            "deployments/scale",
            Some("n"),
            Some("d")
        )));
        assert!(!ok(&attrs("list", "apps", "deployments", Some("n"), None)));
    }

    #[test]
    fn forbidden_message_is_kube_apiservers() {
        let e = forbidden(
            &sa(),
            &attrs("patch", "", "services/status", Some("default"), Some("x")),
        );
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "services \"x\" is forbidden: User \"system:serviceaccount:lodestone-system:lodestone-controller\" \
             cannot patch resource \"services/status\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(e.details, Some(json!({"name": "x", "kind": "services"})));
        let e = forbidden(
            &sa(),
            &attrs("list", "lodestone.dev", "l2advertisements", None, None),
        );
        assert_eq!(
            e.message,
            "l2advertisements.lodestone.dev is forbidden: User \"system:serviceaccount:lodestone-system:lodestone-controller\" \
             cannot list resource \"l2advertisements\" in API group \"lodestone.dev\" at the cluster scope"
        );
        assert_eq!(
            e.details,
            Some(json!({"kind": "l2advertisements", "group": "lodestone.dev"}))
        );
    }

    #[test]
    fn discovery_paths() {
        for p in [
            "/api",
            "/apis",
            "/apis/lodestone.dev/v1alpha1",
            "/openapi/v2",
            "/version",
            "/api/v1",
        ] {
            assert!(discovery_path_allowed("get", p), "{p}");
        }
        assert!(!discovery_path_allowed("post", "/api"));
        assert!(!discovery_path_allowed("get", "/metrics"));
    }

    #[test]
    fn access_reviews_answer_for_the_user() {
        let spec = |verb: &str, res: &str, ns: &str| json!({"resourceAttributes": {"verb": verb, "group": "", "resource": res, "namespace": ns}});
        let (ok, reason) = access_review(&policy(), &sa(), &spec("list", "services", "x"));
        assert!(ok);
        assert_eq!(reason, "RBAC: allowed by ClusterRole ctl");
        assert!(!access_review(&policy(), &sa(), &spec("delete", "services", "x")).0);
        let nr = json!({"nonResourceAttributes": {"verb": "get", "path": "/apis"}});
        assert!(access_review(&policy(), &sa(), &nr).0);
        let nr = json!({"nonResourceAttributes": {"verb": "get", "path": "/metrics"}});
        assert!(!access_review(&policy(), &sa(), &nr).0);
        assert!(!access_review(&policy(), &sa(), &json!({})).0);
    }

    const VERBS: [&str; 8] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];

    proptest! {
        /// A rule granting exactly (verb, group, resource) allows that request and no request
        /// differing in verb, group or resource; "*" in any position widens only that position.
        #[test]
        fn exact_rule_allows_exactly(
            v in 0..VERBS.len(), v2 in 0..VERBS.len(),
            g in "[a-z]{0,3}", g2 in "[a-z]{0,3}",
            r in "[a-z]{1,3}", r2 in "[a-z]{1,3}",
            star in 0..4u8,
        ) {
            let rule = PolicyRule {
                verbs: vec![if star == 1 { "*".into() } else { VERBS[v].into() }],
                api_groups: Some(vec![if star == 2 { "*".into() } else { g.clone() }]),
                resources: Some(vec![if star == 3 { "*".into() } else { r.clone() }]),
                ..Default::default()
            };
            let a = attrs(VERBS[v2], &g2, &r2, Some("ns"), Some("n"));
            let expect = (star == 1 || v == v2) && (star == 2 || g == g2) && (star == 3 || r == r2);
            prop_assert_eq!(rule_allows(&rule, &a), expect);
        }
    }
}
