//! The BGP resources against an API server: the generated CRDs are accepted (a real
//! kube-apiserver refuses CEL rules whose estimated cost exceeds its budget, so run this with
//! `TEST_ASSET_KUBE_APISERVER` and `TEST_ASSET_ETCD` too), bad objects are refused with the
//! rule's message, and each node's speaker owns its own entry of `status.sessions` under
//! server-side apply, which `kubectl get bgppeers` shows.

use kube::api::{Api, Patch, PatchParams, PostParams};
use lodestone_crds::{BGPAdvertisement, BGPPeer};
use lodestone_harness::cluster::TestCluster;
use serde_json::json;

fn peer(name: &str, spec: serde_json::Value) -> BGPPeer {
    serde_json::from_value(json!({
        "apiVersion": "lodestone.dev/v1alpha1", "kind": "BGPPeer",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a BGPPeer")
}

/// Async: the embedded API server runs on this test's runtime.
async fn kubectl(cluster: &TestCluster, args: &[&str]) -> String {
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn bgp_crds_are_accepted_validated_and_carry_per_node_status() {
    let cluster = TestCluster::start().await.expect("API server");
    // Only the BGP CRDs: this test judges their CEL rules, not the others'.
    use kube::CustomResourceExt;
    cluster
        .apply_crds(&[BGPPeer::crd(), BGPAdvertisement::crd()])
        .await
        .expect("the API server accepts every CRD, CEL cost included");
    let client = cluster.client();
    let peers: Api<BGPPeer> = Api::all(client.clone());
    let pp = PostParams::default();

    // Every field at once.
    let full = peer(
        "tor",
        json!({
            "myASN": 4200000001u32, "peerASN": 64500, "peerAddress": "192.0.2.1",
            "peerPort": 1179, "sourceAddress": "192.0.2.11", "holdTime": "9s",
            "keepaliveTime": "3s", "connectTime": "5s", "routerID": "192.0.2.11",
            "nodeSelectors": [{"matchLabels": {"rack": "a"}}],
            "passwordSecret": {"name": "tor-md5"}, "ebgpMultiHop": true, "passive": false,
            "bfd": {"receiveInterval": 100, "transmitInterval": 100, "detectMultiplier": 3},
        }),
    );
    peers.create(&pp, &full).await.expect("a full BGPPeer");

    for (spec, message) in [
        (
            json!({"myASN": 64512, "peerASN": 64500, "peerAddress": "tor.example"}),
            "peerAddress must be an IP address",
        ),
        (
            json!({"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1", "holdTime": "1s"}),
            "holdTime must be 0s or between 3s and 65535s",
        ),
        (
            json!({"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1",
                   "holdTime": "9s", "keepaliveTime": "20s"}),
            "keepaliveTime must not exceed holdTime",
        ),
    ] {
        let err = peers
            .create(&pp, &peer("bad", spec.clone()))
            .await
            .expect_err(&spec.to_string());
        assert!(err.to_string().contains(message), "{spec}: {err}");
    }

    let adverts: Api<BGPAdvertisement> = Api::all(client.clone());
    let adv: BGPAdvertisement = serde_json::from_value(json!({
        "apiVersion": "lodestone.dev/v1alpha1", "kind": "BGPAdvertisement",
        "metadata": {"name": "all"},
        "spec": {"aggregationLength": 32, "aggregationLengthV6": 128, "localPref": 150,
                 "communities": ["65000:100", "large:4200000001:1:2", "no-export"],
                 "ipAddressPools": ["lab"], "peers": ["tor"],
                 "nodeSelectors": [{"matchLabels": {"rack": "a"}}]},
    }))
    .unwrap();
    adverts.create(&pp, &adv).await.expect("a BGPAdvertisement");
    let mut bad = adv.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.communities = vec!["70000:1".into()];
    let err = adverts.create(&pp, &bad).await.expect_err("70000:1");
    assert!(
        err.to_string()
            .contains("a standard community is two 16-bit numbers"),
        "{err}"
    );

    // Two speakers, each applying only its own entry, under its own field manager.
    // node-b also writes the summary (it is the designated writer in this story).
    for (node, state) in [("node-a", "Established"), ("node-b", "Active")] {
        let mut status =
            json!({"sessions": [{"node": node, "state": state, "advertisedPrefixes": 2}]});
        if node == "node-b" {
            status["summary"] = "1/2 Established".into();
        }
        let body = json!({
            "apiVersion": "lodestone.dev/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": "tor"},
            "status": status,
        });
        peers
            .patch_status(
                "tor",
                &PatchParams::apply(&format!("lodestone-speaker/{node}")).force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("status apply");
    }
    let got = peers.get("tor").await.unwrap();
    let sessions = got.status.unwrap_or_default().sessions;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    // node-a stops peering: applying no entry removes its own and leaves node-b's.
    peers
        .patch_status(
            "tor",
            &PatchParams::apply("lodestone-speaker/node-a").force(),
            &Patch::Apply(&json!({
                "apiVersion": "lodestone.dev/v1alpha1", "kind": "BGPPeer",
                "metadata": {"name": "tor"}, "status": {"sessions": []},
            })),
        )
        .await
        .expect("status apply");
    let got = peers.get("tor").await.unwrap();
    let nodes: Vec<String> = got
        .status
        .unwrap_or_default()
        .sessions
        .into_iter()
        .map(|s| s.node)
        .collect();
    assert_eq!(nodes, ["node-b"]);

    let table = kubectl(&cluster, &["get", "bgppeers"]).await;
    let header = table.lines().next().unwrap_or_default();
    for column in ["ADDRESS", "PEER ASN", "MY ASN", "SESSIONS"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table.lines().nth(1).unwrap_or_default();
    for cell in ["192.0.2.1", "64500", "4200000001", "1/2 Established"] {
        assert!(row.contains(cell), "{table}");
    }
}
