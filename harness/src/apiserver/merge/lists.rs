//! List semantics: built-in tables transcribed from the `+listType` / `+listMapKey` markers and
//! `patchStrategy` / `patchMergeKey` tags of k8s.io/api (v1.33), and the CRD-schema reader for
//! `x-kubernetes-list-type` / `x-kubernetes-list-map-keys`.

use std::sync::Arc;

use serde_json::Value;

use super::{ListSemantics, ListType};

/// One row of a table: a path pattern (`[]` for list items), its server-side-apply list type and,
/// when it differs, the strategic-merge-patch strategy.
#[derive(Clone, Debug)]
struct Row {
    path: Vec<String>,
    ssa: ListType,
    smp: Option<ListType>,
}

/// A table of list semantics for one built-in kind, ObjectMeta rows included.
#[derive(Clone, Debug, Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, path: &str, ssa: ListType) {
        self.rows.push(Row {
            path: split(path),
            ssa,
            smp: None,
        });
    }

    fn add_smp(&mut self, path: &str, ssa: ListType, smp: ListType) {
        self.rows.push(Row {
            path: split(path),
            ssa,
            smp: Some(smp),
        });
    }

    fn find(&self, path: &[String]) -> Option<&Row> {
        self.rows.iter().find(|r| r.path == path)
    }
}

impl ListSemantics for Table {
    fn list_type(&self, path: &[String]) -> ListType {
        self.find(path).map_or(ListType::Atomic, |r| r.ssa.clone())
    }

    fn patch_strategy(&self, path: &[String]) -> ListType {
        self.find(path).map_or(ListType::Atomic, |r| {
            r.smp.clone().unwrap_or_else(|| r.ssa.clone())
        })
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn map(keys: &[&str]) -> ListType {
    ListType::Map(keys.iter().map(|k| (*k).to_owned()).collect())
}

/// ObjectMeta's lists, relative to `metadata`.
fn object_meta_type(rest: &[String]) -> ListType {
    match rest {
        [f] if f == "finalizers" => ListType::Set,
        [f] if f == "ownerReferences" => map(&["uid"]),
        // managedFields and everything else in ObjectMeta is atomic.
        _ => ListType::Atomic,
    }
}

fn add_object_meta(t: &mut Table, prefix: &str) {
    t.add(&format!("{prefix}metadata.finalizers"), ListType::Set);
    t.add(&format!("{prefix}metadata.ownerReferences"), map(&["uid"]));
    t.add(&format!("{prefix}metadata.managedFields"), ListType::Atomic);
}

/// Container lists of a PodSpec found at `prefix` (e.g. "spec.").
fn add_pod_spec(t: &mut Table, prefix: &str) {
    for containers in ["containers", "initContainers", "ephemeralContainers"] {
        let c = format!("{prefix}{containers}");
        t.add(&c, map(&["name"]));
        // Ports: SSA keys on (containerPort, protocol); patchMergeKey is containerPort alone.
        t.add_smp(
            &format!("{c}.[].ports"),
            map(&["containerPort", "protocol"]),
            map(&["containerPort"]),
        );
        t.add(&format!("{c}.[].env"), map(&["name"]));
        t.add(&format!("{c}.[].volumeMounts"), map(&["mountPath"]));
        t.add(&format!("{c}.[].volumeDevices"), map(&["devicePath"]));
        t.add(&format!("{c}.[].resizePolicy"), ListType::Atomic);
    }
    t.add(&format!("{prefix}volumes"), map(&["name"]));
    t.add(&format!("{prefix}imagePullSecrets"), map(&["name"]));
    t.add(&format!("{prefix}hostAliases"), map(&["ip"]));
    t.add_smp(
        &format!("{prefix}topologySpreadConstraints"),
        map(&["topologyKey", "whenUnsatisfiable"]),
        map(&["topologyKey"]),
    );
    t.add(&format!("{prefix}schedulingGates"), map(&["name"]));
    t.add(&format!("{prefix}resourceClaims"), map(&["name"]));
}

fn builtin_table(group: &str, kind: &str) -> Table {
    let mut t = Table::default();
    add_object_meta(&mut t, "");
    match (group, kind) {
        ("", "Service") => {
            // +listType=map +listMapKey=port +listMapKey=protocol, but patchMergeKey=port.
            t.add_smp("spec.ports", map(&["port", "protocol"]), map(&["port"]));
            for atomic in [
                "spec.clusterIPs",
                "spec.ipFamilies",
                "spec.externalIPs",
                "spec.loadBalancerSourceRanges",
                "status.loadBalancer.ingress",
                "status.loadBalancer.ingress.[].ports",
            ] {
                t.add(atomic, ListType::Atomic);
            }
            t.add("status.conditions", map(&["type"]));
        }
        ("", "Node") => {
            // patchStrategy=merge of a primitive list: union in both worlds.
            t.add("spec.podCIDRs", ListType::Set);
            t.add("spec.taints", ListType::Atomic);
            t.add("status.conditions", map(&["type"]));
            // +listType=atomic for apply, yet patchMergeKey=type for strategic merge.
            t.add_smp("status.addresses", ListType::Atomic, map(&["type"]));
            t.add("status.images", ListType::Atomic);
            t.add("status.volumesInUse", ListType::Atomic);
            t.add("status.volumesAttached", ListType::Atomic);
        }
        ("", "Pod") => {
            add_pod_spec(&mut t, "spec.");
            t.add("status.conditions", map(&["type"]));
            t.add("status.podIPs", map(&["ip"]));
            t.add_smp("status.hostIPs", ListType::Atomic, map(&["ip"]));
        }
        ("", "Namespace") => {
            t.add("spec.finalizers", ListType::Atomic);
            t.add("status.conditions", map(&["type"]));
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            t.add("endpoints", ListType::Atomic);
            t.add("ports", ListType::Atomic);
            // +listType=set without patchStrategy: strategic merge replaces it.
            t.add_smp("endpoints.[].addresses", ListType::Set, ListType::Atomic);
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            t.add("spec.versions", ListType::Atomic);
            t.add("status.conditions", map(&["type"]));
            t.add("status.storedVersions", ListType::Atomic);
        }
        // Secret, ConfigMap, Event (core and events.k8s.io), Lease: no lists beyond ObjectMeta's.
        _ => {}
    }
    t
}

/// Tables for the built-in kinds we serve (group "" for core): Service, Node, Pod, Namespace,
/// Secret, ConfigMap, Event (core and events.k8s.io), EndpointSlice (discovery.k8s.io), Lease
/// (coordination.k8s.io), CustomResourceDefinition (apiextensions.k8s.io). ObjectMeta lists are
/// included for every kind; unknown paths are atomic.
pub fn builtin_list_semantics(group: &str, kind: &str) -> Arc<dyn ListSemantics> {
    Arc::new(builtin_table(group, kind))
}

/// List semantics read from a CRD version's `openAPIV3Schema`.
#[derive(Clone, Debug)]
struct SchemaLists {
    schema: Value,
}

impl SchemaLists {
    fn resolve(&self, path: &[String]) -> ListType {
        let mut node = &self.schema;
        for (i, seg) in path.iter().enumerate() {
            // ObjectMeta, at the root or in an embedded resource, has fixed semantics.
            let embedded = i == 0
                || node
                    .get("x-kubernetes-embedded-resource")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            if embedded && seg == "metadata" {
                return object_meta_type(&path[i + 1..]);
            }
            let next = if seg == "[]" {
                node.get("items")
            } else {
                node.get("properties")
                    .and_then(|p| p.get(seg))
                    .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
            };
            match next {
                Some(n) => node = n,
                None => return ListType::Atomic,
            }
        }
        schema_node_list_type(node)
    }
}

/// The list type a schema node declares (Atomic when it declares none).
pub(crate) fn schema_node_list_type(node: &Value) -> ListType {
    match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            node.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListType::Atomic,
    }
}

impl ListSemantics for SchemaLists {
    fn list_type(&self, path: &[String]) -> ListType {
        self.resolve(path)
    }

    fn declares(&self, path: &[String]) -> bool {
        let mut node = &self.schema;
        for (i, seg) in path.iter().enumerate() {
            let flag = |n: &Value, k: &str| n.get(k).and_then(Value::as_bool).unwrap_or(false);
            // Type meta and ObjectMeta of the root and of embedded resources are always declared.
            if (i == 0 || flag(node, "x-kubernetes-embedded-resource"))
                && matches!(seg.as_str(), "apiVersion" | "kind" | "metadata")
            {
                return true;
            }
            let next = if seg == "[]" {
                node.get("items")
            } else {
                node.get("properties")
                    .and_then(|p| p.get(seg))
                    .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
            };
            match next {
                Some(n) => node = n,
                None => {
                    return flag(node, "x-kubernetes-preserve-unknown-fields")
                        || node.get("additionalProperties") == Some(&Value::Bool(true))
                        // A non-object node: a type error for validation, not an unknown field.
                        || node.get("type").and_then(Value::as_str).is_some_and(|t| t != "object" && t != "array");
                }
            }
        }
        true
    }
}

/// From a CRD's openAPIV3Schema: x-kubernetes-list-type (atomic|set|map) + x-kubernetes-list-map-keys;
/// default for lists without markers: Atomic. Embedded ObjectMeta semantics as for built-ins.
pub fn schema_list_semantics(openapi_v3_schema: &Value) -> Arc<dyn ListSemantics> {
    Arc::new(SchemaLists {
        schema: openapi_v3_schema.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Vec<String> {
        split(s)
    }

    #[test]
    fn service_lists() {
        let l = builtin_list_semantics("", "Service");
        assert_eq!(l.list_type(&p("spec.ports")), map(&["port", "protocol"]));
        assert_eq!(l.patch_strategy(&p("spec.ports")), map(&["port"]));
        assert_eq!(l.list_type(&p("status.conditions")), map(&["type"]));
        assert_eq!(
            l.list_type(&p("status.loadBalancer.ingress")),
            ListType::Atomic
        );
        assert_eq!(l.list_type(&p("metadata.finalizers")), ListType::Set);
        assert_eq!(l.list_type(&p("metadata.ownerReferences")), map(&["uid"]));
        assert_eq!(l.list_type(&p("spec.unknown")), ListType::Atomic);
    }

    #[test]
    fn node_addresses_differ_between_apply_and_patch() {
        let l = builtin_list_semantics("", "Node");
        assert_eq!(l.list_type(&p("status.addresses")), ListType::Atomic);
        assert_eq!(l.patch_strategy(&p("status.addresses")), map(&["type"]));
    }

    #[test]
    fn pod_container_lists() {
        let l = builtin_list_semantics("", "Pod");
        assert_eq!(l.list_type(&p("spec.containers")), map(&["name"]));
        assert_eq!(
            l.list_type(&p("spec.initContainers.[].env")),
            map(&["name"])
        );
        assert_eq!(
            l.patch_strategy(&p("spec.containers.[].ports")),
            map(&["containerPort"])
        );
    }

    #[test]
    fn every_kind_has_object_meta_lists() {
        for (g, k) in [
            ("", "Secret"),
            ("", "ConfigMap"),
            ("", "Event"),
            ("events.k8s.io", "Event"),
            ("coordination.k8s.io", "Lease"),
            ("discovery.k8s.io", "EndpointSlice"),
        ] {
            let l = builtin_list_semantics(g, k);
            assert_eq!(l.list_type(&p("metadata.finalizers")), ListType::Set, "{k}");
        }
    }

    #[test]
    fn schema_markers() {
        let schema = json!({
            "type": "object",
            "properties": {
                "metadata": {"type": "object"},
                "spec": {"type": "object", "properties": {
                    "addresses": {"type": "array", "items": {"type": "string"}},
                    "tags": {"type": "array", "x-kubernetes-list-type": "set",
                             "items": {"type": "string"}},
                    "rules": {"type": "array", "x-kubernetes-list-type": "map",
                              "x-kubernetes-list-map-keys": ["name", "zone"],
                              "items": {"type": "object", "properties": {
                                  "name": {"type": "string"}, "zone": {"type": "string"},
                                  "ports": {"type": "array", "x-kubernetes-list-type": "set",
                                            "items": {"type": "integer"}}}}},
                    "byName": {"type": "object", "additionalProperties": {
                        "type": "array", "x-kubernetes-list-type": "set",
                        "items": {"type": "string"}}},
                    "embedded": {"type": "object", "x-kubernetes-embedded-resource": true,
                                 "x-kubernetes-preserve-unknown-fields": true}
                }},
                "status": {"type": "object", "properties": {
                    "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                                   "x-kubernetes-list-map-keys": ["type"],
                                   "items": {"type": "object"}}}}
            }
        });
        let l = schema_list_semantics(&schema);
        assert_eq!(l.list_type(&p("spec.addresses")), ListType::Atomic);
        assert_eq!(l.list_type(&p("spec.tags")), ListType::Set);
        assert_eq!(l.list_type(&p("spec.rules")), map(&["name", "zone"]));
        assert_eq!(l.list_type(&p("spec.rules.[].ports")), ListType::Set);
        assert_eq!(l.list_type(&p("spec.byName.anything")), ListType::Set);
        assert_eq!(l.list_type(&p("status.conditions")), map(&["type"]));
        assert_eq!(l.list_type(&p("metadata.finalizers")), ListType::Set);
        assert_eq!(
            l.list_type(&p("spec.embedded.metadata.ownerReferences")),
            map(&["uid"])
        );
        assert_eq!(l.list_type(&p("spec.nothing.here")), ListType::Atomic);
        for declared in [
            "apiVersion",
            "metadata.labels.x",
            "spec.addresses",
            "spec.rules.[].ports",
            "spec.byName.any",
            "spec.embedded.whatever.below",
            "status.conditions",
        ] {
            assert!(l.declares(&p(declared)), "{declared}");
        }
        for undeclared in [
            "bogus",
            "spec.bogus",
            "spec.rules.[].bogus",
            // Items typed object without properties declare nothing.
            "status.conditions.[].anything",
        ] {
            assert!(!l.declares(&p(undeclared)), "{undeclared}");
        }
        assert!(builtin_list_semantics("", "Service").declares(&p("spec.bogus")));
    }
}
