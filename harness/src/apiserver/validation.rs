//! ObjectMeta validation with kube-apiserver's messages: object names (per kind), label keys
//! and values, annotation keys and total size.

use serde_json::Value;

use super::errors::Cause;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

fn invalid(field: &str, value: &str, why: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {value:?}: {why}"),
        field: field.into(),
    }
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_label_value_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The name rule kube-apiserver applies to a kind.
pub fn validate_name(kind: &str, name: &str) -> Option<Cause> {
    let field = "metadata.name";
    match kind {
        "Service" => {
            let ok = is_dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase());
            (!ok).then(|| invalid(field, name, format!("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035_LABEL_FMT}')")))
        }
        "Namespace" => (!is_dns1123_label(name)).then(|| invalid(field, name, format!("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"))),
        // Event names carry timestamps and dots; kube only requires a path segment.
        "Event" => (name.contains('/') || name == "." || name == "..").then(|| invalid(field, name, "may not contain '/'".into())),
        _ => (!is_dns1123_subdomain(name)).then(|| invalid(field, name, format!("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"))),
    }
}

fn qualified_name_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Some(format!(
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"
        ));
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !is_label_value_chars(name) || name.matches('/').count() > 0 {
        return Some(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_NAME_FMT}')"
        ));
    }
    None
}

/// Labels and annotations of an object.
pub fn validate_meta(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    for (k, v) in labels.into_iter().flatten() {
        if let Some(p) = qualified_name_problem(k) {
            out.push(invalid("metadata.labels", k, p));
        }
        match v.as_str() {
            Some(s) if s.is_empty() || (s.len() <= 63 && is_label_value_chars(s)) => {}
            Some(s) if s.len() > 63 => out.push(invalid("metadata.labels", s, "must be no more than 63 characters".into())),
            Some(s) => out.push(invalid("metadata.labels", s, format!("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '{LABEL_VALUE_FMT}')"))),
            None => out.push(invalid("metadata.labels", &v.to_string(), "must be a string".into())),
        }
    }
    let annotations = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let mut total = 0;
    for (k, v) in annotations.into_iter().flatten() {
        if let Some(p) = qualified_name_problem(&k.to_lowercase()) {
            out.push(invalid("metadata.annotations", k, p));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(Cause {
            reason: "FieldValueTooLong".into(),
            message: format!("Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
            field: "metadata.annotations".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn names_per_kind() {
        assert!(validate_name("Service", "web").is_none());
        assert!(validate_name("Service", "1web").is_some());
        assert!(validate_name("Service", "a.b").is_some());
        assert!(validate_name("ConfigMap", "a.b").is_none());
        assert!(validate_name("ConfigMap", "A").is_some());
        assert!(validate_name("Namespace", "a.b").is_some());
        assert!(validate_name("Event", "web.17a8b3c").is_none());
        let c = validate_name("Service", "Web").unwrap();
        assert_eq!(c.field, "metadata.name");
        assert!(
            c.message
                .starts_with("Invalid value: \"Web\": a DNS-1035 label")
        );
    }

    #[test]
    fn labels_and_annotations() {
        let ok = json!({"metadata": {"labels": {"app": "web", "lodestone.dev/pool": "", "a_b.c": "x-1"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{ anything }"}}});
        assert!(validate_meta(&ok).is_empty());
        let bad = json!({"metadata": {"labels": {"app": "bad value!", "Bad/x": "v", "x": "a".repeat(64)}}});
        let causes = validate_meta(&bad);
        assert_eq!(causes.len(), 3, "{causes:?}");
        assert!(causes.iter().all(|c| c.field == "metadata.labels"));
    }

    proptest! {
        #[test]
        fn generated_valid_labels_pass(k in "[a-z][a-z0-9]{0,10}", v in "([A-Za-z0-9]([A-Za-z0-9_.-]{0,20}[A-Za-z0-9])?)?") {
            let o = json!({"metadata": {"labels": {k: v}}});
            prop_assert!(validate_meta(&o).is_empty());
        }
    }
}
