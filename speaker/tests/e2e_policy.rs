//! End to end: who may announce. externalTrafficPolicy Local follows the ready endpoint and
//! stops without one; node selectors and the exclusion label are respected; IPv6 through NDP;
//! a dual-stack Service announces both addresses from one node.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use lodestone_crds::L2AdvertisementSpec;
use lodestone_harness::e2e::lab::{self, Lab, PROBE_PORT};
use lodestone_harness::e2e::{Prober, objects};
use lodestone_speaker::election;
use lodestone_speaker::plan::EXCLUDE_LABEL;

const WAIT: Duration = Duration::from_secs(20);

async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pool_and_advert(client: &kube::Client, advert: L2AdvertisementSpec) {
    objects::lab_pool_and_advert(client, advert).await.unwrap();
}

fn resolved_owner(lab: &Lab, vip: IpAddr) -> Option<String> {
    let _ = lab.client.ping(vip);
    let mac = lab.client.neigh(vip).ok()??.mac?;
    lab.node_by_mac(&mac).map(str::to_owned)
}

async fn condition_eventually(
    client: &kube::Client,
    name: &str,
    want: (&str, &str),
) -> Option<(String, String)> {
    let mut last = None;
    for _ in 0..300 {
        last = objects::announced_condition(client, "default", name)
            .await
            .unwrap();
        if last
            .as_ref()
            .is_some_and(|(s, m)| s == want.0 && m == want.1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_policy_follows_the_ready_endpoint() {
    const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
    let vip: IpAddr = "192.0.2.101".parse().unwrap();
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
    pool_and_advert(&client, L2AdvertisementSpec::default()).await;
    objects::create_lb_service(&client, "default", "local", &[vip], true)
        .await
        .unwrap();
    // The endpoint sits on a node that would *not* win the election on its own.
    let winner = election::owner(&vip.to_string(), NODES).unwrap();
    let hosts: Vec<&str> = NODES.iter().copied().filter(|n| *n != winner).collect();
    objects::set_endpoints(
        &client,
        "default",
        "local",
        &[(hosts[0], true), (winner, false)],
    )
    .await
    .unwrap();
    lab.start_all_speakers(&[]).unwrap();
    let got = eventually(WAIT, || resolved_owner(&lab, vip)).await;
    assert_eq!(got.as_deref(), Some(hosts[0]), "{}", lab.logs());

    // The endpoint moves: so does the announcement, and the client follows.
    let prober =
        Prober::start(lab.client.ns(), vip, PROBE_PORT, Duration::from_millis(10)).unwrap();
    let moved = Instant::now();
    objects::set_endpoints(
        &client,
        "default",
        "local",
        &[(hosts[1], true), (hosts[0], false)],
    )
    .await
    .unwrap();
    assert!(
        prober
            .wait_for(WAIT, |p| p.first_from_since(hosts[1], moved))
            .is_some(),
        "announcement did not follow the endpoint to {}\n{}",
        hosts[1],
        lab.logs()
    );
    let msg = format!("announced from {} on eth0", hosts[1]);
    let cond = condition_eventually(&client, "local", ("True", &msg)).await;
    assert_eq!(cond, Some(("True".into(), msg)));
    drop(prober);

    // No ready endpoint: nobody answers at all.
    objects::set_endpoints(&client, "default", "local", &[(hosts[1], false)])
        .await
        .unwrap();
    let silent = eventually(WAIT, || {
        lab::arping_macs(&lab.client, vip, 2)
            .ok()
            .filter(|m| m.is_empty())
    })
    .await;
    assert!(
        silent.is_some(),
        "someone still answers without endpoints\n{}",
        lab.logs()
    );
    let cond = condition_eventually(
        &client,
        "local",
        ("False", "not announced: no ready endpoint"),
    )
    .await;
    assert_eq!(
        cond,
        Some(("False".into(), "not announced: no ready endpoint".into())),
        "{}",
        lab.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_exclusion_ipv6_and_dual_stack() {
    let v6: IpAddr = "2001:db8::100".parse().unwrap();
    let v4: IpAddr = "192.0.2.102".parse().unwrap();
    let nodes: Vec<(&str, &[(&str, &str)])> = vec![
        ("node-a", &[("zone", "x")]),
        ("node-b", &[("zone", "y")]),
        ("node-c", &[("zone", "y")]),
    ];
    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &nodes,
        &[v6, v4],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
    )
    .await
    .unwrap();

    // Before any speaker runs, the kernels must not answer for the addresses on their `lo`.
    for vip in [v4, v6] {
        assert!(
            !lab.client.ping(vip).unwrap(),
            "{vip} answered without a speaker"
        );
        let n = lab.client.neigh(vip).unwrap();
        assert!(
            n.as_ref().is_none_or(|n| n.mac.is_none()),
            "{vip} resolved without a speaker: {n:?}"
        );
    }

    let client = lab.cluster.client();
    let advert = L2AdvertisementSpec {
        node_selectors: vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("zone".to_owned(), "y".to_owned())].into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    pool_and_advert(&client, advert).await;
    // IPv6 first: it is the election address of the Service.
    objects::create_lb_service(&client, "default", "dual", &[v6, v4], false)
        .await
        .unwrap();
    objects::set_endpoints(
        &client,
        "default",
        "dual",
        &[("node-a", true), ("node-b", true), ("node-c", true)],
    )
    .await
    .unwrap();
    lab.start_all_speakers(&[]).unwrap();

    let zone_y = ["node-b", "node-c"];
    let expected = election::owner(&v6.to_string(), zone_y).unwrap();
    for vip in [v6, v4] {
        let got = eventually(WAIT, || resolved_owner(&lab, vip)).await;
        assert_eq!(got.as_deref(), Some(expected), "{vip}\n{}", lab.logs());
    }
    let macs = lab::arping_macs(&lab.client, v4, 3).unwrap();
    assert_eq!(macs, vec![lab.node(expected).unwrap().host.mac().unwrap()]);

    // Excluding the owner moves both addresses to the other zone-y node, never to zone x.
    let other = zone_y.iter().copied().find(|n| *n != expected).unwrap();
    let prober = Prober::start(lab.client.ns(), v6, PROBE_PORT, Duration::from_millis(10)).unwrap();
    let t = Instant::now();
    objects::label_node(&client, expected, &[(EXCLUDE_LABEL, Some(""))])
        .await
        .unwrap();
    assert!(
        prober
            .wait_for(WAIT, |p| p.first_from_since(other, t))
            .is_some(),
        "IPv6 traffic did not move to {other}\n{}",
        lab.logs()
    );
    let got = eventually(WAIT, || resolved_owner(&lab, v4).filter(|o| o == other)).await;
    assert_eq!(
        got.as_deref(),
        Some(other),
        "IPv4 did not follow\n{}",
        lab.logs()
    );
    assert!(
        prober.answers().iter().all(|a| a.node != "node-a"),
        "zone x answered"
    );
}
