//! Claim only what is free, defend what is ours (issue 14, item 2), judged by real hosts: a
//! foreign host in its own namespace that really has the address configured (its kernel answers
//! the probes), and a client whose own kernel keeps the neighbour cache.

mod dataplane_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dataplane_support::{RunningAnnouncer, arping_macs, fast_config, ip, wait_until};
use ipnet::IpNet;
use lodestone_harness::netns::Topology;
use lodestone_speaker::announcer::claims::ProbeConfig;
use lodestone_speaker::announcer::{AnnouncerConfig, AnnouncerEvent, HANDOFF_GRACE};

fn net(s: &str) -> Option<IpNet> {
    Some(s.parse().unwrap())
}

/// Probing on, with a short retry so the test sees the address freed.
fn probing_config() -> AnnouncerConfig {
    AnnouncerConfig {
        probe: ProbeConfig {
            time: Duration::from_millis(300),
            retry_first: Duration::from_millis(500),
            retry_max: Duration::from_secs(1),
            ..ProbeConfig::default()
        },
        ..fast_config()
    }
}

fn own_new(a: &RunningAnnouncer, ips: &[std::net::IpAddr]) {
    let owned: BTreeMap<_, _> = ips.iter().map(|ip| (*ip, None)).collect();
    a.announcer
        .set_owned_probing(owned, &ips.iter().copied().collect());
}

#[test]
fn an_address_another_host_uses_is_not_claimed_until_it_is_free() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", net("192.0.2.10/24"), None).unwrap();
    // The squatter really has the address: its kernel answers the probes.
    let squatter = topo.add_host("lds", net("192.0.2.100/24"), None).unwrap();
    let client = topo.add_host("ldc", net("192.0.2.1/24"), None).unwrap();
    let a = RunningAnnouncer::start(node.ns(), probing_config());
    let vip = ip("192.0.2.100");
    let squatter_mac = squatter.mac().unwrap();

    own_new(&a, &[vip]);
    let ev = a.wait_event("AddressInUse", |e| {
        matches!(e, AnnouncerEvent::AddressInUse { .. })
    });
    let AnnouncerEvent::AddressInUse {
        ip: refused,
        mac,
        interface,
        attempt,
        ..
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(
        (refused, mac.to_string(), interface.as_str(), attempt),
        (vip, squatter_mac.clone(), "eth0", 1)
    );
    assert!(a.announcer.counters().probes_sent >= 1);
    assert_eq!(a.announcer.in_use().get(&vip), Some(&mac));
    // Not announced, not answered: the client sees the squatter only.
    assert!(a.announcer.announced_on().is_empty());
    assert_eq!(arping_macs(client.ns(), vip), vec![squatter_mac.clone()]);
    assert_eq!(a.announcer.counters().gratuitous_arp_sent, 0);
    assert_eq!(a.announcer.counters().arp_requests_answered, 0);

    // Probed again later, and refused again while the squatter keeps it.
    a.wait_event("a second refusal", |e| {
        matches!(e, AnnouncerEvent::AddressInUse { attempt: 2, .. })
    });
    assert!(a.announcer.announced_on().is_empty());

    // The squatter lets go: the next round finds it free, and the node announces it.
    squatter
        .ns()
        .exec_ok("ip", &["addr", "del", "192.0.2.100/24", "dev", "eth0"])
        .unwrap();
    a.wait_announced(vip);
    assert!(a.announcer.in_use().is_empty());
    client.flush_neigh().unwrap();
    let _ = client.ping(vip).unwrap();
    assert_eq!(
        client.neigh(vip).unwrap().and_then(|n| n.mac),
        Some(node.mac().unwrap())
    );
}

#[test]
fn a_free_address_is_announced_after_the_probes() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", net("192.0.2.10/24"), None).unwrap();
    let client = topo.add_host("ldc", net("192.0.2.1/24"), None).unwrap();
    let a = RunningAnnouncer::start(node.ns(), probing_config());
    let vip = ip("192.0.2.100");
    own_new(&a, &[vip]);
    a.wait_announced(vip);
    let c = a.announcer.counters();
    assert_eq!(c.probes_sent, 3, "{c:?}");
    assert!(a.announcer.in_use().is_empty());
    let _ = client.ping(vip).unwrap();
    assert_eq!(
        client.neigh(vip).unwrap().and_then(|n| n.mac),
        Some(node.mac().unwrap())
    );
}

#[test]
fn an_ipv6_address_another_host_uses_is_not_claimed() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", None, net("2001:db8::10/64")).unwrap();
    let squatter = topo.add_host("lds", None, net("2001:db8::100/64")).unwrap();
    let a = RunningAnnouncer::start(node.ns(), probing_config());
    let vip = ip("2001:db8::100");
    own_new(&a, &[vip]);
    let ev = a.wait_event("AddressInUse", |e| {
        matches!(e, AnnouncerEvent::AddressInUse { .. })
    });
    let AnnouncerEvent::AddressInUse {
        ip: refused, mac, ..
    } = ev
    else {
        unreachable!()
    };
    assert_eq!((refused, mac.to_string()), (vip, squatter.mac().unwrap()));
    assert!(a.announcer.announced_on().is_empty());
}

#[test]
fn a_forged_claim_is_defended_and_the_client_comes_back() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", net("192.0.2.10/24"), None).unwrap();
    let forger = topo.add_host("ldf", net("192.0.2.66/24"), None).unwrap();
    let client = topo.add_host("ldc", net("192.0.2.1/24"), None).unwrap();
    let a = RunningAnnouncer::start(node.ns(), fast_config());
    let vip = ip("192.0.2.100");
    let node_mac = node.mac().unwrap();
    let forger_mac = forger.mac().unwrap();
    a.own(&[vip]);
    a.wait_announced(vip);
    let _ = client.ping(vip).unwrap();
    assert_eq!(
        client.neigh(vip).unwrap().and_then(|n| n.mac),
        Some(node_mac.clone())
    );
    // Past the handoff grace, and past the client's ARP lock time (1 s) since its entry was
    // last updated, so the forged claim does move it.
    std::thread::sleep(HANDOFF_GRACE);

    let forge = || {
        // `arping -U` exits 1: nobody answers an announcement.
        let _ = forger
            .ns()
            .exec(
                "arping",
                &[
                    "-U",
                    "-S",
                    "192.0.2.100",
                    "-c",
                    "1",
                    "-i",
                    "eth0",
                    "192.0.2.100",
                ],
            )
            .unwrap();
    };
    forge();
    let forged_at = Instant::now();
    // The client may follow the forger for a moment; the defence brings it back.
    let mut saw_forger = false;
    wait_until("the client's entry back on the owner", || {
        let mac = client.neigh(vip).unwrap().and_then(|n| n.mac);
        saw_forger |= mac.as_deref() == Some(forger_mac.as_str());
        mac.as_deref() == Some(node_mac.as_str()) && a.announcer.counters().defences_sent >= 1
    });
    println!(
        "client back on the owner {:?} after the forged claim (it followed the forger meanwhile: {saw_forger})",
        forged_at.elapsed()
    );
    let ev = a.wait_event("Conflict", |e| matches!(e, AnnouncerEvent::Conflict(_)));
    let AnnouncerEvent::Conflict(report) = ev else {
        unreachable!()
    };
    assert_eq!(report.mac.to_string(), forger_mac);

    // A second claim within the defend interval is not answered again: no endless exchange.
    let defences = a.announcer.counters().defences_sent;
    forge();
    wait_until("the second claim seen", || {
        a.announcer.counters().conflicts >= 2
    });
    assert_eq!(a.announcer.counters().defences_sent, defences);
}

#[test]
fn a_flood_of_forged_claims_gives_a_few_reports_and_a_bounded_map() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", net("192.0.2.10/24"), None).unwrap();
    let forger = topo.add_host("ldf", net("192.0.2.66/24"), None).unwrap();
    let a = RunningAnnouncer::start(node.ns(), fast_config());
    let vip = ip("192.0.2.100");
    a.own(&[vip]);
    a.wait_announced(vip);
    std::thread::sleep(HANDOFF_GRACE);
    let ifindex = forger.ifindex().unwrap();
    // 3,000 forged gratuitous ARPs, each from another MAC.
    forger
        .ns()
        .run_in(move || {
            let socket = lodestone_speaker::sys::ArpSocket::open(ifindex).unwrap();
            for i in 0..3000u32 {
                let b = i.to_be_bytes();
                let mac = lodestone_speaker::frames::MacAddr::new(2, 0x66, b[0], b[1], b[2], b[3]);
                let frame = lodestone_speaker::frames::gratuitous_arp(
                    std::net::Ipv4Addr::new(192, 0, 2, 100),
                    mac,
                );
                let _ = socket.send(&frame);
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .unwrap();
    wait_until("most forged claims counted", || {
        a.announcer.counters().conflicts >= 2000
    });
    std::thread::sleep(Duration::from_secs(2));
    let reports = a
        .drain_events()
        .into_iter()
        .filter(|e| matches!(e, AnnouncerEvent::Conflict(_)))
        .count();
    let limits = AnnouncerConfig::default().conflicts;
    assert!(reports >= 1, "no report at all");
    assert!(
        reports <= limits.burst as usize + 1,
        "{reports} reports for one flood"
    );
    assert!(
        a.announcer.conflict_series() <= limits.capacity,
        "{} series",
        a.announcer.conflict_series()
    );
    // One defence for the whole flood.
    assert_eq!(a.announcer.counters().defences_sent, 1);
}
