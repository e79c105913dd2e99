//! Strategic merge patch, as kube-apiserver applies it to built-in kinds
//! (k8s.io/apimachinery/pkg/util/strategicpatch, with `IgnoreUnmatchedNulls` and parallel-list
//! directives): maps merge recursively and `null` deletes; lists merge by their patch strategy
//! (by merge key, as a set, or replaced); `$patch`, `$retainKeys`, `$deleteFromPrimitiveList/`
//! and `$setElementOrder/` directives are honoured and never left in the result.

use serde_json::{Map, Value};

use super::{ListSemantics, ListType};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Why a strategic merge patch cannot be applied; Display is the message for the 400/422 Status.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PatchError {
    /// The patch (or the object) is not a JSON object.
    #[error("strategic merge patch: {0} must be a JSON object")]
    NotAnObject(&'static str),
    /// A `$patch` directive with an unknown value.
    #[error("Unknown patch type: {directive} in map: {map}")]
    BadPatchType {
        /// The directive's value.
        directive: String,
        /// The map that carried it.
        map: String,
    },
    /// An item of a list merged by key lacks that key.
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey {
        /// The item.
        map: String,
        /// The merge key.
        key: String,
    },
    /// `$retainKeys` malformed, or the patch sets a key it does not retain.
    #[error("invalid patch format of retainKeys: {0}")]
    RetainKeys(String),
    /// Any other malformed patch (wrong directive shape, mixed list element types).
    #[error("{0}")]
    Invalid(String),
}

/// Strategic merge patch (what kubectl sends for built-in types): maps merge recursively, `null`
/// deletes, lists of type Map merge by their (first) key, Set lists union, Atomic lists replace;
/// directives `$patch: replace|delete|merge`, `$deleteFromPrimitiveList/<field>`,
/// `$setElementOrder/<field>` (honoured) and `$retainKeys`. List strategies come from
/// [`ListSemantics::patch_strategy`].
pub fn strategic_merge_patch(
    original: &Value,
    patch: &Value,
    lists: &dyn ListSemantics,
) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::NotAnObject("the patch"));
    };
    let empty = Map::new();
    let o = match original {
        Value::Object(o) => o,
        Value::Null => &empty,
        _ => return Err(PatchError::NotAnObject("the object")),
    };
    let mut path = Vec::new();
    merge_map(o, p, lists, &mut path).map(Value::Object)
}

fn is_directive(k: &str) -> bool {
    k == PATCH
        || k == RETAIN_KEYS
        || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
        || k.starts_with(SET_ELEMENT_ORDER)
}

fn merge_map(
    orig: &Map<String, Value>,
    patch: &Map<String, Value>,
    lists: &dyn ListSemantics,
    path: &mut Vec<String>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(d) = patch.get(PATCH) {
        match d.as_str() {
            Some("replace") => {
                // The map is the patch itself, cleaned of directives and nulls.
                let mut p = patch.clone();
                p.remove(PATCH);
                return merge_map(&Map::new(), &p, lists, path);
            }
            Some("delete") => return Ok(Map::new()),
            // kube-apiserver rejects `merge` in a map; it is the default, so we accept it.
            Some("merge") => {}
            _ => {
                return Err(PatchError::BadPatchType {
                    directive: d.to_string(),
                    map: Value::Object(patch.clone()).to_string(),
                });
            }
        }
    }
    let mut out = orig.clone();

    if let Some(rk) = patch.get(RETAIN_KEYS) {
        let keys: Vec<&str> = rk
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| PatchError::RetainKeys(format!("{rk} is not a list of strings")))?;
        for (k, v) in patch {
            if v.is_null() || is_directive(k) {
                continue;
            }
            if !keys.contains(&k.as_str()) {
                return Err(PatchError::RetainKeys(format!(
                    "the patch sets {k:?}, which is not in $retainKeys"
                )));
            }
        }
        out.retain(|k, _| keys.contains(&k.as_str()));
    }

    for (k, v) in patch {
        let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else {
            continue;
        };
        let Some(gone) = v.as_array() else {
            return Err(PatchError::Invalid(format!("{k} must be a list, got {v}")));
        };
        if let Some(Value::Array(items)) = out.get_mut(field) {
            items.retain(|x| !gone.contains(x));
        }
    }

    for (k, pv) in patch {
        if is_directive(k) {
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        path.push(k.clone());
        let merged = match (out.get(k), pv) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                merge_map(o, p, lists, path).map(Value::Object)
            }
            (Some(Value::Array(o)), Value::Array(p)) => {
                merge_list(o, p, lists, path).map(Value::Array)
            }
            // Absent, or of another type: the patch value, cleaned.
            (_, Value::Object(p)) => merge_map(&Map::new(), p, lists, path).map(Value::Object),
            (_, Value::Array(p)) => merge_list(&[], p, lists, path).map(Value::Array),
            _ => Ok(pv.clone()),
        };
        path.pop();
        out.insert(k.clone(), merged?);
    }

    for (k, order) in patch {
        let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) else {
            continue;
        };
        let Some(order) = order.as_array() else {
            return Err(PatchError::Invalid(format!(
                "{k} must be a list, got {order}"
            )));
        };
        path.push(field.to_owned());
        let strategy = lists.patch_strategy(path);
        path.pop();
        if let Some(Value::Array(items)) = out.get_mut(field) {
            reorder(items, order, &strategy);
        }
    }
    Ok(out)
}

/// The key a list is merged by, when its strategy merges by key.
fn merge_key(strategy: &ListType) -> Option<&str> {
    match strategy {
        ListType::Map(keys) => keys.first().map(String::as_str),
        _ => None,
    }
}

fn merge_list(
    orig: &[Value],
    patch: &[Value],
    lists: &dyn ListSemantics,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    let strategy = lists.patch_strategy(path);
    if strategy == ListType::Atomic {
        return Ok(patch.to_vec());
    }
    let maps = patch.iter().chain(orig).any(Value::is_object);
    let key = merge_key(&strategy);
    if !maps || key.is_none() {
        // Primitive lists merge as a set: union, first occurrence wins.
        let mut out: Vec<Value> = Vec::with_capacity(orig.len() + patch.len());
        for v in orig.iter().chain(patch) {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(out);
    }
    let key = key.unwrap_or_default();
    let mut base = orig.to_vec();
    let mut items = Vec::new();
    let mut replace = false;
    for p in patch {
        let Some(pm) = p.as_object() else {
            return Err(PatchError::Invalid(format!(
                "types don't match in list {}: {p} is not an object",
                path.join(".")
            )));
        };
        match pm.get(PATCH) {
            None => items.push(pm),
            Some(d) => match d.as_str() {
                Some("delete") => {
                    let Some(kv) = pm.get(key) else {
                        return Err(no_merge_key(pm, key));
                    };
                    base.retain(|o| o.get(key) != Some(kv));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(PatchError::Invalid(
                        "merging lists cannot yet be specified in the patch".to_owned(),
                    ));
                }
                _ => {
                    return Err(PatchError::BadPatchType {
                        directive: d.to_string(),
                        map: p.to_string(),
                    });
                }
            },
        }
    }
    if replace {
        base.clear();
    }
    path.push("[]".to_owned());
    let result = (|| {
        for pm in items {
            let Some(kv) = pm.get(key) else {
                return Err(no_merge_key(pm, key));
            };
            let slot = base.iter_mut().find(|o| o.get(key) == Some(kv));
            match slot {
                Some(existing) => {
                    let merged = match existing {
                        Value::Object(o) => merge_map(o, pm, lists, path)?,
                        _ => merge_map(&Map::new(), pm, lists, path)?,
                    };
                    *existing = Value::Object(merged);
                }
                None => base.push(Value::Object(merge_map(&Map::new(), pm, lists, path)?)),
            }
        }
        Ok(())
    })();
    path.pop();
    result?;
    Ok(base)
}

fn no_merge_key(map: &Map<String, Value>, key: &str) -> PatchError {
    PatchError::NoMergeKey {
        map: Value::Object(map.clone()).to_string(),
        key: key.to_owned(),
    }
}

/// `$setElementOrder`: items named in `order` first, in that order; the others after, as they were.
fn reorder(items: &mut [Value], order: &[Value], strategy: &ListType) {
    let key = merge_key(strategy);
    let ident = |v: &Value| -> Value {
        match (key, v) {
            (Some(k), Value::Object(m)) => m.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(ident).collect();
    // sort_by_key is stable: unnamed items keep their relative order.
    items.sort_by_key(|v| {
        let id = ident(v);
        wanted.iter().position(|w| *w == id).unwrap_or(usize::MAX)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::merge::{builtin_list_semantics, json_merge_patch};
    use proptest::prelude::*;
    use serde_json::json;

    fn svc() -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "s", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
               "spec": {"type": "LoadBalancer",
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                  {"name": "https", "port": 443, "protocol": "TCP"}],
                        "loadBalancerSourceRanges": ["192.0.2.0/24"],
                        "selector": {"app": "web"}},
               "status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}})
    }

    fn smp(orig: &Value, patch: Value) -> Result<Value, PatchError> {
        strategic_merge_patch(orig, &patch, builtin_list_semantics("", "Service").as_ref())
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        let out = smp(
            &svc(),
            json!({"metadata": {"labels": {"a": null, "c": "3"}},
                                     "spec": {"selector": {"tier": "f"}}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(out["spec"]["selector"], json!({"app": "web", "tier": "f"}));
    }

    #[test]
    fn map_lists_merge_by_key_and_keep_other_items() {
        let out = smp(
            &svc(),
            json!({"spec": {"ports": [{"port": 443, "name": "tls"},
                                                         {"port": 8080, "name": "alt"}]}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"name": "http", "port": 80, "protocol": "TCP"},
                   {"name": "tls", "port": 443, "protocol": "TCP"},
                   {"name": "alt", "port": 8080}])
        );
        let out = smp(
            &svc(),
            json!({"status": {"conditions": [{"type": "B", "status": "False"}]}}),
        )
        .unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "A", "status": "True"}, {"type": "B", "status": "False"}])
        );
    }

    #[test]
    fn atomic_lists_replace_and_sets_union() {
        let out = smp(
            &svc(),
            json!({"spec": {"loadBalancerSourceRanges": ["198.51.100.0/24"]},
                                     "metadata": {"finalizers": ["y", "x"]}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["loadBalancerSourceRanges"],
            json!(["198.51.100.0/24"])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
    }

    #[test]
    fn patch_directives_in_lists() {
        let out = smp(
            &svc(),
            json!({"spec": {"ports": [{"port": 80, "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"name": "https", "port": 443, "protocol": "TCP"}])
        );
        let out = smp(&svc(), json!({"spec": {"ports": [{"$patch": "replace"},
                                                         {"port": 53, "protocol": "UDP", "x": null}]}})).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 53, "protocol": "UDP"}])
        );
        let err = smp(&svc(), json!({"spec": {"ports": [{"$patch": "delete"}]}})).unwrap_err();
        assert!(matches!(err, PatchError::NoMergeKey { .. }), "{err}");
        let err = smp(&svc(), json!({"spec": {"ports": [{"name": "x"}]}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "map: {\"name\":\"x\"} does not contain declared merge key: port"
        );
        let err = smp(
            &svc(),
            json!({"spec": {"ports": [{"port": 1, "$patch": "bogus"}]}}),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("Unknown patch type: \"bogus\""),
            "{err}"
        );
    }

    #[test]
    fn patch_directives_in_maps() {
        let out = smp(
            &svc(),
            json!({"spec": {"selector": {"$patch": "replace", "only": "this"}}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["selector"], json!({"only": "this"}));
        let out = smp(&svc(), json!({"spec": {"selector": {"$patch": "delete"}}})).unwrap();
        assert_eq!(out["spec"]["selector"], json!({}));
        let out = smp(
            &svc(),
            json!({"metadata": {"labels": {"$patch": "merge", "z": "9"}}}),
        )
        .unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"a": "1", "b": "2", "z": "9"})
        );
    }

    #[test]
    fn delete_from_primitive_list_and_set_element_order() {
        let out = smp(
            &svc(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"],
                                                  "finalizers": ["z"]}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["z"]));
        let out = smp(
            &svc(),
            json!({"spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}],
                                              "ports": [{"port": 80, "name": "web"}]}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"name": "https", "port": 443, "protocol": "TCP"},
                   {"name": "web", "port": 80, "protocol": "TCP"}])
        );
        assert!(out["spec"].get("$setElementOrder/ports").is_none());
    }

    #[test]
    fn retain_keys() {
        let out = smp(
            &svc(),
            json!({"spec": {"$retainKeys": ["type", "ports"], "type": "ClusterIP"}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"].as_object().unwrap().keys().collect::<Vec<_>>(),
            vec!["ports", "type"]
        );
        assert_eq!(out["spec"]["type"], "ClusterIP");
        let err = smp(
            &svc(),
            json!({"spec": {"$retainKeys": ["type"], "selector": {}}}),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::RetainKeys(_)), "{err}");
    }

    #[test]
    fn new_values_are_cleaned_of_nulls_and_directives() {
        let out = smp(&json!({"metadata": {"name": "s"}}),
                      json!({"spec": {"selector": {"a": null, "b": "1"},
                                      "ports": [{"port": 1, "$patch": "delete"}, {"port": 2, "name": null}]}}))
            .unwrap();
        assert_eq!(
            out["spec"],
            json!({"selector": {"b": "1"}, "ports": [{"port": 2}]})
        );
    }

    #[test]
    fn node_addresses_merge_by_type_under_patch() {
        let l = builtin_list_semantics("", "Node");
        let node = json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"},
                                                   {"type": "Hostname", "address": "n1"}]}});
        let out = strategic_merge_patch(
            &node,
            &json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]}}),
            l.as_ref(),
        )
        .unwrap();
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "192.0.2.2"}, {"type": "Hostname", "address": "n1"}])
        );
    }

    #[test]
    fn non_object_patch_is_an_error() {
        assert!(matches!(
            smp(&svc(), json!([1])),
            Err(PatchError::NotAnObject(_))
        ));
    }

    fn arb_plain() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 20, 4, |inner| {
            prop::collection::btree_map(
                "[a-d]",
                prop_oneof![3 => inner, 1 => Just(Value::Null)],
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    fn arb_conditions() -> impl Strategy<Value = Vec<Value>> {
        prop::collection::btree_map("[A-F]", "[a-c]", 0..5).prop_map(|m| {
            m.into_iter()
                .map(|(t, s)| json!({"type": t, "status": s}))
                .collect()
        })
    }

    fn has_directive(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| is_directive(k) || has_directive(v)),
            Value::Array(a) => a.iter().any(has_directive),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn without_lists_it_is_a_json_merge_patch(
            orig in arb_plain().prop_filter("object", Value::is_object),
            patch in arb_plain().prop_filter("object", Value::is_object),
        ) {
            let want = json_merge_patch(&orig, &patch);
            prop_assert_eq!(smp(&orig, patch.clone()).unwrap(), want);
        }

        #[test]
        fn map_list_items_not_in_the_patch_are_kept(orig in arb_conditions(), patch in arb_conditions()) {
            let o = json!({"status": {"conditions": orig.clone()}});
            let out = smp(&o, json!({"status": {"conditions": patch.clone()}})).unwrap();
            let got = out["status"]["conditions"].as_array().unwrap().clone();
            for c in &orig {
                let t = &c["type"];
                let want = patch.iter().find(|p| p["type"] == *t).unwrap_or(c);
                prop_assert!(got.contains(want), "{} missing from {:?}", want, got);
            }
            for p in &patch {
                prop_assert!(got.contains(p));
            }
            let types: std::collections::BTreeSet<String> = orig
                .iter()
                .chain(&patch)
                .filter_map(|c| c["type"].as_str().map(str::to_owned))
                .collect();
            prop_assert_eq!(got.len(), types.len());
        }

        #[test]
        fn directives_never_end_up_in_the_object(
            orig in arb_conditions(),
            deleted in "[A-F]",
            order in prop::collection::vec("[A-F]", 0..4),
            replace in any::<bool>(),
        ) {
            let mut items: Vec<Value> = vec![json!({"type": deleted, "$patch": "delete"})];
            if replace {
                items.push(json!({"$patch": "replace"}));
            }
            let order: Vec<Value> = order.iter().map(|t| json!({"type": t})).collect();
            let patch = json!({"status": {"conditions": items, "$setElementOrder/conditions": order,
                                          "$retainKeys": ["conditions", "extra"], "extra": {"$patch": "replace", "k": 1}},
                               "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}});
            let o = json!({"metadata": {"finalizers": ["x", "y"]}, "status": {"conditions": orig}});
            let out = smp(&o, patch).unwrap();
            prop_assert!(!has_directive(&out), "{}", out);
            prop_assert_eq!(&out["metadata"]["finalizers"], &json!(["y"]));
        }

        #[test]
        fn patching_twice_changes_nothing_more(orig in arb_conditions(), patch in arb_conditions()) {
            let o = json!({"status": {"conditions": orig}});
            let p = json!({"status": {"conditions": patch}, "metadata": {"finalizers": ["f"]}});
            let once = smp(&o, p.clone()).unwrap();
            prop_assert_eq!(smp(&once, p).unwrap(), once);
        }
    }
}
