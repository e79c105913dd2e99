//! What the speaker keeps of the cluster objects it caches: only the fields that [`crate::plan`],
//! the membership seeds and the Events read. Pure; the watchers in [`crate::run`] apply it to
//! every object before it enters a store.
//!
//! Every node caches every Service, EndpointSlice and Node of the cluster for as long as it
//! runs, so whatever is kept is paid for on each node. Ports, selectors, cluster IPs, endpoint
//! addresses beyond the first, a Node's images and capacity and so on are never read; dropping
//! them roughly halves what a cached Service or EndpointSlice holds beyond its fixed-size
//! struct, and a Node's images list alone can be tens of kilobytes. A new rule that reads a
//! field must keep it here: the tests check that the plan over trimmed objects equals the plan
//! over the originals.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Service, ServiceSpec, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::eligibility::SERVICE_NAME_LABEL;

/// Metadata the shell needs of any object: its identity (name, namespace, uid — Events refer to
/// the Service by it — and resourceVersion) and deletion state. Labels are kept; the callers
/// that need none drop them.
fn meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    // Last-applied configuration can be as large as the object itself.
    m.annotations = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    m.creation_timestamp = None;
    m.generation = None;
}

/// For the kinds kept whole (pools, advertisements): managedFields and annotations go, as
/// nothing reads them.
pub fn metadata<K: kube::Resource>(obj: &mut K) {
    let m = obj.meta_mut();
    m.managed_fields = None;
    m.annotations = None;
}

/// Keeps the class (`type`, `loadBalancerClass`), `externalTrafficPolicy`, the ingress IPs and
/// the speakers' own `lodestone.dev/Announced` condition (it names the current owner).
pub fn service(svc: &mut Service) {
    meta(&mut svc.metadata);
    svc.metadata.labels = None;
    svc.spec = svc.spec.take().map(|s| ServiceSpec {
        type_: s.type_,
        load_balancer_class: s.load_balancer_class,
        external_traffic_policy: s.external_traffic_policy,
        ..ServiceSpec::default()
    });
    svc.status = svc.status.take().map(|s| {
        let mut lb = s.load_balancer;
        for entry in lb.iter_mut().flat_map(|lb| lb.ingress.iter_mut().flatten()) {
            entry.hostname = None;
            entry.ip_mode = None;
            entry.ports = None;
        }
        let conditions = s.conditions.and_then(|mut c| {
            c.retain(|c| c.type_ == lodestone_crds::announced::CONDITION_TYPE);
            (!c.is_empty()).then_some(c)
        });
        ServiceStatus {
            load_balancer: lb,
            conditions,
        }
    });
}

/// Keeps the Service it belongs to and, per endpoint, whether it can serve (its conditions and
/// that it has an address) and its node.
pub fn endpoint_slice(slice: &mut EndpointSlice) {
    meta(&mut slice.metadata);
    slice.metadata.labels = slice.metadata.labels.take().and_then(|mut labels| {
        let service = labels.remove_entry(SERVICE_NAME_LABEL)?;
        Some(BTreeMap::from([service]))
    });
    slice.ports = None;
    for ep in &mut slice.endpoints {
        // Only "has an address" is read; one stands for all.
        ep.addresses.truncate(1);
        ep.addresses.shrink_to_fit();
        ep.deprecated_topology = None;
        ep.hints = None;
        ep.hostname = None;
        ep.target_ref = None;
        ep.zone = None;
    }
}

/// Keeps the labels (node selectors, the exclusion label), the `Ready` and `NetworkUnavailable`
/// conditions and the `InternalIP` addresses.
pub fn node(node: &mut Node) {
    meta(&mut node.metadata);
    node.spec = node.spec.take().map(|_| NodeSpec::default());
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses.map(|mut a| {
            a.retain(|a| a.type_ == "InternalIP");
            a
        }),
        conditions: s.conditions.map(|mut c| {
            c.retain(|c| c.type_ == "Ready" || c.type_ == "NetworkUnavailable");
            for c in &mut c {
                // Ready/NotReady is what counts; the kubelet rewrites these every heartbeat.
                c.message = None;
                c.reason = None;
                c.last_heartbeat_time = None;
                c.last_transition_time = None;
            }
            c
        }),
        ..NodeStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, ClassFilter, PlanInput};
    use lodestone_crds::{IPAddressPool, L2Advertisement};
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    /// A Service as the API server returns it, with the fields the speaker never reads.
    fn full_service(name: &str, ip: &str, local: bool, class: Option<&str>) -> Service {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "resourceVersion": "42", "generation": 1,
                "creationTimestamp": "2026-11-22T00:00:00Z",
                "labels": {"app": name},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "apiVersion": "v1", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "type": "LoadBalancer",
                "loadBalancerClass": class,
                "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                           "nodePort": 30080}],
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                "allocateLoadBalancerNodePorts": true, "healthCheckNodePort": 31000
            },
            "status": {
                "loadBalancer": {"ingress": [
                    {"ip": ip, "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]},
                    {"hostname": "lb.example.invalid"}
                ]},
                "conditions": [{"type": "lodestone.dev/Announced", "status": "True",
                                "reason": "Announced", "message": "announced from node-b on eth0",
                                "lastTransitionTime": "2026-11-22T00:00:00Z"},
                               {"type": "example.com/Other", "status": "True",
                                "reason": "Other", "message": "not ours",
                                "lastTransitionTime": "2026-11-22T00:00:00Z"}]
            }
        }))
        .unwrap()
    }

    /// One endpoint per `(node, ready, serving, terminating)`, several addresses each.
    fn full_slice(service: &str, endpoints: &[(&str, bool, bool, bool)]) -> EndpointSlice {
        let eps: Vec<_> = endpoints
            .iter()
            .enumerate()
            .map(|(i, (node, ready, serving, terminating))| {
                json!({
                    "addresses": [format!("10.0.0.{i}"), format!("10.0.1.{i}")],
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    "nodeName": node, "hostname": format!("pod-{i}"), "zone": "z1",
                    "targetRef": {"kind": "Pod", "name": format!("pod-{i}"), "namespace": "default"},
                    "hints": {"forZones": [{"name": "z1"}]}
                })
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("{service}-abcde"), "namespace": "default",
                "generateName": format!("{service}-"), "uid": "u", "resourceVersion": "7",
                "labels": {"kubernetes.io/service-name": service,
                           "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                                     "uid": "x", "controller": true}]
            },
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    fn full_node(name: &str, ip: &str, ready: bool, labels: &[(&str, &str)]) -> Node {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": "n", "resourceVersion": "9", "labels": labels,
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": "10.244.0.0/24", "providerID": "kind://x",
                     "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "Hostname", "address": name},
                              {"type": "InternalIP", "address": ip}],
                "conditions": [
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                    {"type": "NetworkUnavailable", "status": if name == "node-c" { "True" } else { "False" },
                     "reason": "RouteCreated", "message": "routes",
                     "lastTransitionTime": "2026-11-22T00:00:00Z"},
                    {"type": "Ready", "status": if ready { "True" } else { "False" },
                     "reason": "KubeletReady", "message": "kubelet is posting ready status",
                     "lastHeartbeatTime": "2026-11-22T00:00:00Z",
                     "lastTransitionTime": "2026-11-22T00:00:00Z"}
                ],
                "capacity": {"cpu": "2", "memory": "24Gi"},
                "allocatable": {"cpu": "2", "memory": "24Gi"},
                "images": [{"names": ["registry.example.invalid/app@sha256:0123"], "sizeBytes": 1}],
                "nodeInfo": {"architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "c",
                             "kernelVersion": "k", "kubeProxyVersion": "", "kubeletVersion": "v",
                             "machineID": "m", "operatingSystem": "linux", "osImage": "o",
                             "systemUUID": "s"}
            }
        }))
        .unwrap()
    }

    fn pool_and_advert(node_selector: Option<(&str, &str)>) -> (IPAddressPool, L2Advertisement) {
        let pool = serde_json::from_value(json!({
            "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "p"}, "spec": {"addresses": ["198.51.100.0/24"]}
        }))
        .unwrap();
        let selectors: Vec<_> = node_selector
            .into_iter()
            .map(|(k, v)| json!({"matchLabels": {k: v}}))
            .collect();
        let advert = serde_json::from_value(json!({
            "apiVersion": "lodestone.dev/v1alpha1", "kind": "L2Advertisement",
            "metadata": {"name": "a"}, "spec": {"nodeSelectors": selectors}
        }))
        .unwrap();
        (pool, advert)
    }

    fn trimmed(input: &PlanInput) -> PlanInput {
        let mut out = input.clone();
        out.services = input
            .services
            .iter()
            .map(|s| {
                let mut s = (**s).clone();
                service(&mut s);
                Arc::new(s)
            })
            .collect();
        out.endpoint_slices = input
            .endpoint_slices
            .iter()
            .map(|s| {
                let mut s = (**s).clone();
                endpoint_slice(&mut s);
                Arc::new(s)
            })
            .collect();
        out.nodes = input
            .nodes
            .iter()
            .map(|n| {
                let mut n = (**n).clone();
                node(&mut n);
                Arc::new(n)
            })
            .collect();
        out
    }

    #[test]
    fn keeps_what_is_read() {
        let mut svc = full_service("web", "198.51.100.1", true, Some("x.example/lb"));
        service(&mut svc);
        assert_eq!(svc.metadata.uid.as_deref(), Some("uid-web"));
        assert!(svc.metadata.managed_fields.is_none() && svc.metadata.annotations.is_none());
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.load_balancer_class.as_deref(), Some("x.example/lb"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert!(spec.ports.is_none() && spec.selector.is_none() && spec.cluster_ips.is_none());
        assert_eq!(
            plan::ingress_ips(&svc),
            vec!["198.51.100.1".parse::<std::net::IpAddr>().unwrap()]
        );
        let conditions = svc.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1, "only our own condition is kept");
        assert_eq!(plan::observed(&svc).owner.as_deref(), Some("node-b"));
        assert_eq!(plan::observed(&svc).resource_version.as_deref(), Some("42"));

        let mut slice = full_slice("web", &[("node-a", true, true, false)]);
        endpoint_slice(&mut slice);
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.len(), 1);
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(slice.endpoints[0].addresses.len(), 1);
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-a"));
        assert!(slice.ports.is_none() && slice.endpoints[0].target_ref.is_none());

        let mut n = full_node("node-a", "192.0.2.1", true, &[("zone", "1")]);
        node(&mut n);
        assert!(plan::node_ready(&n));
        assert_eq!(plan::internal_ip(&n), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(n.metadata.labels.as_ref().unwrap()["zone"], "1");
        let status = n.status.as_ref().unwrap();
        assert!(status.images.is_none() && status.capacity.is_none());
        assert_eq!(status.addresses.as_ref().unwrap().len(), 1);
        assert_eq!(status.conditions.as_ref().unwrap().len(), 2);
        assert!(!crate::eligibility::network_unavailable(&n));
        let mut c = full_node("node-c", "192.0.2.3", true, &[]);
        node(&mut c);
        assert!(crate::eligibility::network_unavailable(&c));
    }

    proptest! {
        /// Whatever the cluster looks like, the plan over trimmed objects is the plan over the
        /// originals.
        #[test]
        fn trimming_never_changes_the_plan(
            services in proptest::collection::vec(
                (0u8..4, any::<bool>(), prop_oneof![Just(None), Just(Some("other.example/lb"))]),
                1..6),
            endpoints in proptest::collection::vec(
                proptest::collection::vec((0usize..3, any::<bool>(), any::<bool>(), any::<bool>()), 0..4),
                6),
            nodes in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 3),
            selector in any::<bool>(),
            me in 0usize..3,
        ) {
            let names = ["node-a", "node-b", "node-c"];
            let mut input = PlanInput {
                node_name: names[me].into(),
                class: ClassFilter::default(),
                ..PlanInput::default()
            };
            for (i, (last, local, class)) in services.iter().enumerate() {
                let name = format!("svc-{i}");
                let ip = format!("198.51.100.{last}");
                input.services.push(Arc::new(full_service(&name, &ip, *local, *class)));
                let eps: Vec<_> = endpoints[i]
                    .iter()
                    .map(|(n, r, s, t)| (names[*n], *r, *s, *t))
                    .collect();
                input.endpoint_slices.push(Arc::new(full_slice(&name, &eps)));
            }
            for (i, (ready, zone, excluded)) in nodes.iter().enumerate() {
                let mut labels = vec![("zone", if *zone { "1" } else { "2" })];
                if *excluded {
                    labels.push((crate::eligibility::EXCLUDE_LABEL, ""));
                }
                let ip = format!("192.0.2.{}", i + 1);
                input.nodes.push(Arc::new(full_node(names[i], &ip, *ready, &labels)));
            }
            let (pool, advert) = pool_and_advert(selector.then_some(("zone", "1")));
            input.pools.push(Arc::new(pool));
            input.advertisements.push(Arc::new(advert));
            // Liveness from the Node Ready conditions, as before the membership forms.
            let (alive, _) = plan::alive_set(names[me], None, &input.nodes);
            input.alive = alive;
            let (alive_trimmed, _) = plan::alive_set(names[me], None, &trimmed(&input).nodes);
            prop_assert_eq!(&alive_trimmed, &input.alive);
            prop_assert_eq!(plan::plan(&trimmed(&input)), plan::plan(&input));
            let me_before: BTreeSet<_> = input.nodes.iter().filter_map(|n| plan::internal_ip(n)).collect();
            let me_after: BTreeSet<_> = trimmed(&input).nodes.iter().filter_map(|n| plan::internal_ip(n)).collect();
            prop_assert_eq!(me_before, me_after);
        }
    }
}
