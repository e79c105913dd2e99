//! End to end: the speaker's `/metrics` move with real traffic, and its `--log-json` lines name
//! the Service they are about.
//!
//! Three real speakers in node namespaces, the embedded API server, a client namespace whose
//! kernel (and `arping`) sends the requests. The test plays the controller: it writes
//! each Service's address into its status. Stages: membership forms; an IPv4 Service is
//! announced by its election winner alone and that node answers the client's ARP requests; the
//! owner is killed with SIGKILL and a survivor detects the failover; the Service is deleted;
//! an IPv6 Service is announced and answers the client's Neighbour Solicitations; deleted too.
//!
//! Conditions are polled with a generous deadline that only turns a hang into a failure (with
//! the last scrapes); nothing here asserts how fast a figure moved.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams};
use lodestone_crds::L2AdvertisementSpec;
use lodestone_harness::e2e::lab::{self, Lab};
use lodestone_harness::e2e::logs::{ObjectNames, unnamed_object_lines};
use lodestone_harness::e2e::metrics::{self, SPEAKER_METRICS_PORT, poll, value_in};
use lodestone_harness::e2e::objects;
use lodestone_speaker::election;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const WAIT: Duration = Duration::from_secs(30);

// The names of speaker/src/metrics.rs, as docs/announcing.md lists them.
const ANNOUNCED: &str = "lodestone_speaker_addresses_announced";
const MEMBERS: &str = "lodestone_speaker_membership_members";
const FORMED: &str = "lodestone_speaker_membership_formed";
const SEEN: &str = "lodestone_speaker_requests_seen_total";
const ANSWERED: &str = "lodestone_speaker_requests_answered_total";
const GRATUITOUS: &str = "lodestone_speaker_gratuitous_sent_total";
const OWNERSHIP: &str = "lodestone_speaker_ownership_changes_total";
const FAILOVERS: &str = "lodestone_speaker_failover_detections_total";

/// One scrape of each speaker, by node.
type Scrapes = BTreeMap<String, String>;

/// The value of `name{protocol}` (or unlabelled with `""`) in `node`'s scrape; NaN when absent,
/// so that any comparison with it is false and polling goes on.
fn get(s: &Scrapes, node: &str, name: &str, protocol: &str) -> f64 {
    let labels: &[(&str, &str)] = if protocol.is_empty() {
        &[]
    } else {
        &[("protocol", protocol)]
    };
    s.get(node)
        .and_then(|body| value_in(body, name, labels))
        .unwrap_or(f64::NAN)
}

fn scrape_all(lab: &Lab, nodes: &[&str]) -> Scrapes {
    nodes
        .iter()
        .filter_map(|n| {
            let ns = lab.node(n).ok()?.host.ns();
            let body = metrics::scrape(ns, SPEAKER_METRICS_PORT).ok()??;
            Some(((*n).to_owned(), body))
        })
        .collect()
}

/// The speaker lines of each scrape, for failure messages.
fn show(s: &Scrapes) -> String {
    s.iter()
        .map(|(node, body)| {
            let lines: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("lodestone_speaker_"))
                .collect();
            format!("== {node}\n{}\n", lines.join("\n"))
        })
        .collect()
}

/// Scrapes `nodes` until `cond` holds on one scrape of all of them; returns that scrape.
async fn until(lab: &Lab, what: &str, nodes: &[&str], cond: impl Fn(&Scrapes) -> bool) -> Scrapes {
    let got = poll(what, WAIT, || {
        let s = scrape_all(lab, nodes);
        std::future::ready(if s.len() == nodes.len() && cond(&s) {
            Ok(s)
        } else {
            Err(show(&s))
        })
    })
    .await;
    match got {
        Ok(s) => s,
        Err(e) => panic!("{e}\n{}", lab.logs()),
    }
}

async fn pool_and_advert(client: &kube::Client) {
    objects::lab_pool_and_advert(client, L2AdvertisementSpec::default())
        .await
        .unwrap();
}

async fn service(client: &kube::Client, name: &str, vip: IpAddr) {
    objects::create_lb_service(client, "default", name, &[vip], false)
        .await
        .unwrap();
    let everywhere: Vec<(&str, bool)> = NODES.iter().map(|n| (*n, true)).collect();
    objects::set_endpoints(client, "default", name, &everywhere)
        .await
        .unwrap();
}

async fn delete_service(client: &kube::Client, name: &str) {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_services_traffic_and_failover() {
    let vip4: IpAddr = "192.0.2.120".parse().unwrap();
    let vip6: IpAddr = "2001:db8::120".parse().unwrap();
    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &nodes,
        &[vip4, vip6],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
    )
    .await
    .unwrap();
    let client = lab.cluster.client();
    pool_and_advert(&client).await;
    lab.start_all_speakers(&["--log-json"]).unwrap();

    // Stage 1: probes answer, the membership holds every speaker, nothing is announced.
    for n in NODES {
        let ns = lab.node(n).unwrap().host.ns();
        let probes = poll(&format!("{n} probes answer 200"), WAIT, || {
            let h = metrics::http_get(ns, SPEAKER_METRICS_PORT, "/healthz");
            let r = metrics::http_get(ns, SPEAKER_METRICS_PORT, "/readyz");
            std::future::ready(match (h, r) {
                (Ok(Some((200, _))), Ok(Some((200, _)))) => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .await;
        if let Err(e) = probes {
            panic!("{e}\n{}", lab.logs());
        }
    }
    let base = until(&lab, "membership of 3, nothing announced", &NODES, |s| {
        NODES.iter().all(|n| {
            get(s, n, MEMBERS, "") == 3.0
                && get(s, n, FORMED, "") == 1.0
                && get(s, n, ANNOUNCED, "") == 0.0
        })
    })
    .await;

    // Stage 2: an IPv4 Service. Only its election winner announces it, with gratuitous ARPs.
    let owner = election::owner(&vip4.to_string(), NODES).unwrap();
    let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != owner).collect();
    service(&client, "web", vip4).await;
    let announced = until(&lab, "one owner announces web", &NODES, |s| {
        get(s, owner, ANNOUNCED, "") == 1.0
            && get(s, owner, GRATUITOUS, "arp") > get(&base, owner, GRATUITOUS, "arp")
            && get(s, owner, OWNERSHIP, "") > get(&base, owner, OWNERSHIP, "")
            && others.iter().all(|n| get(s, n, ANNOUNCED, "") == 0.0)
    })
    .await;
    for n in &others {
        assert_eq!(
            get(&announced, n, GRATUITOUS, "arp"),
            get(&base, n, GRATUITOUS, "arp"),
            "{n} sent gratuitous ARP for an address it does not own\n{}",
            show(&announced)
        );
    }

    // The client's ARP requests reach every node; only the owner counts and answers them.
    let owner_mac = lab.node(owner).unwrap().host.mac().unwrap();
    let macs = lab::arping_macs(&lab.client, vip4, 3).unwrap();
    assert_eq!(macs, vec![owner_mac], "arping {vip4}");
    let before = announced;
    let after = until(&lab, "the owner counts the ARP requests", &NODES, |s| {
        get(s, owner, SEEN, "arp") >= get(&before, owner, SEEN, "arp") + 3.0
            && get(s, owner, ANSWERED, "arp") >= get(&before, owner, ANSWERED, "arp") + 3.0
    })
    .await;
    for n in &others {
        for counter in [SEEN, ANSWERED] {
            assert_eq!(
                get(&after, n, counter, "arp"),
                0.0,
                "{n}: {counter} for an address it does not own\n{}",
                show(&after)
            );
        }
    }

    // Stage 3: kill -9 the owner. The survivors see the membership shrink; the next winner
    // detects the failover and announces.
    let second = election::owner(&vip4.to_string(), others.iter().copied()).unwrap();
    let third = others.iter().copied().find(|n| *n != second).unwrap();
    lab.signal_speaker(owner, libc::SIGKILL).unwrap();
    let failed_over = until(&lab, "failover to the second", &others, |s| {
        others.iter().all(|n| get(s, n, MEMBERS, "") == 2.0)
            && get(s, second, FAILOVERS, "") > get(&after, second, FAILOVERS, "")
            && get(s, second, ANNOUNCED, "") == 1.0
            && get(s, second, GRATUITOUS, "arp") > get(&after, second, GRATUITOUS, "arp")
            && get(s, second, OWNERSHIP, "") > get(&after, second, OWNERSHIP, "")
    })
    .await;
    assert_eq!(get(&failed_over, third, ANNOUNCED, ""), 0.0);
    assert_eq!(
        get(&failed_over, third, FAILOVERS, ""),
        get(&base, third, FAILOVERS, ""),
        "{third} owned nothing, so took nothing over\n{}",
        show(&failed_over)
    );

    // Stage 4: deleting the Service stops the announcement.
    delete_service(&client, "web").await;
    let deleted = until(&lab, "web withdrawn", &others, |s| {
        get(s, second, ANNOUNCED, "") == 0.0
            && get(s, second, OWNERSHIP, "") > get(&failed_over, second, OWNERSHIP, "")
    })
    .await;

    // Stage 5: the same for IPv6 with the two survivors: unsolicited NAs, then the client's
    // Neighbour Solicitations counted and answered by the owner alone.
    let owner6 = election::owner(&vip6.to_string(), others.iter().copied()).unwrap();
    let other6 = others.iter().copied().find(|n| *n != owner6).unwrap();
    service(&client, "web6", vip6).await;
    let announced6 = until(&lab, "one owner announces web6", &others, |s| {
        get(s, owner6, ANNOUNCED, "") == 1.0
            && get(s, owner6, GRATUITOUS, "ndp") > get(&deleted, owner6, GRATUITOUS, "ndp")
            && get(s, other6, ANNOUNCED, "") == 0.0
    })
    .await;
    // The client's kernel solicits (dataplane_ndp.rs runs ndisc6 against the speaker too).
    let owner6_mac = lab.node(owner6).unwrap().host.mac().unwrap();
    let resolved = poll("the client resolves the IPv6 address", WAIT, || {
        let _ = lab.client.ping(vip6);
        let n = lab.client.neigh(vip6);
        std::future::ready(match n {
            Ok(Some(n)) if n.mac.as_deref() == Some(owner6_mac.as_str()) => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .await;
    if let Err(e) = resolved {
        panic!("{e}\n{}", lab.logs());
    }
    let after6 = until(&lab, "the owner counts the solicitations", &others, |s| {
        get(s, owner6, SEEN, "ndp") > get(&announced6, owner6, SEEN, "ndp")
            && get(s, owner6, ANSWERED, "ndp") > get(&announced6, owner6, ANSWERED, "ndp")
    })
    .await;
    for counter in [SEEN, ANSWERED] {
        assert_eq!(
            get(&after6, other6, counter, "ndp"),
            0.0,
            "{other6}: {counter} for an address it does not own\n{}",
            show(&after6)
        );
    }
    delete_service(&client, "web6").await;
    until(&lab, "web6 withdrawn", &others, |s| {
        get(s, owner6, ANNOUNCED, "") == 0.0
    })
    .await;

    // Every JSON line about the Services, from all three speakers (the killed one too), names
    // the Service, the announcer's lines about frames on an interface included.
    let addresses = [vip4, vip6];
    let names = ObjectNames {
        fields: &["service"],
        objects: &["default/web", "default/web6"],
        addresses: &addresses,
        exempt_targets: &[],
    };
    let mut about_web = 0;
    for n in &lab.nodes {
        let log = n.speaker.as_ref().map(|s| s.log()).unwrap_or_default();
        let bad = unnamed_object_lines(&log, &names);
        assert!(bad.is_empty(), "{}:\n{}", n.name, bad.join("\n"));
        about_web += log.matches(r#""service":"default/web""#).count();
    }
    assert!(about_web > 0, "no line named default/web\n{}", lab.logs());
}
