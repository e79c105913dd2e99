//! End to end: the elected owner has none of the interfaces the L2Advertisement names, so it
//! answers for the address nowhere. Its speaker must say so (as MetalLB's does, with its
//! `announceFailed` Event): one Warning Event on the Service naming the node and the
//! interfaces, once per change, not once per recomputation.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lodestone_crds::L2AdvertisementSpec;
use lodestone_harness::e2e::lab::Lab;
use lodestone_harness::e2e::objects;
use lodestone_speaker::election;
use serde_json::json;

const NODES: [&str; 2] = ["node-a", "node-b"];
const WAIT: Duration = Duration::from_secs(30);

async fn announce_failed(client: &kube::Client) -> Vec<String> {
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    let list = events
        .list(&ListParams::default())
        .await
        .expect("events listed");
    list.items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("AnnounceFailed")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
        })
        .filter_map(|e| e.note.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_without_the_named_interfaces_says_so_once() {
    let vip: IpAddr = "192.0.2.100".parse().unwrap();
    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &nodes,
        &[vip],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
    )
    .await
    .unwrap();
    let client = lab.cluster.client();
    // The nodes have eth0 only.
    let advert = L2AdvertisementSpec {
        interfaces: vec!["eth9".into(), "bond7".into()],
        ..Default::default()
    };
    objects::lab_pool_and_advert(&client, advert).await.unwrap();
    objects::create_lb_service(&client, "default", "web", &[vip], false)
        .await
        .unwrap();
    objects::set_endpoints(
        &client,
        "default",
        "web",
        &[("node-a", true), ("node-b", true)],
    )
    .await
    .unwrap();
    lab.start_all_speakers(&[]).unwrap();
    if let Err(e) = lab.wait_converged(WAIT).await {
        panic!("{e}");
    }
    let owner = election::owner(&vip.to_string(), NODES).unwrap().to_owned();
    // The names of every L2Advertisement serving the address, merged and sorted.
    let want = format!(
        "{owner} owns {vip} but has none of the interfaces its L2Advertisements name (bond7, eth9): nothing answers for it"
    );
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = announce_failed(&client).await;
        if seen.contains(&want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains(&want), "saw {seen:?}\n{}", lab.logs());

    // Recomputations that change nothing about it add no Event: touch the Service and its
    // endpoints a few times, then wait for the speakers to have seen it.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    for n in 0..3 {
        services
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"touch": n.to_string()}}})),
            )
            .await
            .expect("label patched");
        objects::set_endpoints(
            &client,
            "default",
            "web",
            &[("node-a", true), ("node-b", n % 2 == 0)],
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = announce_failed(&client).await;
    assert_eq!(seen, vec![want.clone()], "{}", lab.logs());
    assert!(
        lab.logs()
            .contains("none of the interfaces its L2Advertisements name exists on this node"),
        "a log line says it too"
    );
}
