//! What the controller writes on a Service: `status.loadBalancer.ingress` and its condition.
//!
//! Pure: the body for a server-side apply on the status subresource, and whether the Service
//! already shows it (so nothing is written when nothing changed).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use lodestone_crds::conditions::{self, AssignedFrom, status_word};
use lodestone_crds::events;
use serde_json::{Value, json};

/// The condition type on `Service.status.conditions` owned by the controller, and the field
/// manager of every controller write: defined once in the shared core.
pub use lodestone_crds::conditions::{ADDRESS_ASSIGNED, CONTROLLER_FIELD_MANAGER as FIELD_MANAGER};
/// Addresses currently in `status.loadBalancer.ingress`, read as every program reads them.
pub use lodestone_crds::service::ingress_ips;

/// The `lodestone.dev/AddressAssigned` condition as the controller wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedCondition {
    pub assigned: bool,
    /// CamelCase, machine-readable.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

/// Everything the controller owns in a Service's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredStatus {
    pub ips: Vec<IpAddr>,
    pub condition: AssignedCondition,
}

/// The pool our `Assigned` condition names (see [`AssignedFrom`]), if it says so.
pub fn pool_of(svc: &Service) -> Option<String> {
    AssignedFrom::of_service(svc).map(|a| a.pool)
}

/// Our condition on the Service, if present.
pub fn assigned_condition(svc: &Service) -> Option<&Condition> {
    conditions::of_service(svc, ADDRESS_ASSIGNED)
}

/// True when the Service already shows `desired`, so no write is needed.
pub fn is_current(svc: &Service, desired: &DesiredStatus) -> bool {
    let ingress_ok = {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        let entries = ingress.map(Vec::as_slice).unwrap_or(&[]);
        entries.len() == desired.ips.len()
            && entries.iter().zip(&desired.ips).all(|(e, ip)| {
                e.ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) == Some(*ip)
                    && e.ip_mode.as_deref() == Some("VIP")
                    && e.hostname.is_none()
            })
    };
    let cond_ok = assigned_condition(svc).is_some_and(|c| {
        c.status == status_word(desired.condition.assigned)
            && c.reason == desired.condition.reason
            && c.message == events::condition_message(&desired.condition.message)
            && c.observed_generation == svc.metadata.generation
    });
    ingress_ok && cond_ok
}

/// The server-side apply body for the status subresource. `lastTransitionTime` moves only when
/// the condition's status flips, as the API conventions ask.
pub fn apply_body(svc: &Service, desired: &DesiredStatus, now: &Time) -> Value {
    // A message built from user input (a 200 KB annotation) must not make the write fail: the
    // builder cuts it.
    let condition = conditions::build(
        ADDRESS_ASSIGNED,
        desired.condition.assigned,
        &desired.condition.reason,
        &desired.condition.message,
        svc.metadata.generation,
        assigned_condition(svc),
        now,
    );
    let ingress: Vec<Value> = desired
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.metadata.name,
            "namespace": svc.metadata.namespace,
        },
        "status": {
            "loadBalancer": {"ingress": ingress},
            "conditions": [condition],
        }
    })
}

/// The apply body that gives up everything the controller owns in the Service's status: with
/// server-side apply, fields a manager stops applying are removed unless someone else owns them,
/// so other writers' entries are untouched.
pub fn release_body(svc: &Service) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.metadata.name,
            "namespace": svc.metadata.namespace,
        },
    })
}

/// True when the Service carries anything the controller would have written.
pub fn has_our_status(svc: &Service) -> bool {
    assigned_condition(svc).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn desired(ips: &[&str]) -> DesiredStatus {
        DesiredStatus {
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            condition: AssignedCondition {
                assigned: true,
                reason: "Assigned".into(),
                message: "assigned 192.0.2.1 from pool blue".into(),
            },
        }
    }

    #[test]
    fn body_round_trips_to_current() {
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 3},
            "spec": {"type": "LoadBalancer"}
        }))
        .unwrap();
        let d = desired(&["192.0.2.1", "2001:db8::1"]);
        assert!(!is_current(&svc, &d));
        let body = apply_body(&svc, &d, &now());
        svc.status = serde_json::from_value(body["status"].clone()).unwrap();
        assert!(is_current(&svc, &d));
        assert_eq!(ingress_ips(&svc), d.ips);
        // A different message or a flip is a change; the transition time moves only on a flip.
        let mut other = d.clone();
        other.condition.message = "something else".into();
        assert!(!is_current(&svc, &other));
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
        let same = apply_body(&svc, &other, &later);
        assert_eq!(
            same["status"]["conditions"][0]["lastTransitionTime"],
            json!(now())
        );
        other.condition.assigned = false;
        let flipped = apply_body(&svc, &other, &later);
        assert_eq!(
            flipped["status"]["conditions"][0]["lastTransitionTime"],
            json!(later)
        );
    }

    /// A message over the API's limit is written cut, and the cut message counts as current, so
    /// it is written once and not again on every pass.
    #[test]
    fn long_messages_are_cut_and_then_current() {
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
        }))
        .unwrap();
        let mut d = desired(&[]);
        d.condition.assigned = false;
        d.condition.message = format!(
            "annotation x: {:?} is not an IP address",
            "9".repeat(200_000)
        );
        let body = apply_body(&svc, &d, &now());
        let written = body["status"]["conditions"][0]["message"].as_str().unwrap();
        assert!(
            written.len() <= events::CONDITION_MESSAGE_MAX,
            "{}",
            written.len()
        );
        assert!(written.starts_with("annotation x: \"999"));
        svc.status = serde_json::from_value(body["status"].clone()).unwrap();
        assert!(is_current(&svc, &d));
    }

    #[test]
    fn pool_is_read_back_from_the_message() {
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
        }))
        .unwrap();
        for (message, pool) in [
            ("192.0.2.1 from pool blue", Some("blue")),
            (
                "192.0.2.1 from pool blue; warning: pool blue is gone",
                Some("blue"),
            ),
            ("192.0.2.1, 2001:db8::1 from pool dual-1", Some("dual-1")),
            ("no free IPv4 address left in pool(s) blue", None),
        ] {
            let mut d = desired(&["192.0.2.1"]);
            d.condition.message = message.into();
            svc.status =
                serde_json::from_value(apply_body(&svc, &d, &now())["status"].clone()).unwrap();
            assert_eq!(pool_of(&svc).as_deref(), pool, "{message}");
        }
    }

    #[test]
    fn foreign_ingress_is_not_current() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}
        }))
        .unwrap();
        assert!(ingress_ips(&svc).is_empty());
        assert!(!has_our_status(&svc));
        assert!(!is_current(&svc, &desired(&[])));
    }
}
