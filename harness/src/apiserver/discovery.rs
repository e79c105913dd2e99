//! Discovery documents (legacy, non-aggregated shapes) and the minimal OpenAPI kubectl reads.

use serde_json::{Value, json};

use super::resources::{Registry, ResourceDef, STATUS_VERBS};

/// `/version`: what kube-apiserver 1.33 reports.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0",
        "gitCommit": "60a317eadfcb839692a5551a66c6ba9ed7839cbb",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T13:07:11Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis`.
pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, `None` when the group is not served.
pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    let (g, vs) = reg.groups().into_iter().find(|(g, _)| g == name)?;
    let mut v = group_json(&g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

fn resource_json(r: &ResourceDef) -> Vec<Value> {
    let mut main = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        main["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        main["categories"] = json!(r.categories);
    }
    let mut out = vec![main];
    if r.status {
        out.push(json!({
            "name": format!("{}/status", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": STATUS_VERBS,
        }));
    }
    out
}

/// `/api/v1` or `/apis/<group>/<version>`, `None` when not served.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let rs = reg.in_group_version(group, version);
    if rs.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = rs.iter().flat_map(|r| resource_json(r)).collect();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2 APIGroupDiscoveryList`): for `/api` (core)
/// or `/apis` (every named group), every version with its resources in one document.
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let groups: Vec<(String, Vec<String>)> = if core {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        reg.groups()
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = reg
                        .in_group_version(g, v)
                        .iter()
                        .map(|r| {
                            let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
                            let mut o = json!({
                                "resource": r.plural,
                                "responseKind": kind,
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular,
                                "verbs": r.verbs,
                            });
                            if !r.short_names.is_empty() {
                                o["shortNames"] = json!(r.short_names);
                            }
                            if !r.categories.is_empty() {
                                o["categories"] = json!(r.categories);
                            }
                            if r.status {
                                o["subresources"] = json!([{"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS}]);
                            }
                            o
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": vs})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per group/version.
pub fn openapi_v3_root(reg: &Registry, rv: u64) -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(String, String)> = reg
        .all()
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    for (g, v) in gvs {
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={rv:016X}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<gv path>`: paths with the GVK extension and the query parameters kubectl
/// probes for (it checks PATCH for `fieldValidation` to decide on server-side validation),
/// plus component schemas (CRD schemas as given; built-ins as open objects).
pub fn openapi_v3_gv(reg: &Registry, gv_path_str: &str) -> Option<Value> {
    let defs: Vec<_> = reg
        .all()
        .filter(|r| gv_path(&r.group, &r.version) == gv_path_str)
        .cloned()
        .collect();
    if defs.is_empty() {
        return None;
    }
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
    ]);
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for d in &defs {
        let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
        let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(d))});
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let item = if d.namespaced {
            format!(
                "/{gv_path_str}/namespaces/{{namespace}}/{}/{{name}}",
                d.plural
            )
        } else {
            format!("/{gv_path_str}/{}/{{name}}", d.plural)
        };
        let coll = item.trim_end_matches("/{name}").to_string();
        let op = |action: &str| {
            json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                "parameters": params, "responses": ok})
        };
        paths.insert(item.clone(), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
        paths.insert(coll, json!({"get": op("list"), "post": op("post")}));
        if d.status {
            paths.insert(
                format!("{item}/status"),
                json!({"get": op("get"), "put": op("put"), "patch": op("patch")}),
            );
        }
        let mut schema = d
            .crd
            .as_ref()
            .map(|c| c.schema.clone())
            .filter(|s| s.is_object())
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(schema_name(d), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn schema_name(d: &ResourceDef) -> String {
    let g = if d.group.is_empty() {
        "core"
    } else {
        d.group.as_str()
    };
    let rev: Vec<&str> = g.split('.').rev().collect();
    format!("{}.{}.{}", rev.join("."), d.version, d.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_list_has_status_subresources() {
        let reg = Registry::default();
        let l = resource_list(&reg, "", "v1").unwrap();
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"services") && names.contains(&"services/status"));
        assert!(!names.contains(&"configmaps/status"));
        assert!(resource_list(&reg, "nope", "v1").is_none());
    }

    #[test]
    fn aggregated_discovery_lists_every_resource() {
        let reg = Registry::default();
        let core = aggregated(&reg, true);
        assert_eq!(core["kind"], "APIGroupDiscoveryList");
        let v1 = &core["items"][0]["versions"][0];
        let svc = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "services")
            .unwrap();
        assert_eq!(svc["scope"], "Namespaced");
        assert_eq!(svc["subresources"][0]["subresource"], "status");
        let named = aggregated(&reg, false);
        assert!(
            named["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["metadata"]["name"] == "coordination.k8s.io")
        );
    }

    #[test]
    fn groups_and_openapi() {
        let reg = Registry::default();
        let gl = group_list(&reg);
        assert!(
            gl["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "coordination.k8s.io")
        );
        assert!(group(&reg, "discovery.k8s.io").is_some());
        let root = openapi_v3_root(&reg, 1);
        assert!(root["paths"].get("api/v1").is_some());
        let doc = openapi_v3_gv(&reg, "api/v1").unwrap();
        let p = &doc["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Service");
    }
}
