//! `meta.k8s.io/v1 Table` rendering for `kubectl get`: printer columns of CRDs, the Service
//! columns, NAME + AGE for the rest.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::resources::ResourceDef;

/// Which object each row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parse the query parameter value.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Kubernetes' `duration.HumanDuration`, the AGE column.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let y = d / 365;
        let dd = d % 365;
        if dd == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{dd}d")
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(ts: Option<&str>, now: DateTime<Utc>) -> Value {
    match ts.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => json!(human_duration((now - t.with_timezone(&Utc)).num_seconds())),
        None => json!("<unknown>"),
    }
}

/// Evaluate the simple JSONPaths printer columns use: `.a.b`, `.a[0].b`, `.a[*].b`.
/// Returns every match (the caller uses the first, as kube-apiserver does).
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}');
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut cur: Vec<&Value> = vec![obj];
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            rest = &r[end..];
            if field.is_empty() {
                continue;
            }
            cur = cur.into_iter().filter_map(|v| v.get(field)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let idx = &r[..end];
            rest = &r[end + 1..];
            cur = if idx == "*" {
                cur.into_iter()
                    .flat_map(|v| {
                        v.as_array()
                            .map(|a| a.iter().collect::<Vec<_>>())
                            .unwrap_or_default()
                    })
                    .collect()
            } else if let Ok(i) = idx.parse::<usize>() {
                cur.into_iter().filter_map(|v| v.get(i)).collect()
            } else {
                let key = idx.trim_matches('\'').trim_matches('"');
                cur.into_iter().filter_map(|v| v.get(key)).collect()
            };
        } else {
            return Vec::new();
        }
    }
    cur
}

/// A CRD printer-column cell, as kube-apiserver's CRD table convertor renders it.
fn crd_cell(obj: &Value, col: &Value, now: DateTime<Utc>) -> Value {
    let path = col.get("jsonPath").and_then(Value::as_str).unwrap_or("");
    let ty = col.get("type").and_then(Value::as_str).unwrap_or("string");
    let Some(v) = json_path(obj, path).into_iter().next() else {
        return Value::Null;
    };
    match ty {
        "string" => match v {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            // Maps and arrays print as compact JSON, scalars as text (Go's jsonpath printer).
            Value::Array(_) | Value::Object(_) => json!(v.to_string()),
            other => json!(other.to_string()),
        },
        "date" => age(v.as_str(), now),
        "integer" => v.as_i64().map_or(Value::Null, |i| json!(i)),
        "number" => v.as_f64().map_or(Value::Null, |f| json!(f)),
        "boolean" => v.as_bool().map_or(Value::Null, |b| json!(b)),
        _ => v.clone(),
    }
}

fn column(name: &str, ty: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

type CellFn = fn(&Value, DateTime<Utc>) -> Value;

/// One printer column of a built-in kind, as kube-apiserver's printers define it.
struct Col {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: i64,
    description: &'static str,
    cell: CellFn,
}

const fn col(name: &'static str, priority: i64, description: &'static str, cell: CellFn) -> Col {
    Col {
        name,
        ty: "string",
        format: "",
        priority,
        description,
        cell,
    }
}

fn s(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or("").to_string()
}

fn or_none(v: String) -> Value {
    json!(if v.is_empty() {
        "<none>".to_string()
    } else {
        v
    })
}

fn name_cell(o: &Value, _: DateTime<Utc>) -> Value {
    o.pointer("/metadata/name").cloned().unwrap_or(json!(""))
}

fn age_cell(o: &Value, now: DateTime<Utc>) -> Value {
    age(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
        now,
    )
}

fn svc_type(o: &Value, _: DateTime<Utc>) -> Value {
    json!(
        o.pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
    )
}

fn svc_cluster_ip(o: &Value, _: DateTime<Utc>) -> Value {
    or_none(s(o.pointer("/spec/clusterIP")))
}

fn svc_external_ip(o: &Value, _: DateTime<Utc>) -> Value {
    let mut external: Vec<String> = o
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    match o
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
    {
        "LoadBalancer" => {
            for i in o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(x) = i
                    .get("ip")
                    .or_else(|| i.get("hostname"))
                    .and_then(Value::as_str)
                {
                    external.push(x.to_string());
                }
            }
            json!(if external.is_empty() {
                "<pending>".to_string()
            } else {
                external.join(",")
            })
        }
        "ExternalName" => or_none(s(o.pointer("/spec/externalName"))),
        _ => or_none(external.join(",")),
    }
}

fn svc_ports(o: &Value, _: DateTime<Utc>) -> Value {
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_u64) {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn map_pairs(v: Option<&Value>) -> String {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn svc_selector(o: &Value, _: DateTime<Utc>) -> Value {
    or_none(map_pairs(o.pointer("/spec/selector")))
}

fn phase(o: &Value, _: DateTime<Utc>) -> Value {
    json!(s(o.pointer("/status/phase")))
}

fn node_status(o: &Value, _: DateTime<Utc>) -> Value {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .and_then(|c| c.get("status").and_then(Value::as_str));
    let mut st = match ready {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        st.push_str(",SchedulingDisabled");
    }
    json!(st)
}

fn node_roles(o: &Value, _: DateTime<Utc>) -> Value {
    let mut roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
                    Some(r) if !r.is_empty() => Some(r.to_string()),
                    _ if k == "kubernetes.io/role" => v.as_str().map(String::from),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    or_none(roles.join(","))
}

fn node_version(o: &Value, _: DateTime<Utc>) -> Value {
    json!(s(o.pointer("/status/nodeInfo/kubeletVersion")))
}

fn node_address(o: &Value, ty: &str) -> Value {
    let a = o
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) == Some(ty))
        })
        .map(|x| s(x.get("address")))
        .unwrap_or_default();
    or_none(a)
}

fn node_internal_ip(o: &Value, _: DateTime<Utc>) -> Value {
    node_address(o, "InternalIP")
}

fn node_external_ip(o: &Value, _: DateTime<Utc>) -> Value {
    node_address(o, "ExternalIP")
}

fn pod_ready(o: &Value, _: DateTime<Utc>) -> Value {
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |a| {
            a.iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count()
        });
    json!(format!("{ready}/{total}"))
}

fn pod_status(o: &Value, _: DateTime<Utc>) -> Value {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    let reason = s(o.pointer("/status/reason"));
    if !reason.is_empty() {
        return json!(reason);
    }
    json!(s(o.pointer("/status/phase")))
}

fn pod_restarts(o: &Value, _: DateTime<Utc>) -> Value {
    let n: i64 = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |a| {
            a.iter()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .sum()
        });
    json!(n)
}

fn pod_ip(o: &Value, _: DateTime<Utc>) -> Value {
    or_none(s(o.pointer("/status/podIP")))
}

fn pod_node(o: &Value, _: DateTime<Utc>) -> Value {
    or_none(s(o.pointer("/spec/nodeName")))
}

fn lease_holder(o: &Value, _: DateTime<Utc>) -> Value {
    json!(s(o.pointer("/spec/holderIdentity")))
}

fn eps_address_type(o: &Value, _: DateTime<Utc>) -> Value {
    json!(s(o.get("addressType")))
}

fn eps_ports(o: &Value, _: DateTime<Utc>) -> Value {
    let ports: Vec<String> = o
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("port").and_then(Value::as_u64).map(|n| n.to_string()))
        .collect();
    json!(if ports.is_empty() {
        "<unset>".to_string()
    } else {
        ports.join(",")
    })
}

fn eps_endpoints(o: &Value, _: DateTime<Utc>) -> Value {
    let addrs: Vec<String> = o
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let shown: Vec<String> = addrs.iter().take(3).cloned().collect();
    let more = addrs.len().saturating_sub(3);
    json!(if addrs.is_empty() {
        "<unset>".to_string()
    } else if more > 0 {
        format!("{} + {more} more...", shown.join(","))
    } else {
        shown.join(",")
    })
}

fn data_count(o: &Value, _: DateTime<Utc>) -> Value {
    let n = o
        .get("data")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
        + o.get("binaryData")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len())
        + o.get("stringData")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
    json!(n)
}

fn secret_type(o: &Value, _: DateTime<Utc>) -> Value {
    json!(o.get("type").and_then(Value::as_str).unwrap_or("Opaque"))
}

fn created_at(o: &Value, _: DateTime<Utc>) -> Value {
    o.pointer("/metadata/creationTimestamp")
        .cloned()
        .unwrap_or(Value::Null)
}

fn event_last_seen(o: &Value, now: DateTime<Utc>) -> Value {
    let ts = o
        .pointer("/series/lastObservedTime")
        .or_else(|| o.get("lastTimestamp"))
        .or_else(|| o.get("eventTime"))
        .or_else(|| o.pointer("/metadata/creationTimestamp"))
        .and_then(Value::as_str);
    age(ts, now)
}

fn event_type(o: &Value, _: DateTime<Utc>) -> Value {
    json!(s(o.get("type")))
}

fn event_reason(o: &Value, _: DateTime<Utc>) -> Value {
    json!(s(o.get("reason")))
}

fn event_object(o: &Value, _: DateTime<Utc>) -> Value {
    let kind = s(o.pointer("/involvedObject/kind")).to_lowercase();
    json!(format!("{kind}/{}", s(o.pointer("/involvedObject/name"))))
}

fn event_message(o: &Value, _: DateTime<Utc>) -> Value {
    json!(s(o.get("message")).trim().to_string())
}

/// Columns of a built-in kind (Name first, except core Events, as kubectl shows them).
fn builtin_cols(group: &str, kind: &str) -> Vec<Col> {
    let name = Col {
        name: "Name",
        ty: "string",
        format: "name",
        priority: 0,
        description: NAME_DESC,
        cell: name_cell,
    };
    let age = col("Age", 0, AGE_DESC, age_cell);
    match (group, kind) {
        ("", "Service") => vec![
            name,
            col("Type", 0, "The type of the service.", svc_type),
            col(
                "Cluster-IP",
                0,
                "The cluster IP of the service.",
                svc_cluster_ip,
            ),
            col(
                "External-IP",
                0,
                "The external IP of the service.",
                svc_external_ip,
            ),
            col("Port(s)", 0, "The ports of the service.", svc_ports),
            age,
            col("Selector", 1, "The selector of the service.", svc_selector),
        ],
        ("", "Event") => vec![
            col(
                "Last Seen",
                0,
                "Time when this Event was last seen",
                event_last_seen,
            ),
            col(
                "Type",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future.",
                event_type,
            ),
            col(
                "Reason",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
                event_reason,
            ),
            col(
                "Object",
                0,
                "The object that this event is about.",
                event_object,
            ),
            col(
                "Message",
                0,
                "A human-readable description of the status of this operation.",
                event_message,
            ),
            Col {
                name: "Name",
                ty: "string",
                format: "name",
                priority: 1,
                description: NAME_DESC,
                cell: name_cell,
            },
        ],
        ("", "Namespace") => vec![
            name,
            col("Status", 0, "The status of the namespace", phase),
            age,
        ],
        ("", "Node") => vec![
            name,
            col("Status", 0, "The status of the node", node_status),
            col("Roles", 0, "The roles of the node", node_roles),
            age,
            col(
                "Version",
                0,
                "Kubelet Version reported by the node.",
                node_version,
            ),
            col("Internal-IP", 1, "List of internal IPs.", node_internal_ip),
            col("External-IP", 1, "List of external IPs.", node_external_ip),
        ],
        ("", "Pod") => vec![
            name,
            col(
                "Ready",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
                pod_ready,
            ),
            col(
                "Status",
                0,
                "The aggregate status of the containers in this pod.",
                pod_status,
            ),
            Col {
                name: "Restarts",
                ty: "string",
                format: "",
                priority: 0,
                description: "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                cell: pod_restarts,
            },
            age,
            col("IP", 1, "The IP address assigned to the pod", pod_ip),
            col(
                "Node",
                1,
                "The name of the node where the pod is scheduled to run",
                pod_node,
            ),
        ],
        ("", "ConfigMap") => vec![
            name,
            Col {
                name: "Data",
                ty: "integer",
                format: "",
                priority: 0,
                description: "The number of entries in the data.",
                cell: data_count,
            },
            age,
        ],
        ("", "Secret") => vec![
            name,
            col("Type", 0, "The type of the secret", secret_type),
            Col {
                name: "Data",
                ty: "integer",
                format: "",
                priority: 0,
                description: "The number of entries in the data.",
                cell: data_count,
            },
            age,
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name,
            col("Holder", 0, "The holder of the lease.", lease_holder),
            age,
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            name,
            col(
                "AddressType",
                0,
                "The type of addresses in this slice.",
                eps_address_type,
            ),
            col("Ports", 0, "The ports of the endpoints.", eps_ports),
            col(
                "Endpoints",
                0,
                "The addresses of the endpoints.",
                eps_endpoints,
            ),
            age,
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![
            name,
            Col {
                name: "Created At",
                ty: "date",
                format: "",
                priority: 0,
                description: AGE_DESC,
                cell: created_at,
            },
        ],
        _ => vec![name, age],
    }
}

/// The column definitions for a resource.
pub fn columns(def: &ResourceDef) -> Vec<Value> {
    if let Some(crd) = &def.crd {
        let mut cols = vec![column("Name", "string", "name", NAME_DESC, 0)];
        if crd.printer_columns.is_empty() {
            cols.push(column("Age", "date", "", AGE_DESC, 0));
            return cols;
        }
        for c in &crd.printer_columns {
            cols.push(column(
                c.get("name").and_then(Value::as_str).unwrap_or(""),
                c.get("type").and_then(Value::as_str).unwrap_or("string"),
                c.get("format").and_then(Value::as_str).unwrap_or(""),
                c.get("description").and_then(Value::as_str).unwrap_or(""),
                c.get("priority").and_then(Value::as_i64).unwrap_or(0),
            ));
        }
        return cols;
    }
    builtin_cols(&def.group, &def.kind)
        .iter()
        .map(|c| column(c.name, c.ty, c.format, c.description, c.priority))
        .collect()
}

/// One row for an object.
pub fn row(def: &ResourceDef, obj: &Value, include: IncludeObject, now: DateTime<Utc>) -> Value {
    let cells: Vec<Value> = match &def.crd {
        Some(crd) => {
            let mut cells = vec![name_cell(obj, now)];
            if crd.printer_columns.is_empty() {
                cells.push(age_cell(obj, now));
            } else {
                cells.extend(crd.printer_columns.iter().map(|c| crd_cell(obj, c, now)));
            }
            cells
        }
        None => builtin_cols(&def.group, &def.kind)
            .iter()
            .map(|c| (c.cell)(obj, now))
            .collect(),
    };
    let mut r = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => r["object"] = partial_metadata(obj),
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

/// `PartialObjectMetadata` for an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A Table of objects; `with_columns` false omits the column definitions (later watch events).
pub fn table(
    def: &ResourceDef,
    objs: &[Value],
    rv: Option<u64>,
    include: IncludeObject,
    with_columns: bool,
) -> Value {
    let now = Utc::now();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": if with_columns { Value::Array(columns(def)) } else { Value::Null },
        "rows": objs.iter().map(|o| row(def, o, include, now)).collect::<Vec<_>>(),
    });
    if let Some(rv) = rv {
        t["metadata"]["resourceVersion"] = json!(rv.to_string());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::Registry;

    #[test]
    fn human_duration_matches_kubernetes() {
        for (s, want) in [
            (-5, "<invalid>"),
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (2 * 86400, "2d"),
            (2 * 86400 + 3600, "2d1h"),
            (8 * 86400, "8d"),
            (3 * 365 * 86400, "3y"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn json_path_forms() {
        let o = json!({"spec": {"a": [{"b": 1}, {"b": 2}], "s": "x"}});
        assert_eq!(json_path(&o, ".spec.s"), vec![&json!("x")]);
        assert_eq!(json_path(&o, ".spec.a[1].b"), vec![&json!(2)]);
        assert_eq!(json_path(&o, ".spec.a[*].b"), vec![&json!(1), &json!(2)]);
        assert!(json_path(&o, ".spec.missing").is_empty());
    }

    #[test]
    fn crd_columns_render_arrays_as_json() {
        let mut reg = Registry::default();
        let crd = json!({
            "metadata": {"name": "ws.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster",
                "names": {"plural": "ws", "kind": "W"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "additionalPrinterColumns": [
                        {"name": "Addresses", "type": "string", "jsonPath": ".spec.addresses"},
                        {"name": "Count", "type": "integer", "jsonPath": ".status.count"},
                        {"name": "Missing", "type": "string", "jsonPath": ".status.none"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                    ]}]}
        });
        reg.register_crd(&crd).unwrap();
        let def = reg.lookup("example.com", "v1", "ws").unwrap();
        let created = (Utc::now() - chrono::Duration::seconds(300))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let obj = json!({"metadata": {"name": "w", "creationTimestamp": created},
            "spec": {"addresses": ["192.0.2.0/24"]}, "status": {"count": 3}});
        let t = table(&def, &[obj], Some(7), IncludeObject::Metadata, true);
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 5);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "[\"192.0.2.0/24\"]");
        assert_eq!(cells[2], 3);
        assert_eq!(cells[3], Value::Null);
        assert_eq!(cells[4], "5m");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn node_and_namespace_rows() {
        let reg = Registry::default();
        let def = reg.lookup("", "v1", "nodes").unwrap();
        let obj = json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"},
                "addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}});
        let r = row(&def, &obj, IncludeObject::None, Utc::now());
        assert_eq!(r["cells"][1], "Ready,SchedulingDisabled");
        assert_eq!(r["cells"][2], "control-plane");
        assert_eq!(r["cells"][4], "v1.33.0");
        assert_eq!(r["cells"][5], "192.0.2.11");
        assert_eq!(columns(&def).len(), r["cells"].as_array().unwrap().len());
        let def = reg.lookup("", "v1", "namespaces").unwrap();
        let r = row(
            &def,
            &json!({"metadata": {"name": "x"}, "status": {"phase": "Active"}}),
            IncludeObject::None,
            Utc::now(),
        );
        assert_eq!(r["cells"][1], "Active");
    }

    #[test]
    fn every_builtin_row_matches_its_columns() {
        let reg = Registry::default();
        for def in reg.all() {
            let r = row(
                def,
                &json!({"metadata": {"name": "x"}}),
                IncludeObject::None,
                Utc::now(),
            );
            assert_eq!(
                columns(def).len(),
                r["cells"].as_array().unwrap().len(),
                "{}",
                def.kind
            );
        }
    }

    #[test]
    fn service_row() {
        let reg = Registry::default();
        let def = reg.lookup("", "v1", "services").unwrap();
        let obj = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {}}});
        let r = row(&def, &obj, IncludeObject::None, Utc::now());
        assert_eq!(r["cells"][1], "LoadBalancer");
        assert_eq!(r["cells"][2], "10.96.0.9");
        assert_eq!(r["cells"][3], "<pending>");
        assert_eq!(r["cells"][4], "80:30080/TCP,53/UDP");
        assert_eq!(r["cells"][6], "<none>");
        assert!(r.get("object").is_none());
    }
}
