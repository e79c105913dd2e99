//! What the programs' caches drop from every object they keep.
//!
//! The controller and every speaker cache every Service of the cluster for as long as they run,
//! so whatever a cached object keeps is paid for once per Service. Each program keeps exactly the
//! fields its own rules read (`controller/src/trim.rs`, `speaker/src/trim.rs`); the metadata that
//! no Lodestone program reads is dropped here, once, for both.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Drops the metadata no Lodestone program reads on a Service, EndpointSlice, Node or Namespace:
/// managedFields (most of a small object's size), ownerReferences, finalizers, generateName and
/// creationTimestamp. Kept: name, namespace, uid and resourceVersion (Events refer to the object
/// by them), generation, deletionTimestamp, labels and annotations (each program filters those).
pub fn unread_metadata(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    m.creation_timestamp = None;
}

/// Keeps only the annotations named in `keep` (none left: no map at all). Annotations such as
/// kubectl's last-applied-configuration can be as large as the object itself.
pub fn keep_annotations(m: &mut ObjectMeta, keep: &[&str]) {
    m.annotations = m.annotations.take().and_then(|mut a| {
        a.retain(|k, _| keep.contains(&k.as_str()));
        (!a.is_empty()).then_some(a)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full() -> ObjectMeta {
        serde_json::from_value(json!({
            "name": "web", "namespace": "default", "uid": "u-1", "resourceVersion": "42",
            "generation": 3, "generateName": "we", "creationTimestamp": "2026-11-22T00:00:00Z",
            "deletionTimestamp": "2026-11-23T00:00:00Z",
            "labels": {"app": "web"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}",
                            "lodestone.dev/address-pool": "blue"},
            "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "x"}],
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
        }))
        .unwrap()
    }

    #[test]
    fn drops_only_what_nobody_reads() {
        let mut m = full();
        unread_metadata(&mut m);
        assert_eq!(m.name.as_deref(), Some("web"));
        assert_eq!(m.namespace.as_deref(), Some("default"));
        assert_eq!(m.uid.as_deref(), Some("u-1"));
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.generation, Some(3));
        assert!(m.deletion_timestamp.is_some());
        assert_eq!(m.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(m.annotations.as_ref().unwrap().len(), 2);
        assert!(m.managed_fields.is_none() && m.owner_references.is_none());
        assert!(m.finalizers.is_none() && m.generate_name.is_none());
        assert!(m.creation_timestamp.is_none());
    }

    #[test]
    fn keeps_the_named_annotations_only() {
        let mut m = full();
        keep_annotations(
            &mut m,
            &["lodestone.dev/address-pool", "metallb.io/address-pool"],
        );
        let a = m.annotations.as_ref().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a["lodestone.dev/address-pool"], "blue");
        keep_annotations(&mut m, &["other"]);
        assert!(m.annotations.is_none());
    }
}
