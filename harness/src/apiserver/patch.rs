//! The only place the server calls into [`super::merge`]: patch application, server-side apply,
//! managed-fields tracking and custom-resource schema handling. Everything else in the server
//! treats these as black boxes over JSON.

use std::sync::Arc;

use serde_json::Value;

use super::errors::{ApiError, Cause};
use super::merge::{self, ListSemantics};
use super::resources::ResourceDef;

/// List semantics for a resource (built-in table or the CRD schema).
pub fn lists_for(def: &ResourceDef) -> Arc<dyn ListSemantics> {
    match &def.crd {
        Some(c) => merge::schema_list_semantics(&c.schema),
        None => merge::builtin_list_semantics(&def.group, &def.kind),
    }
}

/// RFC 7386 merge patch.
pub fn merge_patch(original: &Value, patch: &Value) -> Value {
    merge::json_merge_patch(original, patch)
}

/// RFC 6902 JSON patch with kube-apiserver's (evanphx/json-patch) reading of `test`: a test for
/// `null` passes when the path is absent. kube-rs' finalizer helper relies on it
/// (`test /metadata/finalizers == null` before adding the first finalizer).
pub fn json_patch(
    original: &Value,
    ops: &json_patch::Patch,
) -> Result<Value, json_patch::PatchError> {
    let mut doc = original.clone();
    for op in &ops.0 {
        if let json_patch::PatchOperation::Test(t) = op
            && t.value.is_null()
            && doc.pointer(t.path.as_str()).is_none_or(Value::is_null)
        {
            continue;
        }
        json_patch::patch(&mut doc, std::slice::from_ref(op))?;
    }
    Ok(doc)
}

/// Strategic merge patch.
pub fn strategic_patch(
    def: &ResourceDef,
    original: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    let lists = lists_for(def);
    merge::strategic_merge_patch(original, patch, lists.as_ref()).map_err(|e| match e {
        // kube-apiserver answers a list item without its merge key with 422.
        merge::PatchError::NoMergeKey { .. } => ApiError {
            code: 422,
            reason: "Invalid",
            message: e.to_string(),
            details: None,
        },
        other => ApiError::bad_request(other.to_string()),
    })
}

/// Server-side apply.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    def: &ResourceDef,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
    now: &str,
    name: &str,
) -> Result<Value, ApiError> {
    let lists = lists_for(def);
    merge::apply(
        live,
        config,
        manager,
        force,
        subresource,
        lists.as_ref(),
        now,
    )
    .map_err(|e| match e {
        merge::ApplyError::Conflicts(cs) => {
            let message = merge::ApplyError::Conflicts(cs.clone()).to_string();
            let causes = cs
                .into_iter()
                .map(|c| Cause {
                    reason: "FieldManagerConflict".into(),
                    message: format!("conflict with {:?}", c.manager),
                    field: c.field,
                })
                .collect();
            ApiError::apply_conflict(&def.group, &def.plural, name, message, causes)
        }
        merge::ApplyError::Invalid(m) => ApiError::bad_request(m),
    })
}

/// Record field ownership for a non-apply write.
pub fn track_update(
    def: &ResourceDef,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let lists = lists_for(def);
    merge::track_update(old, new, manager, subresource, lists.as_ref(), now);
}

/// Prune unknown fields, apply defaults and validate a custom resource against its CRD schema.
/// Returns the causes when invalid; `unknown` receives the pruned field paths (for strict
/// field validation).
pub fn schema_admit(
    def: &ResourceDef,
    obj: &mut Value,
    old: Option<&Value>,
    unknown: &mut Vec<String>,
) -> Result<(), Vec<Cause>> {
    let Some(schema) = def.crd.as_ref().and_then(|c| c.structural.as_ref()) else {
        return Ok(());
    };
    let before = obj.clone();
    schema.prune(obj);
    removed_fields(&before, obj, "", unknown);
    schema.apply_defaults(obj);
    let causes = schema.validate(obj, old);
    if causes.is_empty() {
        return Ok(());
    }
    Err(causes
        .into_iter()
        .map(|c| Cause {
            reason: c.reason,
            message: c.message,
            field: c.field,
        })
        .collect())
}

/// Paths present in `before` but not in `after` (what pruning dropped), in kube's
/// `spec.a.b` / `spec.list[0].x` form.
fn removed_fields(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, bv) in b {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match a.get(k) {
                    // Pruned nulls are not unknown fields.
                    None if bv.is_null() => {}
                    None => out.push(p),
                    Some(av) => removed_fields(bv, av, &p, out),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                removed_fields(bv, av, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_null_passes_on_absent_paths() {
        let doc = json!({"metadata": {"name": "x"}});
        let p: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["a/b"]}
        ]))
        .unwrap();
        let out = json_patch(&doc, &p).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a/b"]));
        // A failing test still fails, and nothing is applied.
        let p: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/name", "value": "y"},
            {"op": "add", "path": "/metadata/finalizers", "value": ["a/b"]}
        ]))
        .unwrap();
        assert!(json_patch(&doc, &p).is_err());
    }
}
