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

/// The column definitions for a resource.
pub fn columns(def: &ResourceDef) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        0,
    );
    let age_col = column(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
        0,
    );
    if let Some(crd) = &def.crd {
        if crd.printer_columns.is_empty() {
            return vec![
                name,
                column(
                    "Age",
                    "date",
                    "",
                    age_col["description"].as_str().unwrap_or(""),
                    0,
                ),
            ];
        }
        let mut cols = vec![name];
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
    if def.group.is_empty() && def.kind == "Service" {
        return vec![
            name,
            column("Type", "string", "", "The type of the service.", 0),
            column(
                "Cluster-IP",
                "string",
                "",
                "The cluster IP of the service.",
                0,
            ),
            column(
                "External-IP",
                "string",
                "",
                "The external IP of the service.",
                0,
            ),
            column("Port(s)", "string", "", "The ports of the service.", 0),
            age_col,
            column("Selector", "string", "", "The selector of the service.", 1),
        ];
    }
    vec![name, age_col]
}

fn service_cells(obj: &Value) -> Vec<Value> {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let cluster_ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("<none>");
    let mut external: Vec<String> = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let external_ip = match ty {
        "LoadBalancer" => {
            for i in obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(s) = i
                    .get("ip")
                    .or_else(|| i.get("hostname"))
                    .and_then(Value::as_str)
                {
                    external.push(s.to_string());
                }
            }
            if external.is_empty() {
                "<pending>".to_string()
            } else {
                external.join(",")
            }
        }
        "ExternalName" => spec
            .get("externalName")
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_string(),
        _ => {
            if external.is_empty() {
                "<none>".to_string()
            } else {
                external.join(",")
            }
        }
    };
    let ports: Vec<String> = spec
        .get("ports")
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
    let selector: Vec<String> = spec
        .get("selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    vec![
        json!(ty),
        json!(cluster_ip),
        json!(external_ip),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        Value::Null, // replaced by AGE below
        json!(if selector.is_empty() {
            "<none>".to_string()
        } else {
            selector.join(",")
        }),
    ]
}

/// One row for an object.
pub fn row(def: &ResourceDef, obj: &Value, include: IncludeObject, now: DateTime<Utc>) -> Value {
    let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    let mut cells = vec![name];
    if let Some(crd) = &def.crd {
        if crd.printer_columns.is_empty() {
            cells.push(age(created, now));
        } else {
            for c in &crd.printer_columns {
                cells.push(crd_cell(obj, c, now));
            }
        }
    } else if def.group.is_empty() && def.kind == "Service" {
        let mut rest = service_cells(obj);
        rest[4] = age(created, now);
        cells.extend(rest);
    } else {
        cells.push(age(created, now));
    }
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
