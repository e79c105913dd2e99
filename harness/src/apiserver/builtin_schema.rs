//! Decoding of built-in kinds through their k8s-openapi types, as kube-apiserver decodes into
//! Go structs: fields the type does not have are dropped (and reported, so
//! `fieldValidation=Strict` can refuse them), `null`s vanish, and a value of the wrong type is a
//! 400 BadRequest. CRDs and kinds without an entry here pass through untouched.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why an object cannot be decoded as its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

fn roundtrip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, DecodeError> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| DecodeError(e.to_string()))?;
    serde_json::to_value(&typed).map_err(|e| DecodeError(e.to_string()))
}

/// Decode `obj` as `group`/`kind` and re-encode it; `None` when the kind has no typed decoder.
pub fn normalize(group: &str, kind: &str, obj: &Value) -> Option<Result<Value, DecodeError>> {
    use k8s_openapi::api::coordination::v1 as coordination;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    use k8s_openapi::api::events::v1 as events;
    Some(match (group, kind) {
        ("", "Service") => roundtrip::<core::Service>(obj),
        ("", "Node") => roundtrip::<core::Node>(obj),
        ("", "Pod") => roundtrip::<core::Pod>(obj),
        ("", "Namespace") => roundtrip::<core::Namespace>(obj),
        ("", "ConfigMap") => roundtrip::<core::ConfigMap>(obj),
        ("", "Secret") => roundtrip::<core::Secret>(obj),
        ("", "Event") => roundtrip::<core::Event>(obj),
        ("", "ServiceAccount") => roundtrip::<core::ServiceAccount>(obj),
        ("", "Endpoints") => roundtrip::<core::Endpoints>(obj),
        ("events.k8s.io", "Event") => roundtrip::<events::Event>(obj),
        ("discovery.k8s.io", "EndpointSlice") => roundtrip::<discovery::EndpointSlice>(obj),
        ("coordination.k8s.io", "Lease") => roundtrip::<coordination::Lease>(obj),
        _ => return None,
    })
}

/// Paths present in `before` but not in `after` (what decoding dropped), in kube's
/// `spec.a.b` / `spec.list[0].x` form. Dropped `null`s are not reported.
pub fn dropped_fields(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, bv) in b {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match a.get(k) {
                    None if bv.is_null() => {}
                    None => out.push(p),
                    Some(av) => dropped_fields(bv, av, &p, out),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                dropped_fields(bv, av, &format!("{path}[{i}]"), out);
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
    fn unknown_fields_are_dropped_and_reported() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "bogus": 1},
            "spec": {"ports": [{"port": 80, "typo": true}], "sessionAffinity": null, "nope": "x"}});
        let out = normalize("", "Service", &svc).unwrap().unwrap();
        assert_eq!(out["spec"]["ports"][0], json!({"port": 80}));
        let mut dropped = Vec::new();
        dropped_fields(&svc, &out, "", &mut dropped);
        dropped.sort();
        assert_eq!(
            dropped,
            vec!["metadata.bogus", "spec.nope", "spec.ports[0].typo"]
        );
    }

    #[test]
    fn wrong_types_are_errors_and_unknown_kinds_pass() {
        let bad = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": "eighty"}]}});
        assert!(normalize("", "Service", &bad).unwrap().is_err());
        assert!(normalize("lodestone.dev", "IPAddressPool", &bad).is_none());
    }

    #[test]
    fn known_fields_survive_unchanged() {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l", "namespace": "ns", "labels": {"a": "b"}},
            "spec": {"holderIdentity": "x", "leaseDurationSeconds": 15,
                "renewTime": "2026-01-01T00:00:05.000000Z"}});
        assert_eq!(
            normalize("coordination.k8s.io", "Lease", &lease)
                .unwrap()
                .unwrap(),
            lease
        );
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(normalize("", "Node", &node).unwrap().unwrap(), node);
    }
}
