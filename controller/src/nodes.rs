//! The addresses of the cluster's Nodes, which the controller never hands out.
//!
//! Only `status.addresses` is kept, indexed by address: a Node object is mostly images and
//! conditions, and its status is rewritten every few seconds by the kubelet's heartbeat, so the
//! watch publishes only when the set of addresses changes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use lodestone_crds::events::error_chain;
use tokio::sync::watch;
use tracing::warn;

/// Every Node address with the name of a Node that has it.
pub type NodeAddresses = BTreeMap<IpAddr, String>;

/// The IP addresses in a Node's `status.addresses` (host names are skipped).
pub fn addresses_of(node: &Node) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| a.address.trim().parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Addresses by Node name, turned into Node name by address (the first Node by name wins when
/// two report the same address).
pub fn index(by_node: &BTreeMap<String, Vec<IpAddr>>) -> NodeAddresses {
    let mut out = NodeAddresses::new();
    for (node, ips) in by_node {
        for ip in ips {
            out.entry(*ip).or_insert_with(|| node.clone());
        }
    }
    out
}

/// Watch every Node. The receiver holds `None` until the first list is complete, then the
/// current addresses; it changes only when they do.
pub fn spawn_watch(client: &Client) -> watch::Receiver<Option<Arc<NodeAddresses>>> {
    let (tx, rx) = watch::channel(None);
    let stream =
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut by_node: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        let mut relist: Option<BTreeMap<String, Vec<IpAddr>>> = None;
        let mut listed = false;
        while let Some(ev) = stream.next().await {
            let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
            match ev {
                Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(n)) => {
                    relist
                        .get_or_insert_with(BTreeMap::new)
                        .insert(name(&n), addresses_of(&n));
                }
                Ok(watcher::Event::InitDone) => {
                    by_node = relist.take().unwrap_or_default();
                    listed = true;
                }
                Ok(watcher::Event::Apply(n)) => {
                    by_node.insert(name(&n), addresses_of(&n));
                }
                Ok(watcher::Event::Delete(n)) => {
                    by_node.remove(&name(&n));
                }
                Err(e) => {
                    warn!(kind = "Node", error = %error_chain(&e), "watch failed; retrying");
                    continue;
                }
            }
            if !listed {
                continue;
            }
            let now = Arc::new(index(&by_node));
            tx.send_if_modified(|cur| {
                if cur.as_deref() == Some(&*now) {
                    return false;
                }
                *cur = Some(now);
                true
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_ip_addresses_only_and_indexes_them() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "node-a"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "192.0.2.10"},
                {"type": "InternalIP", "address": "2001:db8::10"},
                {"type": "Hostname", "address": "node-a"},
                {"type": "ExternalIP", "address": "198.51.100.7"},
                {"type": "InternalIP", "address": "192.0.2.10"},
            ]}
        }))
        .unwrap();
        let ips = addresses_of(&node);
        assert_eq!(
            ips,
            ["192.0.2.10", "198.51.100.7", "2001:db8::10"].map(|s| s.parse::<IpAddr>().unwrap())
        );
        let by_node = BTreeMap::from([
            ("node-a".to_string(), ips),
            ("node-b".to_string(), vec!["192.0.2.10".parse().unwrap()]),
        ]);
        let idx = index(&by_node);
        assert_eq!(idx.len(), 3);
        assert_eq!(idx[&"192.0.2.10".parse::<IpAddr>().unwrap()], "node-a");
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(addresses_of(&bare).is_empty());
    }
}
