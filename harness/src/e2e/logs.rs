//! Checking a binary's `--log-json` output: every line about a Kubernetes object must name it
//! in a structured field (`service = "namespace/name"`, `pool = "name"`), so that
//! `grep default/web` or a log query on the field finds every line about that object.
//!
//! A line is *about* an object when one of its fields (the message included) contains the
//! object's key or one of its addresses as a whole word. It then must carry one of the object
//! fields, and that field must name one of the objects the test created.

use std::net::IpAddr;

use serde_json::Value;

/// What a log is checked against.
#[derive(Clone, Debug, Default)]
pub struct ObjectNames<'a> {
    /// Object fields accepted as naming the object (e.g. `["service", "pool"]`).
    pub fields: &'a [&'a str],
    /// Keys of the objects the test created (`namespace/name`, or the name when cluster-scoped).
    pub objects: &'a [&'a str],
    /// Addresses those objects hold (a line mentioning one is about its Service).
    pub addresses: &'a [IpAddr],
    /// Targets (module paths) left out, each with the reason in the caller's comment.
    pub exempt_targets: &'a [&'a str],
}

/// The lines of `log` that break the rule (module docs), each with why; also every line that
/// is not a JSON object, since with `--log-json` every line must be one, and every line with a
/// key twice (a field called `message` next to the message: parsers keep one or the other).
pub fn unnamed_object_lines(log: &str, names: &ObjectNames<'_>) -> Vec<String> {
    let mut bad = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        if let Err(e) = serde_json::from_str::<UniqueKeys>(line) {
            bad.push(format!("{e}: {line}"));
            continue;
        }
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
            bad.push(format!("not a JSON object: {line}"));
            continue;
        };
        let target = obj.get("target").and_then(Value::as_str).unwrap_or("");
        if names.exempt_targets.iter().any(|t| target.starts_with(t)) {
            continue;
        }
        let mut texts = Vec::new();
        collect_strings(obj.get("fields").unwrap_or(&Value::Null), &mut texts);
        let words: Vec<&str> = texts.iter().flat_map(|t| words(t)).collect();
        let mentions_object = names.objects.iter().any(|o| words.contains(o));
        let mentions_address = names
            .addresses
            .iter()
            .any(|a| words.iter().any(|w| w.parse::<IpAddr>().ok() == Some(*a)));
        if !(mentions_object || mentions_address) {
            continue;
        }
        let named = object_field_values(&obj, names.fields).iter().any(|v| {
            names
                .objects
                .iter()
                .any(|o| v.split(',').any(|part| part == *o))
        });
        if !named {
            bad.push(format!(
                "about an object but no {} field naming one of {:?}: {line}",
                names.fields.join("/"),
                names.objects
            ));
        }
    }
    bad
}

/// Values of the object fields on the event and on its spans (a span field names the object
/// for every line inside it).
fn object_field_values(obj: &serde_json::Map<String, Value>, fields: &[&str]) -> Vec<String> {
    let mut scopes: Vec<&Value> = Vec::new();
    scopes.extend(obj.get("fields"));
    scopes.extend(obj.get("span"));
    if let Some(Value::Array(spans)) = obj.get("spans") {
        scopes.extend(spans.iter());
    }
    scopes
        .iter()
        .flat_map(|scope| fields.iter().filter_map(|f| scope.get(*f)))
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Deserializes any JSON, failing on an object with a repeated key (serde_json's `Value`
/// silently keeps the last one).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON without repeated object keys")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "key {key:?} appears twice"
                )));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// Words that may be an object key or an address: runs of `[A-Za-z0-9./:_-]`, with trailing
/// sentence punctuation removed.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "./:_-".contains(c)))
        .map(|w| w.trim_end_matches(['.', ':']))
        .filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(log: &str) -> Vec<String> {
        let addresses = [
            "192.0.2.100".parse().unwrap(),
            "2001:db8::100".parse().unwrap(),
        ];
        unnamed_object_lines(
            log,
            &ObjectNames {
                fields: &["service", "pool"],
                objects: &["default/web", "default/db", "blue"],
                addresses: &addresses,
                exempt_targets: &["x::announcer"],
            },
        )
    }

    #[test]
    fn named_lines_pass_and_unnamed_ones_are_reported() {
        let good = [
            r#"{"level":"INFO","fields":{"message":"announcing","service":"default/web","ip":"192.0.2.100"},"target":"x::run"}"#,
            r#"{"level":"INFO","fields":{"message":"now owns","service":"default/db,default/web","ip":"2001:db8::100"},"target":"x::run"}"#,
            r#"{"level":"WARN","fields":{"message":"IPAddressPool is invalid","pool":"blue"},"target":"x"}"#,
            r#"{"level":"INFO","fields":{"message":"x 192.0.2.100"},"span":{"service":"default/web"},"target":"x"}"#,
            // About nothing the test created: 192.0.2.10 is a node, not 192.0.2.100.
            r#"{"level":"INFO","fields":{"message":"membership started","advertise":"192.0.2.10:7946"},"target":"x"}"#,
            r#"{"level":"DEBUG","fields":{"message":"claim","ip":"192.0.2.100"},"target":"x::announcer"}"#,
        ];
        assert!(
            check(&good.join("\n")).is_empty(),
            "{:?}",
            check(&good.join("\n"))
        );
        let bad = [
            r#"{"level":"INFO","fields":{"message":"gratuitous ARP","ip":"192.0.2.100"},"target":"x::run"}"#,
            r#"{"level":"INFO","fields":{"message":"released default/web."},"target":"x"}"#,
            r#"{"level":"INFO","fields":{"message":"oops","service":"default/other","ip":"2001:db8::100"},"target":"x"}"#,
            "plain text line",
            r#"{"level":"DEBUG","fields":{"message":"condition written","service":"default/web","message":"announced"},"target":"x"}"#,
        ];
        assert_eq!(
            check(&bad.join("\n")).len(),
            5,
            "{:?}",
            check(&bad.join("\n"))
        );
    }
}
