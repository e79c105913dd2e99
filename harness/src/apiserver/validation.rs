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

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` without the length limit (reported on its own).
fn is_dns1123_label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_label_value_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Problems with `name` under the rule kube-apiserver applies to objects of `group`/`kind`, as
/// its `NameIsDNSSubdomain`-style functions list them (one cause per message). `prefix`: it is a
/// `generateName`, whose trailing '-' is allowed (but not a trailing '.': "web." is refused).
/// `kind` is empty for custom resources (always a DNS subdomain).
pub fn name_problems(group: &str, kind: &str, name: &str, prefix: bool) -> Vec<String> {
    // kube masks one trailing '-' of a prefix (`maskTrailingDash`), since a suffix follows.
    let masked;
    let name = match name.strip_suffix('-') {
        Some(rest) if prefix && name.len() > 1 => {
            masked = format!("{rest}a");
            masked.as_str()
        }
        _ => name,
    };
    let mut out = Vec::new();
    match (group, kind) {
        ("", "Service") => {
            if name.len() > 63 {
                out.push("must be no more than 63 characters".to_string());
            }
            if !(is_dns1123_label_chars(name) && name.starts_with(|c: char| c.is_ascii_lowercase()))
            {
                out.push(format!("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035_LABEL_FMT}')"));
            }
        }
        ("", "Namespace") => {
            if name.len() > 63 {
                out.push("must be no more than 63 characters".to_string());
            }
            if !is_dns1123_label_chars(name) {
                out.push(format!("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"));
            }
        }
        // Core Events keep the legacy rule (a path segment), events.k8s.io ones do not.
        ("", "Event") => {
            if name == "." || name == ".." {
                out.push(format!("may not be '{name}'"));
            }
            for bad in ["/", "%"] {
                if name.contains(bad) {
                    out.push(format!("may not contain '{bad}'"));
                }
            }
        }
        _ => {
            if name.len() > 253 {
                out.push("must be no more than 253 characters".to_string());
            }
            if !name.split('.').all(is_dns1123_label_chars) {
                out.push(format!("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"));
            }
        }
    }
    out
}

/// `metadata.name` and `metadata.generateName` of a new object, as kube-apiserver's
/// `ValidateObjectMeta` checks them: the generated `name` and the `generateName` prefix each
/// against the kind's rule ([`name_problems`]).
pub fn validate_names(group: &str, kind: &str, name: &str, generate_name: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    if !generate_name.is_empty() {
        for why in name_problems(group, kind, generate_name, true) {
            out.push(invalid("metadata.generateName", generate_name, why));
        }
    }
    for why in name_problems(group, kind, name, false) {
        out.push(invalid("metadata.name", name, why));
    }
    out
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

fn required(field: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        message: "Required value".into(),
        field: field.into(),
    }
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    Cause {
        reason: "FieldValueNotSupported".into(),
        message: format!(
            "Unsupported value: {value:?}: supported values: {}",
            list.join(", ")
        ),
        field: field.into(),
    }
}

/// `metav1.Condition` lists as apimachinery's `ValidateConditions` checks them: `type` a
/// qualified name and unique, `status` True, False or Unknown, `lastTransitionTime` and
/// `reason` set, `reason` CamelCase-ish and at most 1024 characters, `message` at most 32768,
/// `observedGeneration` not negative.
pub fn validate_conditions(conditions: Option<&Value>, base: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let list = conditions.and_then(Value::as_array);
    for (i, c) in list.into_iter().flatten().enumerate() {
        let path = format!("{base}[{i}]");
        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
        let t = s("type");
        if t.is_empty() {
            out.push(invalid(
                &format!("{path}.type"),
                t,
                "name part must be non-empty".into(),
            ));
        } else if let Some(p) = qualified_name_problem(t) {
            out.push(invalid(&format!("{path}.type"), t, p));
        }
        if !seen.insert(t.to_string()) {
            out.push(Cause {
                reason: "FieldValueDuplicate".into(),
                message: format!("Duplicate value: {t:?}"),
                field: format!("{path}.type"),
            });
        }
        let status = s("status");
        if !matches!(status, "True" | "False" | "Unknown") {
            out.push(not_supported(
                &format!("{path}.status"),
                status,
                &["False", "True", "Unknown"],
            ));
        }
        if c.get("observedGeneration")
            .and_then(Value::as_i64)
            .is_some_and(|g| g < 0)
        {
            out.push(invalid(
                &format!("{path}.observedGeneration"),
                "",
                "must be greater than or equal to zero".into(),
            ));
        }
        if s("lastTransitionTime").is_empty() {
            out.push(Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: must be set".into(),
                field: format!("{path}.lastTransitionTime"),
            });
        }
        let reason = s("reason");
        if reason.is_empty() {
            out.push(Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: must be set".into(),
                field: format!("{path}.reason"),
            });
        } else {
            if !is_condition_reason(reason) {
                out.push(invalid(
                    &format!("{path}.reason"),
                    reason,
                    "a condition reason must start with alphabetic character, optionally followed by a string of alphanumeric characters or '_,:', and must end with an alphanumeric character or '_' (e.g. 'my_name',  or 'MY_NAME',  or 'MyName',  or 'ReasonA,ReasonB',  or 'ReasonA:ReasonB', regex used for validation is '[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?')".into(),
                ));
            }
            if reason.len() > 1024 {
                out.push(Cause {
                    reason: "FieldValueTooLong".into(),
                    message: "Too long: may not be more than 1024 bytes".into(),
                    field: format!("{path}.reason"),
                });
            }
        }
        if s("message").len() > 32768 {
            out.push(Cause {
                reason: "FieldValueTooLong".into(),
                message: "Too long: may not be more than 32768 bytes".into(),
                field: format!("{path}.message"),
            });
        }
    }
    out
}

/// `[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?`
fn is_condition_reason(r: &str) -> bool {
    let b = r.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b',' | b':');
    match b {
        [] => false,
        [first] => first.is_ascii_alphabetic(),
        [first, mid @ .., last] => {
            first.is_ascii_alphabetic()
                && mid.iter().all(inner)
                && (last.is_ascii_alphanumeric() || *last == b'_')
        }
    }
}

/// A Service's status as kube-apiserver validates it: `loadBalancer.ingress` entries (`ip` an IP
/// address, `ipMode` one of VIP and Proxy and only alongside `ip`, `hostname` not an IP) and
/// `conditions` ([`validate_conditions`]).
pub fn validate_service_status(obj: &Value) -> Vec<Cause> {
    let mut out = validate_conditions(obj.pointer("/status/conditions"), "status.conditions");
    let ingress = obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array);
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let path = format!("status.loadBalancer.ingress[{i}]");
        let ip = ing.get("ip").and_then(Value::as_str).unwrap_or("");
        if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
            out.push(invalid(
                &format!("{path}.ip"),
                ip,
                "must be a valid IP address".into(),
            ));
        }
        if let Some(mode) = ing.get("ipMode").and_then(Value::as_str) {
            if ip.is_empty() {
                out.push(Cause {
                    reason: "FieldValueForbidden".into(),
                    message: "Forbidden: may not be specified when `ip` is not set".into(),
                    field: format!("{path}.ipMode"),
                });
            } else if mode != "VIP" && mode != "Proxy" {
                out.push(not_supported(
                    &format!("{path}.ipMode"),
                    mode,
                    &["Proxy", "VIP"],
                ));
            }
        }
        let host = ing.get("hostname").and_then(Value::as_str).unwrap_or("");
        if !host.is_empty() {
            if host.parse::<std::net::IpAddr>().is_ok() {
                out.push(invalid(
                    &format!("{path}.hostname"),
                    host,
                    "must be a DNS name, not an IP address".into(),
                ));
            } else if !is_dns1123_subdomain(host) {
                out.push(invalid(
                    &format!("{path}.hostname"),
                    host,
                    format!("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"),
                ));
            }
        }
    }
    out
}

/// An Event created through events.k8s.io/v1, with kube-apiserver's strict rules for that API:
/// `eventTime`, `reportingController`, `reportingInstance`, `action` and `reason` required,
/// `type` Normal or Warning, length limits, and the deprecated core fields unset.
pub fn validate_events_v1_event(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
    if s("eventTime").is_empty() {
        out.push(required("eventTime"));
    } else {
        for (field, limit) in [
            ("reportingController", usize::MAX),
            ("reportingInstance", 128),
            ("action", 128),
            ("reason", 128),
        ] {
            let v = s(field);
            if v.is_empty() {
                out.push(required(field));
            } else if v.len() > limit {
                out.push(invalid(
                    field,
                    "",
                    format!("can have at most {limit} characters"),
                ));
            }
        }
        if let Some(p) = Some(s("reportingController"))
            .filter(|v| !v.is_empty())
            .and_then(qualified_name_problem)
        {
            out.push(invalid("reportingController", s("reportingController"), p));
        }
        if s("note").len() > 1024 {
            out.push(invalid(
                "note",
                "",
                "can have at most 1024 characters".into(),
            ));
        }
    }
    let t = s("type");
    if t != "Normal" && t != "Warning" {
        out.push(invalid("type", "", format!("has invalid value: {t}")));
    }
    for field in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "deprecatedSource",
    ] {
        let set = match obj.get(field) {
            None | Some(Value::Null) => false,
            Some(Value::Number(n)) => n.as_i64() != Some(0),
            Some(Value::Object(m)) => m
                .values()
                .any(|v| v.as_str().is_some_and(|x| !x.is_empty())),
            Some(Value::String(x)) => !x.is_empty(),
            Some(_) => true,
        };
        if set {
            out.push(invalid(field, "", "needs to be unset".into()));
        }
    }
    out
}

/// An EndpointSlice: `addressType` IPv4, IPv6 or FQDN; each endpoint has 1 to 100 addresses,
/// IP addresses of that family for IPv4 and IPv6.
pub fn validate_endpoint_slice(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let family = obj.get("addressType").and_then(Value::as_str).unwrap_or("");
    match family {
        "" => out.push(required("addressType")),
        "IPv4" | "IPv6" | "FQDN" => {}
        other => out.push(not_supported(
            "addressType",
            other,
            &["FQDN", "IPv4", "IPv6"],
        )),
    }
    let endpoints = obj.get("endpoints").and_then(Value::as_array);
    for (i, ep) in endpoints.into_iter().flatten().enumerate() {
        let path = format!("endpoints[{i}].addresses");
        let addrs = ep.get("addresses").and_then(Value::as_array);
        match addrs.map(Vec::len) {
            None | Some(0) => out.push(required(&path)),
            Some(n) if n > 100 => out.push(Cause {
                reason: "FieldValueTooMany".into(),
                message: format!("Too many: {n}: must have at most 100 items"),
                field: path.clone(),
            }),
            Some(_) => {}
        }
        for (j, a) in addrs.into_iter().flatten().enumerate() {
            let a = a.as_str().unwrap_or("");
            let ok = match family {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => true,
            };
            if !ok {
                out.push(invalid(
                    &format!("{path}[{j}]"),
                    a,
                    format!("must be a valid {family} address"),
                ));
            }
        }
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
        let ok = |g: &str, k: &str, n: &str| name_problems(g, k, n, false).is_empty();
        assert!(ok("", "Service", "web"));
        assert!(!ok("", "Service", "1web"));
        assert!(!ok("", "Service", "a.b"));
        assert!(ok("", "ConfigMap", "a.b"));
        assert!(!ok("", "ConfigMap", "A"));
        assert!(!ok("", "Namespace", "a.b"));
        assert!(ok("", "Event", "web.17a8b3c"));
        assert!(
            ok("", "Event", "Web_1.x"),
            "core Events keep the legacy rule"
        );
        assert!(ok("events.k8s.io", "Event", "web.17a8b3c"));
        assert!(!ok("events.k8s.io", "Event", "Web.1"));
        assert!(!ok("lodestone.dev", "", "a..b"));
        assert!(!ok("", "ConfigMap", &"a".repeat(254)));
        let c = validate_names("", "Service", "Web", "").remove(0);
        assert_eq!(c.field, "metadata.name");
        assert!(
            c.message
                .starts_with("Invalid value: \"Web\": a DNS-1035 label")
        );
    }

    #[test]
    fn generate_name_may_end_in_a_dash_but_not_a_dot() {
        assert!(validate_names("events.k8s.io", "Event", "web-x7k2p", "web-").is_empty());
        let causes = validate_names("events.k8s.io", "Event", "web.x7k2p", "web.");
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "metadata.generateName");
        assert!(
            causes[0].message.starts_with(
                "Invalid value: \"web.\": a lowercase RFC 1123 subdomain must consist of"
            ),
            "{}",
            causes[0].message
        );
        assert!(validate_names("", "Service", "web-abcde", "web-").is_empty());
        assert_eq!(validate_names("", "Service", "web.abcde", "web.").len(), 2);
        // Core Events take a trailing dot (client-go's old recorders rely on it).
        assert!(validate_names("", "Event", "web.x7k2p", "web.").is_empty());
    }

    proptest! {
        /// A name that passes is what kube's regexes accept (the length rule aside).
        #[test]
        fn subdomain_rule_matches_the_regex(n in "[a-z0-9.-]{1,20}") {
            let re = regex::Regex::new(&format!("^{DNS1123_SUBDOMAIN_FMT}$")).unwrap();
            prop_assert_eq!(name_problems("", "ConfigMap", &n, false).is_empty(), re.is_match(&n));
        }
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

    #[test]
    fn service_ingress_ip_and_ip_mode() {
        let st = |ing: Value| json!({"status": {"loadBalancer": {"ingress": [ing]}}});
        assert!(
            validate_service_status(&st(json!({"ip": "203.0.113.1", "ipMode": "VIP"}))).is_empty()
        );
        assert!(
            validate_service_status(&st(json!({"ip": "2001:db8::1", "ipMode": "Proxy"})))
                .is_empty()
        );
        assert!(validate_service_status(&st(json!({"hostname": "lb.example.com"}))).is_empty());
        assert!(validate_service_status(&json!({"status": {"loadBalancer": {}}})).is_empty());
        let fields = |v: Value| -> Vec<String> {
            validate_service_status(&v)
                .into_iter()
                .map(|c| c.field)
                .collect()
        };
        assert_eq!(
            fields(st(json!({"ip": "not-an-ip"}))),
            ["status.loadBalancer.ingress[0].ip"]
        );
        assert_eq!(
            fields(st(json!({"ip": "203.0.113.1", "ipMode": "Bogus"}))),
            ["status.loadBalancer.ingress[0].ipMode"]
        );
        assert_eq!(
            fields(st(json!({"hostname": "lb.example.com", "ipMode": "VIP"}))),
            ["status.loadBalancer.ingress[0].ipMode"]
        );
        assert_eq!(
            fields(st(json!({"hostname": "203.0.113.1"}))),
            ["status.loadBalancer.ingress[0].hostname"]
        );
    }

    #[test]
    fn events_v1_required_fields() {
        let good = json!({"eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "lodestone.dev/controller",
            "reportingInstance": "c-0", "action": "Assign", "reason": "Assigned", "type": "Normal"});
        assert!(validate_events_v1_event(&good).is_empty());
        for f in [
            "eventTime",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
        ] {
            let mut bad = good.clone();
            bad.as_object_mut().unwrap().remove(f);
            let fields: Vec<String> = validate_events_v1_event(&bad)
                .into_iter()
                .map(|c| c.field)
                .collect();
            assert_eq!(fields, [f], "without {f}");
        }
        let mut bad = good.clone();
        bad["type"] = json!("Info");
        assert_eq!(validate_events_v1_event(&bad)[0].field, "type");
        let mut bad = good.clone();
        bad["deprecatedCount"] = json!(3);
        assert_eq!(validate_events_v1_event(&bad)[0].field, "deprecatedCount");
        let mut ok = good.clone();
        ok["deprecatedCount"] = json!(0);
        assert!(validate_events_v1_event(&ok).is_empty());
    }

    #[test]
    fn endpoint_slice_address_type_and_addresses() {
        let es =
            |t: &str, addrs: Value| json!({"addressType": t, "endpoints": [{"addresses": addrs}]});
        assert!(validate_endpoint_slice(&es("IPv4", json!(["192.0.2.1"]))).is_empty());
        assert!(validate_endpoint_slice(&es("IPv6", json!(["2001:db8::1"]))).is_empty());
        assert!(validate_endpoint_slice(&json!({"addressType": "IPv4"})).is_empty());
        let fields = |v: Value| -> Vec<String> {
            validate_endpoint_slice(&v)
                .into_iter()
                .map(|c| c.field)
                .collect()
        };
        assert_eq!(fields(json!({"endpoints": []})), ["addressType"]);
        assert_eq!(fields(es("IPv5", json!(["192.0.2.1"]))), ["addressType"]);
        assert_eq!(fields(es("IPv4", json!([]))), ["endpoints[0].addresses"]);
        assert_eq!(
            fields(es("IPv4", json!(["2001:db8::1"]))),
            ["endpoints[0].addresses[0]"]
        );
    }

    #[test]
    fn conditions_follow_metav1_rules() {
        let c = |v: Value| -> Vec<String> {
            validate_conditions(Some(&json!([v])), "status.conditions")
                .into_iter()
                .map(|c| c.field)
                .collect()
        };
        let good = json!({"type": "lodestone.dev/Announced", "status": "True", "reason": "Announcing",
                          "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"});
        assert!(c(good.clone()).is_empty());
        let with = |k: &str, v: Value| {
            let mut g = good.clone();
            g[k] = v;
            g
        };
        assert_eq!(
            c(with("status", json!("Maybe"))),
            ["status.conditions[0].status"]
        );
        assert_eq!(
            c(with("reason", json!(""))),
            ["status.conditions[0].reason"]
        );
        assert_eq!(
            c(with("reason", json!("has space"))),
            ["status.conditions[0].reason"]
        );
        assert_eq!(c(with("reason", json!("A:b,C_"))), Vec::<String>::new());
        assert_eq!(
            c(with("lastTransitionTime", json!(null))),
            ["status.conditions[0].lastTransitionTime"]
        );
        assert_eq!(
            c(with("type", json!("bad type"))),
            ["status.conditions[0].type"]
        );
        assert_eq!(
            c(with("observedGeneration", json!(-1))),
            ["status.conditions[0].observedGeneration"]
        );
        let dup = validate_conditions(Some(&json!([good.clone(), good])), "status.conditions");
        assert_eq!(dup.len(), 1);
        assert_eq!(dup[0].field, "status.conditions[1].type");
    }

    proptest! {
        #[test]
        fn condition_reason_matches_the_documented_regex(r in "[A-Za-z0-9_,: -]{0,12}") {
            let re = regex::Regex::new("^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$").unwrap();
            prop_assert_eq!(is_condition_reason(&r), re.is_match(&r));
        }
    }
}
