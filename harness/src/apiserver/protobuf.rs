//! Decoding of `application/vnd.kubernetes.protobuf` request bodies for the few built-in kinds
//! kubectl's `create <kind>` generators send that way (client-go's typed clients write protobuf
//! and do not fall back to JSON). Responses are always JSON, which those clients accept.
//!
//! The envelope is `k8s\0` + `runtime.Unknown{typeMeta, raw}`; `raw` is the object in the wire
//! format of k8s.io/api's generated.proto. Only the messages listed here are understood; any
//! other kind is answered with 415 as before. Go's gogo-protobuf writes non-pointer fields even
//! when empty, so empty strings, zero numbers, `false` and empty messages are dropped, as the
//! JSON encoding's `omitempty` would.

use base64::Engine;
use serde_json::{Map, Value, json};

/// How one field is read.
#[derive(Clone, Copy)]
enum F {
    Str,
    /// `bytes`, rendered base64 as in JSON.
    Bytes,
    Int,
    /// A non-pointer bool: `false` is dropped.
    Bool,
    /// A `*bool`: present means set, even when false.
    OptBool,
    Msg(&'static [Field]),
    /// `map<string,string>` (repeated entry messages).
    MapStr,
    /// `map<string,bytes>`.
    MapBytes,
    /// `repeated string`.
    RepStr,
    /// `repeated` message.
    RepMsg(&'static [Field]),
    /// `meta.v1.Time {seconds, nanos}` → RFC 3339.
    Time,
    /// `intstr.IntOrString {type, intVal, strVal}`.
    IntOrString,
}

type Field = (u32, &'static str, F);

const OWNER_REF: &[Field] = &[
    (1, "kind", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (5, "apiVersion", F::Str),
    (6, "controller", F::OptBool),
    (7, "blockOwnerDeletion", F::OptBool),
];

const OBJECT_META: &[Field] = &[
    (1, "name", F::Str),
    (2, "generateName", F::Str),
    (3, "namespace", F::Str),
    (5, "uid", F::Str),
    (6, "resourceVersion", F::Str),
    (7, "generation", F::Int),
    (8, "creationTimestamp", F::Time),
    (9, "deletionTimestamp", F::Time),
    (10, "deletionGracePeriodSeconds", F::Int),
    (11, "labels", F::MapStr),
    (12, "annotations", F::MapStr),
    (13, "ownerReferences", F::RepMsg(OWNER_REF)),
    (14, "finalizers", F::RepStr),
];

const NAMESPACE: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "spec", F::Msg(&[(1, "finalizers", F::RepStr)])),
];

const CONFIG_MAP: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapStr),
    (3, "binaryData", F::MapBytes),
    (4, "immutable", F::OptBool),
];

const SECRET: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapBytes),
    (3, "type", F::Str),
    (4, "stringData", F::MapStr),
    (5, "immutable", F::OptBool),
];

const SERVICE_ACCOUNT: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (
        2,
        "secrets",
        F::RepMsg(&[
            (1, "kind", F::Str),
            (2, "namespace", F::Str),
            (3, "name", F::Str),
            (4, "uid", F::Str),
            (5, "apiVersion", F::Str),
        ]),
    ),
    (3, "imagePullSecrets", F::RepMsg(&[(1, "name", F::Str)])),
    (4, "automountServiceAccountToken", F::OptBool),
];

const SERVICE_PORT: &[Field] = &[
    (1, "name", F::Str),
    (2, "protocol", F::Str),
    (3, "port", F::Int),
    (4, "targetPort", F::IntOrString),
    (5, "nodePort", F::Int),
    (6, "appProtocol", F::Str),
];

const SERVICE_SPEC: &[Field] = &[
    (1, "ports", F::RepMsg(SERVICE_PORT)),
    (2, "selector", F::MapStr),
    (3, "clusterIP", F::Str),
    (4, "type", F::Str),
    (5, "externalIPs", F::RepStr),
    (7, "sessionAffinity", F::Str),
    (8, "loadBalancerIP", F::Str),
    (9, "loadBalancerSourceRanges", F::RepStr),
    (10, "externalName", F::Str),
    (11, "externalTrafficPolicy", F::Str),
    (12, "healthCheckNodePort", F::Int),
    (13, "publishNotReadyAddresses", F::Bool),
    (17, "ipFamilyPolicy", F::Str),
    (18, "clusterIPs", F::RepStr),
    (19, "ipFamilies", F::RepStr),
    (20, "allocateLoadBalancerNodePorts", F::OptBool),
    (21, "loadBalancerClass", F::Str),
    (22, "internalTrafficPolicy", F::Str),
];

const SERVICE: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "spec", F::Msg(SERVICE_SPEC)),
];

const TYPE_META: &[Field] = &[(1, "apiVersion", F::Str), (2, "kind", F::Str)];

/// The schema of a kind this decoder understands.
fn schema(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    match (api_version, kind) {
        ("v1", "Namespace") => Some(NAMESPACE),
        ("v1", "ConfigMap") => Some(CONFIG_MAP),
        ("v1", "Secret") => Some(SECRET),
        ("v1", "ServiceAccount") => Some(SERVICE_ACCOUNT),
        ("v1", "Service") => Some(SERVICE),
        _ => None,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
        let end = self.pos.checked_add(len).ok_or("length overflow")?;
        let out = self.buf.get(self.pos..end).ok_or("truncated field")?;
        self.pos = end;
        Ok(out)
    }

    /// Next `(field number, wire type)`, `None` at the end.
    fn tag(&mut self) -> Result<Option<(u32, u8)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let t = self.varint()?;
        let field = u32::try_from(t >> 3).map_err(|_| "field number overflow")?;
        Ok(Some((field, (t & 7) as u8)))
    }

    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            w => Err(format!("unsupported wire type {w}")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), String> {
        let end = self.pos.checked_add(n).ok_or("overflow")?;
        if end > self.buf.len() {
            return Err("truncated field".into());
        }
        self.pos = end;
        Ok(())
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in a string field".to_string())
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), String> {
    let mut r = Reader { buf: b, pos: 0 };
    let (mut k, mut v) = (String::new(), json!(""));
    while let Some((f, w)) = r.tag()? {
        match (f, w) {
            (1, 2) => k = utf8(r.bytes()?)?,
            (2, 2) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?));
            }
            (2, 2) => v = json!(utf8(r.bytes()?)?),
            (_, w) => r.skip(w)?,
        }
    }
    Ok((k, v))
}

fn decode_message(buf: &[u8], fields: &[Field]) -> Result<Map<String, Value>, String> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Map::new();
    while let Some((num, wire)) = r.tag()? {
        let Some((_, name, kind)) = fields.iter().find(|(n, _, _)| *n == num) else {
            r.skip(wire)?;
            continue;
        };
        let name = name.to_string();
        let expect_len = |w: u8| {
            if w == 2 {
                Ok(())
            } else {
                Err(format!("field {name}: wire type {w}"))
            }
        };
        match *kind {
            F::Str => {
                expect_len(wire)?;
                let s = utf8(r.bytes()?)?;
                if !s.is_empty() {
                    out.insert(name, json!(s));
                }
            }
            F::Bytes => {
                expect_len(wire)?;
                out.insert(
                    name,
                    json!(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
                );
            }
            F::Int => {
                // Varints carry two's-complement int64/int32 values.
                let v = r.varint()? as i64;
                if v != 0 {
                    out.insert(name, json!(v));
                }
            }
            F::Bool => {
                if r.varint()? != 0 {
                    out.insert(name, json!(true));
                }
            }
            F::OptBool => {
                let v = r.varint()? != 0;
                out.insert(name, json!(v));
            }
            F::Msg(sub) => {
                expect_len(wire)?;
                let m = decode_message(r.bytes()?, sub)?;
                if !m.is_empty() {
                    out.insert(name, Value::Object(m));
                }
            }
            F::MapStr | F::MapBytes => {
                expect_len(wire)?;
                let (k, v) = map_entry(r.bytes()?, matches!(kind, F::MapBytes))?;
                let entry = out.entry(name).or_insert_with(|| json!({}));
                if let Some(m) = entry.as_object_mut() {
                    m.insert(k, v);
                }
            }
            F::RepStr => {
                expect_len(wire)?;
                let s = utf8(r.bytes()?)?;
                let entry = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = entry.as_array_mut() {
                    a.push(json!(s));
                }
            }
            F::RepMsg(sub) => {
                expect_len(wire)?;
                let m = decode_message(r.bytes()?, sub)?;
                let entry = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = entry.as_array_mut() {
                    a.push(Value::Object(m));
                }
            }
            F::Time => {
                expect_len(wire)?;
                let m =
                    decode_message(r.bytes()?, &[(1, "seconds", F::Int), (2, "nanos", F::Int)])?;
                if let Some(secs) = m.get("seconds").and_then(Value::as_i64)
                    && let Some(t) = chrono::DateTime::from_timestamp(secs, 0)
                {
                    out.insert(
                        name,
                        json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    );
                }
            }
            F::IntOrString => {
                expect_len(wire)?;
                let m = decode_message(
                    r.bytes()?,
                    &[
                        (1, "type", F::Int),
                        (2, "intVal", F::Int),
                        (3, "strVal", F::Str),
                    ],
                )?;
                let v = if m.get("type").and_then(Value::as_i64) == Some(1) {
                    m.get("strVal").cloned().unwrap_or(json!(""))
                } else {
                    m.get("intVal").cloned().unwrap_or(json!(0))
                };
                out.insert(name, v);
            }
        }
    }
    Ok(out)
}

/// Why a protobuf body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtobufError {
    /// A kind whose schema this decoder does not carry.
    Unsupported(String),
    /// A malformed body.
    Malformed(String),
}

/// Decode a `application/vnd.kubernetes.protobuf` body into the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ProtobufError::Malformed("missing the k8s protobuf magic".into()))?;
    let envelope = decode_message(
        rest,
        &[(1, "typeMeta", F::Msg(TYPE_META)), (2, "raw", F::Bytes)],
    )
    .map_err(ProtobufError::Malformed)?;
    let api_version = envelope
        .get("typeMeta")
        .and_then(|t| t.get("apiVersion"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = envelope
        .get("typeMeta")
        .and_then(|t| t.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let fields = schema(api_version, kind)
        .ok_or_else(|| ProtobufError::Unsupported(format!("{api_version}, Kind={kind}")))?;
    let raw = envelope
        .get("raw")
        .and_then(Value::as_str)
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()
        .map_err(|e| ProtobufError::Malformed(e.to_string()))?
        .unwrap_or_default();
    let mut obj = decode_message(&raw, fields).map_err(ProtobufError::Malformed)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubectl 1.33 sends for `kubectl create configmap x --from-literal=a=b`.
    const CONFIGMAP: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0f, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x09, 0x43, 0x6f, 0x6e,
        0x66, 0x69, 0x67, 0x4d, 0x61, 0x70, 0x12, 0x1b, 0x0a, 0x11, 0x0a, 0x01, 0x78, 0x12, 0x00,
        0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x12, 0x06, 0x0a,
        0x01, 0x61, 0x12, 0x01, 0x62, 0x1a, 0x00, 0x22, 0x00,
    ];

    /// What kubectl 1.33 sends for `kubectl create service loadbalancer web2 --tcp=80:8080`.
    const SERVICE_LB: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0d, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x07, 0x53, 0x65, 0x72,
        0x76, 0x69, 0x63, 0x65, 0x12, 0x6f, 0x0a, 0x21, 0x0a, 0x04, 0x77, 0x65, 0x62, 0x32, 0x12,
        0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x5a, 0x0b,
        0x0a, 0x03, 0x61, 0x70, 0x70, 0x12, 0x04, 0x77, 0x65, 0x62, 0x32, 0x12, 0x46, 0x0a, 0x1b,
        0x0a, 0x07, 0x38, 0x30, 0x2d, 0x38, 0x30, 0x38, 0x30, 0x12, 0x03, 0x54, 0x43, 0x50, 0x18,
        0x50, 0x22, 0x07, 0x08, 0x00, 0x10, 0x90, 0x3f, 0x1a, 0x00, 0x28, 0x00, 0x12, 0x0b, 0x0a,
        0x03, 0x61, 0x70, 0x70, 0x12, 0x04, 0x77, 0x65, 0x62, 0x32, 0x1a, 0x00, 0x22, 0x0c, 0x4c,
        0x6f, 0x61, 0x64, 0x42, 0x61, 0x6c, 0x61, 0x6e, 0x63, 0x65, 0x72, 0x3a, 0x00, 0x42, 0x00,
        0x52, 0x00, 0x5a, 0x00, 0x60, 0x00, 0x68, 0x00, 0x1a, 0x02, 0x0a, 0x00, 0x1a, 0x00, 0x22,
        0x00,
    ];

    #[test]
    fn decodes_kubectl_configmap() {
        let v = decode(CONFIGMAP).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn decodes_kubectl_service() {
        let v = decode(SERVICE_LB).unwrap();
        assert_eq!(
            v["metadata"],
            json!({"name": "web2", "labels": {"app": "web2"}})
        );
        assert_eq!(v["spec"]["type"], "LoadBalancer");
        assert_eq!(v["spec"]["selector"], json!({"app": "web2"}));
        assert_eq!(
            v["spec"]["ports"],
            json!([{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}])
        );
    }

    #[test]
    fn rejects_unknown_kinds_and_garbage() {
        let mut other = CONFIGMAP.to_vec();
        // Rename the kind "ConfigMap" → "ConfigMaq".
        other[20] = b'q';
        assert!(matches!(decode(&other), Err(ProtobufError::Unsupported(_))));
        assert!(matches!(decode(b"nope"), Err(ProtobufError::Malformed(_))));
        assert!(matches!(
            decode(&CONFIGMAP[..30]),
            Err(ProtobufError::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut body = b"k8s\0".to_vec();
            body.extend(tail);
            let _ = decode(&body);
        }
    }
}
