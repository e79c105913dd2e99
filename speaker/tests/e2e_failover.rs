//! End to end, IPv4: three real speakers in node namespaces, a client namespace whose kernel
//! resolves the service address, the embedded API server. One topology is reused through the
//! stages (answer, kill -9, restart, link cut, SIGTERM) to keep wall time small.
//!
//! Churn rule checked by the prober: an address has one answering node at a time. Around a
//! handoff, answers from the previous node are allowed only to requests *sent before* the
//! client's first answer from the new owner (they were in flight or used the old neighbour
//! entry); after that first answer, no other node may answer again until the next handoff.
//!
//! Each test starts its failures only once every speaker has converged ([`wait_converged`]):
//! an owner answers on the Node Ready fallback before its peers have even listed the cluster,
//! so on a loaded machine "the owner answers" alone does not mean the others could take over.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams};
use lodestone_crds::L2AdvertisementSpec;
use lodestone_harness::e2e::lab::{self, Lab, PROBE_PORT};
use lodestone_harness::e2e::metrics::{self, SPEAKER_METRICS_PORT};
use lodestone_harness::e2e::{Prober, objects};
use lodestone_speaker::election;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
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

/// Waits until every speaker of the lab is ready (`/readyz`: it has listed every watched kind and
/// applied its first plan) and its membership is formed with all of them. Until then a speaker
/// that is still starting cannot take over: with the API server gone it never finishes
/// starting, and a peer it has not met yet still counts as alive through its Node.
async fn wait_converged(lab: &Lab) {
    let speakers = lab.nodes.iter().filter(|n| n.speaker.is_some()).count() as f64;
    let converged = metrics::poll(
        "every speaker ready and in one membership",
        WAIT,
        || async {
            let mut state = String::new();
            let mut all = true;
            for n in lab.nodes.iter().filter(|n| n.speaker.is_some()) {
                let ns = n.host.ns();
                let ready = metrics::http_get(ns, SPEAKER_METRICS_PORT, "/readyz")
                    .ok()
                    .flatten()
                    .map(|(code, _)| code);
                let body = metrics::scrape(ns, SPEAKER_METRICS_PORT)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let formed = metrics::gauge_in(&body, "lodestone_speaker_membership_formed");
                let members = metrics::gauge_in(&body, "lodestone_speaker_membership_members");
                all &= ready == Some(200) && formed == Some(1.0) && members == Some(speakers);
                state.push_str(&format!(
                    "{}: readyz {ready:?}, formed {formed:?}, members {members:?}\n",
                    n.name
                ));
            }
            if all { Ok(()) } else { Err(state) }
        },
    )
    .await;
    if let Err(e) = converged {
        panic!("{e}\n{}", lab.logs());
    }
}

/// The node the client's kernel resolved `vip` to, after one ping.
fn resolved_owner(lab: &Lab, vip: IpAddr) -> Option<String> {
    let _ = lab.client.ping(vip);
    let mac = lab.client.neigh(vip).ok()??.mac?;
    lab.node_by_mac(&mac).map(str::to_owned)
}

/// Checks the churn rule (module docs) over `answers`; returns the sequence of owners.
fn check_one_owner_at_a_time(answers: &[lodestone_harness::e2e::Answer]) -> Vec<String> {
    let mut owners: Vec<(String, Instant)> = Vec::new();
    for a in answers {
        match owners.last() {
            Some((current, _)) if *current == a.node => {}
            Some((_, since)) if a.sent < *since => {
                // A request sent before the current owner's first answer: in flight at the
                // handoff, allowed.
            }
            _ => owners.push((a.node.clone(), a.sent)),
        }
    }
    owners.into_iter().map(|(n, _)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_answers_and_failover_follows() {
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
    pool_and_advert(&client, L2AdvertisementSpec::default()).await;
    objects::create_lb_service(&client, "default", "web", &[vip], false)
        .await
        .unwrap();
    objects::set_endpoints(
        &client,
        "default",
        "web",
        &[("node-a", true), ("node-b", true), ("node-c", true)],
    )
    .await
    .unwrap();
    lab.start_all_speakers(&[]).unwrap();
    wait_converged(&lab).await;

    // Stage 1: the election winner answers, alone.
    let owner = election::owner(&vip.to_string(), NODES).unwrap().to_owned();
    let got = eventually(WAIT, || resolved_owner(&lab, vip)).await;
    assert_eq!(got.as_deref(), Some(owner.as_str()), "{}", lab.logs());
    let macs = lab::arping_macs(&lab.client, vip, 3).unwrap();
    let owner_mac = lab.node(&owner).unwrap().host.mac().unwrap();
    assert_eq!(
        macs,
        vec![owner_mac.clone()],
        "arping saw {macs:?}\n{}",
        lab.logs()
    );

    let message = format!("announced from {owner} on eth0");
    let mut cond = None;
    for _ in 0..200 {
        cond = objects::announced_condition(&client, "default", "web")
            .await
            .unwrap();
        if cond.as_ref().is_some_and(|(_, m)| *m == message) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cond, Some(("True".into(), message)), "{}", lab.logs());
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    let started = events.list(&ListParams::default()).await.unwrap();
    assert!(
        started.items.iter().any(|e| {
            e.reason.as_deref() == Some("AnnouncementStarted")
                && e.note.as_deref() == Some(&format!("announcing {vip} from {owner} on eth0"))
        }),
        "no AnnouncementStarted event: {:?}",
        started
            .items
            .iter()
            .map(|e| (&e.reason, &e.note))
            .collect::<Vec<_>>()
    );

    // Stage 2: kill -9 the owner's speaker. The client sends nothing: its neighbour entry must
    // follow from the new owner's gratuitous ARP alone.
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let second = election::owner(&vip.to_string(), survivors.iter().copied())
        .unwrap()
        .to_owned();
    let second_mac = lab.node(&second).unwrap().host.mac().unwrap();
    lab.signal_speaker(&owner, libc::SIGKILL).unwrap();
    let followed = eventually(WAIT, || {
        let n = lab.client.neigh(vip).ok()??;
        (n.mac.as_deref() == Some(second_mac.as_str())).then_some(())
    })
    .await;
    assert!(
        followed.is_some(),
        "neighbour entry did not follow to {second}\n{}",
        lab.logs()
    );
    let prober =
        Prober::start(lab.client.ns(), vip, PROBE_PORT, Duration::from_millis(10)).unwrap();
    let start = Instant::now();
    assert!(
        prober
            .wait_for(WAIT, |p| p.first_from_since(&second, start))
            .is_some(),
        "no traffic reached {second}"
    );
    let macs = lab::arping_macs(&lab.client, vip, 3).unwrap();
    assert_eq!(macs, vec![second_mac.clone()], "after kill: {macs:?}");

    // Stage 3: the speaker comes back and, being the election winner, takes the address back.
    let back = Instant::now();
    lab.start_speaker(&owner, &[]).unwrap();
    assert!(
        prober
            .wait_for(WAIT, |p| p.first_from_since(&owner, back))
            .is_some(),
        "restarted owner never answered\n{}",
        lab.logs()
    );
    // The others must know it is back before its link is cut, or the cut tests its restart.
    wait_converged(&lab).await;

    // Stage 4: pull the owner's cable. The others see it vanish and the second takes over.
    let cut = Instant::now();
    lab.node(&owner).unwrap().host.link_down().unwrap();
    assert!(
        prober
            .wait_for(WAIT, |p| p.first_from_since(&second, cut))
            .is_some(),
        "no takeover after the link cut\n{}",
        lab.logs()
    );
    lab.node(&owner).unwrap().host.link_up().unwrap();
    let healed = Instant::now();
    assert!(
        prober
            .wait_for(WAIT, |p| p.first_from_since(&owner, healed))
            .is_some(),
        "owner did not take back after the link returned\n{}",
        lab.logs()
    );

    // Stage 5: SIGTERM hands over at once (leave); the speaker exits cleanly.
    let term = Instant::now();
    lab.signal_speaker(&owner, libc::SIGTERM).unwrap();
    assert!(
        prober
            .wait_for(WAIT, |p| p.first_from_since(&second, term))
            .is_some(),
        "no handoff on SIGTERM\n{}",
        lab.logs()
    );
    lab.wait_speaker_exit(&owner, WAIT).unwrap();
    let log = lab.node(&owner).unwrap().speaker.as_ref().unwrap().log();
    assert!(log.contains("speaker stopped"), "{log}");
    // Its text log went to a file, not a terminal: no colour escape codes.
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");

    // The prober saw one owner at a time, in the order the stages imply.
    let owners = check_one_owner_at_a_time(&prober.answers());
    let mut expected = vec![
        second.clone(),
        owner.clone(),
        second.clone(),
        owner.clone(),
        second.clone(),
    ];
    expected.dedup();
    assert_eq!(owners, expected, "owner sequence");
}

/// The API server becomes unreachable: nothing is withdrawn, and failover still works because
/// liveness comes from the membership, not the API server. When it returns, the condition
/// catches up with the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_loss_withdraws_nothing() {
    let vip: IpAddr = "192.0.2.103".parse().unwrap();
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
    objects::create_lb_service(&client, "default", "web", &[vip], false)
        .await
        .unwrap();
    objects::set_endpoints(&client, "default", "web", &[("node-b", true)])
        .await
        .unwrap();
    lab.start_all_speakers(&[]).unwrap();
    // Converged first: the outage must find every speaker started and in the membership, or
    // this tests a speaker starting without an API server (it cannot) instead of failover.
    wait_converged(&lab).await;
    let owner = election::owner(&vip.to_string(), NODES).unwrap().to_owned();
    let got = eventually(WAIT, || resolved_owner(&lab, vip)).await;
    assert_eq!(got.as_deref(), Some(owner.as_str()), "{}", lab.logs());

    lab.api_down();
    // Every speaker has noticed (its watches failed) before we look again.
    let noticed = eventually(WAIT, || {
        lab.nodes
            .iter()
            .all(|n| {
                n.speaker
                    .as_ref()
                    .is_some_and(|s| s.log().contains("watch failed"))
            })
            .then_some(())
    })
    .await;
    assert!(
        noticed.is_some(),
        "speakers did not notice the outage\n{}",
        lab.logs()
    );
    let owner_mac = lab.node(&owner).unwrap().host.mac().unwrap();
    let macs = lab::arping_macs(&lab.client, vip, 3).unwrap();
    assert_eq!(
        macs,
        vec![owner_mac],
        "announcement changed during the outage"
    );

    // Failover without the API server.
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    let second = election::owner(&vip.to_string(), survivors.iter().copied())
        .unwrap()
        .to_owned();
    let prober =
        Prober::start(lab.client.ns(), vip, PROBE_PORT, Duration::from_millis(10)).unwrap();
    let kill = Instant::now();
    lab.signal_speaker(&owner, libc::SIGKILL).unwrap();
    assert!(
        prober
            .wait_for(WAIT, |p| p.first_from_since(&second, kill))
            .is_some(),
        "no failover while the API server is away\n{}",
        lab.logs()
    );

    lab.api_up().unwrap();
    let message = format!("announced from {second} on eth0");
    let mut cond = None;
    for _ in 0..400 {
        cond = objects::announced_condition(&client, "default", "web")
            .await
            .unwrap();
        if cond.as_ref().is_some_and(|(_, m)| *m == message) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cond, Some(("True".into(), message)), "{}", lab.logs());
}
