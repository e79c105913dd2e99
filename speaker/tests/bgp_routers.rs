//! BGP mode against real routers: FRR and BIRD 2 (Debian's packages) in a router namespace on
//! the lab's segment, configured exactly as `docs/bgp.md` shows, with the Lodestone objects of
//! the same page; three real speakers in node namespaces; a client that reaches the Service
//! addresses through the router.
//!
//! Checked in the router's own RIB (`vtysh`, `birdc`) and FIB (`ip route`), and with traffic:
//! flows spread over the nodes (ECMP), and move when a node's link is cut (BFD, then hold
//! time), when a speaker stops (withdraw + Cease), and when the only endpoint moves under
//! `externalTrafficPolicy: Local`. Times are printed, never asserted (the machine is shared);
//! `cargo bench -p lodestone-speaker --bench bgp` measures them properly.
//!
//! Needs root and the `frr` and `bird2` packages; skips with a message when they are missing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use lodestone_crds::{BGPAdvertisement, BGPPeer, IPAddressPool};
use lodestone_harness::docs;
use lodestone_harness::e2e::lab::{Lab, PROBE_PORT};
use lodestone_harness::e2e::router::{self, Router};
use lodestone_harness::e2e::{Prober, objects};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const WAIT: Duration = Duration::from_secs(30);

fn vip4() -> IpAddr {
    "203.0.113.10".parse().unwrap()
}

fn vip6() -> IpAddr {
    "2001:db8:f::10".parse().unwrap()
}

fn node_ip(lab: &Lab, name: &str) -> IpAddr {
    lab.node(name).unwrap().ip4
}

fn installed(what: &str, bin: &str) -> bool {
    let ok = std::path::Path::new(bin).exists();
    if !ok {
        eprintln!("skipped: {what} is not installed ({bin} missing); apt-get install frr bird2");
    }
    ok
}

/// The Lodestone objects of `docs/bgp.md`, created as the page shows them.
async fn apply_docs_objects(client: &kube::Client) {
    let yaml = docs::blocks("docs/bgp.md", "yaml").unwrap().join("---\n");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let pp = PostParams::default();
    for d in docs.into_iter().filter(|d| !d.is_null()) {
        match d["kind"].as_str() {
            Some("IPAddressPool") => {
                Api::<IPAddressPool>::all(client.clone())
                    .create(&pp, &serde_json::from_value(d).unwrap())
                    .await
                    .unwrap();
            }
            Some("BGPPeer") => {
                Api::<BGPPeer>::all(client.clone())
                    .create(&pp, &serde_json::from_value(d).unwrap())
                    .await
                    .unwrap();
            }
            Some("BGPAdvertisement") => {
                Api::<BGPAdvertisement>::all(client.clone())
                    .create(&pp, &serde_json::from_value(d).unwrap())
                    .await
                    .unwrap();
            }
            other => panic!("unexpected {other:?} in docs/bgp.md"),
        }
    }
}

/// The lab, a router on its segment at 192.0.2.1 / 2001:db8::1, the client routing the
/// Service addresses through it, the docs' objects, a Cluster-policy Service with endpoints on
/// every node, and every speaker started with `speaker_args`.
async fn bgp_lab(
    start_router: impl FnOnce(lodestone_harness::netns::Host) -> anyhow::Result<Router>,
    speaker_args: &[&str],
) -> (Lab, Router) {
    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let (mut lab, router) = router::lab_with_router(
        &nodes,
        &[vip4(), vip6()],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
        start_router,
    )
    .await
    .unwrap();
    let client = lab.cluster.client();
    apply_docs_objects(&client).await;
    objects::create_lb_service(&client, "default", "web", &[vip4(), vip6()], false)
        .await
        .unwrap();
    let all: Vec<(&str, bool)> = NODES.iter().map(|n| (*n, true)).collect();
    objects::set_endpoints(&client, "default", "web", &all)
        .await
        .unwrap();
    lab.start_all_speakers(speaker_args).unwrap();
    (lab, router)
}

fn hops(fib: &BTreeMap<String, Vec<IpAddr>>, prefix: &str) -> Vec<IpAddr> {
    fib.get(prefix).cloned().unwrap_or_default()
}

fn wait_hops(lab: &Lab, router: &Router, prefix: &str, want: &[IpAddr]) -> Duration {
    let start = Instant::now();
    let mut want = want.to_vec();
    want.sort();
    if let Err(e) = router.wait_fib(WAIT, |f| hops(f, prefix) == want) {
        for n in &lab.nodes {
            if let Some(sp) = &n.speaker {
                let log = sp.log();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("bgp") || l.contains("bfd"))
                    .collect();
                eprintln!("==== {} BGP/BFD ====\n{}", n.name, lines.join("\n"));
            }
        }
        panic!("{prefix} never had next hops {want:?}: {e}");
    }
    start.elapsed()
}

/// The node a single client flow lands on, then how long that flow goes unanswered after
/// `fail` runs, until another node answers it.
fn flow_failover(lab: &Lab, fail: impl FnOnce(&str)) -> (String, Duration) {
    let prober = Prober::start(
        lab.client.ns(),
        vip4(),
        PROBE_PORT,
        Duration::from_millis(5),
    )
    .unwrap();
    let first = prober
        .wait_for(WAIT, |p| p.answers().last().cloned())
        .unwrap_or_else(|| panic!("the flow is never answered\n{}", lab.logs()));
    let victim = first.node.clone();
    let t0 = Instant::now();
    fail(&victim);
    let moved = prober
        .wait_for(WAIT, |p| p.first_not_from_since(&victim, t0))
        .unwrap_or_else(|| panic!("the flow never moved off {victim}\n{}", lab.logs()));
    (victim, moved.received.duration_since(t0))
}

/// Until every node reports BFD Up (the docs' peer asks for BFD; it starts slowly, one
/// packet a second, RFC 5880 6.8.3).
async fn wait_bfd_up(lab: &Lab, router: &Router, client: &kube::Client) {
    for _ in 0..300 {
        let peer = Api::<BGPPeer>::all(client.clone())
            .get("router")
            .await
            .unwrap();
        let sessions = peer.status.unwrap_or_default().sessions;
        if sessions.len() == NODES.len() && sessions.iter().all(|s| s.bfd.as_deref() == Some("Up"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "BFD never came up: {}\n{}",
        router.vtysh("show bfd peers brief").unwrap_or_default(),
        lab.logs()
    );
}

async fn session_states(client: &kube::Client) -> BTreeMap<String, (String, i64)> {
    let peer = Api::<BGPPeer>::all(client.clone())
        .get("router")
        .await
        .unwrap();
    peer.status
        .unwrap_or_default()
        .sessions
        .into_iter()
        .map(|s| (s.node, (s.state, s.advertised_prefixes)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_learns_spreads_and_fails_over() {
    if !installed("FRR", "/usr/lib/frr/bgpd") {
        return;
    }
    let conf = docs::blocks("docs/bgp.md", "frr").unwrap().concat();
    let (mut lab, router) = bgp_lab(|host| Router::frr(host, &conf), &[]).await;
    let all: Vec<IpAddr> = NODES.iter().map(|n| node_ip(&lab, n)).collect();
    let all6: Vec<IpAddr> = lab.nodes.iter().map(|n| n.ip6).collect();

    // Every node's route, in the RIB with the advertisement's communities and in the FIB as
    // one multipath route per address family.
    let learnt = wait_hops(&lab, &router, "203.0.113.10/32", &all);
    wait_hops(&lab, &router, "2001:db8:f::10/128", &all6);
    eprintln!("FRR installed 3 paths {learnt:?} after the speakers started");
    let rib = router
        .vtysh("show bgp ipv4 unicast 203.0.113.10/32 json")
        .unwrap();
    assert!(rib.contains("65000:100"), "{rib}");
    assert!(rib.contains("64512:1:2"), "{rib}");
    let summary = router.vtysh("show bgp summary").unwrap();
    for n in ["192.0.2.11", "192.0.2.12", "192.0.2.13"] {
        assert!(summary.contains(n), "{summary}");
    }

    // Flows spread over every node.
    let spread = router::spread(lab.client.ns(), vip4(), PROBE_PORT, 60).unwrap();
    assert!(
        NODES.iter().all(|n| spread.get(*n).is_some_and(|c| *c > 0)),
        "{spread:?}"
    );
    let spread6 = router::spread(lab.client.ns(), vip6(), PROBE_PORT, 60).unwrap();
    assert!(
        NODES
            .iter()
            .all(|n| spread6.get(*n).is_some_and(|c| *c > 0)),
        "{spread6:?}"
    );
    eprintln!("60 flows: IPv4 {spread:?}, IPv6 {spread6:?}");

    // Each node reports its session on the peer; one of them the summary.
    let client = lab.cluster.client();
    let mut states = BTreeMap::new();
    let mut summary = None;
    for _ in 0..200 {
        states = session_states(&client).await;
        summary = Api::<BGPPeer>::all(client.clone())
            .get("router")
            .await
            .unwrap()
            .status
            .and_then(|s| s.summary);
        if states.len() == 3
            && states.values().all(|(s, p)| s == "Established" && *p == 2)
            && summary.as_deref() == Some("3/3 Established")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        states.len() == 3 && states.values().all(|(s, p)| s == "Established" && *p == 2),
        "{states:?}"
    );
    assert_eq!(summary.as_deref(), Some("3/3 Established"));

    // A node's link cut: BFD takes its route away, the flow moves.
    wait_bfd_up(&lab, &router, &client).await;
    let (victim, gap) = flow_failover(&lab, |n| lab.node(n).unwrap().host.link_down().unwrap());
    let rest: Vec<IpAddr> = NODES
        .iter()
        .filter(|n| **n != victim)
        .map(|n| node_ip(&lab, n))
        .collect();
    wait_hops(&lab, &router, "203.0.113.10/32", &rest);
    eprintln!("link of {victim} cut with BFD: the flow was unanswered for {gap:?}");
    lab.node(&victim).unwrap().host.link_up().unwrap();
    wait_hops(&lab, &router, "203.0.113.10/32", &all);

    // A speaker stopped: it withdraws and says goodbye with a Cease.
    let (victim, gap) = flow_failover(&lab, |n| lab.signal_speaker(n, libc::SIGTERM).unwrap());
    let rest: Vec<IpAddr> = NODES
        .iter()
        .filter(|n| **n != victim)
        .map(|n| node_ip(&lab, n))
        .collect();
    wait_hops(&lab, &router, "203.0.113.10/32", &rest);
    lab.wait_speaker_exit(&victim, WAIT).unwrap();
    let log = router.log("bgpd");
    assert!(log.contains("Administrative Shutdown"), "{log}");
    eprintln!("speaker of {victim} stopped: the flow was unanswered for {gap:?}");
    lab.start_speaker(&victim, &[]).unwrap();
    wait_hops(&lab, &router, "203.0.113.10/32", &all);

    // Local policy: only the node with the endpoint advertises; the route follows it.
    objects::set_endpoints(&client, "default", "web", &[("node-b", true)])
        .await
        .unwrap();
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"externalTrafficPolicy": "Local"}})),
    )
    .await
    .unwrap();
    wait_hops(&lab, &router, "203.0.113.10/32", &[node_ip(&lab, "node-b")]);
    let t0 = Instant::now();
    objects::set_endpoints(&client, "default", "web", &[("node-c", true)])
        .await
        .unwrap();
    wait_hops(&lab, &router, "203.0.113.10/32", &[node_ip(&lab, "node-c")]);
    eprintln!(
        "endpoint moved from node-b to node-c under Local: FIB followed in {:?}",
        t0.elapsed()
    );
    let spread = router::spread(lab.client.ns(), vip4(), PROBE_PORT, 20).unwrap();
    assert_eq!(spread.keys().collect::<Vec<_>>(), ["node-c"], "{spread:?}");

    // Without BFD, the hold time (3 s, from the router's `timers 1 3`) takes a dead node out.
    let all_endpoints: Vec<(&str, bool)> = NODES.iter().map(|n| (*n, true)).collect();
    objects::set_endpoints(&client, "default", "web", &all_endpoints)
        .await
        .unwrap();
    Api::<BGPPeer>::all(client.clone())
        .patch(
            "router",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(serde_json::json!([{"op": "remove", "path": "/spec/bfd"}]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    // The sessions restart without BFD; wait until they are back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_hops(&lab, &router, "203.0.113.10/32", &all);
    let (victim, gap) = flow_failover(&lab, |n| lab.node(n).unwrap().host.link_down().unwrap());
    eprintln!("link of {victim} cut without BFD: the flow was unanswered for {gap:?}");
    lab.node(&victim).unwrap().host.link_up().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_learns_spreads_and_withdraws() {
    if !installed("BIRD", "/usr/sbin/bird") {
        return;
    }
    let conf = docs::blocks("docs/bgp.md", "bird").unwrap().concat();
    let (mut lab, router) = bgp_lab(|host| Router::bird(host, &conf), &[]).await;
    let all: Vec<IpAddr> = NODES.iter().map(|n| node_ip(&lab, n)).collect();
    let all6: Vec<IpAddr> = lab.nodes.iter().map(|n| n.ip6).collect();
    wait_hops(&lab, &router, "203.0.113.10/32", &all);
    wait_hops(&lab, &router, "2001:db8:f::10/128", &all6);
    let rib = router.birdc("show route 203.0.113.10/32 all").unwrap();
    assert!(rib.contains("(65000,100)"), "{rib}");
    assert!(rib.contains("(64512, 1, 2)"), "{rib}");
    let spread = router::spread(lab.client.ns(), vip4(), PROBE_PORT, 60).unwrap();
    assert!(
        NODES.iter().all(|n| spread.get(*n).is_some_and(|c| *c > 0)),
        "{spread:?}"
    );

    let (victim, gap) = flow_failover(&lab, |n| lab.node(n).unwrap().host.link_down().unwrap());
    let rest: Vec<IpAddr> = NODES
        .iter()
        .filter(|n| **n != victim)
        .map(|n| node_ip(&lab, n))
        .collect();
    wait_hops(&lab, &router, "203.0.113.10/32", &rest);
    eprintln!("BIRD, link of {victim} cut with BFD: the flow was unanswered for {gap:?}");
    lab.node(&victim).unwrap().host.link_up().unwrap();
    wait_hops(&lab, &router, "203.0.113.10/32", &all);

    let (victim, gap) = flow_failover(&lab, |n| lab.signal_speaker(n, libc::SIGTERM).unwrap());
    let rest: Vec<IpAddr> = NODES
        .iter()
        .filter(|n| **n != victim)
        .map(|n| node_ip(&lab, n))
        .collect();
    wait_hops(&lab, &router, "203.0.113.10/32", &rest);
    lab.wait_speaker_exit(&victim, WAIT).unwrap();
    eprintln!("BIRD, speaker of {victim} stopped: the flow was unanswered for {gap:?}");
}

/// GoBGP's paths for `prefix` (`-a ipv4` or `ipv6`): the next hop of each, sorted, and the
/// raw JSON for messages.
fn gobgp_hops(router: &Router, family: &str, prefix: &str) -> (Vec<IpAddr>, String) {
    let out = router
        .gobgp_cli(&["global", "rib", "-a", family, prefix, "-j"])
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut hops: Vec<IpAddr> = v[prefix]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|path| {
            path["attrs"]
                .as_array()?
                .iter()
                .find_map(|a| a["nexthop"].as_str())?
                .parse()
                .ok()
        })
        .collect();
    hops.sort();
    (hops, out)
}

fn wait_gobgp_hops(lab: &Lab, router: &Router, family: &str, prefix: &str, want: &[IpAddr]) {
    let mut want = want.to_vec();
    want.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let (hops, raw) = gobgp_hops(router, family, prefix);
        if hops == want {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "GoBGP never had {want:?} for {prefix}: {raw}\n{}\n{}",
                router.logs(),
                lab.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GoBGP (`gobgpd`, configured as `docs/bgp.md` shows): a path from every node in its RIB for
/// both families, with the advertisement's communities; a stopped speaker's path withdrawn and
/// its session closed with a Cease. GoBGP installs no kernel routes, so no traffic here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_holds_a_path_from_every_node_and_loses_a_stopped_one() {
    if !installed("GoBGP", "/usr/bin/gobgpd") {
        return;
    }
    let conf = docs::blocks("docs/bgp.md", "toml").unwrap().concat();
    let (mut lab, router) = bgp_lab(|host| Router::gobgp(host, &conf), &[]).await;
    let all: Vec<IpAddr> = NODES.iter().map(|n| node_ip(&lab, n)).collect();
    let all6: Vec<IpAddr> = lab.nodes.iter().map(|n| n.ip6).collect();
    wait_gobgp_hops(&lab, &router, "ipv4", "203.0.113.10/32", &all);
    wait_gobgp_hops(&lab, &router, "ipv6", "2001:db8:f::10/128", &all6);
    let (_, raw) = gobgp_hops(&router, "ipv4", "203.0.113.10/32");
    // 65000:100 as GoBGP prints a standard community (one 32-bit number), and the large one.
    assert!(raw.contains(&(65000u32 * 65536 + 100).to_string()), "{raw}");
    assert!(raw.contains("64512"), "{raw}");
    let neighbors = router.gobgp_cli(&["neighbor"]).unwrap();
    for ip in &all {
        assert!(neighbors.contains(&ip.to_string()), "{neighbors}");
    }

    // A speaker stopped: its path goes, the others stay; GoBGP heard a Cease.
    let victim = "node-b";
    let t0 = Instant::now();
    lab.signal_speaker(victim, libc::SIGTERM).unwrap();
    let rest: Vec<IpAddr> = NODES
        .iter()
        .filter(|n| **n != victim)
        .map(|n| node_ip(&lab, n))
        .collect();
    wait_gobgp_hops(&lab, &router, "ipv4", "203.0.113.10/32", &rest);
    eprintln!(
        "GoBGP: speaker of {victim} stopped, its path gone after {:?}",
        t0.elapsed()
    );
    lab.wait_speaker_exit(victim, WAIT).unwrap();
    let log = router.log("gobgpd");
    assert!(
        log.to_lowercase().contains("cease") || log.contains("Administrative Shutdown"),
        "{log}"
    );
    lab.start_speaker(victim, &[]).unwrap();
    wait_gobgp_hops(&lab, &router, "ipv4", "203.0.113.10/32", &all);
}

/// FRR's count of sessions established with `neighbor`, and its state.
fn frr_neighbor(router: &Router, neighbor: &str) -> (u64, String) {
    let out = router
        .vtysh(&format!("show bgp neighbors {neighbor} json"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let n = &v[neighbor];
    (
        n["connectionsEstablished"].as_u64().unwrap_or_default(),
        n["bgpState"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A node that leaves the layer 2 election because it lost the API server (while the others
/// keep it) withdraws its BGP routes too, and keeps its session: the router keeps the other
/// nodes' paths, the client's flows land only there, and the node's route comes back with one
/// UPDATE once it hears the API server again. `docs/bgp.md`, "Leaving the election".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_loses_the_routes_of_a_node_cut_from_the_api_server_not_its_session() {
    if !installed("FRR", "/usr/lib/frr/bgpd") {
        return;
    }
    let conf = docs::blocks("docs/bgp.md", "frr").unwrap().concat();
    let (lab, router) = bgp_lab(
        |host| Router::frr(host, &conf),
        &["--api-loss-timeout-secs", "5"],
    )
    .await;
    let all: Vec<IpAddr> = NODES.iter().map(|n| node_ip(&lab, n)).collect();
    wait_hops(&lab, &router, "203.0.113.10/32", &all);
    let cut = "node-b";
    let cut_ip = node_ip(&lab, cut).to_string();
    let (sessions_before, state) = frr_neighbor(&router, &cut_ip);
    assert_eq!(state, "Established");

    let t0 = Instant::now();
    lab.blackhole_api(cut).unwrap();
    let rest: Vec<IpAddr> = NODES
        .iter()
        .filter(|n| **n != cut)
        .map(|n| node_ip(&lab, n))
        .collect();
    wait_hops(&lab, &router, "203.0.113.10/32", &rest);
    eprintln!(
        "{cut} cut from the API server (bound 5 s): its route withdrawn after {:?}",
        t0.elapsed()
    );
    let log = lab.node(cut).unwrap().speaker.as_ref().unwrap().log();
    assert!(
        log.contains("withdrawing every BGP route"),
        "{}",
        lab.logs()
    );
    let spread = router::spread(lab.client.ns(), vip4(), PROBE_PORT, 30).unwrap();
    assert!(
        !spread.contains_key(cut) && !spread.is_empty(),
        "flows while {cut} is out: {spread:?}"
    );
    // The session stayed up the whole time: same count of established sessions.
    assert_eq!(
        frr_neighbor(&router, &cut_ip),
        (sessions_before, "Established".to_owned())
    );

    let t0 = Instant::now();
    lab.restore_api(cut).unwrap();
    wait_hops(&lab, &router, "203.0.113.10/32", &all);
    eprintln!(
        "{cut} hears the API server again: its route back after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        frr_neighbor(&router, &cut_ip),
        (sessions_before, "Established".to_owned())
    );
}

/// The second FRR setup: iBGP (LOCAL_PREF is sent), one node with a TCP MD5 password read from
/// a Secret, one passive node the router connects to.
const FRR_IBGP: &str = "frr defaults datacenter
hostname router
!
router bgp 64512
 bgp router-id 192.0.2.1
 bgp log-neighbor-changes
 no bgp ebgp-requires-policy
 neighbor 192.0.2.11 remote-as 64512
 neighbor 192.0.2.11 password lodestone-md5
 neighbor 192.0.2.12 remote-as 64512
 neighbor 192.0.2.12 timers connect 1
 !
 address-family ipv4 unicast
  maximum-paths ibgp 8
 exit-address-family
!
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_ibgp_with_md5_and_a_passive_node() {
    if !installed("FRR", "/usr/lib/frr/bgpd") {
        return;
    }
    let nodes: [(&str, &[(&str, &str)]); 2] = [
        ("node-a", &[("bgp", "md5")]),
        ("node-b", &[("bgp", "passive")]),
    ];
    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &nodes,
        &[vip4()],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
    )
    .await
    .unwrap();
    let host = lab
        .topology
        .add_host("ldrt", Some("192.0.2.1/24".parse().unwrap()), None)
        .unwrap();
    let router = Router::frr(host, FRR_IBGP).unwrap();
    let client = lab.cluster.client();
    let objects: Vec<serde_json::Value> =
        vec![serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "router-md5", "namespace": "lodestone-system"},
            "type": "kubernetes.io/basic-auth",
            "data": {"password": "bG9kZXN0b25lLW1kNQ=="}})];
    // The lab's API server has lodestone-system already.
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(objects[0].clone()).unwrap();
    Api::namespaced(client.clone(), "lodestone-system")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let pool: IPAddressPool = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "routed"}, "spec": {"addresses": ["203.0.113.0/24"]}}))
    .unwrap();
    Api::<IPAddressPool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .unwrap();
    for (name, spec) in [
        (
            "md5",
            serde_json::json!({"myASN": 64512, "peerASN": 64512, "peerAddress": "192.0.2.1",
            "passwordSecret": {"name": "router-md5"},
            "nodeSelectors": [{"matchLabels": {"bgp": "md5"}}]}),
        ),
        (
            "passive",
            serde_json::json!({"myASN": 64512, "peerASN": 64512, "peerAddress": "192.0.2.1",
            "passive": true, "nodeSelectors": [{"matchLabels": {"bgp": "passive"}}]}),
        ),
    ] {
        let peer: BGPPeer =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
                .unwrap();
        Api::<BGPPeer>::all(client.clone())
            .create(&PostParams::default(), &peer)
            .await
            .unwrap();
    }
    let adv: BGPAdvertisement = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "routed"}, "spec": {"localPref": 250, "communities": ["no-export"]}}))
    .unwrap();
    Api::<BGPAdvertisement>::all(client.clone())
        .create(&PostParams::default(), &adv)
        .await
        .unwrap();
    objects::create_lb_service(&client, "default", "web", &[vip4()], false)
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

    wait_hops(
        &lab,
        &router,
        "203.0.113.10/32",
        &[node_ip(&lab, "node-a"), node_ip(&lab, "node-b")],
    );
    let rib = router
        .vtysh("show bgp ipv4 unicast 203.0.113.10/32 json")
        .unwrap();
    assert!(rib.contains("\"locPrf\":250"), "{rib}");
    assert!(rib.contains("noExport"), "{rib}");
    let md5 = router.vtysh("show bgp neighbors 192.0.2.11").unwrap();
    assert!(md5.contains("Established"), "{md5}");
    // The passive node never connects: the router's side is the one that opened the session.
    let passive = router.vtysh("show bgp neighbors 192.0.2.12 json").unwrap();
    assert!(
        passive.contains("\"bgpState\":\"Established\""),
        "{passive}"
    );
    assert!(
        passive.contains("\"portForeign\":179"),
        "the router connected to the node's port 179: {passive}"
    );
}

/// A router that is the test itself: malformed messages get the NOTIFICATION RFC 4271 asks for,
/// are counted, and the speaker neither crashes nor stops trying; ROUTE-REFRESH resends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_answered_counted_and_survived() {
    use lodestone_harness::e2e::metrics::{self, SPEAKER_METRICS_PORT};
    use lodestone_speaker::bgp::wire::{self, Decoder, Family, Message, OpenParams};
    use std::io::{Read, Write};

    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &[("node-a", &[][..])],
        &[vip4()],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
    )
    .await
    .unwrap();
    let host = lab
        .topology
        .add_host("ldrt", Some("192.0.2.1/24".parse().unwrap()), None)
        .unwrap();
    let listener = host
        .ns()
        .run_in(|| std::net::TcpListener::bind("192.0.2.1:179"))
        .unwrap()
        .unwrap();
    let client = lab.cluster.client();
    let pool: IPAddressPool = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "routed"}, "spec": {"addresses": ["203.0.113.0/24"]}}))
    .unwrap();
    Api::<IPAddressPool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .unwrap();
    let peer: BGPPeer = serde_json::from_value(serde_json::json!({"metadata": {"name": "fake"},
        "spec": {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1", "connectTime": "2s"}})).unwrap();
    Api::<BGPPeer>::all(client.clone())
        .create(&PostParams::default(), &peer)
        .await
        .unwrap();
    let adv: BGPAdvertisement =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "all"}, "spec": {}}))
            .unwrap();
    Api::<BGPAdvertisement>::all(client.clone())
        .create(&PostParams::default(), &adv)
        .await
        .unwrap();
    objects::create_lb_service(&client, "default", "web", &[vip4()], false)
        .await
        .unwrap();
    objects::set_endpoints(&client, "default", "web", &[("node-a", true)])
        .await
        .unwrap();
    lab.start_all_speakers(&[]).unwrap();

    /// Reads messages until `want` matches one (or the connection ends); returns them all.
    fn read_until(
        s: &mut std::net::TcpStream,
        want: impl Fn(&[u8], &Message) -> bool,
    ) -> Vec<(Vec<u8>, Message)> {
        let d = Decoder { asn4: true };
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue;
                }
                Err(_) => break,
            }
            loop {
                let before = buf.clone();
                match d.decode(&mut buf) {
                    Ok(Some(m)) => {
                        let frame = before[..before.len() - buf.len()].to_vec();
                        let done = want(&frame, &m);
                        out.push((frame, m));
                        if done {
                            return out;
                        }
                    }
                    _ => break,
                }
            }
        }
        out
    }
    let establish =
        |listener: &std::net::TcpListener| -> (std::net::TcpStream, Vec<(Vec<u8>, Message)>) {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let got = read_until(&mut s, |_, m| matches!(m, Message::Open(_)));
            assert!(
                matches!(got.last(), Some((_, Message::Open(o))) if o.asn == 64512),
                "{got:?}"
            );
            let open = wire::open(&OpenParams {
                asn: 64500,
                hold_time: 30,
                bgp_id: "192.0.2.1".parse().unwrap(),
                families: vec![Family::Ipv4, Family::Ipv6],
            })
            .unwrap();
            s.write_all(&open).unwrap();
            s.write_all(&wire::keepalive()).unwrap();
            // Its KEEPALIVE, then its routes: an UPDATE announcing the Service's /32.
            let got = read_until(&mut s, |f, m| {
                matches!(m, Message::Update)
                    && wire::parse_update_prefixes(f, true).is_ok_and(|(a, _)| !a.is_empty())
            });
            (s, got)
        };

    // Round 1: a proper session, then a ROUTE-REFRESH: the route comes again.
    let (mut s, got) = establish(&listener);
    assert!(
        got.iter().any(|(f, m)| matches!(m, Message::Update)
            && wire::parse_update_prefixes(f, true).unwrap().0
                == ["203.0.113.10/32".parse::<ipnet::IpNet>().unwrap()]),
        "{got:?}\n{}",
        lab.logs()
    );
    s.write_all(&wire::route_refresh(Family::Ipv4)).unwrap();
    let again = read_until(&mut s, |f, m| {
        matches!(m, Message::Update)
            && wire::parse_update_prefixes(f, true).is_ok_and(|(a, _)| !a.is_empty())
    });
    assert!(
        !again.is_empty(),
        "no UPDATE after ROUTE-REFRESH\n{}",
        lab.logs()
    );

    // An UPDATE whose attribute length runs past the message: UPDATE Message Error.
    let mut bad = wire::keepalive();
    bad[16..18].copy_from_slice(&27u16.to_be_bytes());
    bad[18] = 2;
    bad.extend_from_slice(&[0, 0, 0, 200, 0x40, 1, 1, 0]);
    s.write_all(&bad).unwrap();
    let got = read_until(&mut s, |_, m| matches!(m, Message::Notification(_)));
    assert!(
        matches!(got.last(), Some((_, Message::Notification(n))) if n.code == 3),
        "{got:?}\n{}",
        lab.logs()
    );

    // Round 2: it comes back; a broken marker gets Connection Not Synchronized.
    let (mut s, _) = establish(&listener);
    let mut bad = wire::keepalive();
    bad[0] = 0;
    s.write_all(&bad).unwrap();
    let got = read_until(&mut s, |_, m| matches!(m, Message::Notification(_)));
    assert!(
        matches!(got.last(), Some((_, Message::Notification(n))) if (n.code, n.subcode) == (1, 1)),
        "{got:?}"
    );

    // Counted, and the speaker is still running (and connecting again).
    let ns = lab.node("node-a").unwrap().host.ns();
    let body = metrics::scrape(ns, SPEAKER_METRICS_PORT)
        .unwrap()
        .unwrap_or_default();
    assert_eq!(
        metrics::value_in(&body, "lodestone_speaker_bgp_malformed_messages_total", &[]),
        Some(2.0),
        "{body}"
    );
    let (_s, _) = establish(&listener);
    let node = lab.nodes.iter_mut().find(|n| n.name == "node-a").unwrap();
    assert!(node.speaker.as_mut().unwrap().try_wait().unwrap().is_none());
}
