//! The set of served resources: one table of built-ins plus the custom resources registered by
//! CRDs. Discovery and routing both read this, so what is listed is exactly what is served.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::merge::StructuralSchema;

/// A built-in resource, as one row of [`BUILTINS`].
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// API group, `""` for core.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural resource name used in paths.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether a `/status` subresource exists (main-resource writes then ignore `.status`).
    pub status: bool,
    /// Whether `metadata.generation` is maintained.
    pub generation: bool,
    /// Whether `.status` sent on create is kept (Nodes) instead of reset.
    pub status_on_create: bool,
    /// Short names for kubectl.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Verbs served on the main resource.
    pub verbs: &'static [&'static str],
}

/// Every verb the generic store implements.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Verbs of a `/status` subresource.
pub const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// The built-in resources: what Lodestone's binaries use, plus what its deploy/ manifests
/// contain (so `kubectl apply -k deploy/` works against the sandbox).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        status: true,
        generation: false,
        status_on_create: false,
        short_names: &["ns"],
        categories: &[],
        // kube-apiserver serves no deletecollection on namespaces.
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        status: true,
        generation: false,
        status_on_create: true,
        short_names: &["no"],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        status: true,
        generation: false,
        status_on_create: false,
        short_names: &["svc"],
        categories: &["all"],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        status: true,
        generation: true,
        status_on_create: false,
        short_names: &["po"],
        categories: &["all"],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &[],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &["cm"],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &["ev"],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &["ev"],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        status: false,
        generation: true,
        status_on_create: false,
        short_names: &[],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &[],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &["sa"],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &["ep"],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        status: true,
        generation: true,
        status_on_create: false,
        short_names: &["deploy"],
        categories: &["all"],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        status: true,
        generation: true,
        status_on_create: false,
        short_names: &["ds"],
        categories: &["all"],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        status: true,
        generation: true,
        status_on_create: false,
        short_names: &["rs"],
        categories: &["all"],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        namespaced: true,
        status: true,
        generation: true,
        status_on_create: false,
        short_names: &["sts"],
        categories: &["all"],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &[],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &[],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        singular: "role",
        kind: "Role",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &[],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        namespaced: true,
        status: false,
        generation: false,
        status_on_create: false,
        short_names: &[],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        kind: "PodDisruptionBudget",
        namespaced: true,
        status: true,
        generation: true,
        status_on_create: false,
        short_names: &["pdb"],
        categories: &[],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "validatingadmissionpolicies",
        singular: "validatingadmissionpolicy",
        kind: "ValidatingAdmissionPolicy",
        namespaced: false,
        status: true,
        generation: true,
        status_on_create: false,
        short_names: &[],
        categories: &["api-extensions"],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "validatingadmissionpolicybindings",
        singular: "validatingadmissionpolicybinding",
        kind: "ValidatingAdmissionPolicyBinding",
        namespaced: false,
        status: false,
        generation: true,
        status_on_create: false,
        short_names: &[],
        categories: &["api-extensions"],
        verbs: ALL_VERBS,
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        kind: "CustomResourceDefinition",
        namespaced: false,
        status: true,
        generation: true,
        status_on_create: false,
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        verbs: ALL_VERBS,
    },
];

/// What a custom resource version carries beyond the common fields.
#[derive(Debug, Clone)]
pub struct CrdVersion {
    /// The CRD's name (`<plural>.<group>`).
    pub crd_name: String,
    /// `schema.openAPIV3Schema` of this version (`Value::Null` when absent).
    pub schema: Value,
    /// `additionalPrinterColumns` of this version.
    pub printer_columns: Vec<Value>,
    /// The storage version (objects are stored once; reads rewrite `apiVersion`).
    pub storage_version: String,
    /// The compiled schema (pruning, defaulting, validation incl. CEL), when the version has one.
    pub structural: Option<Arc<StructuralSchema>>,
}

/// A served resource at one group/version.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group, `""` for core.
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// List kind.
    pub list_kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `/status` subresource.
    pub status: bool,
    /// `metadata.generation` is maintained.
    pub generation: bool,
    /// `.status` sent on create is kept.
    pub status_on_create: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Verbs served on the main resource (the status subresource serves [`STATUS_VERBS`]).
    pub verbs: Vec<String>,
    /// Set for custom resources.
    pub crd: Option<Arc<CrdVersion>>,
}

impl ResourceDef {
    /// `apiVersion` of objects of this resource.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key: version-independent, so every served version sees the same objects.
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    fn from_builtin(b: &Builtin) -> Self {
        ResourceDef {
            group: b.group.into(),
            version: b.version.into(),
            plural: b.plural.into(),
            singular: b.singular.into(),
            kind: b.kind.into(),
            list_kind: format!("{}List", b.kind),
            namespaced: b.namespaced,
            status: b.status,
            generation: b.generation,
            status_on_create: b.status_on_create,
            short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
            categories: b.categories.iter().map(|s| s.to_string()).collect(),
            verbs: b.verbs.iter().map(|s| s.to_string()).collect(),
            crd: None,
        }
    }
}

/// Kubernetes version priority: GA before beta before alpha, higher numbers first, then
/// non-conforming names alphabetically. Used for the preferred version of a group.
pub fn version_priority(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((2, major, 0));
        }
        let (class, num) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        let minor: u64 = if num.is_empty() { 0 } else { num.parse().ok()? };
        Some((class, major, minor))
    }
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Every served resource, built-in and custom.
#[derive(Debug, Clone)]
pub struct Registry {
    builtins: Vec<Arc<ResourceDef>>,
    /// CRD name → its served versions.
    crds: BTreeMap<String, Vec<Arc<ResourceDef>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            builtins: BUILTINS
                .iter()
                .map(|b| Arc::new(ResourceDef::from_builtin(b)))
                .collect(),
            crds: BTreeMap::new(),
        }
    }
}

/// Why a CRD cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdError {
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Registry {
    /// Every served resource definition.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.builtins.iter().chain(self.crds.values().flatten())
    }

    /// The resource served at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.all()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// A served definition for a store key (`group/plural`), preferring the storage version.
    pub fn by_store_key(&self, key: &str) -> Option<Arc<ResourceDef>> {
        let mut candidates: Vec<&Arc<ResourceDef>> =
            self.all().filter(|r| r.store_key() == key).collect();
        candidates.sort_by_key(|r| {
            r.crd
                .as_ref()
                .is_some_and(|c| c.storage_version != r.version)
        });
        candidates.first().map(|r| Arc::clone(r))
    }

    /// Groups with their versions, preferred version first. The core group is excluded.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for r in self.all().filter(|r| !r.group.is_empty()) {
            if !groups.contains_key(&r.group) {
                order.push(r.group.clone());
            }
            let vs = groups.entry(r.group.clone()).or_default();
            if !vs.contains(&r.version) {
                vs.push(r.version.clone());
            }
        }
        order
            .into_iter()
            .map(|g| {
                let mut vs = groups.remove(&g).unwrap_or_default();
                vs.sort_by(|a, b| version_priority(a, b));
                (g, vs)
            })
            .collect()
    }

    /// Resources served at one group/version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceDef>> {
        self.all()
            .filter(|r| r.group == group && r.version == version)
            .cloned()
            .collect()
    }

    /// Register (or re-register after an update) a CRD object. Returns the served definitions.
    pub fn register_crd(&mut self, crd: &Value) -> Result<Vec<Arc<ResourceDef>>, CrdError> {
        let defs = crd_defs(crd)?;
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for d in &defs {
            let clash = self.all().any(|r| {
                r.group == d.group
                    && r.version == d.version
                    && r.plural == d.plural
                    && r.crd.as_ref().map(|c| c.crd_name.as_str()) != Some(name.as_str())
            });
            if clash {
                return Err(CrdError {
                    field: "spec.names.plural".into(),
                    message: format!("Invalid value: {:?}: resource already served", d.plural),
                });
            }
        }
        self.crds.insert(name, defs.clone());
        Ok(defs)
    }

    /// Stop serving a CRD's resources.
    pub fn unregister_crd(&mut self, name: &str) -> Option<Vec<Arc<ResourceDef>>> {
        self.crds.remove(name)
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn strings_at(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The resource definitions a CRD object asks for, one per served version.
pub fn crd_defs(crd: &Value) -> Result<Vec<Arc<ResourceDef>>, CrdError> {
    let missing = |field: &str| CrdError {
        field: field.into(),
        message: "Required value".into(),
    };
    let group = str_at(crd, "/spec/group").ok_or_else(|| missing("spec.group"))?;
    let plural = str_at(crd, "/spec/names/plural").ok_or_else(|| missing("spec.names.plural"))?;
    let kind = str_at(crd, "/spec/names/kind").ok_or_else(|| missing("spec.names.kind"))?;
    let name = str_at(crd, "/metadata/name").unwrap_or_default();
    if name != format!("{plural}.{group}") {
        return Err(CrdError {
            field: "metadata.name".into(),
            message: format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        });
    }
    let singular = str_at(crd, "/spec/names/singular")
        .map(String::from)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = str_at(crd, "/spec/names/listKind")
        .map(String::from)
        .unwrap_or_else(|| format!("{kind}List"));
    let namespaced = match str_at(crd, "/spec/scope") {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(CrdError {
                field: "spec.scope".into(),
                message: "Unsupported value: must be Namespaced or Cluster".into(),
            });
        }
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("spec.versions"))?;
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .ok_or_else(|| CrdError {
            field: "spec.versions".into(),
            message: "Invalid value: must have exactly one version marked as storage version"
                .into(),
        })?
        .to_string();
    let short_names = strings_at(crd, "/spec/names/shortNames");
    let categories = strings_at(crd, "/spec/names/categories");
    let mut out = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let Some(version) = v.get("name").and_then(Value::as_str) else {
            return Err(missing("spec.versions[].name"));
        };
        let status = v.pointer("/subresources/status").is_some();
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let schema = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or(Value::Null);
        let structural = if schema.is_object() {
            Some(Arc::new(StructuralSchema::new(&schema).map_err(|e| {
                CrdError {
                    field: format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    message: e,
                }
            })?))
        } else {
            None
        };
        out.push(Arc::new(ResourceDef {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: singular.clone(),
            kind: kind.into(),
            list_kind: list_kind.clone(),
            namespaced,
            status,
            generation: true,
            status_on_create: false,
            short_names: short_names.clone(),
            categories: categories.clone(),
            verbs: ALL_VERBS.iter().map(|s| s.to_string()).collect(),
            crd: Some(Arc::new(CrdVersion {
                crd_name: name.into(),
                schema,
                printer_columns,
                storage_version: storage_version.clone(),
                structural,
            })),
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn version_priority_orders_like_kubernetes() {
        let mut v = vec![
            "v1alpha1",
            "v1",
            "foo",
            "v2beta1",
            "v1beta2",
            "v2",
            "v11alpha2",
            "v1beta1",
        ];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(
            v,
            vec![
                "v2",
                "v1",
                "v2beta1",
                "v1beta2",
                "v1beta1",
                "v11alpha2",
                "v1alpha1",
                "foo"
            ]
        );
    }

    fn crd() -> Value {
        json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                    {"name": "v2", "served": false, "storage": false}
                ]}
        })
    }

    #[test]
    fn crd_registers_served_versions_only() {
        let mut r = Registry::default();
        let defs = r.register_crd(&crd()).unwrap();
        assert_eq!(defs.len(), 1);
        let w = r.lookup("example.com", "v1", "widgets").unwrap();
        assert!(w.namespaced && w.status && w.generation);
        assert_eq!(w.singular, "widget");
        assert_eq!(w.list_kind, "WidgetList");
        assert!(r.lookup("example.com", "v2", "widgets").is_none());
        assert!(r.groups().iter().any(|(g, _)| g == "example.com"));
        r.unregister_crd("widgets.example.com");
        assert!(r.lookup("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn crd_cannot_shadow_builtin() {
        let mut r = Registry::default();
        let c = json!({
            "metadata": {"name": "leases.coordination.k8s.io"},
            "spec": {"group": "coordination.k8s.io", "scope": "Namespaced",
                "names": {"plural": "leases", "kind": "Lease"},
                "versions": [{"name": "v1", "served": true, "storage": true}]}
        });
        assert!(r.register_crd(&c).is_err());
    }

    #[test]
    fn crd_name_must_match() {
        let mut c = crd();
        c["metadata"]["name"] = json!("nope");
        assert!(crd_defs(&c).is_err());
    }
}
