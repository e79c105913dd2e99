//! The pure write path of the embedded API server: JSON merge patch, strategic merge patch,
//! server-side apply with `managedFields` bookkeeping, and structural-schema pruning,
//! defaulting and validation for custom resources.
//!
//! Everything here is a function over `serde_json::Value`s: no I/O, no clock (time is passed in).
//! The behaviour follows the Kubernetes documentation ("Server-Side Apply", "strategic merge
//! patch", "structural schema") and kube-apiserver's messages, so that kubectl and kube-rs see the
//! errors they would see against a real cluster.

pub mod apply;
pub mod cel_cost;
mod fieldset;
mod lists;
pub mod schema;
pub mod strategic;

pub use apply::{ApplyError, Conflict, apply, track_update};
pub use lists::{builtin_list_semantics, schema_list_semantics};
pub use schema::{FieldCause, StructuralSchema};
pub use strategic::{PatchError, strategic_merge_patch};

/// How a list is merged, per Kubernetes' list-type markers / patchStrategy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ListType {
    /// The list is one value: replaced as a whole, owned as a whole.
    #[default]
    Atomic,
    /// A list of distinct scalars: merged by union, each value owned separately.
    Set,
    /// A list of objects identified by the named key fields: merged and owned per item.
    Map(Vec<String>),
}

/// Where the list semantics of an object's fields come from (built-in tables or a CRD schema).
pub trait ListSemantics: Send + Sync {
    /// `path`: field names from the object root; list items appear as "[]",
    /// e.g. ["spec","ports"] for the list itself, ["status","conditions"], ["spec","ports","[]","x"].
    fn list_type(&self, path: &[String]) -> ListType;

    /// The list semantics a strategic merge patch uses, which follow Go's `patchStrategy` /
    /// `patchMergeKey` tags and differ from `+listType` for a few built-in fields (Service
    /// `spec.ports` merges by `port` alone, Node `status.addresses` merges by `type` although
    /// server-side apply treats it as atomic). Defaults to [`ListSemantics::list_type`].
    fn patch_strategy(&self, path: &[String]) -> ListType {
        self.list_type(path)
    }

    /// Whether the schema declares the field at `path` (same form as above). Server-side apply
    /// refuses configurations with undeclared fields ("field not declared in schema"). Built-in
    /// tables declare everything; CRD schemas answer from their properties.
    fn declares(&self, path: &[String]) -> bool {
        let _ = path;
        true
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything else replaces.
pub fn json_merge_patch(
    original: &serde_json::Value,
    patch: &serde_json::Value,
) -> serde_json::Value {
    let mut doc = original.clone();
    json_patch::merge(&mut doc, patch);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    #[test]
    fn merge_patch_rfc7386_examples() {
        // The examples table of RFC 7386 appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (orig, patch, want) in cases {
            assert_eq!(json_merge_patch(&orig, &patch), want, "{orig} + {patch}");
        }
    }

    /// JSON values without nulls (merge patches cannot express "set to null").
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The merge patch that turns `a` into `b` (for object roots).
    fn diff(a: &Value, b: &Value) -> Value {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                let mut out = serde_json::Map::new();
                for (k, va) in a {
                    match b.get(k) {
                        None => {
                            out.insert(k.clone(), Value::Null);
                        }
                        Some(vb) if vb != va => {
                            out.insert(k.clone(), diff(va, vb));
                        }
                        Some(_) => {}
                    }
                }
                for (k, vb) in b {
                    if !a.contains_key(k) {
                        out.insert(k.clone(), vb.clone());
                    }
                }
                Value::Object(out)
            }
            _ => b.clone(),
        }
    }

    proptest! {
        #[test]
        fn merge_patch_applies_its_diff(a in arb_json(), b in arb_json()) {
            prop_assert_eq!(json_merge_patch(&a, &diff(&a, &b)), b);
        }

        #[test]
        fn merge_patch_is_idempotent(a in arb_json(), p in arb_json()) {
            let once = json_merge_patch(&a, &p);
            prop_assert_eq!(json_merge_patch(&once, &p), once);
        }

        #[test]
        fn empty_object_patch_is_identity_on_objects(
            m in prop::collection::btree_map("[a-d]", arb_json(), 0..4)
        ) {
            let a = Value::Object(m.into_iter().collect());
            prop_assert_eq!(json_merge_patch(&a, &json!({})), a);
        }
    }
}
