//! API errors rendered as `meta/v1 Status` bodies, byte-for-byte the shapes kube-apiserver uses,
//! because clients (kube-rs, client-go) branch on `reason` and `code`.

use serde_json::{Value, json};

/// One entry of `details.causes[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueInvalid`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// JSON path of the field, e.g. `spec.addresses[0]`.
    pub field: String,
}

/// An API error: HTTP status code plus the `Status` fields clients read.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code, mirrored in `Status.code`.
    pub code: u16,
    /// `Status.reason`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when kube-apiserver fills it.
    pub details: Option<Value>,
}

/// The resource part of an error message: `services` or `ipaddresspools.lodestone.dev`.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = json!({ "name": name, "kind": kind });
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

impl ApiError {
    /// 404 `NotFound` for a named object.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(group, plural)),
            details: Some(details(name, group, plural)),
        }
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: Some(json!({})),
        }
    }

    /// 409 `AlreadyExists`.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(group, plural)),
            details: Some(details(name, group, plural)),
        }
    }

    /// 409 `Conflict` for a stale `resourceVersion`.
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::conflict_msg(
            group,
            plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 `Conflict` with a specific explanation (preconditions, ...).
    pub fn conflict_msg(group: &str, plural: &str, name: &str, why: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, plural)
            ),
            details: Some(details(name, group, plural)),
        }
    }

    /// 409 `Conflict` from server-side apply: field-manager conflicts.
    pub fn apply_conflict(
        group: &str,
        plural: &str,
        name: &str,
        message: String,
        causes: Vec<Cause>,
    ) -> Self {
        let mut d = details(name, group, plural);
        d["causes"] = causes_json(&causes);
        ApiError {
            code: 409,
            reason: "Conflict",
            message,
            details: Some(d),
        }
    }

    /// 422 `Invalid` with field causes; `kind` is the object kind (e.g. `Service`).
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect::<Vec<_>>();
        let body = if summary.len() == 1 {
            summary.join("")
        } else {
            format!("[{}]", summary.join(", "))
        };
        let mut d = details(name, group, kind);
        d["causes"] = causes_json(&causes);
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {body}", qualified(group, kind)),
            details: Some(d),
        }
    }

    /// 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// 405 `MethodNotAllowed`.
    pub fn method_not_allowed() -> Self {
        ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".into(),
            details: Some(json!({})),
        }
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        ApiError {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
            details: None,
        }
    }

    /// 410 `Expired`, as sent in a watch ERROR event.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {requested} ({oldest})"),
            details: None,
        }
    }

    /// 415 `UnsupportedMediaType`.
    pub fn unsupported_media_type(ct: &str) -> Self {
        ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"
            ),
            details: None,
        }
    }

    /// 500 `InternalError`.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            code: 500,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn causes_json(causes: &[Cause]) -> Value {
    Value::Array(
        causes
            .iter()
            .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_kube_apiserver() {
        let s = ApiError::not_found("", "services", "web").to_status();
        assert_eq!(s["message"], "services \"web\" not found");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "services");
        assert!(s["details"].get("group").is_none());
        let s = ApiError::not_found("lodestone.dev", "ipaddresspools", "p").to_status();
        assert_eq!(s["message"], "ipaddresspools.lodestone.dev \"p\" not found");
        assert_eq!(s["details"]["group"], "lodestone.dev");
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::invalid(
            "lodestone.dev",
            "IPAddressPool",
            "p",
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: "Invalid value: \"x\": bad".into(),
                field: "spec.addresses[0]".into(),
            }],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "IPAddressPool.lodestone.dev \"p\" is invalid: spec.addresses[0]: Invalid value: \"x\": bad"
        );
        assert_eq!(
            e.to_status()["details"]["causes"][0]["field"],
            "spec.addresses[0]"
        );
    }

    #[test]
    fn expired_message() {
        let s = ApiError::expired(5, 10).to_status();
        assert_eq!(s["message"], "too old resource version: 5 (10)");
        assert_eq!(s["reason"], "Expired");
        assert_eq!(s["code"], 410);
    }
}
