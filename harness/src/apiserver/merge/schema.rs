//! Structural schemas of custom resources: the structural check a CRD must pass, pruning of
//! unknown fields, defaulting, and validation with kube-apiserver's messages (OpenAPI value
//! validations, list-type invariants, and `x-kubernetes-validations` CEL rules via `kube-cel`,
//! whose static cost must fit kube-apiserver's budget: [`super::cel_cost`]).

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use regex::Regex;
use serde_json::Value;

use super::ListType;
use super::lists::schema_node_list_type;

/// One cause of a validation failure, as it appears in a `Status`'s `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldCause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`,
    /// `FieldValueTypeInvalid`, `FieldValueTooLong`, `FieldValueTooMany`, `FieldValueDuplicate`
    /// or `FieldValueForbidden`.
    pub reason: String,
    /// The field in kube-apiserver's form, e.g. `spec.addresses[0]`.
    pub field: String,
    /// The message as kube-apiserver words it, e.g. `Required value`.
    pub message: String,
}

impl FieldCause {
    fn new(reason: &str, field: &str, message: String) -> FieldCause {
        FieldCause {
            reason: reason.to_owned(),
            field: field.to_owned(),
            message,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "object" => Type::Object,
            "array" => Type::Array,
            "string" => Type::String,
            "integer" => Type::Integer,
            "number" => Type::Number,
            "boolean" => Type::Boolean,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Type::Object => "object",
            Type::Array => "array",
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            Type::Object => v.is_object(),
            Type::Array => v.is_array(),
            Type::String => v.is_string(),
            Type::Number => v.is_number(),
            Type::Boolean => v.is_boolean(),
            Type::Integer => is_integer(v),
        }
    }
}

/// Integers as Go's JSON decoder and go-openapi see them: a float with no fraction is one.
fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// The JSON type name of a value, as go-openapi reports it in type errors.
fn actual_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(v) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value rendered as Go's `field.Error` renders a bad value: strings quoted, the rest as JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// One node of a structural schema.
#[derive(Debug, Default)]
struct Node {
    ty: Option<Type>,
    format: Option<String>,
    nullable: bool,
    int_or_string: bool,
    preserve_unknown: bool,
    embedded: bool,
    properties: BTreeMap<String, Node>,
    /// `additionalProperties` given as a schema.
    additional: Option<Box<Node>>,
    /// `additionalProperties: true`.
    additional_any: bool,
    items: Option<Box<Node>>,
    required: Vec<String>,
    enumeration: Option<Vec<Value>>,
    pattern: Option<(String, Regex)>,
    minimum: Option<f64>,
    exclusive_minimum: bool,
    maximum: Option<f64>,
    exclusive_maximum: bool,
    multiple_of: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    list_type: ListType,
    default: Option<Value>,
    all_of: Vec<Node>,
    any_of: Vec<Node>,
    one_of: Vec<Node>,
    not: Option<Box<Node>>,
    /// `x-kubernetes-validations` as (rule, fieldPath), to find where a CEL failure came from.
    rules: Vec<(String, Option<String>)>,
}

/// Where a schema node sits, which decides the structural rules that apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Root,
    Field,
    Items,
    Additional,
    /// Inside allOf/anyOf/oneOf/not: only value validations are allowed.
    Junctor,
    /// Inside a junctor of an `x-kubernetes-int-or-string` node, where `type` is allowed.
    IntOrStringJunctor,
}

const FORBIDDEN_KEYWORDS: &[&str] = &[
    "$ref",
    "$schema",
    "id",
    "definitions",
    "dependencies",
    "additionalItems",
    "patternProperties",
];

fn parse_node(v: &Value, path: &str, place: Place, errs: &mut Vec<String>) -> Node {
    let mut n = Node::default();
    let Some(obj) = v.as_object() else {
        errs.push(format!(
            "{path}: Invalid value: {}: must be a schema object",
            show(v)
        ));
        return n;
    };
    let junctor = matches!(place, Place::Junctor | Place::IntOrStringJunctor);
    for k in FORBIDDEN_KEYWORDS {
        if obj.contains_key(*k) {
            errs.push(format!("{path}.{k}: Forbidden: {k} is not supported"));
        }
    }
    if obj.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
        errs.push(format!(
            "{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ));
    }
    let flag = |k: &str| obj.get(k).and_then(Value::as_bool);
    n.int_or_string = flag("x-kubernetes-int-or-string") == Some(true);
    n.embedded = flag("x-kubernetes-embedded-resource") == Some(true);
    n.nullable = flag("nullable") == Some(true);
    match flag("x-kubernetes-preserve-unknown-fields") {
        Some(true) => n.preserve_unknown = true,
        Some(false) => errs.push(format!(
            "{path}.x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined"
        )),
        None => {}
    }
    if junctor {
        let mut forbidden = vec!["description", "default", "additionalProperties", "nullable"];
        if place == Place::Junctor {
            forbidden.push("type");
        }
        for k in forbidden {
            if obj.contains_key(k) {
                errs.push(format!(
                    "{path}.{k}: Forbidden: must be empty to be structural"
                ));
            }
        }
    }
    match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() => match Type::parse(t) {
            Some(ty) => n.ty = Some(ty),
            None => errs.push(format!(
                "{path}.type: Unsupported value: {t:?}: supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
            )),
        },
        Some(other) if !other.as_str().is_some_and(str::is_empty) => {
            errs.push(format!("{path}.type: Invalid value: {}: must be a string", show(other)));
        }
        _ => {
            if !junctor && !n.int_or_string && !n.preserve_unknown {
                let what = match place {
                    Place::Root => "at the root",
                    Place::Items => "for specified array items",
                    _ => "for specified object fields",
                };
                errs.push(format!("{path}.type: Required value: must not be empty {what}"));
            }
        }
    }
    if n.int_or_string
        && let Some(t) = n.ty
    {
        errs.push(format!(
            "{path}.type: Invalid value: {:?}: must be empty if x-kubernetes-int-or-string is true",
            t.name()
        ));
    }
    if place == Place::Root && n.ty.is_some_and(|t| t != Type::Object) {
        errs.push(format!(
            "{path}.type: Unsupported value: {:?}: supported values: \"object\"",
            n.ty.map_or("", Type::name)
        ));
    }
    if n.embedded && n.ty != Some(Type::Object) {
        errs.push(format!(
            "{path}.x-kubernetes-embedded-resource: Invalid value: true: must be false if type is not object"
        ));
    }
    n.format = obj.get("format").and_then(Value::as_str).map(str::to_owned);
    n.required = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    n.enumeration = obj.get("enum").and_then(Value::as_array).cloned();
    if let Some(p) = obj.get("pattern").and_then(Value::as_str) {
        match Regex::new(p) {
            Ok(re) => n.pattern = Some((p.to_owned(), re)),
            Err(e) => errs.push(format!("{path}.pattern: Invalid value: {p:?}: {e}")),
        }
    }
    let num = |k: &str| obj.get(k).and_then(Value::as_f64);
    let uint = |k: &str| obj.get(k).and_then(Value::as_u64);
    n.minimum = num("minimum");
    n.maximum = num("maximum");
    n.exclusive_minimum = flag("exclusiveMinimum") == Some(true);
    n.exclusive_maximum = flag("exclusiveMaximum") == Some(true);
    n.multiple_of = num("multipleOf");
    n.min_length = uint("minLength");
    n.max_length = uint("maxLength");
    n.min_items = uint("minItems");
    n.max_items = uint("maxItems");
    n.min_properties = uint("minProperties");
    n.max_properties = uint("maxProperties");
    n.default = obj.get("default").cloned();

    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            let child_place = if junctor { place } else { Place::Field };
            let child = parse_node(s, &format!("{path}.properties[{k}]"), child_place, errs);
            n.properties.insert(k.clone(), child);
        }
    }
    if place == Place::Root
        && let Some(meta) = n.properties.get("metadata")
    {
        if meta.ty.is_some_and(|t| t != Type::Object) {
            errs.push(format!(
                "{path}.properties[metadata].type: Invalid value: {:?}: must be object",
                meta.ty.map_or("", Type::name)
            ));
        }
        if meta
            .properties
            .keys()
            .any(|k| k != "name" && k != "generateName")
        {
            errs.push(format!(
                "{path}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
            ));
        }
    }
    match obj.get("additionalProperties") {
        None => {}
        Some(Value::Bool(true)) => n.additional_any = true,
        Some(Value::Bool(false)) => errs.push(format!(
            "{path}.additionalProperties: Forbidden: additionalProperties cannot be set to false"
        )),
        Some(s) => {
            let child_place = if junctor { place } else { Place::Additional };
            n.additional = Some(Box::new(parse_node(
                s,
                &format!("{path}.additionalProperties"),
                child_place,
                errs,
            )));
        }
    }
    if !n.properties.is_empty() && (n.additional.is_some() || n.additional_any) {
        errs.push(format!(
            "{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
        ));
    }
    match obj.get("items") {
        Some(Value::Array(_)) => errs.push(format!(
            "{path}.items: Forbidden: items must be a schema object and not an array"
        )),
        Some(s) => {
            let child_place = if junctor { place } else { Place::Items };
            n.items = Some(Box::new(parse_node(
                s,
                &format!("{path}.items"),
                child_place,
                errs,
            )));
        }
        None => {
            if n.ty == Some(Type::Array) && !junctor {
                errs.push(format!("{path}.items: Required value: must be specified"));
            }
        }
    }

    let branch_place = if n.int_or_string {
        Place::IntOrStringJunctor
    } else {
        Place::Junctor
    };
    let branches = |key: &str, errs: &mut Vec<String>| -> Vec<Node> {
        obj.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, s)| parse_node(s, &format!("{path}.{key}[{i}]"), branch_place, errs))
                    .collect()
            })
            .unwrap_or_default()
    };
    n.all_of = branches("allOf", errs);
    n.any_of = branches("anyOf", errs);
    n.one_of = branches("oneOf", errs);
    n.not = obj
        .get("not")
        .map(|s| Box::new(parse_node(s, &format!("{path}.not"), branch_place, errs)));
    if !junctor {
        let outer: HashSet<&String> = n.properties.keys().collect();
        let check = |b: &Node, where_: &str, errs: &mut Vec<String>| {
            for k in b.properties.keys() {
                if !outer.contains(k) {
                    errs.push(format!(
                        "{path}.{where_}.properties[{k}]: Forbidden: must have a corresponding property in the outer schema"
                    ));
                }
            }
        };
        for (key, list) in [
            ("allOf", &n.all_of),
            ("anyOf", &n.any_of),
            ("oneOf", &n.one_of),
        ] {
            for (i, b) in list.iter().enumerate() {
                check(b, &format!("{key}[{i}]"), errs);
            }
        }
        if let Some(b) = &n.not {
            check(b, "not", errs);
        }
    }

    n.rules = obj
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    let rule = r.get("rule")?.as_str()?.to_owned();
                    let fp = r
                        .get("fieldPath")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    Some((rule, fp))
                })
                .collect()
        })
        .unwrap_or_default();
    n.list_type = schema_node_list_type(v);
    check_list_type(&n, obj, path, errs);
    n
}

fn check_list_type(
    n: &Node,
    obj: &serde_json::Map<String, Value>,
    path: &str,
    errs: &mut Vec<String>,
) {
    let lt = obj.get("x-kubernetes-list-type").and_then(Value::as_str);
    let has_keys = obj.contains_key("x-kubernetes-list-map-keys");
    if let Some(t) = lt {
        if !matches!(t, "atomic" | "set" | "map") {
            errs.push(format!(
                "{path}.x-kubernetes-list-type: Unsupported value: {t:?}: supported values: \"atomic\", \"map\", \"set\""
            ));
        }
        if n.ty.is_some_and(|t| t != Type::Array) {
            errs.push(format!(
                "{path}.x-kubernetes-list-type: Invalid value: {t:?}: must only be used if type is array"
            ));
        }
    }
    if has_keys && lt != Some("map") {
        errs.push(format!(
            "{path}.x-kubernetes-list-map-keys: Forbidden: must not be set if x-kubernetes-list-type is not map"
        ));
    }
    let items = n.items.as_deref();
    match &n.list_type {
        ListType::Set => {
            if items.is_some_and(|i| i.ty == Some(Type::Object) || i.ty == Some(Type::Array)) {
                errs.push(format!(
                    "{path}.items.type: Invalid value: \"object\": must be a scalar type if parent array's x-kubernetes-list-type is set"
                ));
            }
        }
        ListType::Map(keys) => {
            if keys.is_empty() {
                errs.push(format!(
                    "{path}.x-kubernetes-list-map-keys: Required value: must not be empty if x-kubernetes-list-type is map"
                ));
            }
            match items {
                Some(i) if i.ty == Some(Type::Object) => {
                    for k in keys {
                        let ok = i.properties.get(k).is_some_and(|p| {
                            matches!(
                                p.ty,
                                Some(Type::String | Type::Integer | Type::Number | Type::Boolean)
                            ) && (i.required.contains(k) || p.default.is_some())
                        });
                        if !ok {
                            errs.push(format!(
                                "{path}.x-kubernetes-list-map-keys: Invalid value: {k:?}: entries must all be names of required scalar properties or have a default value"
                            ));
                        }
                    }
                }
                _ => errs.push(format!(
                    "{path}.items.type: Invalid value: {:?}: must be object if parent array's x-kubernetes-list-type is map",
                    items.and_then(|i| i.ty).map_or("", Type::name)
                )),
            }
        }
        ListType::Atomic => {}
    }
}

/// A CRD version's openAPIV3Schema, compiled once.
pub struct StructuralSchema {
    root: Node,
    cel: kube_cel::CompiledSchema,
}

impl std::fmt::Debug for StructuralSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuralSchema").finish_non_exhaustive()
    }
}

impl StructuralSchema {
    /// Err when the schema is not structural (explain which node), as kube-apiserver would reject the CRD.
    pub fn new(openapi_v3_schema: &Value) -> Result<StructuralSchema, String> {
        let mut errs = Vec::new();
        let root = parse_node(openapi_v3_schema, "openAPIV3Schema", Place::Root, &mut errs);
        check_defaults(&root, "openAPIV3Schema", &mut errs);
        let cel = kube_cel::compile_schema(openapi_v3_schema);
        collect_cel_errors(&cel, "openAPIV3Schema", &mut errs);
        if errs.is_empty() {
            // As kube-apiserver, only a schema that is otherwise valid gets its rules costed.
            errs.extend(super::cel_cost::cost_errors(openapi_v3_schema));
        }
        if errs.is_empty() {
            Ok(StructuralSchema { root, cel })
        } else {
            Err(errs.join(", "))
        }
    }

    /// Drop fields the schema does not declare (respecting x-kubernetes-preserve-unknown-fields,
    /// additionalProperties and x-kubernetes-embedded-resource), and `null`s of fields that are
    /// not nullable and have no default. `apiVersion`, `kind` and `metadata` at the root are never
    /// pruned: metadata is validated as ObjectMeta by the caller.
    pub fn prune(&self, obj: &mut Value) {
        prune_node(&self.root, obj, true);
    }

    /// Apply `default`s (recursively, for absent fields, including inside list items and map
    /// values). A `null` in a non-nullable field counts as absent.
    pub fn apply_defaults(&self, obj: &mut Value) {
        default_node(&self.root, obj, true);
    }

    /// Validate against the schema's value validations, list-type invariants and CEL rules
    /// (transition rules only when `old` is given). Returns every cause, empty when valid.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldCause> {
        let mut out = Vec::new();
        validate_node(&self.root, obj, "", true, &mut out);
        // kube-apiserver skips CEL when the object is malformed: rules would see wrong types.
        let blocking = out
            .iter()
            .any(|c| c.reason == "FieldValueTypeInvalid" || c.reason == "FieldValueNotSupported");
        if blocking {
            out.push(FieldCause::new(
                "FieldValueInvalid",
                "<nil>",
                "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".to_owned(),
            ));
            return out;
        }
        if let Err(errors) = kube_cel::validate_compiled(&self.cel, obj, old) {
            for e in errors.iter() {
                out.push(self.cel_cause(e));
            }
        }
        out
    }

    /// A CEL failure in kube-apiserver's form (`fieldErrorForReason` with the type of the node
    /// that carries the rule as the bad value).
    fn cel_cause(&self, e: &kube_cel::ValidationError) -> FieldCause {
        let ty = self.rule_node_type(&e.field_path, &e.rule);
        let detail = match e.kind {
            // kube-apiserver words runtime failures as "<error> evaluating rule: <rule>".
            kube_cel::ErrorKind::EvaluationError => format!(
                "{} evaluating rule: {}",
                e.message
                    .strip_prefix("rule evaluation error: ")
                    .unwrap_or(&e.message),
                e.rule
            ),
            _ => e.message.clone(),
        };
        let field = e.field_path.as_str();
        match e.reason.as_deref() {
            Some("FieldValueForbidden") => {
                FieldCause::new("FieldValueForbidden", field, format!("Forbidden: {detail}"))
            }
            Some("FieldValueRequired") => FieldCause::new(
                "FieldValueRequired",
                field,
                format!("Required value: {detail}"),
            ),
            Some("FieldValueDuplicate") => FieldCause::new(
                "FieldValueDuplicate",
                field,
                format!("Duplicate value: {ty:?}"),
            ),
            _ => FieldCause::new(
                "FieldValueInvalid",
                field,
                format!("Invalid value: {ty:?}: {detail}"),
            ),
        }
    }

    /// The type name of the schema node on the way to `path` that declares `rule` (its
    /// `fieldPath`, if any, leads from there to `path`); the node at `path` when none matches.
    fn rule_node_type(&self, path: &str, rule: &str) -> &'static str {
        let segs = path_segments(path);
        let mut node = &self.root;
        let mut nodes = vec![(0usize, node)];
        for (i, seg) in segs.iter().enumerate() {
            let next = match seg {
                Seg::Index => node.items.as_deref(),
                Seg::Field(f) => node.properties.get(*f).or(node.additional.as_deref()),
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
            nodes.push((i + 1, node));
        }
        let found = nodes
            .iter()
            .rev()
            .find(|(_, n)| n.rules.iter().any(|(r, _)| r == rule))
            .map_or(node, |(_, n)| *n);
        found.ty.map_or(
            if found.int_or_string {
                "int-or-string"
            } else {
                "object"
            },
            Type::name,
        )
    }
}

enum Seg<'a> {
    Field(&'a str),
    Index,
}

fn path_segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Field(name));
        }
        while let Some(end) = rest.find(']') {
            out.push(Seg::Index);
            rest = &rest[end + 1..];
        }
    }
    out
}

fn collect_cel_errors(c: &kube_cel::CompiledSchema, path: &str, errs: &mut Vec<String>) {
    for e in c.compilation_errors() {
        errs.push(format!(
            "{path}.x-kubernetes-validations: Invalid value: {e}"
        ));
    }
    let mut props: Vec<_> = c.properties.iter().collect();
    props.sort_by(|a, b| a.0.cmp(b.0));
    for (k, child) in props {
        collect_cel_errors(child, &format!("{path}.properties[{k}]"), errs);
    }
    if let Some(i) = &c.items {
        collect_cel_errors(i, &format!("{path}.items"), errs);
    }
    if let Some(a) = &c.additional_properties {
        collect_cel_errors(a, &format!("{path}.additionalProperties"), errs);
    }
}

/// Defaults must be valid and pruned, as kube-apiserver checks when the CRD is created.
fn check_defaults(n: &Node, path: &str, errs: &mut Vec<String>) {
    if let Some(d) = &n.default {
        let mut pruned = d.clone();
        prune_node(n, &mut pruned, false);
        if &pruned != d {
            errs.push(format!(
                "{path}.default: Invalid value: {}: must not have unknown fields",
                show(d)
            ));
        }
        let mut causes = Vec::new();
        validate_node(n, d, "", false, &mut causes);
        for c in causes {
            errs.push(format!("{path}.default: {}", c.message));
        }
    }
    for (k, c) in &n.properties {
        check_defaults(c, &format!("{path}.properties[{k}]"), errs);
    }
    if let Some(i) = &n.items {
        check_defaults(i, &format!("{path}.items"), errs);
    }
    if let Some(a) = &n.additional {
        check_defaults(a, &format!("{path}.additionalProperties"), errs);
    }
}

const ROOT_KEPT: &[&str] = &["apiVersion", "kind", "metadata"];

fn prune_node(n: &Node, v: &mut Value, keep_type_meta: bool) {
    match v {
        Value::Object(map) => {
            let keep_meta = keep_type_meta || n.embedded;
            map.retain(|k, child| {
                if keep_meta && ROOT_KEPT.contains(&k.as_str()) {
                    return true;
                }
                let schema = n.properties.get(k).or(n.additional.as_deref());
                match schema {
                    Some(s) => {
                        if child.is_null() && !s.nullable && s.default.is_none() {
                            return false;
                        }
                        true
                    }
                    None => n.additional_any || n.preserve_unknown,
                }
            });
            for (k, child) in map.iter_mut() {
                // Type meta and ObjectMeta (of the root or an embedded resource) are not the
                // schema's to prune: a schema usually declares metadata as a bare object.
                if keep_meta && ROOT_KEPT.contains(&k.as_str()) {
                    continue;
                }
                if let Some(s) = n.properties.get(k).or(n.additional.as_deref()) {
                    prune_node(s, child, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = &n.items {
                for item in items {
                    prune_node(s, item, false);
                }
            }
        }
        _ => {}
    }
}

fn default_node(n: &Node, v: &mut Value, root: bool) {
    match v {
        Value::Object(map) => {
            for (k, s) in &n.properties {
                if root && k == "metadata" {
                    continue;
                }
                if let Some(d) = &s.default {
                    let absent = match map.get(k) {
                        None => true,
                        Some(Value::Null) => !s.nullable,
                        Some(_) => false,
                    };
                    if absent {
                        map.insert(k.clone(), d.clone());
                    }
                }
            }
            for (k, child) in map.iter_mut() {
                if root && k == "metadata" {
                    continue;
                }
                if let Some(s) = n.properties.get(k) {
                    default_node(s, child, false);
                } else if let Some(s) = n.additional.as_deref() {
                    default_null(s, child);
                    default_node(s, child, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = &n.items {
                for item in items {
                    default_null(s, item);
                    default_node(s, item, false);
                }
            }
        }
        _ => {}
    }
}

/// Map values and list items have no key to be absent from: a non-nullable null is their "absent".
fn default_null(n: &Node, v: &mut Value) {
    if v.is_null()
        && !n.nullable
        && let Some(d) = &n.default
    {
        *v = d.clone();
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn invalid(out: &mut Vec<FieldCause>, path: &str, v: &Value, detail: String) {
    out.push(FieldCause::new(
        "FieldValueInvalid",
        path,
        format!("Invalid value: {}: {detail}", show(v)),
    ));
}

fn num_str(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

fn validate_node(n: &Node, v: &Value, path: &str, root: bool, out: &mut Vec<FieldCause>) {
    let p = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if n.nullable || (n.ty.is_none() && !n.int_or_string) {
            return;
        }
        let want = n.ty.map_or("integer-or-string", Type::name);
        out.push(FieldCause::new(
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: \"null\": {p} in body must be of type {want}: \"null\""),
        ));
        return;
    }
    let type_ok = if n.int_or_string {
        v.is_string() || is_integer(v)
    } else {
        n.ty.is_none_or(|t| t.accepts(v))
    };
    if !type_ok {
        let want = n.ty.map_or("integer-or-string", Type::name);
        let got = actual_type(v);
        out.push(FieldCause::new(
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: {got:?}: {p} in body must be of type {want}: {got:?}"),
        ));
        return;
    }
    if let Some(allowed) = &n.enumeration
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(show).collect();
        out.push(FieldCause::new(
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                show(v),
                list.join(", ")
            ),
        ));
    }
    match v {
        Value::String(s) => validate_string(n, s, v, path, p, out),
        Value::Number(_) => validate_number(n, v, path, p, out),
        Value::Array(items) => validate_array(n, items, path, p, out),
        Value::Object(map) => validate_object(n, map, path, p, root, out),
        _ => {}
    }
    validate_junctors(n, v, path, p, out);
}

fn validate_string(n: &Node, s: &str, v: &Value, path: &str, p: &str, out: &mut Vec<FieldCause>) {
    let len = s.chars().count() as u64;
    if let Some(max) = n.max_length
        && len > max
    {
        out.push(FieldCause::new(
            "FieldValueTooLong",
            path,
            format!("Too long: may not be more than {max} bytes"),
        ));
    }
    if let Some(min) = n.min_length
        && len < min
    {
        invalid(
            out,
            path,
            v,
            format!("{p} in body should be at least {min} chars long"),
        );
    }
    if let Some((src, re)) = &n.pattern
        && !re.is_match(s)
    {
        invalid(out, path, v, format!("{p} in body should match '{src}'"));
    }
    if let Some(f) = &n.format
        && !string_format_ok(f, s)
    {
        invalid(
            out,
            path,
            v,
            format!("{p} in body must be of type {f}: {s:?}"),
        );
    }
}

fn string_format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.parse::<ipnet::IpNet>().is_ok(),
        "uuid" => uuid::Uuid::try_parse(s).is_ok() && s.len() == 36,
        // Formats kube-apiserver does not check for CRDs, or that we do not model, pass.
        _ => true,
    }
}

fn validate_number(n: &Node, v: &Value, path: &str, p: &str, out: &mut Vec<FieldCause>) {
    let Some(f) = v.as_f64() else { return };
    if let Some(min) = n.minimum {
        if n.exclusive_minimum && f <= min {
            invalid(
                out,
                path,
                v,
                format!("{p} in body should be greater than {}", num_str(min)),
            );
        } else if f < min {
            invalid(
                out,
                path,
                v,
                format!(
                    "{p} in body should be greater than or equal to {}",
                    num_str(min)
                ),
            );
        }
    }
    if let Some(max) = n.maximum {
        if n.exclusive_maximum && f >= max {
            invalid(
                out,
                path,
                v,
                format!("{p} in body should be less than {}", num_str(max)),
            );
        } else if f > max {
            invalid(
                out,
                path,
                v,
                format!(
                    "{p} in body should be less than or equal to {}",
                    num_str(max)
                ),
            );
        }
    }
    if let Some(m) = n.multiple_of
        && m != 0.0
        && (f / m).fract() != 0.0
    {
        invalid(
            out,
            path,
            v,
            format!("{p} in body should be a multiple of {}", num_str(m)),
        );
    }
    let range = match n.format.as_deref() {
        Some("int32") => Some((i32::MIN as f64, i32::MAX as f64, "int32")),
        Some("int64") => Some((i64::MIN as f64, i64::MAX as f64, "int64")),
        _ => None,
    };
    if let Some((lo, hi, name)) = range {
        let fits = match (v.as_i64(), v.as_u64()) {
            (Some(i), _) => name == "int64" || i32::try_from(i).is_ok(),
            (None, Some(_)) => false,
            (None, None) => f >= lo && f <= hi,
        };
        if !fits {
            invalid(
                out,
                path,
                v,
                format!("{p} in body must be of type {name}: \"{v}\""),
            );
        }
    }
}

fn validate_array(n: &Node, items: &[Value], path: &str, p: &str, out: &mut Vec<FieldCause>) {
    let len = items.len() as u64;
    if let Some(max) = n.max_items
        && len > max
    {
        out.push(FieldCause::new(
            "FieldValueTooMany",
            path,
            format!("Too many: {len}: must have at most {max} items"),
        ));
    }
    if let Some(min) = n.min_items
        && len < min
    {
        invalid(
            out,
            path,
            &Value::from(len),
            format!("{p} in body should have at least {min} items"),
        );
    }
    if let Some(s) = &n.items {
        for (i, item) in items.iter().enumerate() {
            validate_node(s, item, &format!("{path}[{i}]"), false, out);
        }
    }
    // x-kubernetes-list-type invariants: set items and map keys are unique.
    match &n.list_type {
        ListType::Set => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    out.push(FieldCause::new(
                        "FieldValueDuplicate",
                        &format!("{path}[{i}]"),
                        format!("Duplicate value: {}", show(item)),
                    ));
                }
            }
        }
        ListType::Map(keys) => {
            let key_of = |item: &Value| -> Value {
                let mut m = serde_json::Map::new();
                for k in keys {
                    let kv = item.get(k).cloned().unwrap_or(Value::Null);
                    m.insert(k.clone(), kv);
                }
                Value::Object(m)
            };
            let ks: Vec<Value> = items.iter().map(key_of).collect();
            for i in 0..ks.len() {
                if ks[..i].contains(&ks[i]) {
                    out.push(FieldCause::new(
                        "FieldValueDuplicate",
                        &format!("{path}[{i}]"),
                        format!("Duplicate value: {}", ks[i]),
                    ));
                }
            }
        }
        ListType::Atomic => {}
    }
}

fn validate_object(
    n: &Node,
    map: &serde_json::Map<String, Value>,
    path: &str,
    p: &str,
    root: bool,
    out: &mut Vec<FieldCause>,
) {
    let len = map.len() as u64;
    if let Some(max) = n.max_properties
        && len > max
    {
        out.push(FieldCause::new(
            "FieldValueTooMany",
            path,
            format!("Too many: {len}: must have at most {max} items"),
        ));
    }
    if let Some(min) = n.min_properties
        && len < min
    {
        invalid(
            out,
            path,
            &Value::from(len),
            format!("{p} in body should have at least {min} properties"),
        );
    }
    for r in &n.required {
        if !map.contains_key(r) {
            out.push(FieldCause::new(
                "FieldValueRequired",
                &join(path, r),
                "Required value".to_owned(),
            ));
        }
    }
    if n.embedded {
        for k in ["apiVersion", "kind"] {
            if map.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                out.push(FieldCause::new(
                    "FieldValueRequired",
                    &join(path, k),
                    "Required value: must not be empty".to_owned(),
                ));
            }
        }
    }
    for (k, child) in map {
        // Root metadata is ObjectMeta, validated by the caller; a CRD may only restrict its
        // name and generateName.
        if root && k == "metadata" {
            if let (Some(meta_schema), Value::Object(meta)) = (n.properties.get(k), child) {
                for f in ["name", "generateName"] {
                    if let (Some(s), Some(v)) = (meta_schema.properties.get(f), meta.get(f)) {
                        validate_node(s, v, &format!("metadata.{f}"), false, out);
                    }
                }
            }
            continue;
        }
        if let Some(s) = n.properties.get(k).or(n.additional.as_deref()) {
            validate_node(s, child, &join(path, k), false, out);
        }
    }
}

fn passes(n: &Node, v: &Value) -> bool {
    let mut scratch = Vec::new();
    validate_node(n, v, "", false, &mut scratch);
    scratch.is_empty()
}

fn validate_junctors(n: &Node, v: &Value, path: &str, p: &str, out: &mut Vec<FieldCause>) {
    for b in &n.all_of {
        validate_node(b, v, path, false, out);
    }
    if !n.any_of.is_empty() && !n.any_of.iter().any(|b| passes(b, v)) {
        invalid(
            out,
            path,
            v,
            format!("{p} in body must validate at least one schema (anyOf)"),
        );
    }
    if !n.one_of.is_empty() && n.one_of.iter().filter(|b| passes(b, v)).count() != 1 {
        invalid(
            out,
            path,
            v,
            format!("{p} in body must validate one and only one schema (oneOf)"),
        );
    }
    if let Some(b) = &n.not
        && passes(b, v)
    {
        invalid(
            out,
            path,
            v,
            format!("{p} in body must not validate the schema (not)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn crd_schema(kind: &str) -> Value {
        let crd = lodestone_crds::all_crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap();
        let schema = crd.spec.versions[0].schema.as_ref().unwrap();
        serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap()
    }

    fn pool_schema() -> StructuralSchema {
        StructuralSchema::new(&crd_schema("IPAddressPool")).unwrap()
    }

    fn pool(spec: Value) -> Value {
        json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
               "metadata": {"name": "p"}, "spec": spec})
    }

    fn fields(causes: &[FieldCause]) -> Vec<(&str, &str)> {
        causes
            .iter()
            .map(|c| (c.field.as_str(), c.message.as_str()))
            .collect()
    }

    #[test]
    fn structural_schema_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<StructuralSchema>();
    }

    #[test]
    fn lodestone_crds_are_structural() {
        for crd in lodestone_crds::all_crds() {
            let kind = crd.spec.names.kind.clone();
            if let Err(e) = StructuralSchema::new(&crd_schema(&kind)) {
                panic!("{kind}: {e}");
            }
        }
    }

    #[test]
    fn pool_defaults_auto_assign() {
        let s = pool_schema();
        let mut obj = pool(json!({"addresses": ["192.0.2.0/28"]}));
        s.apply_defaults(&mut obj);
        assert_eq!(obj["spec"]["autoAssign"], json!(true));
        assert_eq!(obj["spec"]["avoidBuggyIPs"], json!(false));
        let mut explicit = pool(json!({"addresses": ["192.0.2.0/28"], "autoAssign": false}));
        s.apply_defaults(&mut explicit);
        assert_eq!(explicit["spec"]["autoAssign"], json!(false));
    }

    #[test]
    fn pool_prunes_unknown_fields_but_not_type_meta() {
        let s = pool_schema();
        let mut obj = pool(json!({"addresses": ["192.0.2.0/28"], "bogus": 1,
                                  "serviceAllocation": {"priority": 1, "nope": true}}));
        obj["extra"] = json!("x");
        obj["metadata"]["labels"] = json!({"a": "b"});
        s.prune(&mut obj);
        assert_eq!(
            obj,
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
                   "metadata": {"name": "p", "labels": {"a": "b"}},
                   "spec": {"addresses": ["192.0.2.0/28"], "serviceAllocation": {"priority": 1}}})
        );
    }

    #[test]
    fn pool_rejects_garbage_address_with_cel_message() {
        let s = pool_schema();
        let causes = s.validate(&pool(json!({"addresses": ["garbage"]})), None);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.addresses");
        assert_eq!(causes[0].reason, "FieldValueInvalid");
        assert!(
            causes[0]
                .message
                .starts_with("Invalid value: \"array\": each entry must be a CIDR "),
            "{}",
            causes[0].message
        );
        let ok = pool(json!({"addresses": ["192.0.2.0/28", "198.51.100.1-198.51.100.9"]}));
        assert_eq!(s.validate(&ok, None), vec![]);
    }

    #[test]
    fn pool_type_error_reads_like_kube_apiserver_and_blocks_cel() {
        let s = pool_schema();
        let causes = s.validate(
            &pool(json!({"addresses": ["garbage"], "autoAssign": "string"})),
            None,
        );
        assert_eq!(
            causes[0],
            FieldCause::new(
                "FieldValueTypeInvalid",
                "spec.autoAssign",
                "Invalid value: \"string\": spec.autoAssign in body must be of type boolean: \"string\"".into()
            )
        );
        // CEL did not run: the garbage address is not reported, the skip is.
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(
            causes[1]
                .message
                .contains("some validation rules were not checked")
        );
    }

    #[test]
    fn pool_required_min_items_and_minimum() {
        let s = pool_schema();
        let causes = s.validate(&pool(json!({})), None);
        assert_eq!(fields(&causes), vec![("spec.addresses", "Required value")]);
        assert_eq!(causes[0].reason, "FieldValueRequired");

        let causes = s.validate(
            &pool(json!({"addresses": [], "serviceAllocation": {"priority": -1}})),
            None,
        );
        assert_eq!(
            fields(&causes),
            vec![
                (
                    "spec.addresses",
                    "Invalid value: 0: spec.addresses in body should have at least 1 items"
                ),
                (
                    "spec.serviceAllocation.priority",
                    "Invalid value: -1: spec.serviceAllocation.priority in body should be greater than or equal to 0"
                ),
            ]
        );
        // nullable: an explicit null serviceAllocation is fine.
        let causes = s.validate(
            &pool(json!({"addresses": ["192.0.2.1-192.0.2.2"], "serviceAllocation": null})),
            None,
        );
        assert_eq!(causes, vec![]);
    }

    fn synthetic() -> Value {
        json!({
            "type": "object",
            "properties": {
                "metadata": {"type": "object"},
                "spec": {"type": "object", "required": ["mode"], "properties": {
                    "mode": {"type": "string", "enum": ["a", "b"]},
                    "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5, "minLength": 2},
                    "when": {"type": "string", "format": "date-time"},
                    "small": {"type": "integer", "format": "int32", "maximum": 10, "exclusiveMaximum": true},
                    "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": true},
                    "tags": {"type": "array", "x-kubernetes-list-type": "set", "maxItems": 3,
                             "items": {"type": "string"}},
                    "rules": {"type": "array", "x-kubernetes-list-type": "map",
                              "x-kubernetes-list-map-keys": ["name"],
                              "items": {"type": "object", "required": ["name"], "properties": {
                                  "name": {"type": "string"},
                                  "weight": {"type": "integer", "default": 1}}}},
                    "labels": {"type": "object", "maxProperties": 2,
                               "additionalProperties": {"type": "string", "default": "x"}},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                             "properties": {"known": {"type": "integer", "default": 7}}},
                    "port": {"x-kubernetes-int-or-string": true},
                    "opt": {"type": "string", "default": "d"},
                    "nul": {"type": "string", "nullable": true},
                    "inner": {"type": "object", "x-kubernetes-embedded-resource": true,
                              "x-kubernetes-preserve-unknown-fields": true},
                    "tmpl": {"type": "object", "x-kubernetes-embedded-resource": true,
                             "properties": {"metadata": {"type": "object"},
                                            "spec": {"type": "object", "properties": {"x": {"type": "integer"}}}}},
                    "replicas": {"type": "integer",
                                 "x-kubernetes-validations": [
                                     {"rule": "self >= oldSelf", "message": "may not shrink"},
                                     // Not `'unlucky ' + string(self)`: a string of unknown
                                     // length, over the cost budget (kube-apiserver says so too).
                                     {"rule": "self != 13", "messageExpression": "'unlucky ' + (self == 13 ? '13' : 'number')",
                                      "reason": "FieldValueForbidden"}]}
                }, "x-kubernetes-validations": [{"rule": "self.mode != 'b' || has(self.name)"}]}
            }
        })
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "x.dev/v1", "kind": "X", "metadata": {"name": "n"}, "spec": spec})
    }

    #[test]
    fn synthetic_value_validations() {
        let s = StructuralSchema::new(&synthetic()).unwrap();
        let causes = s.validate(
            &obj(
                json!({"mode": "a", "name": "ABCDEFG", "when": "yesterday", "small": 10,
                        "ratio": 0, "tags": ["x", "y", "x", "z"],
                        "rules": [{"name": "r"}, {"name": "r"}],
                        "labels": {"a": "1", "b": "2", "c": "3"}}),
            ),
            None,
        );
        let got: Vec<(&str, &str, &str)> = causes
            .iter()
            .map(|c| (c.reason.as_str(), c.field.as_str(), c.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "FieldValueTooMany",
                    "spec.labels",
                    "Too many: 3: must have at most 2 items"
                ),
                (
                    "FieldValueTooLong",
                    "spec.name",
                    "Too long: may not be more than 5 bytes"
                ),
                (
                    "FieldValueInvalid",
                    "spec.name",
                    "Invalid value: \"ABCDEFG\": spec.name in body should match '^[a-z]+$'"
                ),
                (
                    "FieldValueInvalid",
                    "spec.ratio",
                    "Invalid value: 0: spec.ratio in body should be greater than 0"
                ),
                (
                    "FieldValueDuplicate",
                    "spec.rules[1]",
                    "Duplicate value: {\"name\":\"r\"}"
                ),
                (
                    "FieldValueInvalid",
                    "spec.small",
                    "Invalid value: 10: spec.small in body should be less than 10"
                ),
                (
                    "FieldValueTooMany",
                    "spec.tags",
                    "Too many: 4: must have at most 3 items"
                ),
                (
                    "FieldValueDuplicate",
                    "spec.tags[2]",
                    "Duplicate value: \"x\""
                ),
                (
                    "FieldValueInvalid",
                    "spec.when",
                    "Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\""
                ),
            ]
        );
    }

    #[test]
    fn synthetic_enum_required_int32_and_int_or_string() {
        let s = StructuralSchema::new(&synthetic()).unwrap();
        let causes = s.validate(&obj(json!({"mode": "c"})), None);
        assert_eq!(causes[0].reason, "FieldValueNotSupported");
        assert_eq!(
            causes[0].message,
            "Unsupported value: \"c\": supported values: \"a\", \"b\""
        );
        // A missing required field does not block CEL; a rule reading it fails to evaluate.
        assert_eq!(
            fields(&s.validate(&obj(json!({})), None)),
            vec![
                ("spec.mode", "Required value"),
                (
                    "spec",
                    "Invalid value: \"object\": No such key: mode evaluating rule: self.mode != 'b' || has(self.name)"
                )
            ]
        );
        let causes = s.validate(&obj(json!({"mode": "a", "small": -3_000_000_000i64})), None);
        assert_eq!(
            fields(&causes),
            vec![(
                "spec.small",
                "Invalid value: -3000000000: spec.small in body must be of type int32: \"-3000000000\""
            )]
        );
        assert_eq!(
            s.validate(&obj(json!({"mode": "a", "port": 80})), None),
            vec![]
        );
        assert_eq!(
            s.validate(&obj(json!({"mode": "a", "port": "http"})), None),
            vec![]
        );
        let causes = s.validate(&obj(json!({"mode": "a", "port": true})), None);
        assert_eq!(causes[0].reason, "FieldValueTypeInvalid");
        assert_eq!(
            s.validate(&obj(json!({"mode": "a", "nul": null})), None),
            vec![]
        );
        let causes = s.validate(&obj(json!({"mode": "a", "opt": null})), None);
        assert_eq!(
            causes[0].message,
            "Invalid value: \"null\": spec.opt in body must be of type string: \"null\""
        );
    }

    #[test]
    fn metadata_name_restrictions_apply() {
        let s = StructuralSchema::new(&json!({"type": "object", "properties": {
            "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}}}}}))
        .unwrap();
        let causes = s.validate(
            &json!({"metadata": {"name": "toolong", "labels": {"x": "y"}}}),
            None,
        );
        assert_eq!(
            fields(&causes),
            vec![("metadata.name", "Too long: may not be more than 3 bytes")]
        );
    }

    #[test]
    fn embedded_resource_needs_type_meta() {
        let s = StructuralSchema::new(&synthetic()).unwrap();
        let causes = s.validate(&obj(json!({"mode": "a", "inner": {"kind": "Pod"}})), None);
        assert_eq!(
            fields(&causes),
            vec![("spec.inner.apiVersion", "Required value: must not be empty")]
        );
    }

    #[test]
    fn cel_rules_messages_reasons_and_transitions() {
        let s = StructuralSchema::new(&synthetic()).unwrap();
        // Rule without message on an object node.
        let causes = s.validate(&obj(json!({"mode": "b"})), None);
        assert_eq!(
            causes,
            vec![FieldCause::new(
                "FieldValueInvalid",
                "spec",
                "Invalid value: \"object\": failed rule: self.mode != 'b' || has(self.name)".into()
            )]
        );
        // messageExpression and reason.
        let causes = s.validate(&obj(json!({"mode": "a", "replicas": 13})), None);
        assert_eq!(
            causes,
            vec![FieldCause::new(
                "FieldValueForbidden",
                "spec.replicas",
                "Forbidden: unlucky 13".into()
            )]
        );
        // Transition rule: only with an old object.
        let shrunk = obj(json!({"mode": "a", "replicas": 1}));
        assert_eq!(s.validate(&shrunk, None), vec![]);
        let old = obj(json!({"mode": "a", "replicas": 3}));
        assert_eq!(
            fields(&s.validate(&shrunk, Some(&old))),
            vec![(
                "spec.replicas",
                "Invalid value: \"integer\": may not shrink"
            )]
        );
    }

    #[test]
    fn synthetic_defaults_reach_list_items_and_map_values() {
        let s = StructuralSchema::new(&synthetic()).unwrap();
        let mut o = obj(
            json!({"mode": "a", "rules": [{"name": "a"}, {"name": "b", "weight": 5}],
                               "labels": {"k": null}, "free": {"anything": {"deep": 1}}, "opt": null}),
        );
        s.apply_defaults(&mut o);
        assert_eq!(
            o["spec"]["rules"],
            json!([{"name": "a", "weight": 1}, {"name": "b", "weight": 5}])
        );
        assert_eq!(o["spec"]["labels"], json!({"k": "x"}));
        assert_eq!(
            o["spec"]["free"],
            json!({"anything": {"deep": 1}, "known": 7})
        );
        assert_eq!(o["spec"]["opt"], json!("d"));
    }

    #[test]
    fn synthetic_prune_keeps_preserved_and_nullable() {
        let s = StructuralSchema::new(&synthetic()).unwrap();
        let mut o = obj(json!({"mode": "a", "free": {"anything": {"deep": 1}},
                               "inner": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {}},
                               "nul": null, "name": null, "opt": null, "unknown": 1}));
        o["spec"]["tmpl"] = json!({"apiVersion": "v1", "kind": "Pod",
                                   "metadata": {"name": "t", "labels": {"a": "b"}},
                                   "spec": {"x": 1, "y": 2}, "other": 3});
        s.prune(&mut o);
        assert_eq!(
            o["spec"]["tmpl"],
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", "labels": {"a": "b"}},
                   "spec": {"x": 1}})
        );
        if let Some(spec) = o["spec"].as_object_mut() {
            spec.remove("tmpl");
        }
        assert_eq!(
            o["spec"],
            json!({"mode": "a", "free": {"anything": {"deep": 1}},
                   "inner": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {}},
                   "nul": null, "opt": null})
        );
    }

    #[test]
    fn non_structural_schemas_are_rejected_with_the_node() {
        let cases = [
            (
                json!({"properties": {}}),
                "openAPIV3Schema.type: Required value: must not be empty at the root",
            ),
            (
                json!({"type": "string"}),
                "openAPIV3Schema.type: Unsupported value: \"string\"",
            ),
            (
                json!({"type": "object", "properties": {"spec": {"properties": {}}}}),
                "openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array"}}}),
                "openAPIV3Schema.properties[a].items: Required value",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array", "items": {}}}}),
                "openAPIV3Schema.properties[a].items.type: Required value: must not be empty for specified array items",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": true, "items": {"type": "string"}}}}),
                "uniqueItems cannot be set to true",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "object",
                       "properties": {"b": {"type": "string"}}, "additionalProperties": {"type": "string"}}}}),
                "additionalProperties and properties are mutual exclusive",
            ),
            (
                json!({"type": "object", "properties": {"metadata": {"type": "object",
                       "properties": {"labels": {"type": "object"}}}}}),
                "openAPIV3Schema.properties[metadata]: Forbidden",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string",
                       "anyOf": [{"type": "string"}]}}}),
                "openAPIV3Schema.properties[a].anyOf[0].type: Forbidden: must be empty to be structural",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string",
                       "x-kubernetes-validations": [{"rule": "self ==="}]}}}),
                "openAPIV3Schema.properties[a].x-kubernetes-validations",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "integer", "default": "x"}}}),
                "openAPIV3Schema.properties[a].default: Invalid value: \"string\"",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array", "x-kubernetes-list-type": "map",
                       "items": {"type": "object", "properties": {"k": {"type": "string"}}}}}}),
                "x-kubernetes-list-map-keys: Required value",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}),
                "openAPIV3Schema.properties[a].pattern: Invalid value",
            ),
        ];
        for (schema, want) in cases {
            match StructuralSchema::new(&schema) {
                Ok(_) => panic!("accepted {schema}"),
                Err(e) => assert!(e.contains(want), "{schema}: {e}\n  wanted: {want}"),
            }
        }
        // The exceptions the rules allow.
        for ok in [
            json!({"type": "object", "properties": {"a": {"x-kubernetes-int-or-string": true,
                   "anyOf": [{"type": "integer"}, {"type": "string"}]}}}),
            json!({"type": "object", "properties": {"a": {"x-kubernetes-preserve-unknown-fields": true}}}),
            json!({"type": "object", "properties": {"metadata": {"type": "object",
                   "properties": {"name": {"type": "string", "maxLength": 10}}}}}),
        ] {
            if let Err(e) = StructuralSchema::new(&ok) {
                panic!("{ok}: {e}");
            }
        }
    }

    fn arb_doc() -> impl Strategy<Value = Value> {
        let key = prop::sample::select(vec![
            "spec",
            "status",
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "serviceAllocation",
            "priority",
            "namespaces",
            "conditions",
            "type",
            "bogus",
            "mode",
            "rules",
            "name",
            "weight",
            "labels",
            "free",
            "known",
            "opt",
            "nul",
            "metadata",
            "kind",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..5).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    /// Whether every non-null leaf of `small` is present, unchanged, in `big`.
    fn contains(big: &Value, small: &Value) -> bool {
        match (big, small) {
            (_, Value::Null) => true,
            (Value::Object(b), Value::Object(s)) => s
                .iter()
                .all(|(k, v)| v.is_null() || b.get(k).is_some_and(|bv| contains(bv, v))),
            (Value::Array(b), Value::Array(s)) => {
                b.len() == s.len() && b.iter().zip(s).all(|(x, y)| contains(x, y))
            }
            _ => big == small,
        }
    }

    proptest! {
        #[test]
        fn prune_is_idempotent(doc in arb_doc()) {
            for s in [pool_schema(), StructuralSchema::new(&synthetic()).unwrap()] {
                let mut once = doc.clone();
                s.prune(&mut once);
                let mut twice = once.clone();
                s.prune(&mut twice);
                prop_assert_eq!(&once, &twice);
            }
        }

        #[test]
        fn defaults_never_overwrite_and_are_idempotent(doc in arb_doc()) {
            for s in [pool_schema(), StructuralSchema::new(&synthetic()).unwrap()] {
                let mut d = doc.clone();
                s.apply_defaults(&mut d);
                prop_assert!(contains(&d, &doc), "{} -> {}", doc, d);
                let mut again = d.clone();
                s.apply_defaults(&mut again);
                prop_assert_eq!(&again, &d);
            }
        }

        #[test]
        fn validate_never_panics(doc in arb_doc()) {
            let s = StructuralSchema::new(&synthetic()).unwrap();
            let _ = s.validate(&doc, Some(&doc));
        }
    }
}
