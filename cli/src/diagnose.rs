//! The pure part of `lodestonectl status` and `lodestonectl why`: objects in, rows and
//! findings out. The commands fetch the objects; nothing here talks to a cluster.
//!
//! Every rule comes from the shared core (`lodestone_crds`), the same code the controller and
//! the speakers run: the class filter, the annotations with their MetalLB aliases, the condition
//! message formats, which L2Advertisements select a pool and a node, which endpoints can serve,
//! and the per-node eligibility verdicts. So `why` cannot disagree with what they do.

mod status;
mod why;

pub use status::*;
pub use why::*;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use lodestone_crds::service::ingress_ips;

pub(crate) fn condition<'a>(svc: &'a Service, type_: &str) -> Option<&'a Condition> {
    lodestone_crds::conditions::of_service(svc, type_)
}

pub(crate) fn ingress_texts(svc: &Service) -> Vec<String> {
    ingress_ips(svc).iter().map(ToString::to_string).collect()
}

pub(crate) fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

#[cfg(test)]
mod fixtures {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use lodestone_crds::conditions::{ADDRESS_ASSIGNED, ANNOUNCED};
    use lodestone_crds::{IPAddressPool, L2Advertisement};
    use serde_json::{Value, json};

    pub(crate) fn svc(annotations: Value, spec: Value, status: Value) -> Service {
        let mut s = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "team", "uid": "u1", "annotations": annotations},
            "spec": s, "status": status,
        }))
        .unwrap()
    }

    pub(crate) fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": "2026-11-22T00:00:00Z"})
    }

    pub(crate) fn served(ip: &str, pool: &str, node: Option<&str>) -> Value {
        let mut conds = vec![cond(
            ADDRESS_ASSIGNED,
            "True",
            "Assigned",
            &format!("{ip} from pool {pool}"),
        )];
        if let Some(n) = node {
            conds.push(cond(
                ANNOUNCED,
                "True",
                "Announced",
                &format!("announced from {n} on eth0"),
            ));
        }
        json!({"loadBalancer": {"ingress": [{"ip": ip}]}, "conditions": conds})
    }

    pub(crate) fn pool(name: &str, spec: Value, status: Value) -> IPAddressPool {
        serde_json::from_value(json!({
            "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": name, "labels": {"tier": name}}, "spec": spec, "status": status,
        }))
        .unwrap()
    }

    pub(crate) fn l2(name: &str, spec: Value) -> L2Advertisement {
        serde_json::from_value(json!({
            "apiVersion": "lodestone.dev/v1alpha1", "kind": "L2Advertisement",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    }

    pub(crate) fn node(name: &str, labels: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    pub(crate) fn slice(endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": "web-1", "namespace": "team",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": endpoints}))
        .unwrap()
    }

    pub(crate) fn roomy() -> Value {
        json!({"assigned": 1, "available": 3, "assignedIPv4": 1, "availableIPv4": 3})
    }
}
