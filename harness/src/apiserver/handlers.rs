//! The verbs over the store: create, get, list, update, patch, delete, with kube-apiserver's
//! metadata rules, optimistic concurrency, status-subresource isolation, finalizers, generation,
//! Service allocation and CRD registration. Synchronous: the caller holds the state lock, so
//! every write is one atomic commit.

use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::builtin_schema;
use super::errors::{ApiError, Cause};
use super::patch;
use super::resources::{Registry, ResourceDef, crd_defs};
use super::selectors::{FieldSelector, LabelSelector};
use super::services::{self, ServiceRanges, Used};
use super::store::{ObjKey, Store, rv_of};
use super::validation;

/// Namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "lodestone-system",
];

/// Per-request write options.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    /// Field manager recorded in managedFields.
    pub manager: String,
    /// RFC 3339 "now".
    pub now: String,
    /// `fieldValidation=Strict`: unknown fields are an error instead of being dropped.
    pub strict: bool,
}

impl WriteCtx {
    /// A context stamped with the current time.
    pub fn new(manager: impl Into<String>, strict: bool) -> Self {
        WriteCtx {
            manager: manager.into(),
            now: now(),
            strict,
        }
    }
}

/// RFC 3339 UTC with seconds, as Kubernetes writes timestamps.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Everything behind the server's lock.
#[derive(Debug)]
pub struct State {
    /// Objects, RV counter, history, watchers.
    pub store: Store,
    /// Served resources.
    pub registry: Registry,
    /// Service allocation ranges.
    pub ranges: ServiceRanges,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// The object is gone; its last state.
    Gone(Value),
    /// The object has finalizers and is now (or already was) terminating.
    Pending(Value),
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("metadata was just made an object"),
    }
}

fn meta_str<'a>(obj: &'a Value, k: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(k)).and_then(Value::as_str)
}

fn finalizers_empty(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// An events.k8s.io/v1 Event in its core/v1 form (kube-apiserver's conversion).
fn event_to_core(ev: &Value) -> Option<Value> {
    let o = ev.as_object()?;
    let mut core = serde_json::Map::new();
    core.insert("apiVersion".into(), json!("v1"));
    core.insert("kind".into(), json!("Event"));
    let mut metadata = o.get("metadata").cloned().unwrap_or(json!({}));
    if let Some(m) = metadata.as_object_mut() {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    core.insert("metadata".into(), metadata);
    for (from, to) in [
        ("regarding", "involvedObject"),
        ("note", "message"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
        ("deprecatedSource", "source"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("action", "action"),
        ("reason", "reason"),
        ("type", "type"),
        ("related", "related"),
    ] {
        if let Some(v) = o.get(from).filter(|v| !v.is_null()) {
            core.insert(to.into(), v.clone());
        }
    }
    if !core.contains_key("involvedObject") {
        core.insert("involvedObject".into(), json!({}));
    }
    Some(Value::Object(core))
}

/// The object without metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// The object as compared for no-op detection: no RV, no managedFields timestamps.
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(mf) = m.get_mut("managedFields").and_then(Value::as_array_mut) {
            for e in mf.iter_mut().filter_map(Value::as_object_mut) {
                e.remove("time");
            }
        }
    }
    o
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl State {
    /// A fresh cluster: the initial namespaces exist.
    pub fn new(watch_history: usize) -> Self {
        let mut st = State {
            store: Store::new(watch_history),
            registry: Registry::default(),
            ranges: ServiceRanges::default(),
        };
        let ctx = WriteCtx::new("kube-apiserver", false);
        if let Some(def) = st.registry.lookup("", "v1", "namespaces") {
            for ns in INITIAL_NAMESPACES {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                // Cannot fail: fresh store, valid names.
                let _ = st.create(&def, None, obj, &ctx);
            }
        }
        // kube-apiserver keeps `default/kubernetes`, a ClusterIP Service with the first address
        // of the service range; a test listing every Service must see it here too.
        if let Some(def) = st.registry.lookup("", "v1", "services") {
            let first = services::first_address(&st.ranges.v4);
            let obj = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": first, "clusterIPs": [first],
                         "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                         "sessionAffinity": "None",
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                    "targetPort": 443}]}});
            // Cannot fail: fresh store, a free address of the range.
            let _ = st.create(&def, Some("default"), obj, &ctx);
        }
        st
    }

    /// A scratch copy for dry-run requests: same objects and resources, no watchers.
    pub fn scratch_copy(&self) -> State {
        State {
            store: self.store.scratch_copy(),
            registry: self.registry.clone(),
            ranges: self.ranges.clone(),
        }
    }

    /// The store key of an object.
    pub fn key(def: &ResourceDef, ns: Option<&str>, name: &str) -> ObjKey {
        let ns = if def.namespaced { ns.unwrap_or("") } else { "" };
        (def.store_key(), ns.to_string(), name.to_string())
    }

    /// Get one object.
    pub fn get(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.store
            .get(&Self::key(def, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))
    }

    /// List objects (all namespaces when `ns` is `None`) and the list's resourceVersion.
    pub fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Value>, u64) {
        let ns = if def.namespaced { ns } else { None };
        let items = self
            .store
            .list(&def.store_key(), ns)
            .map(|(_, v)| v)
            .filter(|v| labels.matches_object(v) && fields.matches(v))
            .cloned()
            .collect();
        (items, self.store.current_rv())
    }

    fn check_type_meta(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
        let Some(o) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        };
        let want_av = def.api_version();
        match o.get("apiVersion").and_then(Value::as_str) {
            Some(av) if !av.is_empty() && av != want_av => {
                // Other served versions of the same resource are accepted (no conversion needed).
                let same_group = def.crd.is_some()
                    && av.split_once('/').map(|(g, _)| g) == Some(def.group.as_str());
                if !same_group {
                    return Err(ApiError::bad_request(format!(
                        "the API version in the data ({av}) does not match the expected API version ({want_av})"
                    )));
                }
            }
            _ => {}
        }
        match o.get("kind").and_then(Value::as_str) {
            Some(k) if !k.is_empty() && k != def.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    def.kind
                )));
            }
            _ => {}
        }
        o.insert("apiVersion".into(), json!(want_av));
        o.insert("kind".into(), json!(def.kind));
        Ok(())
    }

    /// Resource-specific defaulting and validation before a write.
    fn admit(
        &self,
        def: &ResourceDef,
        key: &ObjKey,
        obj: &mut Value,
        old: Option<&Value>,
        ctx: &WriteCtx,
    ) -> Result<(), ApiError> {
        let invalid = |causes: Vec<Cause>| ApiError::invalid(&def.group, &def.kind, &key.2, causes);
        let mut meta_causes = validation::validate_meta(obj);
        if def.crd.is_some() {
            let mut unknown = Vec::new();
            let admitted = patch::schema_admit(def, obj, old, &mut unknown);
            // Strict decoding happens before validation in kube-apiserver.
            if ctx.strict && !unknown.is_empty() {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field {f:?}"))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
                    list.join(", "),
                    kind = def.kind,
                    version = def.version,
                )));
            }
            if let Err(schema_causes) = admitted {
                meta_causes.extend(schema_causes);
            }
            return if meta_causes.is_empty() {
                Ok(())
            } else {
                Err(invalid(meta_causes))
            };
        }
        // Go decodes a missing field as its zero value and validation then names it (422);
        // k8s-openapi makes some of those fields required (a missing `lastTransitionTime` would
        // be a 400 decoding error), so Service status is validated before decoding.
        if (def.group.as_str(), def.kind.as_str()) == ("", "Service") {
            meta_causes.extend(validation::validate_service_status(obj));
            if !meta_causes.is_empty() {
                return Err(invalid(meta_causes));
            }
        }
        if let Some(decoded) = builtin_schema::normalize(&def.group, &def.kind, obj) {
            let cannot = |why: String| {
                ApiError::bad_request(format!(
                    "{kind} in version {version:?} cannot be handled as a {kind}: {why}",
                    kind = def.kind,
                    version = def.version,
                ))
            };
            let decoded = decoded.map_err(|e| cannot(e.0))?;
            let mut dropped = Vec::new();
            builtin_schema::dropped_fields(obj, &decoded, "", &mut dropped);
            if ctx.strict && !dropped.is_empty() {
                let list: Vec<String> = dropped
                    .iter()
                    .map(|f| format!("unknown field {f:?}"))
                    .collect();
                return Err(cannot(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            *obj = decoded;
        }
        if !meta_causes.is_empty() {
            return Err(invalid(meta_causes));
        }
        match (def.group.as_str(), def.kind.as_str()) {
            ("", "Service") => {
                // Collecting every other Service's cluster IPs and node ports is O(n); a write
                // that leaves the spec alone (every status write) allocates nothing new and its
                // allocations were checked when they were made, so it skips the scan. Without
                // this, 10,000 status writes cost 10,000 scans of 10,000 Services.
                let spec_unchanged = old.is_some_and(|o| o.get("spec") == obj.get("spec"));
                let mut used = Used::default();
                if !spec_unchanged {
                    for (k, v) in self.store.list(&key.0, None) {
                        if k != key {
                            used.add_service(v);
                        }
                    }
                }
                if obj.get("status").is_none_or(Value::is_null) {
                    obj["status"] = json!({"loadBalancer": {}});
                }
                // kube-apiserver 1.32+ defaults ipMode to VIP for ingress points with an IP.
                if let Some(ingress) = obj
                    .pointer_mut("/status/loadBalancer/ingress")
                    .and_then(Value::as_array_mut)
                {
                    for i in ingress.iter_mut().filter_map(Value::as_object_mut) {
                        if i.contains_key("ip") && !i.contains_key("ipMode") {
                            i.insert("ipMode".into(), json!("VIP"));
                        }
                    }
                }
                services::prepare(obj, old, &used, &self.ranges).map_err(invalid)
            }
            ("events.k8s.io", "Event") if old.is_none() => {
                // The strict rules apply to creation through events.k8s.io only; updates and
                // core/v1 Events keep the legacy rules.
                let causes = validation::validate_events_v1_event(obj);
                if causes.is_empty() {
                    Ok(())
                } else {
                    Err(invalid(causes))
                }
            }
            ("discovery.k8s.io", "EndpointSlice") => {
                let causes = validation::validate_endpoint_slice(obj);
                if causes.is_empty() {
                    Ok(())
                } else {
                    Err(invalid(causes))
                }
            }
            ("", "Pod") => {
                // A new Pod is Pending until a kubelet says otherwise.
                if old.is_none() && obj.pointer("/status/phase").is_none() {
                    obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
                }
                Ok(())
            }
            ("", "Secret") => {
                // kube-apiserver's defaulting.
                if obj
                    .get("type")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    obj["type"] = json!("Opaque");
                }
                Ok(())
            }
            ("", "Namespace") => {
                let m = meta_mut(obj);
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(key.2));
                }
                if obj.pointer("/status/phase").is_none() {
                    obj["status"] = json!({"phase": "Active"});
                }
                if obj.get("spec").is_none() {
                    obj["spec"] = json!({});
                }
                Ok(())
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                self.admit_crd(key, obj, old, ctx)
            }
            _ => Ok(()),
        }
    }

    fn admit_crd(
        &self,
        key: &ObjKey,
        obj: &mut Value,
        old: Option<&Value>,
        ctx: &WriteCtx,
    ) -> Result<(), ApiError> {
        let invalid = |field: String, message: String| {
            ApiError::invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                &key.2,
                vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    message,
                    field,
                }],
            )
        };
        let defs = crd_defs(obj).map_err(|e| invalid(e.field, e.message))?;
        let Some(first) = defs.first().cloned() else {
            return Err(invalid(
                "spec.versions".into(),
                "Invalid value: at least one version must be served".into(),
            ));
        };
        let mut probe = self.registry.clone();
        probe
            .register_crd(obj)
            .map_err(|e| invalid(e.field, e.message))?;
        // Defaults kube-apiserver fills.
        if let Some(names) = obj
            .pointer_mut("/spec/names")
            .and_then(Value::as_object_mut)
        {
            names.entry("singular").or_insert(json!(first.singular));
            names.entry("listKind").or_insert(json!(first.list_kind));
        }
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.entry("conversion")
                .or_insert(json!({"strategy": "None"}));
        }
        let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let storage = first
            .crd
            .as_ref()
            .map(|c| c.storage_version.clone())
            .unwrap_or_default();
        let mut stored: Vec<Value> = old
            .and_then(|o| o.pointer("/status/storedVersions"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !stored.contains(&json!(storage)) {
            stored.push(json!(storage));
        }
        let old_conditions = old.and_then(|o| o.pointer("/status/conditions")).cloned();
        let conditions = old_conditions.unwrap_or_else(|| {
            json!([
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ctx.now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ctx.now}
            ])
        });
        obj["status"] =
            json!({"acceptedNames": names, "conditions": conditions, "storedVersions": stored});
        Ok(())
    }

    /// Namespace check for namespaced writes.
    fn require_namespace(&self, def: &ResourceDef, ns: &str) -> Result<(), ApiError> {
        if !def.namespaced {
            return Ok(());
        }
        let key = ("/namespaces".to_string(), String::new(), ns.to_string());
        if self.store.get(&key).is_none() {
            return Err(ApiError::not_found("", "namespaces", ns));
        }
        Ok(())
    }

    /// Create. `tracked`: managedFields already computed (server-side apply).
    pub fn create(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        self.create_inner(def, ns, &mut obj, ctx, false)
    }

    fn create_inner(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        obj: &mut Value,
        ctx: &WriteCtx,
        tracked: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(def, obj)?;
        let body_ns = meta_str(obj, "namespace")
            .filter(|s| !s.is_empty())
            .map(String::from);
        let ns = if def.namespaced {
            let ns = match (ns, body_ns.as_deref()) {
                (Some(url), Some(body)) if url != body => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(url), _) => url.to_string(),
                (None, Some(body)) => body.to_string(),
                (None, None) => return Err(ApiError::method_not_allowed()),
            };
            self.require_namespace(def, &ns)?;
            Some(ns)
        } else {
            None
        };
        let mut name = meta_str(obj, "name").unwrap_or("").to_string();
        let generate = meta_str(obj, "generateName").unwrap_or("").to_string();
        if name.is_empty() && !generate.is_empty() {
            for _ in 0..8 {
                name = format!("{generate}{}", random_suffix());
                if self
                    .store
                    .get(&Self::key(def, ns.as_deref(), &name))
                    .is_none()
                {
                    break;
                }
            }
        }
        if name.is_empty() {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                "",
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: name or generateName is required".into(),
                    field: "metadata.name".into(),
                }],
            ));
        }
        let kind_rule = if def.crd.is_some() {
            ""
        } else {
            def.kind.as_str()
        };
        let causes = validation::validate_names(&def.group, kind_rule, &name, &generate);
        if !causes.is_empty() {
            return Err(ApiError::invalid(&def.group, &def.kind, &name, causes));
        }
        let key = Self::key(def, ns.as_deref(), &name);
        if self.store.get(&key).is_some() {
            return Err(ApiError::already_exists(&def.group, &def.plural, &name));
        }
        {
            let m = meta_mut(obj);
            m.insert("name".into(), json!(name));
            match &ns {
                Some(ns) => m.insert("namespace".into(), json!(ns)),
                None => m.remove("namespace"),
            };
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(k);
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(ctx.now));
            if def.generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if def.status
            && !def.status_on_create
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        self.admit(def, &key, obj, None, ctx)?;
        if !tracked {
            patch::track_update(def, None, obj, &ctx.manager, None, &ctx.now);
        }
        let stored = self.store.put(key, obj.clone());
        self.after_write(def, &stored);
        Ok(stored)
    }

    /// Update (PUT) of the object or its status.
    pub fn update(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let key = Self::key(def, ns, name);
        let old = self
            .store
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        self.commit_update(def, &key, &old, body, sub, ctx, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_update(
        &mut self,
        def: &ResourceDef,
        key: &ObjKey,
        old: &Value,
        mut new: Value,
        sub: Option<&str>,
        ctx: &WriteCtx,
        tracked: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(def, &mut new)?;
        if let Some(n) = meta_str(&new, "name").filter(|n| !n.is_empty())
            && n != key.2
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                key.2
            )));
        }
        if def.namespaced
            && let Some(n) = meta_str(&new, "namespace").filter(|n| !n.is_empty())
            && n != key.1
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(uid) = meta_str(&new, "uid").filter(|s| !s.is_empty())
            && Some(uid) != meta_str(old, "uid")
        {
            return Err(ApiError::conflict_msg(
                &def.group,
                &def.plural,
                &key.2,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(old, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = meta_str(&new, "resourceVersion").filter(|s| !s.is_empty())
            && rv.parse::<u64>().ok() != Some(rv_of(old))
        {
            return Err(ApiError::conflict(&def.group, &def.plural, &key.2));
        }
        let mut cand = if sub == Some("status") {
            let mut c = old.clone();
            match new.get("status") {
                Some(s) => c["status"] = s.clone(),
                None => {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            if tracked && let Some(mf) = new.pointer("/metadata/managedFields") {
                meta_mut(&mut c).insert("managedFields".into(), mf.clone());
            }
            c
        } else {
            if def.status
                && let Some(o) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
            let old_meta = meta(old).cloned().unwrap_or_default();
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "name",
                "namespace",
            ] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.remove("selfLink");
            new
        };
        meta_mut(&mut cand).insert("resourceVersion".into(), json!(rv_of(old).to_string()));
        if meta(old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
            let names = |o: &Value| -> Vec<String> {
                meta(o)
                    .and_then(|m| m.get("finalizers"))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let before = names(old);
            let added: Vec<String> = names(&cand)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &def.group,
                    &def.kind,
                    &key.2,
                    vec![Cause {
                        reason: "FieldValueForbidden".into(),
                        message: format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                            added
                                .iter()
                                .map(|f| format!("{f:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        field: "metadata.finalizers".into(),
                    }],
                ));
            }
        }
        self.admit(def, key, &mut cand, Some(old), ctx)?;
        if def.generation && spec_part(&cand) != spec_part(old) {
            let g = meta(old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut cand).insert("generation".into(), json!(g + 1));
        }
        if !tracked {
            patch::track_update(def, Some(old), &mut cand, &ctx.manager, sub, &ctx.now);
        }
        if comparable(&cand) == comparable(old) {
            return Ok(old.clone());
        }
        if meta(&cand).is_some_and(|m| m.contains_key("deletionTimestamp"))
            && finalizers_empty(&cand)
        {
            self.remove_dependents(def, key);
            return match self.store.remove_as(key, Some(cand)) {
                Some(gone) => {
                    self.collect_garbage(ctx);
                    Ok(gone)
                }
                None => Err(ApiError::internal("object vanished during update")),
            };
        }
        let stored = self.store.put(key.clone(), cand);
        self.after_write(def, &stored);
        Ok(stored)
    }

    /// PATCH. Returns the object and whether it was created (apply on a missing object).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        content_type: &str,
        body: &[u8],
        force: bool,
        ctx: &WriteCtx,
    ) -> Result<(Value, bool), ApiError> {
        let key = Self::key(def, ns, name);
        let live = self.store.get(&key).cloned();
        let ct = content_type.split(';').next().unwrap_or("").trim();
        if ct == "application/apply-patch+yaml" {
            let config: Value = serde_saphyr::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            if !config.is_object() {
                return Err(ApiError::bad_request("apply patch must be an object"));
            }
            let Some(ctx_manager) = Some(ctx.manager.as_str()).filter(|m| !m.is_empty()) else {
                return Err(ApiError::bad_request(
                    "PATCH, application/apply-patch+yaml requests must have a fieldManager",
                ));
            };
            let mut config = config;
            Self::check_type_meta(def, &mut config)?;
            if let Some(n) = meta_str(&config, "name").filter(|n| !n.is_empty())
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            let applied = patch::apply(
                def,
                live.as_ref(),
                &config,
                ctx_manager,
                force,
                sub,
                &ctx.now,
                name,
            )?;
            return match live {
                None => {
                    if sub.is_some() {
                        return Err(ApiError::not_found(&def.group, &def.plural, name));
                    }
                    let mut obj = applied;
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                    let created = self.create_inner(def, ns, &mut obj, ctx, true)?;
                    Ok((created, true))
                }
                Some(old) => {
                    let mut applied = applied;
                    // Apply is not conditional unless the config says so.
                    if meta_str(&config, "resourceVersion").is_none() {
                        meta_mut(&mut applied).remove("resourceVersion");
                    }
                    Ok((
                        self.commit_update(def, &key, &old, applied, sub, ctx, true)?,
                        false,
                    ))
                }
            };
        }
        let old = live.ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        let patched = match ct {
            "application/merge-patch+json" => {
                let p: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                patch::merge_patch(&old, &p)
            }
            "application/json-patch+json" => {
                let p: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                patch::json_patch(&old, &p).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ),
                    details: None,
                })?
            }
            "application/strategic-merge-patch+json" => {
                if def.crd.is_some() {
                    return Err(ApiError::unsupported_media_type(ct));
                }
                let p: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                patch::strategic_patch(def, &old, &p)?
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        };
        Ok((
            self.commit_update(def, &key, &old, patched, sub, ctx, false)?,
            false,
        ))
    }

    /// DELETE with optional `DeleteOptions` (preconditions honoured).
    pub fn delete(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
        ctx: &WriteCtx,
    ) -> Result<Deleted, ApiError> {
        let key = Self::key(def, ns, name);
        let old = self
            .store
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
            let have = meta_str(&old, "uid").unwrap_or("");
            if uid != have {
                return Err(ApiError::conflict_msg(
                    &def.group,
                    &def.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && rv.parse::<u64>().ok() != Some(rv_of(&old))
        {
            return Err(ApiError::conflict_msg(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    rv_of(&old)
                ),
            ));
        }
        if !finalizers_empty(&old) {
            if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                return Ok(Deleted::Pending(old));
            }
            let mut cand = old.clone();
            let m = meta_mut(&mut cand);
            m.insert("deletionTimestamp".into(), json!(ctx.now));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(g) = m.get("generation").and_then(Value::as_i64) {
                m.insert("generation".into(), json!(g + 1));
            }
            let stored = self.store.put(key, cand);
            return Ok(Deleted::Pending(stored));
        }
        // Dependents go first, so watchers see them vanish before their namespace or CRD.
        self.remove_dependents(def, &key);
        match self.store.remove(&key) {
            Some(gone) => {
                if opts.get("propagationPolicy").and_then(Value::as_str) != Some("Orphan") {
                    self.collect_garbage(ctx);
                }
                Ok(Deleted::Gone(gone))
            }
            None => Err(ApiError::not_found(&def.group, &def.plural, name)),
        }
    }

    /// The garbage collector's background propagation: objects whose every owner is gone are
    /// deleted (through the ordinary delete, so their finalizers are honoured).
    fn collect_garbage(&mut self, ctx: &WriteCtx) {
        loop {
            // Most stores hold no owned objects: skip the uid index then.
            let any_owned = self.store.all().any(|(_, v)| {
                v.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            });
            if !any_owned {
                return;
            }
            let live: std::collections::HashSet<String> = self
                .store
                .all()
                .filter_map(|(_, v)| meta_str(v, "uid").map(String::from))
                .collect();
            let orphans: Vec<ObjKey> = self
                .store
                .all()
                .filter(|(_, v)| {
                    let owners = v
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .filter(|a| !a.is_empty());
                    let deleting = meta(v).is_some_and(|m| m.contains_key("deletionTimestamp"));
                    !deleting
                        && owners.is_some_and(|a| {
                            a.iter().all(|o| {
                                o.get("uid")
                                    .and_then(Value::as_str)
                                    .is_none_or(|u| !live.contains(u))
                            })
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            if orphans.is_empty() {
                return;
            }
            for k in orphans {
                let Some(def) = self.registry.by_store_key(&k.0) else {
                    // The resource is no longer served (its CRD went); drop the object.
                    self.store.remove(&k);
                    continue;
                };
                let ns = (!k.1.is_empty()).then_some(k.1.as_str());
                let _ = self.delete(&def, ns, &k.2, &json!({}), ctx);
            }
        }
    }

    fn after_write(&mut self, def: &ResourceDef, stored: &Value) {
        if def.group == "apiextensions.k8s.io" && def.kind == "CustomResourceDefinition" {
            // Validated in admit; a failure here would mean the registry changed in between,
            // which the lock rules out.
            let _ = self.registry.register_crd(stored);
        }
        if def.group == "events.k8s.io" && def.kind == "Event" {
            // kube-apiserver stores both Event APIs in one place: what a controller records
            // through events.k8s.io is what `kubectl get events` and `describe` show (core/v1).
            if let Some(core) = event_to_core(stored) {
                let ns = stored
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let name = stored
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.store.put(
                    ("/events".to_string(), ns.to_string(), name.to_string()),
                    core,
                );
            }
        }
    }

    /// Remove what dies with an object: a CRD's custom resources, a namespace's contents.
    fn remove_dependents(&mut self, def: &ResourceDef, key: &ObjKey) {
        match (def.group.as_str(), def.kind.as_str()) {
            ("events.k8s.io", "Event") => {
                self.store
                    .remove(&("/events".to_string(), key.1.clone(), key.2.clone()));
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                if let Some(defs) = self.registry.unregister_crd(&key.2)
                    && let Some(d) = defs.first()
                {
                    self.remove_all(&d.store_key(), None);
                }
            }
            ("", "Namespace") => {
                let mut keys: Vec<String> = self
                    .registry
                    .all()
                    .filter(|r| r.namespaced)
                    .map(|r| r.store_key())
                    .collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    self.remove_all(&k, Some(&key.2));
                }
            }
            _ => {}
        }
    }

    fn remove_all(&mut self, resource: &str, ns: Option<&str>) {
        let keys: Vec<ObjKey> = self
            .store
            .list(resource, ns)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.store.remove(&k);
        }
    }

    /// The served definition for a stored object's resource at a version, for presenting.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.registry.lookup(group, version, plural)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> WriteCtx {
        WriteCtx::new("test", false)
    }

    fn svc_def(st: &State) -> Arc<ResourceDef> {
        st.lookup("", "v1", "services").unwrap()
    }

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}})
    }

    #[test]
    fn initial_namespaces_exist() {
        let st = State::new(100);
        let ns = st.lookup("", "v1", "namespaces").unwrap();
        for n in INITIAL_NAMESPACES {
            let o = st.get(&ns, None, n).unwrap();
            assert_eq!(o["status"]["phase"], "Active");
            assert_eq!(o["metadata"]["labels"]["kubernetes.io/metadata.name"], *n);
        }
    }

    #[test]
    fn create_get_conflict() {
        let mut st = State::new(100);
        let d = svc_def(&st);
        let c = st.create(&d, Some("default"), svc("a"), &ctx()).unwrap();
        assert_eq!(c["kind"], "Service");
        assert!(c["metadata"]["uid"].is_string());
        assert!(c["spec"]["clusterIP"].is_string());
        let e = st
            .create(&d, Some("default"), svc("a"), &ctx())
            .unwrap_err();
        assert_eq!(e.reason, "AlreadyExists");
        let e = st.create(&d, Some("nope"), svc("a"), &ctx()).unwrap_err();
        assert_eq!(e.code, 404);
        let mut stale = c.clone();
        stale["metadata"]["labels"] = json!({"x": "y"});
        let updated = st
            .update(&d, Some("default"), "a", None, stale.clone(), &ctx())
            .unwrap();
        assert!(rv_of(&updated) > rv_of(&c));
        let e = st
            .update(&d, Some("default"), "a", None, stale, &ctx())
            .unwrap_err();
        assert_eq!(e.reason, "Conflict");
    }

    #[test]
    fn noop_update_keeps_rv() {
        let mut st = State::new(100);
        let d = svc_def(&st);
        let c = st.create(&d, Some("default"), svc("a"), &ctx()).unwrap();
        let u = st
            .update(&d, Some("default"), "a", None, c.clone(), &ctx())
            .unwrap();
        assert_eq!(rv_of(&u), rv_of(&c));
    }

    #[test]
    fn status_isolation() {
        let mut st = State::new(100);
        let d = svc_def(&st);
        let c = st.create(&d, Some("default"), svc("a"), &ctx()).unwrap();
        let mut body = c.clone();
        body["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
        body["spec"]["sessionAffinity"] = json!("ClientIP");
        let s = st
            .update(
                &d,
                Some("default"),
                "a",
                Some("status"),
                body.clone(),
                &ctx(),
            )
            .unwrap();
        assert_eq!(s["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        let mut main = s.clone();
        main["status"] = json!({});
        main["metadata"]["labels"] = json!({"a": "b"});
        let m = st
            .update(&d, Some("default"), "a", None, main, &ctx())
            .unwrap();
        assert_eq!(m["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
        assert_eq!(m["metadata"]["labels"]["a"], "b");
    }

    #[test]
    fn finalizers_hold_deletion() {
        let mut st = State::new(100);
        let d = st.lookup("", "v1", "configmaps").unwrap();
        let c = st
            .create(
                &d,
                Some("default"),
                json!({"metadata": {"name": "f", "finalizers": ["x/y"]}}),
                &ctx(),
            )
            .unwrap();
        let Deleted::Pending(p) = st
            .delete(&d, Some("default"), "f", &json!({}), &ctx())
            .unwrap()
        else {
            panic!()
        };
        assert!(p["metadata"]["deletionTimestamp"].is_string());
        let Deleted::Pending(p2) = st
            .delete(&d, Some("default"), "f", &json!({}), &ctx())
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(rv_of(&p2), rv_of(&p));
        let mut cleared = p.clone();
        cleared["metadata"]["finalizers"] = json!([]);
        // Clients cannot remove deletionTimestamp, and the object vanishes once finalizers are gone.
        cleared["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("deletionTimestamp");
        st.update(&d, Some("default"), "f", None, cleared, &ctx())
            .unwrap();
        assert_eq!(st.get(&d, Some("default"), "f").unwrap_err().code, 404);
        let _ = c;
    }

    #[test]
    fn no_new_finalizers_while_deleting() {
        let mut st = State::new(100);
        let d = st.lookup("", "v1", "configmaps").unwrap();
        st.create(
            &d,
            Some("default"),
            json!({"metadata": {"name": "f", "finalizers": ["a/b"]}}),
            &ctx(),
        )
        .unwrap();
        let Deleted::Pending(p) = st
            .delete(&d, Some("default"), "f", &json!({}), &ctx())
            .unwrap()
        else {
            panic!("finalizer must hold the object")
        };
        let mut more = p.clone();
        more["metadata"]["finalizers"] = json!(["a/b", "c/d"]);
        let e = st
            .update(&d, Some("default"), "f", None, more, &ctx())
            .unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert!(e.message.contains("no new finalizers"), "{}", e.message);
    }

    #[test]
    fn events_k8s_io_events_show_up_as_core_events() {
        let mut st = State::new(100);
        let ev = st.lookup("events.k8s.io", "v1", "events").unwrap();
        let core = st.lookup("", "v1", "events").unwrap();
        let body = json!({"metadata": {"name": "web.1", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "lodestone.dev/controller",
            "reportingInstance": "c-1", "action": "Allocate", "reason": "NoPool", "type": "Warning",
            "note": "no pool", "regarding": {"kind": "Service", "name": "web", "namespace": "default"}});
        st.create(&ev, Some("default"), body, &ctx()).unwrap();
        let c = st.get(&core, Some("default"), "web.1").unwrap();
        assert_eq!(c["message"], "no pool");
        assert_eq!(c["involvedObject"]["name"], "web");
        assert_eq!(c["reportingComponent"], "lodestone.dev/controller");
        let sel = FieldSelector::parse(
            "involvedObject.name=web",
            crate::apiserver::selectors::supported_fields("", "Event"),
        )
        .unwrap();
        assert_eq!(
            st.list(&core, Some("default"), &LabelSelector::default(), &sel)
                .0
                .len(),
            1
        );
        st.delete(&ev, Some("default"), "web.1", &json!({}), &ctx())
            .unwrap();
        assert_eq!(
            st.get(&core, Some("default"), "web.1").unwrap_err().code,
            404
        );
    }

    #[test]
    fn dependents_are_collected_unless_orphaned() {
        let mut st = State::new(100);
        let svc = svc_def(&st);
        let eps = st
            .lookup("discovery.k8s.io", "v1", "endpointslices")
            .unwrap();
        let owner = |st: &mut State, name: &str| {
            let s = st
                .create(
                    &svc,
                    Some("default"),
                    json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}),
                    &ctx(),
                )
                .unwrap();
            s["metadata"]["uid"].as_str().unwrap().to_string()
        };
        let a = owner(&mut st, "a");
        let b = owner(&mut st, "b");
        let slice = |name: &str, uids: &[&str]| {
            let refs: Vec<Value> = uids
                .iter()
                .map(|u| json!({"apiVersion": "v1", "kind": "Service", "name": "x", "uid": u}))
                .collect();
            json!({"metadata": {"name": name, "ownerReferences": refs}, "addressType": "IPv4", "endpoints": []})
        };
        st.create(&eps, Some("default"), slice("only-a", &[&a]), &ctx())
            .unwrap();
        st.create(&eps, Some("default"), slice("a-and-b", &[&a, &b]), &ctx())
            .unwrap();
        st.delete(&svc, Some("default"), "a", &json!({}), &ctx())
            .unwrap();
        assert_eq!(
            st.get(&eps, Some("default"), "only-a").unwrap_err().code,
            404
        );
        assert!(
            st.get(&eps, Some("default"), "a-and-b").is_ok(),
            "one owner is still alive"
        );
        st.delete(
            &svc,
            Some("default"),
            "b",
            &json!({"propagationPolicy": "Orphan"}),
            &ctx(),
        )
        .unwrap();
        assert!(
            st.get(&eps, Some("default"), "a-and-b").is_ok(),
            "orphaned, not collected"
        );
    }

    #[test]
    fn ingress_ip_mode_defaults_to_vip_and_reapplying_is_a_no_op() {
        let mut st = State::new(100);
        let d = svc_def(&st);
        st.create(&d, Some("default"), svc("lb"), &ctx()).unwrap();
        let body = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"hostname": "h"}]}}});
        let (s, _) = st
            .patch(
                &d,
                Some("default"),
                "lb",
                Some("status"),
                "application/merge-patch+json",
                body.to_string().as_bytes(),
                false,
                &ctx(),
            )
            .unwrap();
        assert_eq!(s["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
        assert!(
            s["status"]["loadBalancer"]["ingress"][1]
                .get("ipMode")
                .is_none()
        );
        let (again, _) = st
            .patch(
                &d,
                Some("default"),
                "lb",
                Some("status"),
                "application/merge-patch+json",
                body.to_string().as_bytes(),
                false,
                &ctx(),
            )
            .unwrap();
        assert_eq!(rv_of(&again), rv_of(&s));
    }

    #[test]
    fn generate_name_and_generation() {
        let mut st = State::new(100);
        let d = st
            .lookup("discovery.k8s.io", "v1", "endpointslices")
            .unwrap();
        let c = st.create(&d, Some("default"), json!({"metadata": {"generateName": "web-"}, "addressType": "IPv4", "endpoints": []}), &ctx()).unwrap();
        let name = c["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("web-") && name.len() == 9);
        assert_eq!(c["metadata"]["generation"], 1);
        let mut u = c.clone();
        u["metadata"]["labels"] = json!({"a": "b"});
        let u = st
            .update(&d, Some("default"), &name, None, u, &ctx())
            .unwrap();
        assert_eq!(u["metadata"]["generation"], 1);
        let mut u2 = u.clone();
        u2["endpoints"] = json!([{"addresses": ["192.0.2.1"]}]);
        let u2 = st
            .update(&d, Some("default"), &name, None, u2, &ctx())
            .unwrap();
        assert_eq!(u2["metadata"]["generation"], 2);
    }

    #[test]
    fn crd_lifecycle_serves_and_removes() {
        let mut st = State::new(100);
        let crd_def = st
            .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let crd = json!({"metadata": {"name": "ws.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "ws", "kind": "W"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}});
        let c = st.create(&crd_def, None, crd, &ctx()).unwrap();
        assert_eq!(c["status"]["conditions"][1]["type"], "Established");
        let w = st.lookup("example.com", "v1", "ws").unwrap();
        st.create(
            &w,
            Some("default"),
            json!({"metadata": {"name": "x"}, "spec": {"a": 1}, "status": {"s": 1}}),
            &ctx(),
        )
        .unwrap();
        let got = st.get(&w, Some("default"), "x").unwrap();
        assert!(got.get("status").is_none());
        assert_eq!(got["apiVersion"], "example.com/v1");
        st.delete(&crd_def, None, "ws.example.com", &json!({}), &ctx())
            .unwrap();
        assert!(st.lookup("example.com", "v1", "ws").is_none());
        assert_eq!(st.store.list(&w.store_key(), None).count(), 0);
    }

    #[test]
    fn namespace_delete_cascades() {
        let mut st = State::new(100);
        let ns = st.lookup("", "v1", "namespaces").unwrap();
        st.create(&ns, None, json!({"metadata": {"name": "t"}}), &ctx())
            .unwrap();
        let cm = st.lookup("", "v1", "configmaps").unwrap();
        st.create(&cm, Some("t"), json!({"metadata": {"name": "c"}}), &ctx())
            .unwrap();
        st.delete(&ns, None, "t", &json!({}), &ctx()).unwrap();
        assert_eq!(st.get(&cm, Some("t"), "c").unwrap_err().code, 404);
    }

    #[test]
    fn merge_and_json_patch() {
        let mut st = State::new(100);
        let d = st.lookup("", "v1", "configmaps").unwrap();
        st.create(
            &d,
            Some("default"),
            json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
            &ctx(),
        )
        .unwrap();
        let (p, _) = st
            .patch(
                &d,
                Some("default"),
                "c",
                None,
                "application/merge-patch+json",
                br#"{"data":{"b":"2","a":null}}"#,
                false,
                &ctx(),
            )
            .unwrap();
        assert_eq!(p["data"], json!({"b": "2"}));
        let (p, _) = st
            .patch(
                &d,
                Some("default"),
                "c",
                None,
                "application/json-patch+json",
                br#"[{"op":"add","path":"/data/c","value":"3"}]"#,
                false,
                &ctx(),
            )
            .unwrap();
        assert_eq!(p["data"], json!({"b": "2", "c": "3"}));
        let e = st
            .patch(
                &d,
                Some("default"),
                "c",
                None,
                "application/merge-patch+json",
                br#"{"metadata":{"resourceVersion":"1"}}"#,
                false,
                &ctx(),
            )
            .unwrap_err();
        assert_eq!(e.reason, "Conflict");
    }

    #[test]
    fn scratch_copy_takes_writes_without_touching_the_live_state() {
        let mut st = State::new(100);
        let d = st.lookup("", "v1", "configmaps").unwrap();
        let live = st
            .create(
                &d,
                Some("default"),
                json!({"metadata": {"name": "c"}}),
                &ctx(),
            )
            .unwrap();
        let mut rx = st.store.subscribe();
        let mut scratch = st.scratch_copy();
        let created = scratch
            .create(
                &d,
                Some("default"),
                json!({"metadata": {"name": "n"}}),
                &ctx(),
            )
            .unwrap();
        assert!(created["metadata"].get("resourceVersion").is_none());
        let mut upd = live.clone();
        upd["data"] = json!({"a": "b"});
        let u = scratch
            .update(&d, Some("default"), "c", None, upd, &ctx())
            .unwrap();
        assert_eq!(
            rv_of(&u),
            rv_of(&live),
            "dry-run keeps the stored resourceVersion"
        );
        assert_eq!(st.get(&d, Some("default"), "n").unwrap_err().code, 404);
        assert!(
            st.get(&d, Some("default"), "c")
                .unwrap()
                .get("data")
                .is_none()
        );
        assert!(rx.try_recv().is_err(), "no watch event for dry-run writes");
    }

    #[test]
    fn multi_version_crd_serves_one_object_at_every_version() {
        let mut st = State::new(100);
        let crd_def = st
            .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let crd = json!({"metadata": {"name": "ws.example.com"}, "spec": {"group": "example.com", "scope": "Cluster",
        "names": {"plural": "ws", "kind": "W"},
        "versions": [
            {"name": "v1", "served": true, "storage": true},
            {"name": "v1beta1", "served": true, "storage": false}
        ]}});
        st.create(&crd_def, None, crd, &ctx()).unwrap();
        let v1 = st.lookup("example.com", "v1", "ws").unwrap();
        let beta = st.lookup("example.com", "v1beta1", "ws").unwrap();
        st.create(
            &beta,
            None,
            json!({"apiVersion": "example.com/v1beta1", "metadata": {"name": "x"}}),
            &ctx(),
        )
        .unwrap();
        assert!(st.get(&v1, None, "x").is_ok());
        assert_eq!(
            st.registry
                .groups()
                .iter()
                .find(|(g, _)| g == "example.com")
                .unwrap()
                .1,
            vec!["v1", "v1beta1"]
        );
    }

    proptest::proptest! {
        #[test]
        fn writes_bump_rv_and_watch_replays_to_the_list(
            ops in proptest::collection::vec((0u8..3, 0u8..4, proptest::bool::ANY), 1..30)
        ) {
            let mut st = State::new(1000);
            let d = st.lookup("", "v1", "configmaps").unwrap();
            let mut rx = st.store.subscribe();
            let mut last_rv = st.store.current_rv();
            for (op, n, stale) in ops {
                let name = format!("c{n}");
                let existing = st.get(&d, Some("default"), &name).ok();
                let res = match (op, existing) {
                    (0, _) => st.create(&d, Some("default"), json!({"metadata": {"name": name}}), &ctx()).map(Some),
                    (1, Some(mut o)) => {
                        o["data"] = json!({"v": last_rv.to_string()});
                        if stale {
                            o["metadata"]["resourceVersion"] = json!("1");
                        }
                        st.update(&d, Some("default"), &name, None, o, &ctx()).map(Some)
                    }
                    (_, _) => st.delete(&d, Some("default"), &name, &json!({}), &ctx()).map(|_| None),
                };
                if res.is_ok() {
                    proptest::prop_assert!(st.store.current_rv() >= last_rv);
                }
                last_rv = st.store.current_rv();
            }
            let mut replay = std::collections::BTreeMap::new();
            while let Ok(ev) = rx.try_recv() {
                let name = ev.object["metadata"]["name"].as_str().unwrap().to_string();
                match ev.kind {
                    super::super::store::EventType::Deleted => { replay.remove(&name); }
                    _ => { replay.insert(name, ev.object.clone()); }
                }
            }
            let (items, _) = st.list(&d, Some("default"), &LabelSelector::default(), &FieldSelector::default());
            let live: std::collections::BTreeMap<String, Value> = items
                .into_iter()
                .map(|o| (o["metadata"]["name"].as_str().unwrap().to_string(), o))
                .collect();
            proptest::prop_assert_eq!(replay, live);
        }
    }
}

/// What a list request's `resourceVersion` and `resourceVersionMatch` allow, given the store's
/// current resourceVersion ("Semantics for get and list" in the API concepts). This server keeps
/// no old states, so it can only serve the current one: `Ok` means serve it; an `Exact` version
/// older than the current one is 410 Expired (what kube-apiserver answers once etcd has
/// compacted it), a version newer than the current one is 504 Timeout with cause
/// `ResourceVersionTooLarge` (what kube-apiserver answers after waiting for it), and malformed
/// combinations are 422 on `ListOptions` as kube-apiserver's validation has them.
pub fn check_list_version(
    rv: Option<&str>,
    rv_match: Option<&str>,
    current: u64,
) -> Result<(), ApiError> {
    let rv = rv.filter(|s| !s.is_empty());
    let rv_match = rv_match.filter(|s| !s.is_empty());
    let invalid = |field: &str, reason: &str, message: String| {
        ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![Cause {
                reason: reason.to_string(),
                message,
                field: field.to_string(),
            }],
        )
    };
    let exact = match rv_match {
        None => false,
        Some("Exact") => true,
        Some("NotOlderThan") => false,
        Some(other) => {
            return Err(invalid(
                "resourceVersionMatch",
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\", \"\""
                ),
            ));
        }
    };
    let Some(rv) = rv else {
        if rv_match.is_some() {
            return Err(invalid(
                "resourceVersionMatch",
                "FieldValueForbidden",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
                    .to_string(),
            ));
        }
        return Ok(());
    };
    let Ok(wanted) = rv.parse::<u64>() else {
        return Err(ApiError::bad_request(format!(
            "invalid resource version: {rv:?}"
        )));
    };
    if wanted == 0 {
        if exact {
            return Err(invalid(
                "resourceVersionMatch",
                "FieldValueForbidden",
                "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""
                    .to_string(),
            ));
        }
        return Ok(());
    }
    if wanted > current {
        return Err(ApiError {
            code: 504,
            reason: "Timeout",
            message: format!("Timeout: Too large resource version: {wanted}, current: {current}"),
            details: Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1
            })),
        });
    }
    if exact && wanted < current {
        return Err(ApiError::expired(wanted, current));
    }
    Ok(())
}

#[cfg(test)]
mod list_version_tests {
    use super::check_list_version;

    fn code(rv: Option<&str>, m: Option<&str>, current: u64) -> u16 {
        match check_list_version(rv, m, current) {
            Ok(()) => 200,
            Err(e) => e.code,
        }
    }

    #[test]
    fn unset_and_zero_serve_the_current_state() {
        assert_eq!(code(None, None, 10), 200);
        assert_eq!(code(Some(""), Some(""), 10), 200);
        assert_eq!(code(Some("0"), None, 10), 200);
        assert_eq!(code(Some("0"), Some("NotOlderThan"), 10), 200);
    }

    #[test]
    fn not_older_than_accepts_any_version_up_to_the_current() {
        for rv in ["1", "9", "10"] {
            assert_eq!(code(Some(rv), None, 10), 200, "{rv}");
            assert_eq!(code(Some(rv), Some("NotOlderThan"), 10), 200, "{rv}");
        }
    }

    #[test]
    fn exact_is_the_current_version_or_410() {
        assert_eq!(code(Some("10"), Some("Exact"), 10), 200);
        let e = check_list_version(Some("7"), Some("Exact"), 10).unwrap_err();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        assert_eq!(e.message, "too old resource version: 7 (10)");
    }

    #[test]
    fn future_versions_time_out_with_the_documented_cause() {
        for m in [None, Some("NotOlderThan"), Some("Exact")] {
            let e = check_list_version(Some("11"), m, 10).unwrap_err();
            assert_eq!((e.code, e.reason), (504, "Timeout"));
            assert_eq!(
                e.details.unwrap()["causes"][0]["reason"],
                "ResourceVersionTooLarge"
            );
        }
    }

    #[test]
    fn malformed_options_are_refused() {
        assert_eq!(code(None, Some("Exact"), 10), 422);
        assert_eq!(code(Some("0"), Some("Exact"), 10), 422);
        assert_eq!(code(Some("5"), Some("Sometimes"), 10), 422);
        assert_eq!(code(Some("abc"), None, 10), 400);
        let e = check_list_version(None, Some("NotOlderThan"), 10).unwrap_err();
        assert!(
            e.message
                .starts_with("ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch"),
            "{}",
            e.message
        );
    }

    proptest::proptest! {
        /// Only the current state is ever served: Ok means the request is satisfiable by it.
        #[test]
        fn ok_only_when_the_current_state_satisfies_the_request(
            wanted in 0u64..50, current in 1u64..50, exact in proptest::bool::ANY
        ) {
            let rv = wanted.to_string();
            let m = if exact { Some("Exact") } else { Some("NotOlderThan") };
            let ok = check_list_version(Some(&rv), m, current).is_ok();
            let satisfiable = if exact { wanted == current } else { wanted <= current };
            proptest::prop_assert_eq!(ok, satisfiable);
        }
    }
}
