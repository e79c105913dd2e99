//! The real `lodestone-speaker` binary through a deleted IPAddressPool CRD (issue 14, item 3 for
//! the speaker): every pool vanishes at once, and what was announced stays announced, judged by
//! the client's own ARP; once the CRD and the pool are back, the speaker goes on normally. Runs
//! on the embedded API server and, under the envtest switch, on kube-apiserver.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use lodestone_crds::L2AdvertisementSpec;
use lodestone_harness::e2e::lab::{self, Lab};
use lodestone_harness::e2e::objects;

const WAIT: Duration = Duration::from_secs(30);

async fn wait_log(lab: &Lab, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !lab.logs().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_crd_deleted_keeps_what_was_announced() {
    let vip: IpAddr = "192.0.2.100".parse().unwrap();
    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &[("node-a", &[][..])],
        &[vip],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
    )
    .await
    .unwrap();
    let client = lab.cluster.client();
    objects::lab_pool_and_advert(&client, L2AdvertisementSpec::default())
        .await
        .unwrap();
    objects::create_lb_service(&client, "default", "web", &[vip], false)
        .await
        .unwrap();
    objects::set_endpoints(&client, "default", "web", &[("node-a", true)])
        .await
        .unwrap();
    lab.start_all_speakers(&[]).unwrap();
    let mac = lab.node("node-a").unwrap().host.mac().unwrap();
    let deadline = Instant::now() + WAIT;
    while lab::arping_macs(&lab.client, vip, 2).unwrap() != vec![mac.clone()] {
        assert!(
            Instant::now() < deadline,
            "never announced:\n{}",
            lab.logs()
        );
    }

    // Delete the CRD: the embedded server drops the pools at once, kube-apiserver deletes them
    // (nothing holds a finalizer here: no controller runs).
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("ipaddresspools.lodestone.dev", &DeleteParams::default())
        .await
        .expect("CRD deleted");
    let deadline = Instant::now() + WAIT;
    while crds
        .get_opt("ipaddresspools.lodestone.dev")
        .await
        .ok()
        .flatten()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the CRD never went");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // kube-apiserver reports every pool deleted before the watch ends (the speaker then holds
    // them, and says so); the embedded server ends the watch first, and the speaker's cache
    // keeps them. Either way: still answered, by the same node, for a while after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..4 {
        assert_eq!(
            lab::arping_macs(&lab.client, vip, 2).unwrap(),
            vec![mac.clone()],
            "the address went dark without its pool:\n{}",
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cond = objects::announced_condition(&client, "default", "web")
        .await
        .unwrap();
    assert_eq!(
        cond.map(|(s, _)| s).as_deref(),
        Some("True"),
        "{}",
        lab.logs()
    );

    // The CRD and the pool come back: the hold ends, and the address is still answered.
    lab.cluster
        .apply_crds(&lodestone_crds::all_crds())
        .await
        .expect("CRDs served again");
    let deadline = Instant::now() + WAIT;
    loop {
        // The advertisement survived (its CRD was not deleted); only the pool is created again.
        let pool = lodestone_crds::IPAddressPool::new(
            "lab",
            lodestone_crds::IPAddressPoolSpec {
                addresses: vec!["192.0.2.100/30".into()],
                auto_assign: true,
                avoid_buggy_ips: false,
                allow_link_local: false,
                service_allocation: None,
            },
        );
        let created = Api::<lodestone_crds::IPAddressPool>::all(client.clone())
            .create(&Default::default(), &pool)
            .await;
        if created.is_ok() {
            break;
        }
        // The kind may take a moment to be served again.
        assert!(Instant::now() < deadline, "pool not created: {created:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if lab
        .logs()
        .contains("IPAddressPool gone while Services hold its addresses")
    {
        wait_log(
            &lab,
            "no longer holding the addresses of a vanished IPAddressPool",
        )
        .await;
    }
    assert_eq!(
        lab::arping_macs(&lab.client, vip, 2).unwrap(),
        vec![mac],
        "{}",
        lab.logs()
    );
}
