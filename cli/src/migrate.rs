//! MetalLB → Lodestone: a pure conversion of MetalLB's layer-2 and BGP configuration.
//!
//! [`migrate`] takes parsed YAML/JSON documents (MetalLB's `metallb.io/v1beta1` `IPAddressPool`,
//! `L2Advertisement`, `BGPAdvertisement`, `BFDProfile`, `Community` and `v1beta2` `BGPPeer`, or
//! a `kind: List` of them as `kubectl get -o yaml` prints) and returns the equivalent
//! `lodestone.dev/v1alpha1` objects, plus a [`Warning`] for everything it could not carry over
//! unchanged. A peer's `bfdProfile` becomes its `spec.bfd` (from the BFDProfile of the input),
//! community aliases are replaced by their values (from the Community objects of the input),
//! and a plain-text `password` moves into a Secret in `lodestone-system`. Nothing is dropped without a warning; the only fields left out silently
//! are those the API server fills in (`uid`, `resourceVersion`, `status`, ...).
//!
//! Every emitted object has been parsed into the Lodestone types and has passed their CEL rules,
//! so the output applies as-is.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use lodestone_crds::{
    BGPAdvertisement, BGPAdvertisementSpec, BGPPeer, BGPPeerSpec, IPAddressPool, IPAddressPoolSpec,
    L2Advertisement, L2AdvertisementSpec,
};
use serde_json::{Map, Value};

/// Annotation on every emitted object naming the MetalLB object it came from.
pub const MIGRATED_FROM_ANNOTATION: &str = "lodestone.dev/migrated-from";

/// kubectl's copy of the last applied object: it describes the MetalLB object, not ours.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Where the speaker reads BGP password Secrets.
pub const SPEAKER_NAMESPACE: &str = "lodestone-system";

/// What a [`Warning`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarningKind {
    /// A MetalLB resource Lodestone has no equivalent for (OSPF, legacy config): not migrated.
    Unsupported,
    /// A field Lodestone has no equivalent for, or that MetalLB's schema does not have: dropped.
    DroppedField,
    /// Two namespaced MetalLB objects map to one cluster-scoped Lodestone name.
    Collision,
    /// Carried over, but written differently to keep MetalLB's meaning; worth a look.
    Changed,
    /// Lodestone would reject the object (not emitted) or report part of it invalid (emitted).
    Invalid,
    /// Not MetalLB configuration (another kind, MetalLB's own status objects): skipped.
    Ignored,
    /// Carried over as it is, but Lodestone treats it differently in the case the message names
    /// (docs/migrating-from-metallb.md lists each such difference).
    Differs,
    /// A converted pool that no converted L2Advertisement or BGPAdvertisement announces: its
    /// addresses would be assigned, but nothing would announce them.
    NotAnnounced,
}

/// Something [`migrate`] could not carry over unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// What the warning is about.
    pub kind: WarningKind,
    /// The input object, e.g. `IPAddressPool metallb-system/blue` or `document 3`.
    pub object: String,
    /// What happened, and what to do about it where there is something to do.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Convert MetalLB documents into Lodestone objects (as JSON values, in input order) and the
/// warnings about everything not carried over unchanged.
pub fn migrate(docs: Vec<Value>) -> (Vec<Value>, Vec<Warning>) {
    let ctx = Context::of(&docs);
    let mut warnings = Vec::new();
    let mut out: Vec<Converted> = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        // Flattened per document, so warnings come out in input order.
        let mut objects = Vec::new();
        flatten(
            doc,
            format!("document {}", i + 1),
            &mut objects,
            &mut warnings,
        );
        for (origin, obj) in objects {
            let who = describe(&obj, &origin);
            for converted in convert(&obj, &who, &ctx, &mut warnings) {
                place(converted, &who, &mut out, &mut warnings);
            }
        }
    }
    check_announced(&out, &mut warnings);
    (out.into_iter().map(|c| c.value).collect(), warnings)
}

/// What BGP objects refer to by name: BFD profiles and community aliases, per namespace.
#[derive(Default)]
struct Context {
    /// (namespace, name) → the profile's spec.
    bfd_profiles: BTreeMap<(String, String), Map<String, Value>>,
    /// (namespace, alias) → the community it stands for.
    communities: BTreeMap<(String, String), String>,
}

impl Context {
    fn of(docs: &[Value]) -> Context {
        let mut ctx = Context::default();
        let mut objects = Vec::new();
        let mut ignored = Vec::new();
        for doc in docs {
            flatten(doc.clone(), String::new(), &mut objects, &mut ignored);
        }
        for (_, obj) in objects {
            let group = obj
                .get("apiVersion")
                .and_then(Value::as_str)
                .and_then(|a| a.split_once('/'))
                .map(|(g, _)| g);
            if group != Some("metallb.io") {
                continue;
            }
            let meta = obj.get("metadata");
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let name = meta
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let spec = obj.get("spec").and_then(Value::as_object);
            match obj.get("kind").and_then(Value::as_str) {
                Some("BFDProfile") => {
                    ctx.bfd_profiles
                        .insert((ns, name), spec.cloned().unwrap_or_default());
                }
                Some("Community") => {
                    for c in spec
                        .and_then(|s| s.get("communities"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let (Some(alias), Some(value)) = (
                            c.get("name").and_then(Value::as_str),
                            c.get("value").and_then(Value::as_str),
                        ) {
                            ctx.communities
                                .insert((ns.clone(), alias.to_owned()), value.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        ctx
    }
}

/// One emitted object, with what is needed to detect name collisions.
struct Converted {
    kind: &'static str,
    name: String,
    namespace: String,
    who: String,
    value: Value,
}

/// Expand `kind: List` (and `FooList`) documents into their items; warn about non-objects.
fn flatten(
    doc: Value,
    origin: String,
    out: &mut Vec<(String, Map<String, Value>)>,
    warnings: &mut Vec<Warning>,
) {
    let Value::Object(obj) = doc else {
        warnings.push(Warning {
            kind: WarningKind::Ignored,
            object: origin,
            message:
                "not a Kubernetes object (expected a mapping with apiVersion and kind); skipped"
                    .into(),
        });
        return;
    };
    let is_list = obj
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"));
    match obj.get("items") {
        Some(Value::Array(items)) if is_list => {
            for (j, item) in items.iter().enumerate() {
                flatten(
                    item.clone(),
                    format!("{origin} item {}", j + 1),
                    out,
                    warnings,
                );
            }
        }
        _ => out.push((origin, obj)),
    }
}

/// `Kind namespace/name` when the object says so, else where it came from.
fn describe(obj: &Map<String, Value>, origin: &str) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    match (name, ns) {
        (Some(name), Some(ns)) => format!("{kind} {ns}/{name}"),
        (Some(name), None) => format!("{kind} {name}"),
        _ => format!("{kind} ({origin})"),
    }
}

fn convert(
    obj: &Map<String, Value>,
    who: &str,
    ctx: &Context,
    warnings: &mut Vec<Warning>,
) -> Vec<Converted> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let mut warn = |kind, message: String| {
        warnings.push(Warning {
            kind,
            object: who.to_owned(),
            message,
        });
    };
    match (group, kind) {
        ("metallb.io", "IPAddressPool" | "L2Advertisement") => {
            if version != "v1beta1" {
                warn(
                    WarningKind::Changed,
                    format!(
                        "{api_version} is not a version this tool knows; read with the v1beta1 schema"
                    ),
                );
            }
            if kind == "IPAddressPool" {
                convert_pool(obj, api_version, who, warnings)
                    .into_iter()
                    .collect()
            } else {
                convert_l2(obj, api_version, who, warnings)
                    .into_iter()
                    .collect()
            }
        }
        ("metallb.io", "BGPPeer") => {
            if !matches!(version, "v1beta1" | "v1beta2") {
                warn(
                    WarningKind::Changed,
                    format!(
                        "{api_version} is not a version this tool knows; read with the v1beta2 schema"
                    ),
                );
            }
            convert_peer(obj, api_version, who, ctx, warnings)
        }
        ("metallb.io", "BGPAdvertisement") => {
            if version != "v1beta1" {
                warn(
                    WarningKind::Changed,
                    format!(
                        "{api_version} is not a version this tool knows; read with the v1beta1 schema"
                    ),
                );
            }
            convert_bgp_advert(obj, api_version, who, ctx, warnings)
                .into_iter()
                .collect()
        }
        ("metallb.io", "BFDProfile") => {
            warn(
                WarningKind::Changed,
                "folded into the spec.bfd of the BGPPeers that name it (Lodestone has no BFDProfile kind)"
                    .into(),
            );
            Vec::new()
        }
        ("metallb.io", "Community") => {
            warn(
                WarningKind::Changed,
                "its aliases are replaced by their values in the BGPAdvertisements that use them \
                 (Lodestone has no Community kind)"
                    .into(),
            );
            Vec::new()
        }
        ("metallb.io", "OSPFAdvertisement" | "OSPFInstance") => {
            warn(
                WarningKind::Unsupported,
                "OSPF is not supported by Lodestone (it announces over layer 2 or BGP); not migrated".into(),
            );
            Vec::new()
        }
        ("metallb.io", "AddressPool") => {
            warn(
                WarningKind::Unsupported,
                "the AddressPool kind was removed in MetalLB 0.14; not migrated. Split it into an IPAddressPool \
                 (addresses, autoAssign, avoidBuggyIPs) and, for protocol layer2, an L2Advertisement naming it, then run this again"
                    .into(),
            );
            Vec::new()
        }
        ("metallb.io", "ServiceL2Status" | "ServiceBGPStatus" | "ConfigurationState") => {
            warn(
                WarningKind::Ignored,
                "status MetalLB reports, not configuration; nothing to migrate".into(),
            );
            Vec::new()
        }
        ("metallb.io", _) => {
            warn(
                WarningKind::Unsupported,
                format!("unknown MetalLB kind {kind:?}; not migrated"),
            );
            Vec::new()
        }
        ("", "ConfigMap") if obj.get("data").and_then(|d| d.get("config")).is_some() => {
            warn(
                WarningKind::Unsupported,
                "MetalLB's ConfigMap configuration (before 0.13) is not read; convert it to MetalLB's CRDs first \
                 (MetalLB ships a configmaptocrs tool), then run this on those"
                    .into(),
            );
            Vec::new()
        }
        ("lodestone.dev", _) => {
            warn(
                WarningKind::Ignored,
                "already a Lodestone resource; not repeated in the output".into(),
            );
            Vec::new()
        }
        _ => {
            let what = if api_version.is_empty() && kind.is_empty() {
                "no apiVersion and kind".to_owned()
            } else {
                format!("{api_version} {kind}")
            };
            warn(
                WarningKind::Ignored,
                format!("not MetalLB configuration ({what}); skipped"),
            );
            Vec::new()
        }
    }
}

/// Name, namespace, labels and annotations of a MetalLB object, ready for its Lodestone twin.
struct Meta {
    name: String,
    namespace: String,
    meta: ObjectMeta,
}

fn convert_meta(
    obj: &Map<String, Value>,
    api_version: &str,
    who: &str,
    warnings: &mut Vec<Warning>,
) -> Option<Meta> {
    let mut warn = |kind, message: String| {
        warnings.push(Warning {
            kind,
            object: who.to_owned(),
            message,
        });
    };
    let empty = Map::new();
    let metadata = match obj.get("metadata") {
        Some(Value::Object(m)) => m,
        None => &empty,
        Some(_) => {
            warn(
                WarningKind::Invalid,
                "metadata is not a mapping; not migrated".into(),
            );
            return None;
        }
    };
    let Some(name) = metadata
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        warn(
            WarningKind::Invalid,
            "has no metadata.name; not migrated".into(),
        );
        return None;
    };
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();

    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    for (key, value) in metadata {
        match key.as_str() {
            "name" | "namespace" => {}
            "labels" | "annotations" => {
                let Some(map) = value.as_object() else {
                    warn(
                        WarningKind::DroppedField,
                        format!("metadata.{key} is not a mapping; dropped"),
                    );
                    continue;
                };
                for (k, v) in map {
                    if key == "annotations" && k == LAST_APPLIED_ANNOTATION {
                        continue;
                    }
                    match v.as_str() {
                        Some(s) if key == "labels" => {
                            labels.insert(k.clone(), s.to_owned());
                        }
                        Some(s) => {
                            annotations.insert(k.clone(), s.to_owned());
                        }
                        None => warn(
                            WarningKind::DroppedField,
                            format!("metadata.{key}.{k} is not a string; dropped"),
                        ),
                    }
                }
            }
            // Filled in by the API server: meaningless on a new object.
            "uid" | "resourceVersion" | "generation" | "creationTimestamp" | "managedFields"
            | "selfLink" => {}
            "ownerReferences"
            | "finalizers"
            | "deletionTimestamp"
            | "deletionGracePeriodSeconds"
            | "generateName" => {
                warn(
                    WarningKind::DroppedField,
                    format!("metadata.{key} belongs to the MetalLB object's life cycle; dropped"),
                );
            }
            other => warn(
                WarningKind::DroppedField,
                format!("metadata.{other} is not a field Lodestone knows; dropped"),
            ),
        }
    }
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let origin = if namespace.is_empty() {
        format!("{api_version} {kind} {name}")
    } else {
        format!("{api_version} {kind} {namespace}/{name}")
    };
    annotations.insert(MIGRATED_FROM_ANNOTATION.to_owned(), origin);

    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            warn(
                WarningKind::DroppedField,
                format!("{key} is not a field of a MetalLB object; dropped"),
            );
        }
    }

    Some(Meta {
        name: name.to_owned(),
        namespace,
        meta: ObjectMeta {
            name: Some(name.to_owned()),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
    })
}

/// `spec` as a mapping: `Ok(None)` when absent, `Err` (after warning) when not a mapping.
fn spec_of<'a>(
    obj: &'a Map<String, Value>,
    who: &str,
    warnings: &mut Vec<Warning>,
) -> Result<Option<&'a Map<String, Value>>, ()> {
    match obj.get("spec") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(s)) => Ok(Some(s)),
        Some(_) => {
            warnings.push(Warning {
                kind: WarningKind::Invalid,
                object: who.to_owned(),
                message: "spec is not a mapping; not migrated".into(),
            });
            Err(())
        }
    }
}

/// Copy the fields in `known` from `spec`, warning about every other one.
fn pick_known(
    spec: &Map<String, Value>,
    known: &[&str],
    lacks: &str,
    who: &str,
    warnings: &mut Vec<Warning>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in spec {
        if known.contains(&key.as_str()) {
            out.insert(key.clone(), value.clone());
        } else {
            warnings.push(Warning {
                kind: WarningKind::DroppedField,
                object: who.to_owned(),
                message: format!("spec.{key}: {lacks}; dropped"),
            });
        }
    }
    out
}

/// Parse `spec` into `T`, then warn about every input field the typed value does not carry
/// (fields nested in label selectors, misspelt keys): serde ignores them silently.
fn typed<T>(spec: Map<String, Value>, who: &str, warnings: &mut Vec<Warning>) -> Option<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let input = Value::Object(spec);
    let parsed: T = match serde_json::from_value(input.clone()) {
        Ok(t) => t,
        Err(e) => {
            warnings.push(Warning {
                kind: WarningKind::Invalid,
                object: who.to_owned(),
                message: format!("spec does not fit Lodestone's schema: {e}; not migrated"),
            });
            return None;
        }
    };
    match serde_json::to_value(&parsed) {
        Ok(back) => {
            for path in dropped_paths(&input, &back, "spec") {
                warnings.push(Warning {
                    kind: WarningKind::DroppedField,
                    object: who.to_owned(),
                    message: format!("{path} is not a field Lodestone knows; dropped"),
                });
            }
        }
        Err(e) => {
            warnings.push(Warning {
                kind: WarningKind::Invalid,
                object: who.to_owned(),
                message: format!("spec cannot be written back: {e}; not migrated"),
            });
            return None;
        }
    }
    Some(parsed)
}

/// Paths present (and non-empty) in `input` but missing from `output`.
pub(crate) fn dropped_paths(input: &Value, output: &Value, path: &str) -> Vec<String> {
    let mut found = Vec::new();
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let sub = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => found.extend(dropped_paths(value, other, &sub)),
                    None if is_empty(value) => {}
                    None => found.push(sub),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, value) in a.iter().enumerate() {
                let sub = format!("{path}[{i}]");
                match b.get(i) {
                    Some(other) => found.extend(dropped_paths(value, other, &sub)),
                    None if is_empty(value) => {}
                    None => found.push(sub),
                }
            }
        }
        _ => {}
    }
    found
}

/// Values serde may legitimately leave out when writing back (`skip_serializing_if`).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn convert_pool(
    obj: &Map<String, Value>,
    api_version: &str,
    who: &str,
    warnings: &mut Vec<Warning>,
) -> Option<Converted> {
    let meta = convert_meta(obj, api_version, who, warnings)?;
    let Ok(spec) = spec_of(obj, who, warnings) else {
        return None;
    };
    let Some(spec) = spec else {
        warnings.push(Warning {
            kind: WarningKind::Invalid,
            object: who.to_owned(),
            message: "has no spec (a pool needs spec.addresses); not migrated".into(),
        });
        return None;
    };
    let mut picked = pick_known(
        spec,
        &[
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "serviceAllocation",
        ],
        "not a field of MetalLB's IPAddressPool that Lodestone knows",
        who,
        warnings,
    );
    // An empty serviceAllocation stays: in MetalLB as in Lodestone, a pool that has one (even
    // `{}`) is tried before the pools without one.
    if let Some(Value::Object(alloc)) = picked.get_mut("serviceAllocation") {
        adjust_priority(alloc, who, warnings);
    }
    let spec: IPAddressPoolSpec = typed(picked, who, warnings)?;

    let pool = IPAddressPool {
        metadata: meta.meta,
        spec,
        status: None,
    };
    if let Err(e) = pool.validate_cel() {
        warnings.push(Warning {
            kind: WarningKind::Invalid,
            object: who.to_owned(),
            message: format!("Lodestone's API would reject it ({e}); not migrated"),
        });
        return None;
    }

    // The API server accepts these, but the controller reports them on the pool and hands out
    // nothing from it until they are fixed: say so now, while the user is looking.
    // Entries MetalLB hands out but Lodestone refuses (0.0.0.0/0, loopback, link-local...) too.
    let mut errors = lodestone_crds::addresses::parse_pool(&pool.spec.addresses)
        .err()
        .unwrap_or_default();
    errors.extend(lodestone_crds::addresses::refused_entries(
        &pool.spec.addresses,
        pool.spec.allow_link_local,
    ));
    errors.sort_by_key(|e| e.index);
    {
        for e in errors {
            warnings.push(Warning {
                kind: WarningKind::Invalid,
                object: who.to_owned(),
                message: format!(
                    "{e}; Lodestone will mark the pool invalid until this entry is fixed"
                ),
            });
        }
    }
    if let Some(alloc) = &pool.spec.service_allocation {
        let selectors = [
            ("namespaceSelectors", &alloc.namespace_selectors),
            ("serviceSelectors", &alloc.service_selectors),
        ];
        check_selectors(&selectors, "spec.serviceAllocation", who, warnings);
        if alloc.namespaces.is_empty()
            && !alloc.namespace_selectors.is_empty()
            && !alloc.service_selectors.is_empty()
        {
            warnings.push(Warning {
                kind: WarningKind::Differs,
                object: who.to_owned(),
                message: NAMESPACE_SELECTORS_MATCHING_NONE.into(),
            });
        }
    }
    finish(
        "IPAddressPool",
        meta.name,
        meta.namespace,
        &pool,
        who,
        warnings,
    )
}

/// The one case where a converted `serviceAllocation` selects differently (MetalLB builds its set
/// of namespaces from `namespaces` and the Namespaces the selectors match when it loads the
/// configuration; an empty set restricts nothing).
pub const NAMESPACE_SELECTORS_MATCHING_NONE: &str = "spec.serviceAllocation.namespaceSelectors: while they match no Namespace, MetalLB \
     ignores them and serves the Services of every namespace that the serviceSelectors match; \
     Lodestone then serves none. List the namespaces in spec.serviceAllocation.namespaces if you rely on it";

/// MetalLB treats `priority: 0` like no priority (tried last); Lodestone treats 0 as first.
/// Lodestone has no negative priorities; MetalLB sorts them before 0.
fn adjust_priority(alloc: &mut Map<String, Value>, who: &str, warnings: &mut Vec<Warning>) {
    let Some(priority) = alloc.get("priority").and_then(Value::as_i64) else {
        return;
    };
    if priority == 0 {
        alloc.remove("priority");
        warnings.push(Warning {
            kind: WarningKind::Changed,
            object: who.to_owned(),
            message:
                "spec.serviceAllocation.priority 0 means \"no priority\" in MetalLB (tried last); \
                      written without a priority, which means the same in Lodestone"
                    .into(),
        });
    } else if priority < 0 {
        alloc.insert("priority".into(), Value::from(0));
        warnings.push(Warning {
            kind: WarningKind::Changed,
            object: who.to_owned(),
            message: format!(
                "spec.serviceAllocation.priority {priority}: Lodestone's priorities start at 0; written as 0 \
                 (tried first). Check the order against your other pools"
            ),
        });
    }
}

fn check_selectors(
    selectors: &[(&str, &Vec<LabelSelector>)],
    prefix: &str,
    who: &str,
    warnings: &mut Vec<Warning>,
) {
    for (field, list) in selectors {
        for (i, sel) in list.iter().enumerate() {
            if let Err(e) = lodestone_crds::selector::validate(sel) {
                warnings.push(Warning {
                    kind: WarningKind::Invalid,
                    object: who.to_owned(),
                    message: format!(
                        "{prefix}.{field}[{i}]: {e}; Lodestone will report this selector invalid"
                    ),
                });
            }
        }
    }
}

fn convert_l2(
    obj: &Map<String, Value>,
    api_version: &str,
    who: &str,
    warnings: &mut Vec<Warning>,
) -> Option<Converted> {
    let meta = convert_meta(obj, api_version, who, warnings)?;
    let Ok(spec) = spec_of(obj, who, warnings) else {
        return None;
    };
    // No spec at all is common and meaningful: every pool, from every node.
    let empty = Map::new();
    let picked = pick_known(
        spec.unwrap_or(&empty),
        &[
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
        ],
        "Lodestone's L2Advertisement has no equivalent",
        who,
        warnings,
    );
    let spec: L2AdvertisementSpec = typed(picked, who, warnings)?;
    let adv = L2Advertisement {
        metadata: meta.meta,
        spec,
    };
    if let Err(e) = adv.validate_cel() {
        warnings.push(Warning {
            kind: WarningKind::Invalid,
            object: who.to_owned(),
            message: format!("Lodestone's API would reject it ({e}); not migrated"),
        });
        return None;
    }
    let selectors = [
        (
            "ipAddressPoolSelectors",
            &adv.spec.ip_address_pool_selectors,
        ),
        ("nodeSelectors", &adv.spec.node_selectors),
    ];
    check_selectors(&selectors, "spec", who, warnings);
    finish(
        "L2Advertisement",
        meta.name,
        meta.namespace,
        &adv,
        who,
        warnings,
    )
}

/// MetalLB BGPPeer (v1beta2, and v1beta1 which has the same fields) → Lodestone BGPPeer, plus a
/// Secret when the password was written in the peer itself.
fn convert_peer(
    obj: &Map<String, Value>,
    api_version: &str,
    who: &str,
    ctx: &Context,
    warnings: &mut Vec<Warning>,
) -> Vec<Converted> {
    let warn = |warnings: &mut Vec<Warning>, kind, message: String| {
        warnings.push(Warning {
            kind,
            object: who.to_owned(),
            message,
        });
    };
    let Some(meta) = convert_meta(obj, api_version, who, warnings) else {
        return Vec::new();
    };
    let Ok(Some(spec)) = spec_of(obj, who, warnings) else {
        warn(
            warnings,
            WarningKind::Invalid,
            "has no spec (a peer needs myASN, peerASN and peerAddress); not migrated".into(),
        );
        return Vec::new();
    };
    let mut spec = spec.clone();
    // Handled here rather than copied.
    let password = spec.remove("password");
    let password_secret = spec.remove("passwordSecret");
    let bfd_profile = spec.remove("bfdProfile");
    for (field, why) in [
        (
            "enableGracefulRestart",
            "Lodestone does not do BGP graceful restart",
        ),
        ("vrf", "Lodestone's sessions run in the node's default VRF"),
        (
            "disableMP",
            "Lodestone always offers IPv4 and IPv6 unicast on one session (multiprotocol BGP)",
        ),
        (
            "dualStackAddressFamily",
            "Lodestone always offers IPv4 and IPv6 unicast on one session",
        ),
        ("dynamicASN", "give peerASN explicitly"),
        (
            "interface",
            "unnumbered BGP is not supported; give peerAddress",
        ),
    ] {
        if spec
            .remove(field)
            .is_some_and(|v| !is_empty(&v) && v != Value::Bool(false))
        {
            warn(
                warnings,
                WarningKind::DroppedField,
                format!("spec.{field}: {why}; dropped"),
            );
        }
    }
    let mut picked = pick_known(
        &spec,
        &[
            "myASN",
            "peerASN",
            "peerAddress",
            "peerPort",
            "sourceAddress",
            "holdTime",
            "keepaliveTime",
            "connectTime",
            "routerID",
            "nodeSelectors",
            "ebgpMultiHop",
        ],
        "not a field of MetalLB's BGPPeer that Lodestone knows",
        who,
        warnings,
    );
    let mut extra = Vec::new();
    if let Some(Value::String(pw)) = password.as_ref().filter(|p| !is_empty(p)) {
        let secret_name = format!("{}-bgp-password", meta.name);
        let origin = meta
            .meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIGRATED_FROM_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name,
                "namespace": SPEAKER_NAMESPACE,
                "annotations": {MIGRATED_FROM_ANNOTATION: origin},
            },
            "type": "kubernetes.io/basic-auth",
            "stringData": {"password": pw},
        });
        extra.push(Converted {
            kind: "Secret",
            name: secret_name.clone(),
            namespace: SPEAKER_NAMESPACE.to_owned(),
            who: who.to_owned(),
            value: secret,
        });
        picked.insert(
            "passwordSecret".into(),
            serde_json::json!({"name": secret_name}),
        );
        warn(
            warnings,
            WarningKind::Changed,
            format!(
                "spec.password moved into the Secret {SPEAKER_NAMESPACE}/{secret_name} (written below), which \
                 spec.passwordSecret names; keep the output out of version control"
            ),
        );
    } else if let Some(Value::Object(ref_)) = password_secret.as_ref() {
        let name = ref_.get("name").and_then(Value::as_str).unwrap_or_default();
        let ns = ref_
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(meta.namespace.as_str());
        if !name.is_empty() {
            picked.insert("passwordSecret".into(), serde_json::json!({"name": name}));
            if ns != SPEAKER_NAMESPACE {
                warn(
                    warnings,
                    WarningKind::Changed,
                    format!(
                        "spec.passwordSecret: Lodestone reads it from {SPEAKER_NAMESPACE}: copy the Secret {ns}/{name} \
                         there (same name, key `password`)"
                    ),
                );
            }
        }
    }
    if let Some(Value::String(profile)) = bfd_profile.as_ref().filter(|p| !is_empty(p)) {
        match ctx
            .bfd_profiles
            .get(&(meta.namespace.clone(), profile.clone()))
        {
            Some(p) => {
                let mut bfd = Map::new();
                for key in [
                    "receiveInterval",
                    "transmitInterval",
                    "detectMultiplier",
                    "passiveMode",
                ] {
                    if let Some(v) = p.get(key) {
                        bfd.insert(key.into(), v.clone());
                    }
                }
                for (key, value) in p {
                    if !bfd.contains_key(key) && !is_empty(value) && *value != Value::Bool(false) {
                        warn(
                            warnings,
                            WarningKind::DroppedField,
                            format!(
                                "BFDProfile {profile}: {key} is not supported (asynchronous mode only, single hop, TTL 255); dropped"
                            ),
                        );
                    }
                }
                picked.insert("bfd".into(), Value::Object(bfd));
            }
            None => warn(
                warnings,
                WarningKind::Invalid,
                format!(
                    "spec.bfdProfile {profile:?}: no BFDProfile of that name in the input; written without BFD. \
                     Add the profile to the input, or set spec.bfd"
                ),
            ),
        }
    }
    let Some(spec) = typed::<BGPPeerSpec>(picked, who, warnings) else {
        return Vec::new();
    };
    let peer = BGPPeer {
        metadata: meta.meta,
        spec,
        status: None,
    };
    if let Err(e) = peer.validate_cel() {
        warn(
            warnings,
            WarningKind::Invalid,
            format!("Lodestone's API would reject it ({e}); not migrated"),
        );
        return Vec::new();
    }
    check_selectors(
        &[("nodeSelectors", &peer.spec.node_selectors)],
        "spec",
        who,
        warnings,
    );
    let mut out: Vec<Converted> =
        finish("BGPPeer", meta.name, meta.namespace, &peer, who, warnings)
            .into_iter()
            .collect();
    if !out.is_empty() {
        out.extend(extra);
    }
    out
}

/// MetalLB BGPAdvertisement → Lodestone BGPAdvertisement, community aliases resolved.
fn convert_bgp_advert(
    obj: &Map<String, Value>,
    api_version: &str,
    who: &str,
    ctx: &Context,
    warnings: &mut Vec<Warning>,
) -> Option<Converted> {
    let meta = convert_meta(obj, api_version, who, warnings)?;
    let Ok(spec) = spec_of(obj, who, warnings) else {
        return None;
    };
    let empty = Map::new();
    let mut picked = pick_known(
        spec.unwrap_or(&empty),
        &[
            "aggregationLength",
            "aggregationLengthV6",
            "localPref",
            "communities",
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "peers",
        ],
        "Lodestone's BGPAdvertisement has no equivalent",
        who,
        warnings,
    );
    if let Some(Value::Array(list)) = picked.get_mut("communities") {
        for c in list.iter_mut() {
            let Some(text) = c.as_str() else { continue };
            if text.parse::<lodestone_crds::bgp::Community>().is_ok() {
                continue;
            }
            match ctx
                .communities
                .get(&(meta.namespace.clone(), text.to_owned()))
            {
                Some(value) => {
                    // MetalLB writes large communities as `large:a:b:c`, as Lodestone does.
                    *c = Value::String(value.clone());
                }
                None => warnings.push(Warning {
                    kind: WarningKind::Invalid,
                    object: who.to_owned(),
                    message: format!(
                        "spec.communities: {text:?} is neither a community nor an alias defined by a Community \
                         in the input; Lodestone would reject it"
                    ),
                }),
            }
        }
    }
    let spec: BGPAdvertisementSpec = typed(picked, who, warnings)?;
    // The CRD's pattern (which `validate_cel` does not evaluate) refuses what does not parse.
    if let Some(bad) = spec
        .communities
        .iter()
        .find(|c| c.parse::<lodestone_crds::bgp::Community>().is_err())
    {
        warnings.push(Warning {
            kind: WarningKind::Invalid,
            object: who.to_owned(),
            message: format!("Lodestone's API would reject it (community {bad:?}); not migrated"),
        });
        return None;
    }
    let adv = BGPAdvertisement {
        metadata: meta.meta,
        spec,
    };
    if let Err(e) = adv.validate_cel() {
        warnings.push(Warning {
            kind: WarningKind::Invalid,
            object: who.to_owned(),
            message: format!("Lodestone's API would reject it ({e}); not migrated"),
        });
        return None;
    }
    let selectors = [
        (
            "ipAddressPoolSelectors",
            &adv.spec.ip_address_pool_selectors,
        ),
        ("nodeSelectors", &adv.spec.node_selectors),
    ];
    check_selectors(&selectors, "spec", who, warnings);
    finish(
        "BGPAdvertisement",
        meta.name,
        meta.namespace,
        &adv,
        who,
        warnings,
    )
}

fn finish<T: serde::Serialize>(
    kind: &'static str,
    name: String,
    namespace: String,
    obj: &T,
    who: &str,
    warnings: &mut Vec<Warning>,
) -> Option<Converted> {
    match serde_json::to_value(obj) {
        Ok(value) => Some(Converted {
            kind,
            name,
            namespace,
            who: who.to_owned(),
            value,
        }),
        Err(e) => {
            warnings.push(Warning {
                kind: WarningKind::Invalid,
                object: who.to_owned(),
                message: format!("cannot be written: {e}; not migrated"),
            });
            None
        }
    }
}

/// Warn about every converted pool no converted L2Advertisement or BGPAdvertisement covers. An
/// advertisement with neither pool names nor pool selectors covers every pool (MetalLB's rule
/// and Lodestone's).
fn check_announced(out: &[Converted], warnings: &mut Vec<Warning>) {
    let mut advs: Vec<(Vec<String>, Vec<LabelSelector>)> = out
        .iter()
        .filter(|c| c.kind == "L2Advertisement")
        .filter_map(|c| serde_json::from_value::<L2Advertisement>(c.value.clone()).ok())
        .map(|a| (a.spec.ip_address_pools, a.spec.ip_address_pool_selectors))
        .collect();
    advs.extend(
        out.iter()
            .filter(|c| c.kind == "BGPAdvertisement")
            .filter_map(|c| serde_json::from_value::<BGPAdvertisement>(c.value.clone()).ok())
            .map(|a| (a.spec.ip_address_pools, a.spec.ip_address_pool_selectors)),
    );
    for pool in out.iter().filter(|c| c.kind == "IPAddressPool") {
        let labels: BTreeMap<String, String> = pool
            .value
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let covered = advs.iter().any(|(names, selectors)| {
            (names.is_empty() && selectors.is_empty())
                || names.contains(&pool.name)
                || selectors
                    .iter()
                    .any(|sel| lodestone_crds::selector::matches(sel, &labels).unwrap_or(false))
        });
        if !covered {
            warnings.push(Warning {
                kind: WarningKind::NotAnnounced,
                object: pool.who.clone(),
                message: "no L2Advertisement or BGPAdvertisement in the input announces this pool: Lodestone \
                          would assign its addresses but no node would announce them. Add one (an \
                          L2Advertisement with an empty spec announces every pool)"
                    .into(),
            });
        }
    }
}

/// Add `converted` unless an object of the same kind and name is already there: MetalLB's
/// objects are namespaced, Lodestone's cluster-scoped.
fn place(converted: Converted, who: &str, out: &mut Vec<Converted>, warnings: &mut Vec<Warning>) {
    let Some(first) = out
        .iter()
        .find(|c| c.kind == converted.kind && c.name == converted.name)
    else {
        out.push(converted);
        return;
    };
    let first_ns = if first.namespace.is_empty() {
        "(no namespace)"
    } else {
        first.namespace.as_str()
    };
    let message = if without_origin(&first.value) == without_origin(&converted.value) {
        format!(
            "same name and content as the {} from namespace {first_ns}; Lodestone's {} are cluster-scoped, so it is written once",
            converted.kind, converted.kind
        )
    } else {
        format!(
            "Lodestone's {kind}s are cluster-scoped and the {kind} {name:?} from namespace {first_ns} already has this name; \
             not migrated. Rename one of them (and the Services' address-pool annotations and L2Advertisements that name it) and run this again",
            kind = converted.kind,
            name = converted.name,
        )
    };
    warnings.push(Warning {
        kind: WarningKind::Collision,
        object: who.to_owned(),
        message,
    });
}

fn without_origin(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(Value::Object(a)) = v.pointer_mut("/metadata/annotations") {
        a.remove(MIGRATED_FROM_ANNOTATION);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(ns: &str, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        })
    }

    fn l2(ns: &str, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "L2Advertisement",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        })
    }

    /// [`migrate`] with an L2Advertisement announcing every pool, left out of the result: for
    /// tests about pools, which would otherwise all be warned about as not announced.
    fn migrate_pools(mut docs: Vec<Value>) -> (Vec<Value>, Vec<Warning>) {
        docs.push(l2("zz", "announce-all", json!({})));
        let (mut out, warnings) = migrate(docs);
        out.retain(|v| v["metadata"]["name"] != "announce-all");
        (out, warnings)
    }

    fn kinds(ws: &[Warning]) -> Vec<WarningKind> {
        ws.iter().map(|w| w.kind).collect()
    }

    #[test]
    fn full_pool_converts_field_for_field() {
        let (out, warnings) = migrate_pools(vec![pool(
            "metallb-system",
            "blue",
            json!({
                "addresses": ["192.0.2.0/28", "198.51.100.10-198.51.100.20", "2001:db8::/120"],
                "autoAssign": false,
                "avoidBuggyIPs": true,
                "serviceAllocation": {
                    "priority": 10,
                    "namespaces": ["shop"],
                    "namespaceSelectors": [{"matchLabels": {"team": "storefront"}}],
                    "serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend"]}]}],
                },
            }),
        )]);
        assert_eq!(warnings, vec![]);
        assert_eq!(out.len(), 1);
        let p: IPAddressPool = serde_json::from_value(out[0].clone()).unwrap();
        assert_eq!(out[0]["apiVersion"], "lodestone.dev/v1alpha1");
        assert_eq!(p.metadata.name.as_deref(), Some("blue"));
        assert_eq!(
            p.metadata.namespace, None,
            "Lodestone pools are cluster-scoped"
        );
        assert_eq!(
            p.spec.addresses,
            vec![
                "192.0.2.0/28",
                "198.51.100.10-198.51.100.20",
                "2001:db8::/120"
            ]
        );
        assert!(!p.spec.auto_assign);
        assert!(p.spec.avoid_buggy_ips);
        let alloc = p.spec.service_allocation.unwrap();
        assert_eq!(alloc.priority, Some(10));
        assert_eq!(alloc.namespaces, vec!["shop"]);
        assert_eq!(alloc.namespace_selectors.len(), 1);
        assert_eq!(
            alloc.service_selectors[0]
                .match_expressions
                .as_ref()
                .unwrap()[0]
                .key,
            "tier"
        );
        assert_eq!(
            p.metadata.annotations.unwrap()[MIGRATED_FROM_ANNOTATION],
            "metallb.io/v1beta1 IPAddressPool metallb-system/blue"
        );
    }

    #[test]
    fn defaults_match_metallb() {
        let (out, warnings) = migrate_pools(vec![pool(
            "metallb-system",
            "p",
            json!({"addresses": ["192.0.2.0/24"]}),
        )]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let p: IPAddressPool = serde_json::from_value(out[0].clone()).unwrap();
        assert!(p.spec.auto_assign, "MetalLB's autoAssign defaults to true");
        assert!(!p.spec.avoid_buggy_ips);
    }

    #[test]
    fn l2_advertisement_converts_and_empty_spec_means_everything() {
        let (out, warnings) = migrate(vec![
            l2(
                "metallb-system",
                "edge",
                json!({
                    "ipAddressPools": ["blue"],
                    "ipAddressPoolSelectors": [{"matchLabels": {"exposure": "public"}}],
                    "nodeSelectors": [{"matchLabels": {"kubernetes.io/hostname": "node-a"}}],
                    "interfaces": ["eth0", "bond0.100"],
                }),
            ),
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement", "metadata": {"name": "all", "namespace": "metallb-system"}}),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let a: L2Advertisement = serde_json::from_value(out[0].clone()).unwrap();
        assert_eq!(a.spec.ip_address_pools, vec!["blue"]);
        assert_eq!(a.spec.interfaces, vec!["eth0", "bond0.100"]);
        assert_eq!(a.spec.node_selectors.len(), 1);
        assert_eq!(a.spec.ip_address_pool_selectors.len(), 1);
        let all: L2Advertisement = serde_json::from_value(out[1].clone()).unwrap();
        assert_eq!(all.spec, L2AdvertisementSpec::default());
    }

    fn bgp(kind: &str, name: &str, spec: Value) -> Value {
        let version = if kind == "BGPPeer" {
            "v1beta2"
        } else {
            "v1beta1"
        };
        json!({"apiVersion": format!("metallb.io/{version}"), "kind": kind,
               "metadata": {"name": name, "namespace": "metallb-system"}, "spec": spec})
    }

    #[test]
    fn bgp_peer_converts_with_its_bfd_profile_and_password() {
        let (out, warnings) = migrate(vec![
            bgp(
                "BFDProfile",
                "fast",
                json!({"receiveInterval": 100, "transmitInterval": 150,
                 "detectMultiplier": 4, "echoMode": true}),
            ),
            bgp(
                "BGPPeer",
                "tor",
                json!({
                "myASN": 4200000001u32, "peerASN": 64500, "peerAddress": "192.0.2.1",
                "peerPort": 1179, "sourceAddress": "192.0.2.11", "holdTime": "9s",
                "keepaliveTime": "3s", "connectTime": "5s", "routerID": "192.0.2.11",
                "nodeSelectors": [{"matchLabels": {"rack": "a"}}], "ebgpMultiHop": true,
                "password": "s3cret", "bfdProfile": "fast", "enableGracefulRestart": true,
                "vrf": "red"}),
            ),
        ]);
        assert_eq!(out.len(), 2, "{out:?}");
        let peer: BGPPeer = serde_json::from_value(out[0].clone()).unwrap();
        assert!(peer.validate_cel().is_ok());
        assert_eq!(peer.spec.my_asn, 4_200_000_001);
        assert_eq!(peer.spec.peer_port, 1179);
        assert_eq!(peer.spec.hold_time.as_deref(), Some("9s"));
        assert!(peer.spec.ebgp_multi_hop);
        assert_eq!(peer.spec.node_selectors.len(), 1);
        let bfd = peer.spec.bfd.unwrap();
        assert_eq!(
            (
                bfd.receive_interval,
                bfd.transmit_interval,
                bfd.detect_multiplier
            ),
            (100, 150, 4)
        );
        assert_eq!(peer.spec.password_secret.unwrap().name, "tor-bgp-password");
        assert_eq!(out[1]["kind"], "Secret");
        assert_eq!(out[1]["metadata"]["namespace"], SPEAKER_NAMESPACE);
        assert_eq!(out[1]["stringData"]["password"], "s3cret");
        let messages: Vec<&str> = warnings.iter().map(|w| w.message.as_str()).collect();
        for needle in [
            "folded into the spec.bfd",
            "echoMode is not supported",
            "enableGracefulRestart",
            "spec.vrf",
            "spec.password moved into the Secret lodestone-system/tor-bgp-password",
        ] {
            assert!(
                messages.iter().any(|m| m.contains(needle)),
                "{needle}: {messages:?}"
            );
        }
    }

    #[test]
    fn bgp_advertisement_converts_with_community_aliases_resolved() {
        let aliases = || {
            bgp(
                "Community",
                "aliases",
                json!({"communities": [
            {"name": "no-adv", "value": "65535:65282"}, {"name": "big", "value": "large:1:2:3"}]}),
            )
        };
        let (out, warnings) = migrate(vec![
            pool(
                "metallb-system",
                "public",
                json!({"addresses": ["203.0.113.0/24"]}),
            ),
            aliases(),
            bgp(
                "BGPAdvertisement",
                "public",
                json!({
                "ipAddressPools": ["public"], "communities": ["64500:100", "nope"]}),
            ),
        ]);
        // "nope" makes the advertisement invalid: reported, not emitted.
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.message.contains("\"nope\" is neither a community")),
            "{warnings:?}"
        );
        let (out, _) = migrate(vec![
            pool(
                "metallb-system",
                "public",
                json!({"addresses": ["203.0.113.0/24"]}),
            ),
            aliases(),
            bgp(
                "BGPAdvertisement",
                "public",
                json!({
                "ipAddressPools": ["public"], "aggregationLength": 32, "aggregationLengthV6": 128,
                "localPref": 150, "communities": ["64500:100", "no-adv", "big"], "peers": ["tor"],
                "nodeSelectors": [{"matchLabels": {"rack": "a"}}]}),
            ),
        ]);
        let adv: BGPAdvertisement = serde_json::from_value(out[1].clone()).unwrap();
        assert!(adv.validate_cel().is_ok());
        assert_eq!(
            adv.spec.communities,
            ["64500:100", "65535:65282", "large:1:2:3"]
        );
        assert_eq!(adv.spec.local_pref, Some(150));
        assert_eq!(adv.spec.peers, ["tor"]);
        assert_eq!(adv.spec.aggregation_length, Some(32));
    }

    #[test]
    fn a_pool_only_bgp_announces_is_announced() {
        let (_, warnings) = migrate(vec![
            pool(
                "metallb-system",
                "public",
                json!({"addresses": ["203.0.113.0/24"]}),
            ),
            bgp("BGPAdvertisement", "all", json!({})),
        ]);
        assert!(
            !kinds(&warnings).contains(&WarningKind::NotAnnounced),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_missing_bfd_profile_is_reported() {
        let (out, warnings) = migrate(vec![bgp(
            "BGPPeer",
            "tor",
            json!({
            "myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1", "bfdProfile": "gone"}),
        )]);
        assert_eq!(out.len(), 1);
        let peer: BGPPeer = serde_json::from_value(out[0].clone()).unwrap();
        assert_eq!(peer.spec.bfd, None);
        assert_eq!(kinds(&warnings), vec![WarningKind::Invalid]);
    }

    #[test]
    fn unknown_fields_are_named_at_every_depth() {
        let (out, warnings) = migrate(vec![
            pool(
                "metallb-system",
                "p",
                json!({
                    "addresses": ["192.0.2.0/24"],
                    "autoassign": true,
                    "serviceAllocation": {"priority": 5, "namespaceSelector": [{"matchLabels": {"a": "b"}}],
                                          "serviceSelectors": [{"matchLabel": {"a": "b"}}]},
                }),
            ),
            l2(
                "metallb-system",
                "a",
                json!({"ipAddressPools": ["p"], "nodeSelector": {"x": "y"}}),
            ),
        ]);
        assert_eq!(
            out.len(),
            2,
            "unknown fields drop the field, not the object"
        );
        let messages: Vec<String> = warnings.iter().map(|w| w.message.clone()).collect();
        assert!(
            warnings.iter().all(|w| w.kind == WarningKind::DroppedField),
            "{warnings:?}"
        );
        for needle in [
            "spec.autoassign:",
            "spec.serviceAllocation.namespaceSelector ",
            "spec.serviceAllocation.serviceSelectors[0].matchLabel ",
            "spec.nodeSelector:",
        ] {
            assert!(
                messages.iter().any(|m| m.starts_with(needle)),
                "no warning starting {needle:?} in {messages:?}"
            );
        }
        assert_eq!(warnings.len(), 4, "{messages:?}");
    }

    #[test]
    fn metadata_unknowns_and_life_cycle_fields_are_named() {
        let mut doc = pool(
            "metallb-system",
            "p",
            json!({"addresses": ["192.0.2.0/24"]}),
        );
        doc["metadata"]["uid"] = json!("1234");
        doc["metadata"]["resourceVersion"] = json!("77");
        doc["metadata"]["ownerReferences"] = json!([{"kind": "Foo"}]);
        doc["metadata"]["labels"] = json!({"exposure": "public", "bad": 3});
        doc["metadata"]["annotations"] = json!({LAST_APPLIED_ANNOTATION: "{...}", "team": "net"});
        doc["metadata"]["colour"] = json!("red");
        doc["extra"] = json!(1);
        doc["status"] = json!({"assignedIPv4": 3});
        let (out, warnings) = migrate_pools(vec![doc]);
        let p: IPAddressPool = serde_json::from_value(out[0].clone()).unwrap();
        assert_eq!(
            p.metadata.labels.unwrap(),
            BTreeMap::from([("exposure".to_owned(), "public".to_owned())])
        );
        let ann = p.metadata.annotations.unwrap();
        assert_eq!(ann.get("team").map(String::as_str), Some("net"));
        assert!(!ann.contains_key(LAST_APPLIED_ANNOTATION));
        assert_eq!(p.metadata.uid, None);
        assert_eq!(p.status, None);
        let fields: Vec<&str> = warnings
            .iter()
            .map(|w| w.message.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            vec![
                "metadata.colour",
                "metadata.labels.bad",
                "metadata.ownerReferences",
                "extra"
            ],
            "{warnings:?}"
        );
    }

    #[test]
    fn same_name_in_two_namespaces_collides() {
        let (out, warnings) = migrate_pools(vec![
            pool(
                "metallb-system",
                "blue",
                json!({"addresses": ["192.0.2.0/28"]}),
            ),
            pool("other", "blue", json!({"addresses": ["198.51.100.0/28"]})),
            pool("third", "blue", json!({"addresses": ["192.0.2.0/28"]})),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0]["spec"]["addresses"][0], "192.0.2.0/28",
            "the first one wins"
        );
        assert_eq!(
            kinds(&warnings),
            vec![WarningKind::Collision, WarningKind::Collision]
        );
        assert_eq!(warnings[0].object, "IPAddressPool other/blue");
        assert!(
            warnings[0].message.contains("not migrated"),
            "{}",
            warnings[0].message
        );
        assert!(
            warnings[1].message.contains("written once"),
            "identical content: {}",
            warnings[1].message
        );
    }

    #[test]
    fn same_name_different_kinds_do_not_collide() {
        let (out, warnings) = migrate(vec![
            pool(
                "metallb-system",
                "blue",
                json!({"addresses": ["192.0.2.0/28"]}),
            ),
            l2(
                "metallb-system",
                "blue",
                json!({"ipAddressPools": ["blue"]}),
            ),
        ]);
        assert_eq!(out.len(), 2);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn lists_are_flattened() {
        let list = json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                pool("metallb-system", "a", json!({"addresses": ["192.0.2.0/28"]})),
                l2("metallb-system", "b", json!({})),
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}},
            ],
        });
        let (out, warnings) = migrate(vec![list]);
        assert_eq!(out.len(), 2);
        assert_eq!(kinds(&warnings), vec![WarningKind::Ignored]);
        assert_eq!(warnings[0].object, "Service web");
    }

    #[test]
    fn priority_zero_means_none_and_negative_becomes_zero() {
        let (out, warnings) = migrate_pools(vec![
            pool(
                "m",
                "zero",
                json!({"addresses": ["192.0.2.0/28"], "serviceAllocation": {"priority": 0, "namespaces": ["a"]}}),
            ),
            pool(
                "m",
                "neg",
                json!({"addresses": ["192.0.2.16/28"], "serviceAllocation": {"priority": -3}}),
            ),
        ]);
        assert_eq!(
            kinds(&warnings),
            vec![WarningKind::Changed, WarningKind::Changed]
        );
        let zero: IPAddressPool = serde_json::from_value(out[0].clone()).unwrap();
        assert_eq!(zero.spec.service_allocation.unwrap().priority, None);
        let neg: IPAddressPool = serde_json::from_value(out[1].clone()).unwrap();
        assert_eq!(neg.spec.service_allocation.unwrap().priority, Some(0));
        let (only, _) = migrate_pools(vec![pool(
            "m",
            "only",
            json!({"addresses": ["192.0.2.0/28"], "serviceAllocation": {"priority": 0}}),
        )]);
        assert_eq!(
            only[0]["spec"]["serviceAllocation"],
            json!({}),
            "still tried before pools without a serviceAllocation, as in MetalLB"
        );
    }

    /// The one serviceAllocation MetalLB reads differently: namespaceSelectors that match no
    /// Namespace restrict nothing there.
    #[test]
    fn namespace_selectors_with_service_selectors_are_warned_about() {
        let (out, warnings) = migrate_pools(vec![
            pool(
                "m",
                "quirk",
                json!({"addresses": ["192.0.2.0/28"], "serviceAllocation": {
                    "namespaceSelectors": [{"matchLabels": {"team": "a"}}],
                    "serviceSelectors": [{"matchLabels": {"expose": "yes"}}]}}),
            ),
            pool(
                "m",
                "listed",
                json!({"addresses": ["192.0.2.16/28"], "serviceAllocation": {
                    "namespaces": ["a"],
                    "namespaceSelectors": [{"matchLabels": {"team": "a"}}],
                    "serviceSelectors": [{"matchLabels": {"expose": "yes"}}]}}),
            ),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(kinds(&warnings), vec![WarningKind::Differs]);
        assert_eq!(warnings[0].object, "IPAddressPool m/quirk");
        assert_eq!(warnings[0].message, NAMESPACE_SELECTORS_MATCHING_NONE);
    }

    /// MetalLB hands out whatever a pool holds; Lodestone refuses special-purpose and giant
    /// entries, so the migration says which, while the user is looking.
    #[test]
    fn entries_lodestone_refuses_are_warned_about() {
        let (out, warnings) = migrate_pools(vec![pool(
            "m",
            "everything",
            json!({"addresses": ["192.0.2.0/28", "0.0.0.0/0", "169.254.0.0/24"]}),
        )]);
        assert_eq!(out.len(), 1, "migrated, to be fixed");
        let texts: Vec<&str> = warnings.iter().map(|w| w.message.as_str()).collect();
        assert!(
            texts.iter().any(|t| t
                .starts_with(r#"spec.addresses[1] "0.0.0.0/0": spans more addresses than a /8"#)),
            "{texts:#?}"
        );
        assert!(
            texts.iter().any(|t| t
                .starts_with(r#"spec.addresses[2] "169.254.0.0/24": overlaps 169.254.0.0/16"#)
                && t.contains("allowLinkLocal")),
            "{texts:#?}"
        );
        assert!(
            texts.iter().all(|t| !t.starts_with("spec.addresses[0]")),
            "{texts:#?}"
        );
    }

    #[test]
    fn bad_entries_are_emitted_with_a_warning_but_rejected_ones_are_not() {
        let (out, warnings) = migrate_pools(vec![
            pool("m", "hostbits", json!({"addresses": ["192.0.2.1/24"]})),
            pool("m", "garbage", json!({"addresses": ["not-an-address"]})),
            pool("m", "notalist", json!({"addresses": "192.0.2.0/24"})),
            pool("m", "nospec", Value::Null),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["metadata"]["name"], "hostbits");
        assert_eq!(kinds(&warnings), vec![WarningKind::Invalid; 4]);
        assert!(
            warnings[0].message.contains("did you mean 192.0.2.0/24"),
            "{}",
            warnings[0].message
        );
        assert!(
            warnings[1].message.contains("would reject"),
            "{}",
            warnings[1].message
        );
        assert!(
            warnings[2].message.contains("does not fit"),
            "{}",
            warnings[2].message
        );
        assert!(
            warnings[3].message.contains("has no spec"),
            "{}",
            warnings[3].message
        );
    }

    #[test]
    fn invalid_selector_and_interface_are_reported() {
        let (out, warnings) = migrate(vec![
            l2(
                "m",
                "sel",
                json!({"nodeSelectors": [{"matchExpressions": [{"key": "zone", "operator": "In"}]}]}),
            ),
            l2(
                "m",
                "ifname",
                json!({"interfaces": ["a-very-long-interface-name"]}),
            ),
        ]);
        assert_eq!(
            out.len(),
            1,
            "the selector problem is reported, the bad interface rejected"
        );
        assert_eq!(
            kinds(&warnings),
            vec![WarningKind::Invalid, WarningKind::Invalid]
        );
        assert!(
            warnings[0].message.starts_with("spec.nodeSelectors[0]"),
            "{}",
            warnings[0].message
        );
        assert_eq!(warnings[1].object, "L2Advertisement m/ifname");
    }

    #[test]
    fn other_documents_are_skipped_with_a_reason() {
        let (out, warnings) = migrate(vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config", "namespace": "metallb-system"},
                   "data": {"config": "address-pools: []"}}),
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "AddressPool", "metadata": {"name": "old"}}),
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "ServiceL2Status", "metadata": {"name": "s"}}),
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool", "metadata": {"name": "l"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "controller"}}),
            json!("just a string"),
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "Frobnicator", "metadata": {"name": "f"}}),
        ]);
        assert!(out.is_empty());
        assert_eq!(
            kinds(&warnings),
            vec![
                WarningKind::Unsupported,
                WarningKind::Unsupported,
                WarningKind::Ignored,
                WarningKind::Ignored,
                WarningKind::Ignored,
                WarningKind::Ignored,
                WarningKind::Unsupported,
            ]
        );
        assert_eq!(warnings[5].object, "document 6");
        assert!(
            warnings[0].message.contains("configmaptocrs"),
            "{}",
            warnings[0].message
        );
    }

    #[test]
    fn a_pool_without_name_is_not_migrated() {
        let (out, warnings) = migrate(vec![
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "spec": {"addresses": ["192.0.2.0/24"]}}),
        ]);
        assert!(out.is_empty());
        assert_eq!(kinds(&warnings), vec![WarningKind::Invalid]);
        assert_eq!(warnings[0].object, "IPAddressPool (document 1)");
    }

    #[test]
    fn pools_no_advertisement_covers_are_named() {
        let mut labelled = pool("m", "by-label", json!({"addresses": ["192.0.2.0/28"]}));
        labelled["metadata"]["labels"] = json!({"exposure": "public"});
        let docs = vec![
            pool("m", "by-name", json!({"addresses": ["192.0.2.16/28"]})),
            labelled,
            pool("m", "orphan", json!({"addresses": ["192.0.2.32/28"]})),
            l2("m", "names", json!({"ipAddressPools": ["by-name"]})),
            l2(
                "m",
                "selects",
                json!({"ipAddressPoolSelectors": [{"matchLabels": {"exposure": "public"}}]}),
            ),
        ];
        let (out, warnings) = migrate(docs.clone());
        assert_eq!(out.len(), 5);
        assert_eq!(kinds(&warnings), vec![WarningKind::NotAnnounced]);
        assert_eq!(warnings[0].object, "IPAddressPool m/orphan");

        // An advertisement naming no pool and selecting none announces them all.
        let mut all = docs;
        all.push(l2(
            "m",
            "everything",
            json!({"nodeSelectors": [{"matchLabels": {"edge": "true"}}]}),
        ));
        let (_, warnings) = migrate(all);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn dropped_paths_ignores_empty_and_defaulted_values() {
        let input = json!({"a": [], "b": {}, "c": null, "d": {"e": 1, "f": [1, {"g": 2}]}});
        let output = json!({"d": {"e": 1, "f": [1, {}], "new": true}});
        assert_eq!(
            dropped_paths(&input, &output, "spec"),
            vec!["spec.d.f[1].g"]
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Arbitrary JSON, biased towards the shapes a pool or advertisement spec has.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9./:-]{0,20}".prop_map(Value::from),
            Just(json!("192.0.2.0/28")),
            Just(json!("198.51.100.1-198.51.100.9")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("addresses".to_owned()),
                        Just("autoAssign".to_owned()),
                        Just("serviceAllocation".to_owned()),
                        Just("priority".to_owned()),
                        Just("namespaces".to_owned()),
                        Just("matchLabels".to_owned()),
                        Just("ipAddressPools".to_owned()),
                        Just("interfaces".to_owned()),
                        Just("nodeSelectors".to_owned()),
                        "[a-zA-Z]{1,8}",
                    ],
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn any_doc() -> impl Strategy<Value = Value> {
        (
            prop_oneof![Just("IPAddressPool"), Just("L2Advertisement"), Just("BGPPeer"), Just("Service")],
            prop_oneof![Just("a"), Just("b"), Just("")],
            prop_oneof![Just("metallb-system"), Just("other")],
            any_json(),
        )
            .prop_map(|(kind, name, ns, spec)| {
                json!({"apiVersion": "metallb.io/v1beta1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec})
            })
    }

    proptest! {
        /// Whatever comes in: no panic, every emitted object is a valid Lodestone object, names
        /// are unique per kind, and every input object is either emitted or named in a warning.
        #[test]
        fn output_is_always_valid_and_nothing_vanishes(docs in prop::collection::vec(any_doc(), 0..6)) {
            let n = docs.len();
            let (out, warnings) = migrate(docs);
            let mut seen = std::collections::BTreeSet::new();
            for v in &out {
                let kind = v["kind"].as_str().unwrap_or_default().to_owned();
                match kind.as_str() {
                    "IPAddressPool" => {
                        let p: IPAddressPool = serde_json::from_value(v.clone()).unwrap();
                        prop_assert!(p.validate_cel().is_ok());
                    }
                    "L2Advertisement" => {
                        let a: L2Advertisement = serde_json::from_value(v.clone()).unwrap();
                        prop_assert!(a.validate_cel().is_ok());
                    }
                    "BGPPeer" => {
                        let p: BGPPeer = serde_json::from_value(v.clone()).unwrap();
                        prop_assert!(p.validate_cel().is_ok());
                    }
                    "Secret" => {}
                    other => prop_assert!(false, "unexpected kind {other}"),
                }
                prop_assert!(seen.insert((kind, v["metadata"]["name"].to_string())), "duplicate name");
            }
            // A peer with a plain-text password brings its Secret along.
            let secrets = out.iter().filter(|v| v["kind"] == "Secret").count();
            prop_assert!(out.len() - secrets <= n);
            // An input that is not emitted has at least one warning of its own.
            prop_assert!(out.len() + warnings.len() >= n);
        }
    }
}
