//! `deploy/rbac.yaml` against the calls the real speaker makes.
//!
//! One lab node (its own network namespace, a Node object, a forwarder to the embedded API
//! server; see `lodestone_harness::e2e::lab`) runs the real `lodestone-speaker` with a
//! kubeconfig whose token authenticates as the speaker's ServiceAccount, after
//! `deploy/rbac.yaml` is applied. The scenario makes it call everything it can: its reflectors
//! (Services, EndpointSlices, Nodes, pools, L2Advertisements, BGPPeers, BGPAdvertisements), the
//! Announced condition, and Events (each created on its own): announce, lose the
//! L2Advertisement, get it back; then a BGPPeer with an MD5 password Secret (read with one
//! `get`), whose session state the speaker writes on the peer's status. The audit log is then
//! checked as for the controller.
//!
//! Needs root (network namespaces), as the speaker's e2e tests do. Only the embedded server keeps
//! an audit log; under the envtest switch this test is skipped, as `rbac_controller` is.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use lodestone_crds::{
    BGPPeer, IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec,
};
use lodestone_harness::e2e::lab::{Lab, POOL_V4};
use lodestone_harness::e2e::objects;

mod rbac_common;

use rbac_common::{NS, add_sa_token, apply_rbac, binary, check, rbac_docs};

const SA: &str = "lodestone-speaker";
const DEADLINE: Duration = Duration::from_secs(60);

async fn wait_for(what: &str, lab: &Lab, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never happened; speaker log:\n{}", lab.logs());
}

fn audit(lab: &Lab) -> Vec<lodestone_harness::apiserver::rbac::AuditEntry> {
    lab.cluster.server().map(|s| s.audit()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_rbac_is_exactly_what_the_speaker_calls() {
    if lodestone_harness::cluster::RealAssets::from_env().is_some() {
        eprintln!("skipped: a real kube-apiserver keeps no audit log this test can read");
        return;
    }
    let vip: IpAddr = "192.0.2.120".parse().unwrap();
    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &[("node-a", &[][..])],
        &[vip],
        &binary("lodestone-speaker"),
    )
    .await
    .unwrap();
    let admin = lab.cluster.client();
    let docs = rbac_docs();
    apply_rbac(&admin, &docs).await;

    // The node's kubeconfig (written by the lab, pointing at its forwarder) gets the
    // speaker's token instead of the admin's.
    {
        let server = lab
            .cluster
            .server()
            .expect("the lab runs the embedded server");
        let token = format!("speaker-token-{}", std::process::id());
        add_sa_token(server, &token, SA);
        let kubeconfig = lab.work_dir().join("node-a.kubeconfig");
        let text = std::fs::read_to_string(&kubeconfig).unwrap();
        let admin_token = format!("token: {}\n", server.token());
        assert!(
            text.contains(&admin_token),
            "the lab's kubeconfig changed shape"
        );
        std::fs::write(
            &kubeconfig,
            text.replace(&admin_token, &format!("token: {token}\n")),
        )
        .unwrap();
    }

    Api::<IPAddressPool>::all(admin.clone())
        .create(
            &PostParams::default(),
            &IPAddressPool::new(
                "lab",
                IPAddressPoolSpec {
                    addresses: vec![POOL_V4.into()],
                    auto_assign: true,
                    avoid_buggy_ips: false,
                    allow_link_local: false,
                    service_allocation: None,
                },
            ),
        )
        .await
        .unwrap();
    let adverts: Api<L2Advertisement> = Api::all(admin.clone());
    let advert = L2Advertisement::new("lab", L2AdvertisementSpec::default());
    adverts
        .create(&PostParams::default(), &advert)
        .await
        .unwrap();
    // Local policy, so the EndpointSlices decide who may announce.
    objects::create_lb_service(&admin, "default", "web", &[vip], true)
        .await
        .unwrap();
    objects::set_endpoints(&admin, "default", "web", &[("node-a", true)])
        .await
        .unwrap();

    lab.start_speaker("node-a", &[]).unwrap();
    let announced = async |want: &str| {
        objects::announced_condition(&admin, "default", "web")
            .await
            .ok()
            .flatten()
            .is_some_and(|(status, _)| status == want)
    };
    wait_for("the Announced condition", &lab, async || {
        announced("True").await
    })
    .await;

    // Lose the advertisement (announcement stops), get it back (the same Event again).
    adverts
        .delete("lab", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the condition turning False", &lab, async || {
        announced("False").await
    })
    .await;
    adverts
        .create(&PostParams::default(), &advert)
        .await
        .unwrap();
    wait_for("the condition turning True again", &lab, async || {
        announced("True").await
    })
    .await;
    // Started, stopped, started again: each its own Event, created (never a series patch).
    wait_for("three Events created", &lab, async || {
        audit(&lab)
            .iter()
            .filter(|e| e.resource == "events" && e.verb == "create")
            .count()
            >= 3
    })
    .await;

    // BGP: a peer whose password is in a Secret of the speaker's namespace. No router answers
    // at 192.0.2.1; the session's state is reported on the peer all the same.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "router-md5", "namespace": NS},
        "data": {"password": "czNjcmV0"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let peer: BGPPeer = serde_json::from_value(serde_json::json!({
        "apiVersion": "lodestone.dev/v1alpha1", "kind": "BGPPeer",
        "metadata": {"name": "router"},
        "spec": {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1",
                 "passwordSecret": {"name": "router-md5"}},
    }))
    .unwrap();
    let peers: Api<BGPPeer> = Api::all(admin.clone());
    peers.create(&PostParams::default(), &peer).await.unwrap();
    wait_for("node-a's session on the BGPPeer status", &lab, async || {
        peers
            .get("router")
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|s| s.sessions.iter().any(|s| s.node == "node-a"))
    })
    .await;

    check(&docs, SA, &audit(&lab), &lab.logs());
}
