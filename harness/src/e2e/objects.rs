//! Cluster objects the e2e tests and the sandbox create by hand (no kubelet, no
//! controller-manager, and the tests play the Lodestone controller).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeCondition, NodeStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use lodestone_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};

use crate::e2e::lab::{POOL_V4, POOL_V6};

/// Field manager of the objects written here.
const MANAGER: &str = "lodestone-e2e";

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    })
}

/// The lab's pool `lab` ([`POOL_V4`] and [`POOL_V6`]) and an L2Advertisement `lab` with `advert`.
pub async fn lab_pool_and_advert(
    client: &kube::Client,
    advert: L2AdvertisementSpec,
) -> Result<(), kube::Error> {
    let spec = IPAddressPoolSpec {
        addresses: vec![POOL_V4.into(), POOL_V6.into()],
        auto_assign: true,
        avoid_buggy_ips: false,
        allow_link_local: false,
        service_allocation: None,
    };
    Api::<IPAddressPool>::all(client.clone())
        .create(&PostParams::default(), &IPAddressPool::new("lab", spec))
        .await?;
    Api::<L2Advertisement>::all(client.clone())
        .create(&PostParams::default(), &L2Advertisement::new("lab", advert))
        .await?;
    Ok(())
}

/// A Node with `InternalIP` `ip`, condition `Ready=True` and `labels`.
pub fn node(name: &str, ip: IpAddr, node_labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: labels(node_labels),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates [`node`] (status included: the API server keeps a Node's status on create).
pub async fn register_node(
    client: &kube::Client,
    name: &str,
    ip: IpAddr,
    node_labels: &[(&str, &str)],
) -> anyhow::Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let created = api
        .create(&PostParams::default(), &node(name, ip, node_labels))
        .await?;
    // Some servers drop status on create; write it through the subresource as well.
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": serde_json::to_value(node(name, ip, node_labels).status)?,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(created)
}

/// Sets one condition of a Node's status (`Ready`, `NetworkUnavailable`, ...), as the kubelet
/// or a network plugin would; the other conditions stay.
pub async fn set_node_condition(
    client: &kube::Client,
    name: &str,
    type_: &str,
    status: bool,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"conditions": [{
            "type": type_,
            "status": if status { "True" } else { "False" },
            "reason": "LodestoneE2e",
            "message": "set by the test",
            "lastHeartbeatTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }]},
    });
    // A manager per condition type: an apply by the manager that registered the Node would
    // drop the conditions it no longer lists.
    let manager = format!("{MANAGER}-{}", type_.to_ascii_lowercase());
    api.patch_status(
        name,
        &PatchParams::apply(&manager).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Replaces a Node's labels (merge patch: `None` values remove a label).
pub async fn label_node(
    client: &kube::Client,
    name: &str,
    changes: &[(&str, Option<&str>)],
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let map: serde_json::Map<String, serde_json::Value> = changes
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                v.map_or(serde_json::Value::Null, |v| v.into()),
            )
        })
        .collect();
    let body = serde_json::json!({"metadata": {"labels": map}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// Creates a `type: LoadBalancer` Service with one UDP port, then writes `ips` into
/// `status.loadBalancer.ingress` as the controller would.
pub async fn create_lb_service(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ips: &[IpAddr],
    local: bool,
) -> anyhow::Result<Service> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let svc = Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            external_traffic_policy: Some(if local { "Local" } else { "Cluster" }.into()),
            ports: Some(vec![ServicePort {
                name: Some("probe".into()),
                port: 7000,
                protocol: Some("UDP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create(&PostParams::default(), &svc).await?;
    set_ingress(client, namespace, name, ips).await
}

/// Writes `ips` as the Service's `status.loadBalancer.ingress`.
pub async fn set_ingress(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ips: &[IpAddr],
) -> anyhow::Result<Service> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let status = ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ips.iter()
                    .map(|ip| LoadBalancerIngress {
                        ip: Some(ip.to_string()),
                        ip_mode: Some("VIP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    };
    let body = serde_json::json!({"status": serde_json::to_value(status)?});
    Ok(api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?)
}

/// Creates or replaces the EndpointSlice `<service>-e2e` with one endpoint per `(node, ready)`.
pub async fn set_endpoints(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    endpoints: &[(&str, bool)],
) -> anyhow::Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let name = format!("{service}-e2e");
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.into()),
            labels: labels(&[("kubernetes.io/service-name", service)]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .enumerate()
            .map(|(i, (node, ready))| Endpoint {
                addresses: vec![format!("10.244.{i}.10")],
                node_name: Some((*node).into()),
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*ready),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
        ports: None,
    };
    let body = serde_json::to_value(&slice)?;
    let mut body = body;
    body["apiVersion"] = "discovery.k8s.io/v1".into();
    body["kind"] = "EndpointSlice".into();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// The Service's `lodestone.dev/Announced` condition as `(status, message)`, if present.
pub async fn announced_condition(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Option<(String, String)>> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let svc = api.get(name).await?;
    Ok(svc
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == lodestone_crds::conditions::ANNOUNCED)
        .map(|c| (c.status, c.message)))
}
