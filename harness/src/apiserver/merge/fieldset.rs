//! Field sets as structured-merge-diff models them: trees of path elements whose nodes may be
//! members, their `FieldsV1` encoding (`f:`, `k:{...}`, `v:`, `i:`, `.`), and the walks that
//! build them from objects (the set an applied configuration owns) and from the difference of two
//! objects (added, modified and removed fields).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{ListSemantics, ListType};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum PathElement {
    /// A field of an object (`f:name`).
    Field(String),
    /// An item of a map list, by its keys as a canonical (sorted, compact) JSON object (`k:{...}`).
    Key(String),
    /// An item of a set list, by its canonical JSON value (`v:...`).
    Value(String),
    /// An item of a list by position (`i:0`); kept when decoding, never produced.
    Index(usize),
}

impl PathElement {
    fn encode(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(k) => format!("k:{k}"),
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Result<PathElement, String> {
        let canonical = |json: &str| -> Result<String, String> {
            let v: Value = serde_json::from_str(json).map_err(|e| format!("{s:?}: {e}"))?;
            Ok(canonical_json(&v))
        };
        if let Some(f) = s.strip_prefix("f:") {
            Ok(PathElement::Field(f.to_owned()))
        } else if let Some(k) = s.strip_prefix("k:") {
            Ok(PathElement::Key(canonical(k)?))
        } else if let Some(v) = s.strip_prefix("v:") {
            Ok(PathElement::Value(canonical(v)?))
        } else if let Some(i) = s.strip_prefix("i:") {
            i.parse()
                .map(PathElement::Index)
                .map_err(|e| format!("{s:?}: {e}"))
        } else {
            Err(format!("unknown path element {s:?}"))
        }
    }

    /// The element as structured-merge-diff prints it in a path: `.f`, `[k=v,...]`, `[=v]`, `[i]`.
    fn display(&self) -> String {
        match self {
            PathElement::Field(f) => format!(".{f}"),
            PathElement::Key(k) => {
                let parts: Vec<String> = match serde_json::from_str::<Map<String, Value>>(k) {
                    Ok(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    Err(_) => vec![k.clone()],
                };
                format!("[{}]", parts.join(","))
            }
            PathElement::Value(v) => format!("[={v}]"),
            PathElement::Index(i) => format!("[{i}]"),
        }
    }
}

/// A path rendered as kube-apiserver renders it in conflicts, e.g. `.status.conditions[type="X"]`.
pub(crate) fn path_string(path: &[PathElement]) -> String {
    path.iter().map(PathElement::display).collect()
}

/// Compact JSON with object keys sorted (serde_json's map is ordered by key).
pub(crate) fn canonical_json(v: &Value) -> String {
    v.to_string()
}

/// A set of field paths as a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSet {
    member: bool,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    pub(crate) fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    pub(crate) fn insert(&mut self, path: &[PathElement]) {
        match path.split_first() {
            None => self.member = true,
            Some((head, rest)) => self.children.entry(head.clone()).or_default().insert(rest),
        }
    }

    pub(crate) fn child(&self, pe: &PathElement) -> Option<&FieldSet> {
        self.children.get(pe)
    }

    pub(crate) fn children(&self) -> impl Iterator<Item = (&PathElement, &FieldSet)> {
        self.children.iter()
    }

    pub(crate) fn is_member(&self) -> bool {
        self.member
    }

    pub(crate) fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.union_in(other);
        out
    }

    fn union_in(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (pe, c) in &other.children {
            self.children.entry(pe.clone()).or_default().union_in(c);
        }
    }

    /// Members of `self` that are not members of `other`.
    pub(crate) fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (pe, c) in &self.children {
            let d = match other.children.get(pe) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(pe.clone(), d);
            }
        }
        out
    }

    pub(crate) fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (pe, c) in &self.children {
            if let Some(o) = other.children.get(pe) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(pe.clone(), i);
                }
            }
        }
        out
    }

    /// Every member path, in order.
    pub(crate) fn members(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        self.collect(&mut prefix, &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (pe, c) in &self.children {
            prefix.push(pe.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The `fieldsV1` JSON of this set.
    pub(crate) fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".to_owned(), Value::Object(Map::new()));
        }
        for (pe, c) in &self.children {
            m.insert(pe.encode(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Parse `fieldsV1` JSON. A node with no children is a member; `.` marks a member with children.
    pub(crate) fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let mut set = FieldSet::default();
        let Some(obj) = v.as_object() else {
            return Err("fieldsV1 nodes must be objects".to_owned());
        };
        for (k, child) in obj {
            if k == "." {
                set.member = true;
                continue;
            }
            let pe = PathElement::decode(k)?;
            let mut c = FieldSet::from_fields_v1(child)?;
            if c.children.is_empty() {
                c.member = true;
            }
            set.children.insert(pe, c);
        }
        Ok(set)
    }
}

/// Fields nobody owns: identity and server-maintained metadata (kube-apiserver's stripMeta).
const STRIPPED_META: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
];

/// Whether a field under `parent` (a path from the root) is never owned.
fn stripped(parent: &[PathElement], field: &str) -> bool {
    match parent {
        [] => field == "apiVersion" || field == "kind",
        [PathElement::Field(m)] if m == "metadata" => STRIPPED_META.contains(&field),
        _ => false,
    }
}

/// Whether `path` is the root `metadata` field, which is never a member itself.
fn is_root_metadata(path: &[PathElement]) -> bool {
    matches!(path, [PathElement::Field(m)] if m == "metadata")
}

/// Why an object cannot be turned into a field set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetError(pub(crate) String);

/// The key of a map-list item, canonical JSON of its key fields. Service and container ports
/// default their `protocol` key to TCP, as kube-apiserver's schema does.
pub(crate) fn item_key(item: &Value, keys: &[String], at: &str) -> Result<String, SetError> {
    let Some(obj) = item.as_object() else {
        return Err(SetError(format!(
            "{at}: expected an object in an associative list, got {item}"
        )));
    };
    let mut m = Map::new();
    for k in keys {
        match obj.get(k) {
            Some(v) if !v.is_object() && !v.is_array() && !v.is_null() => {
                m.insert(k.clone(), v.clone());
            }
            None if k == "protocol" => {
                m.insert(k.clone(), Value::from("TCP"));
            }
            _ => {
                return Err(SetError(format!(
                    "{at}: associative list with keys has an element that omits key field {k:?} (and doesn't have default value)"
                )));
            }
        }
    }
    Ok(canonical_json(&Value::Object(m)))
}

/// The path elements identifying the items of a list (None for atomic lists).
pub(crate) fn list_item_elements(
    items: &[Value],
    lt: &ListType,
    at: &[PathElement],
) -> Result<Option<Vec<PathElement>>, SetError> {
    let pes: Vec<PathElement> = match lt {
        ListType::Atomic => return Ok(None),
        ListType::Set => items
            .iter()
            .map(|v| PathElement::Value(canonical_json(v)))
            .collect(),
        ListType::Map(keys) => items
            .iter()
            .map(|v| item_key(v, keys, &path_string(at)).map(PathElement::Key))
            .collect::<Result<_, _>>()?,
    };
    for (i, pe) in pes.iter().enumerate() {
        if pes[..i].contains(pe) {
            return Err(SetError(format!(
                "{}: duplicate entries for key {}",
                path_string(at),
                pe.display()
            )));
        }
    }
    Ok(Some(pes))
}

/// Walks values with both a semantic path (for list types, items as "[]") and a field path.
pub(crate) struct Walker<'a> {
    pub(crate) lists: &'a dyn ListSemantics,
    sem: Vec<String>,
    fs: Vec<PathElement>,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(lists: &'a dyn ListSemantics) -> Walker<'a> {
        Walker {
            lists,
            sem: Vec::new(),
            fs: Vec::new(),
        }
    }

    fn push(&mut self, sem: String, pe: PathElement) {
        self.sem.push(sem);
        self.fs.push(pe);
    }

    fn pop(&mut self) {
        self.sem.pop();
        self.fs.pop();
    }

    /// The set an applied configuration owns: leaves, atomic lists, and list items (with their
    /// fields); objects are not members themselves.
    pub(crate) fn applied_set(&mut self, v: &Value, out: &mut FieldSet) -> Result<(), SetError> {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if stripped(&self.fs, k) {
                        continue;
                    }
                    self.push(k.clone(), PathElement::Field(k.clone()));
                    if !self.lists.declares(&self.sem) {
                        let e = SetError(format!(
                            "{}: field not declared in schema",
                            path_string(&self.fs)
                        ));
                        self.pop();
                        return Err(e);
                    }
                    let r = self.applied_set(child, out);
                    self.pop();
                    r?;
                }
            }
            Value::Array(items) => {
                let lt = self.lists.list_type(&self.sem);
                match list_item_elements(items, &lt, &self.fs)? {
                    None => out.insert(&self.fs),
                    Some(pes) => {
                        for (item, pe) in items.iter().zip(pes) {
                            self.push("[]".to_owned(), pe);
                            out.insert(&self.fs);
                            let r = if matches!(lt, ListType::Map(_)) {
                                self.applied_set(item, out)
                            } else {
                                Ok(())
                            };
                            self.pop();
                            r?;
                        }
                    }
                }
            }
            _ => out.insert(&self.fs),
        }
        Ok(())
    }

    /// Every path of a subtree, containers included (what appears or disappears with it).
    fn full_set(&mut self, v: &Value, out: &mut FieldSet) {
        if !self.fs.is_empty() && !is_root_metadata(&self.fs) {
            out.insert(&self.fs);
        }
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if stripped(&self.fs, k) {
                        continue;
                    }
                    self.push(k.clone(), PathElement::Field(k.clone()));
                    self.full_set(child, out);
                    self.pop();
                }
            }
            Value::Array(items) => {
                let lt = self.lists.list_type(&self.sem);
                if let Ok(Some(pes)) = list_item_elements(items, &lt, &self.fs) {
                    for (item, pe) in items.iter().zip(pes) {
                        self.push("[]".to_owned(), pe);
                        if matches!(lt, ListType::Map(_)) {
                            self.full_set(item, out);
                        } else {
                            out.insert(&self.fs);
                        }
                        self.pop();
                    }
                }
            }
            _ => {}
        }
    }

    /// What changed from `old` to `new`, as structured-merge-diff's comparison does.
    pub(crate) fn compare(&mut self, old: &Value, new: &Value, out: &mut Comparison) {
        match (old, new) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, va) in a {
                    if stripped(&self.fs, k) {
                        continue;
                    }
                    self.push(k.clone(), PathElement::Field(k.clone()));
                    match b.get(k) {
                        Some(vb) => self.compare(va, vb, out),
                        None => self.full_set(va, &mut out.removed),
                    }
                    self.pop();
                }
                for (k, vb) in b {
                    if a.contains_key(k) || stripped(&self.fs, k) {
                        continue;
                    }
                    self.push(k.clone(), PathElement::Field(k.clone()));
                    self.full_set(vb, &mut out.added);
                    self.pop();
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                let lt = self.lists.list_type(&self.sem);
                let ea = list_item_elements(a, &lt, &self.fs);
                let eb = list_item_elements(b, &lt, &self.fs);
                match (ea, eb) {
                    (Ok(Some(pa)), Ok(Some(pb))) => {
                        let map = matches!(lt, ListType::Map(_));
                        for (item, pe) in a.iter().zip(&pa) {
                            self.push("[]".to_owned(), pe.clone());
                            match pb.iter().position(|p| p == pe) {
                                Some(j) if map => self.compare(item, &b[j], out),
                                Some(_) => {}
                                None if map => self.full_set(item, &mut out.removed),
                                None => out.removed.insert(&self.fs),
                            }
                            self.pop();
                        }
                        for (item, pe) in b.iter().zip(&pb) {
                            if pa.contains(pe) {
                                continue;
                            }
                            self.push("[]".to_owned(), pe.clone());
                            if map {
                                self.full_set(item, &mut out.added);
                            } else {
                                out.added.insert(&self.fs);
                            }
                            self.pop();
                        }
                    }
                    // Atomic, or items without usable keys: the list is one value.
                    _ => {
                        if a != b {
                            out.modified.insert(&self.fs);
                        }
                    }
                }
            }
            _ => {
                if old != new && !self.fs.is_empty() {
                    out.modified.insert(&self.fs);
                }
            }
        }
    }
}

/// The difference between two versions of an object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Comparison {
    pub(crate) added: FieldSet,
    pub(crate) modified: FieldSet,
    pub(crate) removed: FieldSet,
}

impl Comparison {
    pub(crate) fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::merge::builtin_list_semantics;
    use serde_json::json;

    #[test]
    fn applied_set_encodes_like_kube_apiserver() {
        let lists = builtin_list_semantics("", "Service");
        let cfg = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "d", "labels": {"app": "x"}},
            "spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}],
                     "clusterIPs": ["10.0.0.1"]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let mut set = FieldSet::default();
        Walker::new(lists.as_ref())
            .applied_set(&cfg, &mut set)
            .unwrap();
        assert_eq!(
            set.to_fields_v1(),
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:clusterIPs": {},
                           "f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}":
                                {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}}}},
                "f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}":
                                {".": {}, "f:status": {}, "f:type": {}}}}
            })
        );
        let back = FieldSet::from_fields_v1(&set.to_fields_v1()).unwrap();
        assert_eq!(back, set);
        let paths: Vec<String> = set.members().iter().map(|p| path_string(p)).collect();
        assert!(paths.contains(&".status.conditions[type=\"Ready\"].status".to_owned()));
        assert!(paths.contains(&".spec.ports[port=80,protocol=\"TCP\"]".to_owned()));
    }

    #[test]
    fn duplicate_and_keyless_items_are_errors() {
        let lists = builtin_list_semantics("", "Service");
        let mut set = FieldSet::default();
        let dup = json!({"status": {"conditions": [{"type": "A"}, {"type": "A"}]}});
        let e = Walker::new(lists.as_ref())
            .applied_set(&dup, &mut set)
            .unwrap_err();
        assert_eq!(
            e.0,
            ".status.conditions: duplicate entries for key [type=\"A\"]"
        );
        let keyless = json!({"status": {"conditions": [{"status": "True"}]}});
        let e = Walker::new(lists.as_ref())
            .applied_set(&keyless, &mut set)
            .unwrap_err();
        assert!(e.0.contains("omits key field \"type\""), "{}", e.0);
        // protocol defaults to TCP.
        let mut set = FieldSet::default();
        let ports = json!({"spec": {"ports": [{"port": 53}]}});
        Walker::new(lists.as_ref())
            .applied_set(&ports, &mut set)
            .unwrap();
        assert_eq!(
            path_string(&set.members()[0]),
            ".spec.ports[port=53,protocol=\"TCP\"]"
        );
    }

    #[test]
    fn compare_reports_added_modified_removed() {
        let lists = builtin_list_semantics("", "Service");
        let old = json!({"metadata": {"name": "a", "resourceVersion": "1", "labels": {"x": "1", "y": "2"}},
                         "spec": {"finalizersLike": ["a"]},
                         "status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}});
        let new = json!({"metadata": {"name": "a", "resourceVersion": "2", "labels": {"x": "9"}},
                         "spec": {"finalizersLike": ["a"]},
                         "status": {"conditions": [{"type": "A", "status": "False"}, {"type": "C", "status": "True"}]}});
        let mut c = Comparison::default();
        Walker::new(lists.as_ref()).compare(&old, &new, &mut c);
        let s =
            |f: &FieldSet| -> Vec<String> { f.members().iter().map(|p| path_string(p)).collect() };
        assert_eq!(
            s(&c.modified),
            vec![
                ".metadata.labels.x",
                ".status.conditions[type=\"A\"].status"
            ]
        );
        assert_eq!(
            s(&c.removed),
            vec![
                ".metadata.labels.y",
                ".status.conditions[type=\"B\"]",
                ".status.conditions[type=\"B\"].status",
                ".status.conditions[type=\"B\"].type"
            ]
        );
        assert_eq!(s(&c.added)[0], ".status.conditions[type=\"C\"]");
        let mut same = Comparison::default();
        Walker::new(lists.as_ref()).compare(&old, &old, &mut same);
        assert!(same.is_same());
    }

    #[test]
    fn set_algebra() {
        let p = |s: &str| -> Vec<PathElement> {
            s.split('.')
                .map(|f| PathElement::Field(f.to_owned()))
                .collect()
        };
        let mut a = FieldSet::default();
        a.insert(&p("spec.x"));
        a.insert(&p("spec.y"));
        let mut b = FieldSet::default();
        b.insert(&p("spec.y"));
        b.insert(&p("spec.z"));
        assert_eq!(a.difference(&b).members(), vec![p("spec.x")]);
        assert_eq!(a.intersection(&b).members(), vec![p("spec.y")]);
        assert_eq!(a.union(&b).members().len(), 3);
        assert!(a.difference(&a).is_empty());
    }
}
