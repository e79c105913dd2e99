//! What the controller keeps of the objects it caches: only the fields that the IPAM request
//! ([`crate::service`]), the status writer ([`crate::status`]), the pool evaluation and the
//! Events read. Pure; the watches in [`crate::reconciler`] apply it to every object before it
//! enters a store.
//!
//! The controller caches every Service of the cluster: with 10,000 of them, whatever a cached
//! Service keeps is paid 10,000 times. Cluster IPs, node ports, target ports, session affinity,
//! other controllers' conditions and most annotations are never read. A new rule that reads a
//! field must keep it here: the tests check that every decision over trimmed Services equals the
//! decision over the originals.

use k8s_openapi::api::core::v1::{
    LoadBalancerStatus, Namespace, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use lodestone_crds::trim::{keep_annotations, unread_metadata};

use crate::service::annotations;
use crate::status::ADDRESS_ASSIGNED;

/// Every annotation the controller reads.
fn read_annotations() -> impl Iterator<Item = &'static str> {
    annotations::all()
}

/// Keeps the class, the address request (annotations, `loadBalancerIP`, families), what sharing
/// compares (ports and protocols, traffic policy, pod selector: only for a Service that asks to
/// share), the labels pools select on,
/// `generation` (the condition's `observedGeneration`), and in the status the ingress and our
/// own condition.
pub fn service(svc: &mut Service) {
    unread_metadata(&mut svc.metadata);
    let keep: Vec<&str> = read_annotations().collect();
    keep_annotations(&mut svc.metadata, &keep);
    // Ports and the pod selector are compared only between Services sharing an address, which
    // takes a sharing key on both (ipam `compatible`): without the annotation they go too.
    let may_share = svc.metadata.annotations.as_ref().is_some_and(|a| {
        annotations::ALLOW_SHARED_IP
            .iter()
            .any(|k| a.contains_key(*k))
    });
    svc.spec = svc.spec.take().map(|s| ServiceSpec {
        type_: s.type_,
        load_balancer_class: s.load_balancer_class,
        load_balancer_ip: s.load_balancer_ip,
        ip_families: s.ip_families,
        ip_family_policy: s.ip_family_policy,
        external_traffic_policy: s.external_traffic_policy,
        selector: s.selector.filter(|_| may_share),
        ports: s.ports.filter(|_| may_share).map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    port: p.port,
                    protocol: p.protocol,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
    svc.status = svc.status.take().map(|s| ServiceStatus {
        load_balancer: s.load_balancer.map(|lb| LoadBalancerStatus {
            ingress: lb.ingress.map(|mut ingress| {
                // ip, ipMode and hostname say whether the status is ours and current.
                for entry in &mut ingress {
                    entry.ports = None;
                }
                ingress
            }),
        }),
        conditions: s.conditions.and_then(|mut c| {
            c.retain(|c| c.type_ == ADDRESS_ASSIGNED);
            (!c.is_empty()).then_some(c)
        }),
    });
}

/// Keeps a Namespace's name and labels (namespace selectors).
pub fn namespace(ns: &mut Namespace) {
    unread_metadata(&mut ns.metadata);
    ns.metadata.annotations = None;
    ns.spec = None;
    ns.status = None;
}

/// Pools are few and read whole (spec, status, finalizers, deletion); only what nothing reads
/// goes.
pub fn pool(pool: &mut lodestone_crds::IPAddressPool) {
    pool.metadata.managed_fields = None;
    pool.metadata.annotations = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{FamilyPolicy, Ipam, PoolConfig, Protocol, ServiceKey, ServiceRequest};
    use crate::service::{ClassFilter, hold_request, request_for};
    use crate::status::{AssignedCondition, DesiredStatus, apply_body, ingress_ips, is_current};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use lodestone_crds::addresses::IpFamily;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// A Service as the API server returns it, with everything the controller never reads.
    fn full_service(annotations: Value, spec: Value, status: Value) -> Service {
        let mut s = json!({
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                       "nodePort": 30080, "appProtocol": "http"},
                      {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}],
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
            "externalTrafficPolicy": "Cluster",
            "allocateLoadBalancerNodePorts": true, "healthCheckNodePort": 31000
        });
        if let (Some(s), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
            s.extend(extra.clone());
        }
        let mut a = json!({"kubectl.kubernetes.io/last-applied-configuration": "{...}"});
        if let (Some(a), Some(extra)) = (a.as_object_mut(), annotations.as_object()) {
            a.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "default", "uid": "uid-web",
                "resourceVersion": "42", "generation": 7,
                "creationTimestamp": "2026-11-22T00:00:00Z",
                "labels": {"app": "web", "tier": "front"},
                "annotations": a,
                "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "apiVersion": "v1", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {}}}]
            },
            "spec": s,
            "status": status,
        }))
        .unwrap()
    }

    fn trimmed(svc: &Service) -> Service {
        let mut t = svc.clone();
        service(&mut t);
        t
    }

    #[test]
    fn keeps_what_is_read_and_drops_the_rest() {
        let svc = full_service(
            json!({"metallb.io/address-pool": "blue", "lodestone.dev/allow-shared-ip": "k"}),
            json!({"loadBalancerIP": "192.0.2.9", "externalTrafficPolicy": "Local",
                   "loadBalancerClass": "lodestone.dev/lb"}),
            json!({
                "loadBalancer": {"ingress": [
                    {"ip": "192.0.2.9", "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]}
                ]},
                "conditions": [
                    {"type": ADDRESS_ASSIGNED, "status": "True", "reason": "Assigned",
                     "message": "m", "observedGeneration": 7,
                     "lastTransitionTime": "2026-11-22T00:00:00Z"},
                    {"type": "lodestone.dev/Announced", "status": "True", "reason": "Announced",
                     "message": "m", "lastTransitionTime": "2026-11-22T00:00:00Z"}
                ]
            }),
        );
        let t = trimmed(&svc);
        let m = &t.metadata;
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref(), m.uid.as_deref()),
            (Some("web"), Some("default"), Some("uid-web"))
        );
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.generation, Some(7));
        assert_eq!(m.labels, svc.metadata.labels);
        let a = m.annotations.as_ref().unwrap();
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            ["lodestone.dev/allow-shared-ip", "metallb.io/address-pool"]
        );
        assert!(m.managed_fields.is_none() && m.finalizers.is_none());
        let spec = t.spec.as_ref().unwrap();
        assert!(spec.cluster_ip.is_none() && spec.cluster_ips.is_none());
        assert!(spec.health_check_node_port.is_none() && spec.session_affinity.is_none());
        let ports = spec.ports.as_ref().unwrap();
        assert_eq!(ports.len(), 2);
        assert!(
            ports
                .iter()
                .all(|p| p.node_port.is_none() && p.name.is_none())
        );
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        let status = t.status.as_ref().unwrap();
        let conditions = status.conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, ADDRESS_ASSIGNED);
        assert_eq!(ingress_ips(&t), ingress_ips(&svc));

        let plain = trimmed(&full_service(json!({}), json!({}), json!({})));
        let spec = plain.spec.as_ref().unwrap();
        assert!(
            spec.ports.is_none() && spec.selector.is_none(),
            "no sharing, no ports"
        );
        assert!(plain.metadata.annotations.is_none());

        let mut ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": "team", "labels": {"env": "prod"},
                         "annotations": {"a": "b"}, "managedFields": []},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
        }))
        .unwrap();
        namespace(&mut ns);
        assert_eq!(ns.metadata.labels.as_ref().unwrap()["env"], "prod");
        assert!(ns.metadata.annotations.is_none() && ns.spec.is_none() && ns.status.is_none());
    }

    fn pools() -> Vec<PoolConfig> {
        let pool = |name: &str, spec: Value| {
            let p: lodestone_crds::IPAddressPool = serde_json::from_value(json!({
                "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
                "metadata": {"name": name}, "spec": spec
            }))
            .unwrap();
            crate::pools::evaluate(&p).config.unwrap()
        };
        vec![
            pool(
                "blue",
                json!({"addresses": ["192.0.2.0/29", "2001:db8::/125"]}),
            ),
            pool(
                "front",
                json!({"addresses": ["198.51.100.0/29"], "serviceAllocation": {
                    "priority": 1,
                    "serviceSelectors": [{"matchLabels": {"tier": "front"}}]}}),
            ),
        ]
    }

    /// The request as the IPAM reads it: ports and the pod selector only with a sharing key.
    fn as_read(mut r: ServiceRequest) -> ServiceRequest {
        if r.sharing_key.is_none() {
            r.ports.clear();
            r.pod_selector.clear();
        }
        r
    }

    /// Every decision the controller takes about a Service, as comparable data.
    fn decisions(svc: &Service, ns_labels: &Arc<BTreeMap<String, String>>) -> Value {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let class = ClassFilter::default();
        let mut ipam = Ipam::new();
        ipam.set_pools(pools());
        // Another Service holds 192.0.2.3 under the sharing key "key" (port 80/TCP, Local,
        // pods app=web): asking for that address with that key is decided on the ports, the
        // traffic policy and the pod selector.
        let holder = ServiceRequest {
            key: ServiceKey::new("default", "holder"),
            labels: BTreeMap::new(),
            namespace_labels: ns_labels.clone(),
            families: FamilyPolicy::SingleStack(IpFamily::V4),
            requested: vec!["192.0.2.3".parse().unwrap()],
            pool: None,
            sharing_key: Some("key".into()),
            ports: vec![(8080, Protocol::Tcp)],
            traffic_local: true,
            pod_selector: BTreeMap::from([("app".into(), "web".into())]),
        };
        ipam.assign(&holder).unwrap();
        let held = ingress_ips(svc);
        let hold = as_read(hold_request(svc, ns_labels, &held));
        let reserved = format!("{:?}", ipam.reserve(&hold, &held));
        let request = request_for(svc, ns_labels).map(as_read);
        let assigned = request.as_ref().ok().map(|r| ipam.assign(r));
        let desired = DesiredStatus {
            ips: held.clone(),
            condition: AssignedCondition {
                assigned: true,
                reason: "Assigned".into(),
                message: "m".into(),
            },
        };
        json!({
            "ours": class.is_ours(svc),
            "held": format!("{held:?}"),
            "hold": format!("{hold:?}"),
            "reserved": reserved,
            "request": format!("{request:?}"),
            "assigned": format!("{assigned:?}"),
            "current": is_current(svc, &desired),
            "ours_status": crate::status::has_our_status(svc),
            "body": apply_body(svc, &desired, &now),
        })
    }

    proptest! {
        /// Whatever the Service asks for and whatever its status holds, the controller decides
        /// the same over the trimmed Service as over the original.
        #[test]
        fn trimming_never_changes_a_decision(
            ann in proptest::collection::btree_map(
                prop_oneof![
                    Just("lodestone.dev/loadBalancerIPs"), Just("metallb.io/loadBalancerIPs"),
                    Just("lodestone.dev/address-pool"), Just("metallb.universe.tf/address-pool"),
                    Just("lodestone.dev/allow-shared-ip"), Just("example.com/unrelated"),
                ],
                prop_oneof![Just("192.0.2.3"), Just("2001:db8::3"), Just("192.0.2.3,2001:db8::3"),
                            Just("blue"), Just("front"), Just("key"), Just("bogus"), Just("")],
                0..4),
            lb_ip in prop_oneof![Just(None), Just(Some("192.0.2.4")), Just(Some("x"))],
            families in prop_oneof![Just(json!(["IPv4"])), Just(json!(["IPv6"])),
                                    Just(json!(["IPv4", "IPv6"]))],
            policy in prop_oneof![Just("SingleStack"), Just("PreferDualStack"),
                                  Just("RequireDualStack")],
            class in prop_oneof![Just(None), Just(Some("lodestone.dev/lb")), Just(Some("other/lb"))],
            type_ in prop_oneof![Just("LoadBalancer"), Just("ClusterIP")],
            local in any::<bool>(),
            port in prop_oneof![Just(80), Just(8080)],
            selector_app in prop_oneof![Just("web"), Just("api")],
            held in prop_oneof![Just(vec![]), Just(vec!["192.0.2.1"]),
                                Just(vec!["198.51.100.2", "2001:db8::2"]), Just(vec!["203.0.113.1"])],
            condition in prop_oneof![Just(None), Just(Some("True")), Just(Some("False"))],
            observed in prop_oneof![Just(6i64), Just(7i64)],
            front in any::<bool>(),
        ) {
            let mut spec = json!({
                "type": type_, "ipFamilies": families, "ipFamilyPolicy": policy,
                "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                "ports": [{"name": "p", "port": port, "protocol": "TCP", "targetPort": 1}],
                "selector": {"app": selector_app},
            });
            if let Some(ip) = lb_ip {
                spec["loadBalancerIP"] = json!(ip);
            }
            if let Some(c) = class {
                spec["loadBalancerClass"] = json!(c);
            }
            let ingress: Vec<Value> = held
                .iter()
                .map(|ip| json!({"ip": ip, "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]}))
                .collect();
            let mut conditions = vec![json!({"type": "example.com/Other", "status": "True",
                "reason": "R", "message": "m", "lastTransitionTime": "2026-11-22T00:00:00Z"})];
            if let Some(status) = condition {
                conditions.push(json!({"type": ADDRESS_ASSIGNED, "status": status,
                    "reason": "Assigned", "message": "m", "observedGeneration": observed,
                    "lastTransitionTime": "2026-11-21T00:00:00Z"}));
            }
            let status = json!({"loadBalancer": {"ingress": ingress}, "conditions": conditions});
            let mut svc = full_service(serde_json::to_value(&ann).unwrap(), spec, status);
            if !front {
                svc.metadata.labels = None;
            }
            let ns_labels = Arc::new(BTreeMap::from([("env".to_string(), "prod".to_string())]));
            prop_assert_eq!(decisions(&trimmed(&svc), &ns_labels), decisions(&svc, &ns_labels));
        }
    }
}
