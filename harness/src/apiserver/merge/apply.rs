//! Server-side apply and the field-ownership bookkeeping of ordinary writes, after
//! <https://kubernetes.io/docs/reference/using-api/server-side-apply/> and structured-merge-diff's
//! `Updater` (merge, prune what the applier stopped owning, detect conflicts, move ownership).

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use super::fieldset::{
    Comparison, FieldSet, PathElement, Walker, item_key, list_item_elements, path_string,
};
use super::{ListSemantics, ListType};

/// A field another manager owns with a different value than the applied configuration sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager's name.
    pub manager: String,
    /// The field, like `.spec.replicas` or `.status.conditions[type="X"].status`.
    pub field: String,
}

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Fields owned by other managers would change; retry with `force` to take them (409).
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The applied configuration is malformed (400/422/500 depending on the cause).
    #[error("{0}")]
    Invalid(String),
}

/// kube-apiserver's wording: one conflict inline, several grouped by manager.
fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {:?}: {}",
            c.manager, c.field
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort_unstable();
    managers.dedup();
    let groups: Vec<String> = managers
        .iter()
        .map(|m| {
            let fields: Vec<&str> = conflicts
                .iter()
                .filter(|c| c.manager == *m)
                .map(|c| c.field.as_str())
                .collect();
            format!("conflicts with {m:?}:\n- {}", fields.join("\n- "))
        })
        .collect();
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        groups.join("\n")
    )
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: String,
    time: Option<String>,
    fields: FieldSet,
}

impl Entry {
    /// kube-apiserver identifies an entry by manager, operation and subresource, and for updates
    /// also by apiVersion (an applier keeps one entry across versions).
    fn is(&self, manager: &str, operation: &str, api_version: &str, subresource: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == "Apply" || self.api_version == api_version)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::from(self.manager.clone()));
        m.insert("operation".into(), Value::from(self.operation.clone()));
        m.insert("apiVersion".into(), Value::from(self.api_version.clone()));
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::from(t.clone()));
        }
        m.insert("fieldsType".into(), Value::from("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), Value::from(self.subresource.clone()));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Result<Entry, String> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        if let Some(t) = v.get("fieldsType").and_then(Value::as_str)
            && t != "FieldsV1"
        {
            return Err(format!("unsupported fieldsType {t:?}"));
        }
        let fields = match v.get("fieldsV1") {
            Some(f) => FieldSet::from_fields_v1(f)?,
            None => FieldSet::default(),
        };
        Ok(Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            subresource: s("subresource"),
            time: v.get("time").and_then(Value::as_str).map(str::to_owned),
            fields,
        })
    }
}

/// The entries of an object's `metadata.managedFields` (empty when absent).
fn decode_managed(obj: &Value) -> Result<Vec<Entry>, String> {
    match obj.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(Entry::from_json).collect(),
        Some(_) => Err("metadata.managedFields must be a list".to_owned()),
    }
}

/// Write entries back in kube-apiserver's order (operation, time, manager, apiVersion,
/// subresource), dropping empty ones; no entries means no `managedFields`.
fn encode_managed(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| a.time.cmp(&b.time))
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        if let Some(Value::Object(meta)) = root.get_mut("metadata") {
            meta.remove("managedFields");
        }
        return;
    }
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Value::Object(meta) = meta {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_json).collect()),
        );
    }
}

fn strip_managed(obj: &mut Value) {
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove("managedFields");
    }
}

/// For the status subresource only `.status` (and the object's identity) of a config counts.
fn status_only(config: &Value) -> Value {
    let mut out = Map::new();
    for k in ["apiVersion", "kind", "status"] {
        if let Some(v) = config.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut meta = Map::new();
    for k in ["name", "namespace"] {
        if let Some(v) = config.pointer(&format!("/metadata/{k}")) {
            meta.insert(k.into(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    Value::Object(out)
}

/// Merge an applied configuration into the live object: objects field by field, map lists item
/// by item (by key), set lists by union, atomic lists and scalars replaced.
fn merge(
    live: &Value,
    cfg: &Value,
    lists: &dyn ListSemantics,
    sem: &mut Vec<String>,
) -> Result<Value, ApplyError> {
    match (live, cfg) {
        (Value::Object(l), Value::Object(c)) => {
            let mut out = l.clone();
            for (k, cv) in c {
                let v = match l.get(k) {
                    Some(lv) => {
                        sem.push(k.clone());
                        let r = merge(lv, cv, lists, sem);
                        sem.pop();
                        r?
                    }
                    None => cv.clone(),
                };
                out.insert(k.clone(), v);
            }
            Ok(Value::Object(out))
        }
        (Value::Array(l), Value::Array(c)) => match lists.list_type(sem) {
            ListType::Atomic => Ok(cfg.clone()),
            ListType::Set => {
                let mut out = l.clone();
                for v in c {
                    if !out.contains(v) {
                        out.push(v.clone());
                    }
                }
                Ok(Value::Array(out))
            }
            ListType::Map(keys) => {
                let at = sem.join(".");
                // A live list whose items lack keys cannot be merged into: the config replaces it.
                let Ok(live_keys) = l
                    .iter()
                    .map(|i| item_key(i, &keys, &at))
                    .collect::<Result<Vec<_>, _>>()
                else {
                    return Ok(cfg.clone());
                };
                let mut out = l.clone();
                sem.push("[]".into());
                for ci in c {
                    let ck = match item_key(ci, &keys, &at) {
                        Ok(k) => k,
                        Err(e) => {
                            sem.pop();
                            return Err(ApplyError::Invalid(e.0));
                        }
                    };
                    let slot = live_keys.iter().position(|k| *k == ck);
                    match slot.and_then(|i| out.get_mut(i)) {
                        Some(existing) => match merge(existing, ci, lists, sem) {
                            Ok(m) => *existing = m,
                            Err(e) => {
                                sem.pop();
                                return Err(e);
                            }
                        },
                        None => out.push(ci.clone()),
                    }
                }
                sem.pop();
                Ok(Value::Array(out))
            }
        },
        _ => Ok(cfg.clone()),
    }
}

/// Remove from `v` what the applier owned last time (`last`) and nobody keeps (`keep`: the new
/// config's set plus every other manager's). A container left empty by the removal goes too, as
/// structured-merge-diff treats named fields as members; key fields of surviving map-list items
/// stay, since the item still exists.
fn prune(
    v: &mut Value,
    last: &FieldSet,
    keep: Option<&FieldSet>,
    lists: &dyn ListSemantics,
    sem: &mut Vec<String>,
    protected: &[String],
) {
    match v {
        Value::Object(m) => {
            let root = sem.is_empty();
            let mut remove = Vec::new();
            for (pe, lchild) in last.children() {
                let PathElement::Field(k) = pe else { continue };
                if protected.contains(k) {
                    continue;
                }
                let Some(child) = m.get_mut(k) else { continue };
                let kchild = keep.and_then(|s| s.child(pe));
                if kchild.is_none() && lchild.is_member() {
                    remove.push(k.clone());
                    continue;
                }
                sem.push(k.clone());
                prune(child, lchild, kchild, lists, sem, &[]);
                sem.pop();
                let emptied = match child {
                    Value::Object(o) => o.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    _ => false,
                };
                if kchild.is_none() && emptied && !(root && k == "metadata") {
                    remove.push(k.clone());
                }
            }
            for k in remove {
                m.remove(&k);
            }
        }
        Value::Array(items) => {
            let lt = lists.list_type(sem);
            let Ok(Some(pes)) = list_item_elements(items, &lt, &[]) else {
                return;
            };
            let keys: Vec<String> = match &lt {
                ListType::Map(k) => k.clone(),
                _ => Vec::new(),
            };
            let mut remove = Vec::new();
            sem.push("[]".into());
            for (pe, lchild) in last.children() {
                let Some(i) = pes.iter().position(|p| p == pe) else {
                    continue;
                };
                let kchild = keep.and_then(|s| s.child(pe));
                if kchild.is_none() && lchild.is_member() {
                    remove.push(i);
                    continue;
                }
                if let Some(item) = items.get_mut(i) {
                    prune(item, lchild, kchild, lists, sem, &keys);
                }
            }
            sem.pop();
            remove.sort_unstable();
            for i in remove.into_iter().rev() {
                items.remove(i);
            }
        }
        _ => {}
    }
}

/// Server-side apply (<https://kubernetes.io/docs/reference/using-api/server-side-apply/>).
/// `live` is the current object (None on create-by-apply). `config` is the applied configuration
/// (already parsed from YAML/JSON; contains apiVersion/kind/metadata.name and the fields the
/// manager owns). Returns the merged object with `metadata.managedFields` updated (entry for
/// `manager`, operation "Apply", the config's apiVersion, fieldsType "FieldsV1", time `now` when
/// something changed, `subresource` when given).
///
/// - fields in config are set; a field the manager owned before and omits now is removed, unless
///   another manager also owns it (then only ownership is dropped);
/// - items of map lists are merged by key and owned per item;
/// - a field that would change and that another manager owns is a conflict unless `force`, in
///   which case ownership moves to `manager`; applying the value another owner has is shared
///   ownership;
/// - with `subresource = Some("status")` only `.status` of config is considered.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
    lists: &dyn ListSemantics,
    now: &str,
) -> Result<Value, ApplyError> {
    if !config.is_object() {
        return Err(ApplyError::Invalid(
            "the applied configuration must be an object".to_owned(),
        ));
    }
    if config
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApplyError::Invalid(
            "metadata.managedFields must be nil".to_owned(),
        ));
    }
    let sub = subresource.unwrap_or("");
    let config = if sub == "status" {
        status_only(config)
    } else {
        config.clone()
    };
    let api_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();

    // Undecodable managedFields on the live object are reset, as kube-apiserver does.
    let mut entries = live
        .map(|l| decode_managed(l).unwrap_or_default())
        .unwrap_or_default();
    let mut live_clean = live.cloned().unwrap_or_else(|| json!({}));
    strip_managed(&mut live_clean);

    let mut config_set = FieldSet::default();
    Walker::new(lists)
        .applied_set(&config, &mut config_set)
        .map_err(|e| {
            // kube-apiserver's wording, e.g. "failed to create typed patch object
            // (/v1, Kind=Service): .spec.ports: duplicate entries for key [port=80,...]".
            let group_version = if api_version.contains('/') {
                api_version.clone()
            } else {
                format!("/{api_version}")
            };
            let kind = config.get("kind").and_then(Value::as_str).unwrap_or("");
            ApplyError::Invalid(format!(
                "failed to create typed patch object ({group_version}, Kind={kind}): {}",
                e.0
            ))
        })?;
    let merged = merge(&live_clean, &config, lists, &mut Vec::new())?;

    let mine = entries
        .iter()
        .position(|e| e.is(manager, "Apply", &api_version, sub));
    let last_set = mine
        .and_then(|i| entries.get(i))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut keep = config_set.clone();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) != mine {
            keep = keep.union(&e.fields);
        }
    }
    let mut result = merged;
    prune(
        &mut result,
        &last_set,
        Some(&keep),
        lists,
        &mut Vec::new(),
        &[],
    );

    let mut cmp = Comparison::default();
    Walker::new(lists).compare(&live_clean, &result, &mut cmp);
    let changed = cmp.modified.union(&cmp.added);

    let mut conflicts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        for p in e.fields.intersection(&changed).members() {
            conflicts.push(Conflict {
                manager: e.manager.clone(),
                field: path_string(&p),
            });
        }
    }
    if !force && !conflicts.is_empty() {
        conflicts.sort_by(|a, b| match a.manager.cmp(&b.manager) {
            Ordering::Equal => a.field.cmp(&b.field),
            o => o,
        });
        conflicts.dedup();
        return Err(ApplyError::Conflicts(conflicts));
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != mine {
            e.fields = e.fields.difference(&changed).difference(&cmp.removed);
        }
    }
    let object_changed = !cmp.is_same();
    match mine.and_then(|i| entries.get_mut(i)) {
        Some(e) => {
            if object_changed || e.fields != config_set || e.api_version != api_version {
                e.time = Some(now.to_owned());
            }
            e.fields = config_set;
            e.api_version = api_version;
        }
        None => entries.push(Entry {
            manager: manager.to_owned(),
            operation: "Apply".to_owned(),
            api_version,
            subresource: sub.to_owned(),
            time: Some(now.to_owned()),
            fields: config_set,
        }),
    }
    encode_managed(&mut result, entries);
    Ok(result)
}

/// Ownership bookkeeping for an ordinary write (create/update/patch, operation "Update"): the
/// fields that changed between old and new become owned by `manager` (removed from other
/// managers' sets), and managedFields on `new` is updated. A write that changes nothing keeps the
/// old managedFields untouched.
///
/// As in kube-apiserver, a write may replace managedFields itself (when `new` carries a valid,
/// non-empty list and this is not a subresource write), and `managedFields: [{}]` clears them.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    lists: &dyn ListSemantics,
    now: &str,
) {
    let sub = subresource.unwrap_or("");
    if new.pointer("/metadata/managedFields") == Some(&json!([{}])) {
        strip_managed(new);
        return;
    }
    let from_request = if sub.is_empty() {
        decode_managed(new).ok().filter(|e| !e.is_empty())
    } else {
        None
    };
    let empty = json!({});
    let mut cmp = Comparison::default();
    Walker::new(lists).compare(old.unwrap_or(&empty), new, &mut cmp);
    if cmp.is_same() {
        // Nothing to record: keep the request's own managedFields, else the stored ones verbatim.
        if from_request.is_none() {
            let stored = old
                .and_then(|o| o.pointer("/metadata/managedFields"))
                .cloned();
            match (
                stored,
                new.get_mut("metadata").and_then(Value::as_object_mut),
            ) {
                (Some(mf), Some(meta)) => {
                    meta.insert("managedFields".into(), mf);
                }
                (None, Some(meta)) => {
                    meta.remove("managedFields");
                }
                (_, None) => {}
            }
        }
        return;
    }
    let mut entries = match from_request {
        Some(e) => e,
        None => old
            .map(|o| decode_managed(o).unwrap_or_default())
            .unwrap_or_default(),
    };
    let changed = cmp.modified.union(&cmp.added);
    for e in entries.iter_mut() {
        e.fields = e.fields.difference(&changed).difference(&cmp.removed);
    }
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match entries
        .iter_mut()
        .find(|e| e.is(manager, "Update", &api_version, sub))
    {
        Some(e) => {
            e.fields = e.fields.union(&changed);
            e.time = Some(now.to_owned());
        }
        None => entries.push(Entry {
            manager: manager.to_owned(),
            operation: "Update".to_owned(),
            api_version,
            subresource: sub.to_owned(),
            time: Some(now.to_owned()),
            fields: changed,
        }),
    }
    encode_managed(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::merge::builtin_list_semantics;
    use proptest::prelude::*;

    const T1: &str = "2026-01-01T00:00:01Z";
    const T2: &str = "2026-01-01T00:00:02Z";

    fn svc_lists() -> std::sync::Arc<dyn ListSemantics> {
        builtin_list_semantics("", "Service")
    }

    fn service() -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "7"},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}})
    }

    fn status_cfg(conds: &[(&str, &str)]) -> Value {
        let c: Vec<Value> = conds
            .iter()
            .map(|(t, s)| json!({"type": t, "status": s, "reason": "R", "message": ""}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
               "status": {"conditions": c}})
    }

    fn entries(obj: &Value) -> Vec<Value> {
        obj.pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
        obj.pointer("/metadata/managedFields")?
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager)
    }

    fn without_time(mut obj: Value) -> Value {
        if let Some(Value::Array(es)) = obj.pointer_mut("/metadata/managedFields") {
            for e in es {
                if let Some(m) = e.as_object_mut() {
                    m.remove("time");
                }
            }
        }
        obj
    }

    fn conds(obj: &Value) -> Vec<String> {
        obj.pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| {
                        format!(
                            "{}={}",
                            c["type"].as_str().unwrap(),
                            c["status"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn create_by_apply_records_the_entry() {
        let l = svc_lists();
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"k": "v"}});
        let out = apply(None, &cfg, "mgr", false, None, l.as_ref(), T1).unwrap();
        assert_eq!(out["data"], json!({"k": "v"}));
        assert_eq!(
            entries(&out),
            vec![
                json!({"manager": "mgr", "operation": "Apply", "apiVersion": "v1", "time": T1,
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {"f:a": {}}}}})
            ]
        );
    }

    #[test]
    fn status_apply_records_the_subresource_and_ignores_spec() {
        let l = svc_lists();
        let mut cfg = status_cfg(&[("Ready", "True")]);
        cfg["spec"] = json!({"type": "ClusterIP"});
        let out = apply(
            Some(&service()),
            &cfg,
            "ctl",
            true,
            Some("status"),
            l.as_ref(),
            T1,
        )
        .unwrap();
        assert_eq!(out["spec"]["type"], "LoadBalancer");
        let e = entry(&out, "ctl").unwrap();
        assert_eq!(e["subresource"], "status");
        assert_eq!(
            e["fieldsV1"],
            json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}":
                {".": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}}}})
        );
    }

    #[test]
    fn apply_twice_is_idempotent_and_keeps_the_time() {
        let l = svc_lists();
        let cfg = status_cfg(&[("A", "True")]);
        let once = apply(
            Some(&service()),
            &cfg,
            "ctl",
            true,
            Some("status"),
            l.as_ref(),
            T1,
        )
        .unwrap();
        let twice = apply(
            Some(&once),
            &cfg,
            "ctl",
            true,
            Some("status"),
            l.as_ref(),
            T2,
        )
        .unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn two_managers_keep_their_own_conditions() {
        let l = svc_lists();
        let s1 = apply(
            Some(&service()),
            &status_cfg(&[("Controller", "True")]),
            "lodestone-controller",
            true,
            Some("status"),
            l.as_ref(),
            T1,
        )
        .unwrap();
        let s2 = apply(
            Some(&s1),
            &status_cfg(&[("Speaker", "True")]),
            "lodestone-speaker",
            true,
            Some("status"),
            l.as_ref(),
            T1,
        )
        .unwrap();
        assert_eq!(conds(&s2), vec!["Controller=True", "Speaker=True"]);
        // The controller changes its condition: the speaker's stays, no conflict without force.
        let s3 = apply(
            Some(&s2),
            &status_cfg(&[("Controller", "False")]),
            "lodestone-controller",
            false,
            Some("status"),
            l.as_ref(),
            T2,
        )
        .unwrap();
        assert_eq!(conds(&s3), vec!["Controller=False", "Speaker=True"]);
        // The speaker withdraws its condition: only its item goes.
        let s4 = apply(
            Some(&s3),
            &status_cfg(&[]),
            "lodestone-speaker",
            false,
            Some("status"),
            l.as_ref(),
            T2,
        )
        .unwrap();
        assert_eq!(conds(&s4), vec!["Controller=False"]);
        assert!(
            entry(&s4, "lodestone-speaker").is_none(),
            "empty entries are dropped"
        );
        assert_eq!(s4["metadata"]["name"], "web");
    }

    #[test]
    fn omitted_field_owned_alone_is_removed_shared_one_stays() {
        let l = builtin_list_semantics("", "ConfigMap");
        let base = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let mut cfg_a = base.clone();
        cfg_a["data"] = json!({"x": "1", "y": "2"});
        let o1 = apply(None, &cfg_a, "a", false, None, l.as_ref(), T1).unwrap();
        let mut cfg_b = base.clone();
        cfg_b["data"] = json!({"y": "2"});
        // Same value as a's: shared ownership, no conflict.
        let o2 = apply(Some(&o1), &cfg_b, "b", false, None, l.as_ref(), T1).unwrap();
        assert_eq!(
            entry(&o2, "b").unwrap()["fieldsV1"],
            json!({"f:data": {"f:y": {}}})
        );
        // a stops applying both: x goes (a alone owned it), y stays (b owns it).
        let o3 = apply(Some(&o2), &base, "a", false, None, l.as_ref(), T2).unwrap();
        assert_eq!(o3["data"], json!({"y": "2"}));
        assert!(entry(&o3, "a").is_none());
        // b stops too: data is left empty and removed with it.
        let o4 = apply(Some(&o3), &base, "b", false, None, l.as_ref(), T2).unwrap();
        assert_eq!(o4.get("data"), None);
        assert_eq!(o4.pointer("/metadata/managedFields"), None);
    }

    #[test]
    fn conflicts_and_force() {
        let l = builtin_list_semantics("", "ConfigMap");
        let cfg = |v: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                   "data": {"x": v, "z": v}})
        };
        let o1 = apply(None, &cfg("1"), "a", false, None, l.as_ref(), T1).unwrap();
        let err = apply(
            Some(&o1),
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                           "data": {"x": "2"}}),
            "b",
            false,
            None,
            l.as_ref(),
            T2,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"a\": .data.x"
        );
        let err = apply(Some(&o1), &cfg("2"), "b", false, None, l.as_ref(), T2).unwrap_err();
        match &err {
            ApplyError::Conflicts(c) => assert_eq!(
                c,
                &vec![
                    Conflict {
                        manager: "a".into(),
                        field: ".data.x".into()
                    },
                    Conflict {
                        manager: "a".into(),
                        field: ".data.z".into()
                    }
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"a\":\n- .data.x\n- .data.z"
        );
        // Force moves ownership: a keeps nothing, b owns both.
        let o2 = apply(Some(&o1), &cfg("2"), "b", true, None, l.as_ref(), T2).unwrap();
        assert_eq!(o2["data"], json!({"x": "2", "z": "2"}));
        assert!(entry(&o2, "a").is_none());
        // Now a conflicts with b.
        let err = apply(Some(&o2), &cfg("1"), "a", false, None, l.as_ref(), T2).unwrap_err();
        assert!(err.to_string().contains("conflicts with \"b\""), "{err}");
    }

    #[test]
    fn conflicts_with_update_managers_too() {
        let l = builtin_list_semantics("", "ConfigMap");
        let old = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}});
        let mut created = old.clone();
        track_update(None, &mut created, "kubectl-create", None, l.as_ref(), T1);
        let mut edited = created.clone();
        edited["data"]["x"] = json!("2");
        track_update(
            Some(&created),
            &mut edited,
            "kubectl-edit",
            None,
            l.as_ref(),
            T2,
        );
        let e = entry(&edited, "kubectl-edit").unwrap();
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["fieldsV1"], json!({"f:data": {"f:x": {}}}));
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "3"}});
        let err = apply(Some(&edited), &cfg, "applier", false, None, l.as_ref(), T2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\": .data.x"
        );
    }

    #[test]
    fn managed_fields_in_config_are_rejected() {
        let l = svc_lists();
        let mut cfg = status_cfg(&[]);
        cfg["metadata"]["managedFields"] = json!([]);
        let err = apply(None, &cfg, "m", false, None, l.as_ref(), T1).unwrap_err();
        assert_eq!(err.to_string(), "metadata.managedFields must be nil");
        let dup = status_cfg(&[("A", "True"), ("A", "False")]);
        let err = apply(None, &dup, "m", false, None, l.as_ref(), T1).unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate entries for key [type=\"A\"]"),
            "{err}"
        );
    }

    #[test]
    fn undeclared_fields_are_refused_for_schemas() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}}}}});
        let l = crate::apiserver::merge::schema_list_semantics(&schema);
        let cfg = json!({"apiVersion": "x.dev/v1", "kind": "X", "metadata": {"name": "n", "labels": {"k": "v"}},
                         "spec": {"a": "1", "b": "2"}});
        let err = apply(None, &cfg, "m", false, None, l.as_ref(), T1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to create typed patch object (x.dev/v1, Kind=X): .spec.b: field not declared in schema"
        );
        let mut ok = cfg.clone();
        ok["spec"] = json!({"a": "1"});
        assert!(apply(None, &ok, "m", false, None, l.as_ref(), T1).is_ok());
    }

    #[test]
    fn pool_status_apply_with_the_real_crd_schema() {
        let crd = lodestone_crds::all_crds()
            .into_iter()
            .find(|c| c.spec.names.kind == "IPAddressPool")
            .unwrap();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let l = crate::apiserver::merge::schema_list_semantics(&schema);
        let live = json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
                          "metadata": {"name": "p"}, "spec": {"addresses": ["192.0.2.0/28"]}});
        let status = |n: i64| {
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
                                     "metadata": {"name": "p"},
                                     "status": {"assigned": n, "available": 16 - n,
                                                "conditions": [{"type": "Ready", "status": "True", "reason": "Ok",
                                                                "message": "", "lastTransitionTime": T1}]}})
        };
        let o1 = apply(
            Some(&live),
            &status(1),
            "lodestone-controller",
            true,
            Some("status"),
            l.as_ref(),
            T1,
        )
        .unwrap();
        let o2 = apply(
            Some(&o1),
            &status(2),
            "lodestone-controller",
            true,
            Some("status"),
            l.as_ref(),
            T2,
        )
        .unwrap();
        assert_eq!(o2["status"]["assigned"], 2);
        assert_eq!(o2["spec"], live["spec"]);
        // The schema marks conditions as a map list keyed by type: each entry is owned on its
        // own, so the speaker and the controller can each own their condition.
        assert_eq!(
            entry(&o2, "lodestone-controller").unwrap()["fieldsV1"]["f:status"]["f:conditions"],
            json!({"k:{\"type\":\"Ready\"}": {".": {}, "f:lastTransitionTime": {}, "f:message": {},
                   "f:reason": {}, "f:status": {}, "f:type": {}}})
        );
        let mut bogus = status(3);
        bogus["status"]["notInTheSchema"] = json!(1);
        assert!(matches!(
            apply(
                Some(&o2),
                &bogus,
                "lodestone-controller",
                true,
                Some("status"),
                l.as_ref(),
                T2
            ),
            Err(ApplyError::Invalid(_))
        ));
    }

    #[test]
    fn set_lists_are_owned_per_value() {
        let l = svc_lists();
        let cfg = |f: &[&str]| {
            json!({"apiVersion": "v1", "kind": "Service",
                                      "metadata": {"name": "web", "namespace": "default", "finalizers": f}})
        };
        let o1 = apply(
            Some(&service()),
            &cfg(&["a/x"]),
            "a",
            false,
            None,
            l.as_ref(),
            T1,
        )
        .unwrap();
        let o2 = apply(Some(&o1), &cfg(&["b/y"]), "b", false, None, l.as_ref(), T1).unwrap();
        assert_eq!(o2["metadata"]["finalizers"], json!(["a/x", "b/y"]));
        assert_eq!(
            entry(&o2, "b").unwrap()["fieldsV1"],
            json!({"f:metadata": {"f:finalizers": {"v:\"b/y\"": {}}}})
        );
        let o3 = apply(Some(&o2), &cfg(&[]), "a", false, None, l.as_ref(), T2).unwrap();
        assert_eq!(o3["metadata"]["finalizers"], json!(["b/y"]));
    }

    #[test]
    fn atomic_lists_replace_and_conflict_as_a_whole() {
        let l = svc_lists();
        let cfg = |ip: &str| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                                    "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
        };
        let o1 = apply(
            Some(&service()),
            &cfg("192.0.2.1"),
            "ctl",
            true,
            Some("status"),
            l.as_ref(),
            T1,
        )
        .unwrap();
        let o2 = apply(
            Some(&o1),
            &cfg("192.0.2.2"),
            "ctl",
            false,
            Some("status"),
            l.as_ref(),
            T2,
        )
        .unwrap();
        assert_eq!(
            o2["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "192.0.2.2"}])
        );
        let err = apply(
            Some(&o2),
            &cfg("192.0.2.3"),
            "other",
            false,
            Some("status"),
            l.as_ref(),
            T2,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"ctl\": .status.loadBalancer.ingress"
        );
    }

    #[test]
    fn track_update_on_create_change_and_noop() {
        let l = svc_lists();
        let mut created = service();
        track_update(None, &mut created, "kubectl-create", None, l.as_ref(), T1);
        let e = entry(&created, "kubectl-create").unwrap().clone();
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["apiVersion"], "v1");
        assert_eq!(
            e["fieldsV1"],
            json!({"f:spec": {".": {}, "f:type": {},
                              "f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}":
                                  {".": {}, "f:port": {}, "f:protocol": {}}}}})
        );
        // No change (server-maintained metadata aside): managedFields untouched, time kept.
        let mut same = created.clone();
        same["metadata"]["resourceVersion"] = json!("8");
        if let Some(m) = same["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        track_update(Some(&created), &mut same, "other", None, l.as_ref(), T2);
        assert_eq!(entries(&same), entries(&created));
        // A change by another manager moves that field only.
        let mut changed = created.clone();
        changed["spec"]["type"] = json!("ClusterIP");
        track_update(
            Some(&created),
            &mut changed,
            "kubectl-edit",
            None,
            l.as_ref(),
            T2,
        );
        assert_eq!(
            entry(&changed, "kubectl-edit").unwrap()["fieldsV1"],
            json!({"f:spec": {"f:type": {}}})
        );
        assert_eq!(entry(&changed, "kubectl-edit").unwrap()["time"], T2);
        assert!(
            entry(&changed, "kubectl-create").unwrap()["fieldsV1"]["f:spec"]
                .get("f:type")
                .is_none()
        );
        // [{}] clears managedFields.
        let mut cleared = changed.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        track_update(Some(&changed), &mut cleared, "x", None, l.as_ref(), T2);
        assert_eq!(cleared.pointer("/metadata/managedFields"), None);
    }

    #[test]
    fn update_on_status_subresource_keeps_its_own_entry() {
        let l = svc_lists();
        let mut s = service();
        track_update(None, &mut s, "create", None, l.as_ref(), T1);
        let mut st = s.clone();
        st["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}});
        track_update(Some(&s), &mut st, "ctl", Some("status"), l.as_ref(), T2);
        let e = entry(&st, "ctl").unwrap();
        assert_eq!(e["subresource"], "status");
        assert_eq!(entries(&st).len(), 2);
    }

    fn arb_conditions() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::btree_map("[A-E]", prop::sample::select(vec!["True", "False"]), 0..4)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k, v.to_owned())).collect())
    }

    fn cfg_of(c: &[(String, String)]) -> Value {
        let v: Vec<(&str, &str)> = c.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        status_cfg(&v)
    }

    type Op = (usize, std::collections::BTreeMap<String, u8>, bool);

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            (
                0usize..3,
                prop::collection::btree_map("[a-d]", 0u8..3, 0..4),
                any::<bool>(),
            ),
            1..10,
        )
    }

    /// The documented rules as a model: per field, the value and the set of owners.
    #[derive(Default)]
    struct Model {
        fields: std::collections::BTreeMap<String, (u8, std::collections::BTreeSet<usize>)>,
    }

    impl Model {
        /// Returns false when the apply conflicts (and then changes nothing).
        fn apply(
            &mut self,
            m: usize,
            cfg: &std::collections::BTreeMap<String, u8>,
            force: bool,
        ) -> bool {
            let conflict = cfg.iter().any(|(k, v)| {
                self.fields
                    .get(k)
                    .is_some_and(|(cur, owners)| cur != v && owners.iter().any(|o| *o != m))
            });
            if conflict && !force {
                return false;
            }
            for (k, (_, owners)) in self.fields.iter_mut() {
                if !cfg.contains_key(k) {
                    owners.remove(&m);
                }
            }
            self.fields.retain(|_, (_, owners)| !owners.is_empty());
            for (k, v) in cfg {
                let e = self
                    .fields
                    .entry(k.clone())
                    .or_insert((*v, Default::default()));
                if e.0 != *v {
                    *e = (*v, Default::default());
                }
                e.1.insert(m);
            }
            true
        }
    }

    proptest! {
        #[test]
        fn apply_follows_the_ownership_model(ops in arb_ops()) {
            let l = builtin_list_semantics("", "ConfigMap");
            let names = ["a", "b", "c"];
            let mut model = Model::default();
            let mut obj: Option<Value> = None;
            for (m, cfg, force) in &ops {
                let data: Map<String, Value> =
                    cfg.iter().map(|(k, v)| (k.clone(), Value::from(v.to_string()))).collect();
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
                let res = apply(obj.as_ref(), &body, names[*m], *force, None, l.as_ref(), T1);
                let accepted = model.apply(*m, cfg, *force);
                prop_assert_eq!(res.is_ok(), accepted, "{:?}", res);
                if let Ok(o) = res {
                    obj = Some(o);
                }
                let o = obj.clone().unwrap_or_else(|| json!({}));
                let got: std::collections::BTreeMap<String, String> = o
                    .get("data").and_then(Value::as_object)
                    .map(|d| d.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect())
                    .unwrap_or_default();
                let want: std::collections::BTreeMap<String, String> =
                    model.fields.iter().map(|(k, (v, _))| (k.clone(), v.to_string())).collect();
                prop_assert_eq!(got, want);
                for (i, name) in names.iter().enumerate() {
                    let owned: std::collections::BTreeSet<String> = entry(&o, name)
                        .and_then(|e| e["fieldsV1"]["f:data"].as_object())
                        .map(|d| d.keys().map(|k| k.trim_start_matches("f:").to_owned()).collect())
                        .unwrap_or_default();
                    let want: std::collections::BTreeSet<String> = model.fields.iter()
                        .filter(|(_, (_, owners))| owners.contains(&i))
                        .map(|(k, _)| k.clone()).collect();
                    prop_assert_eq!(owned, want, "manager {}", name);
                }
            }
        }

        #[test]
        fn apply_is_idempotent(first in arb_conditions(), second in arb_conditions()) {
            let l = svc_lists();
            let a = apply(Some(&service()), &cfg_of(&first), "a", true, Some("status"), l.as_ref(), T1).unwrap();
            let once = apply(Some(&a), &cfg_of(&second), "b", true, Some("status"), l.as_ref(), T1).unwrap();
            let twice = apply(Some(&once), &cfg_of(&second), "b", false, Some("status"), l.as_ref(), T2).unwrap();
            prop_assert_eq!(without_time(once), without_time(twice));
        }

        #[test]
        fn disjoint_managers_keep_their_items(
            a_types in prop::collection::btree_set("[A-E]", 0..4),
            b_types in prop::collection::btree_set("[F-J]", 0..4),
            a_again in prop::collection::btree_set("[A-E]", 0..4),
        ) {
            let l = svc_lists();
            let mk = |ts: &std::collections::BTreeSet<String>, s: &str| -> Vec<(String, String)> {
                ts.iter().map(|t| (t.clone(), s.to_owned())).collect()
            };
            let o1 = apply(Some(&service()), &cfg_of(&mk(&a_types, "True")), "a", false, Some("status"), l.as_ref(), T1).unwrap();
            let o2 = apply(Some(&o1), &cfg_of(&mk(&b_types, "True")), "b", false, Some("status"), l.as_ref(), T1).unwrap();
            let o3 = apply(Some(&o2), &cfg_of(&mk(&a_again, "False")), "a", false, Some("status"), l.as_ref(), T2).unwrap();
            let mut want: Vec<String> = a_again.iter().map(|t| format!("{t}=False")).collect();
            want.extend(b_types.iter().map(|t| format!("{t}=True")));
            want.sort();
            let mut got = conds(&o3);
            got.sort();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn omitting_alone_owned_fields_removes_them(
            keys in prop::collection::btree_set("[a-f]", 0..5),
            kept in prop::collection::btree_set("[a-f]", 0..5),
        ) {
            let l = builtin_list_semantics("", "ConfigMap");
            let cfg = |ks: &std::collections::BTreeSet<String>| {
                let data: Map<String, Value> = ks.iter().map(|k| (k.clone(), Value::from("v"))).collect();
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
            };
            let o1 = apply(None, &cfg(&keys), "m", false, None, l.as_ref(), T1).unwrap();
            let o2 = apply(Some(&o1), &cfg(&kept), "m", false, None, l.as_ref(), T2).unwrap();
            let got: std::collections::BTreeSet<String> = o2
                .get("data").and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect()).unwrap_or_default();
            prop_assert_eq!(got, kept);
        }
    }
}
