//! IPv6 data plane against the real kernel: Neighbor Discovery answered by an announcer in a
//! "node" namespace for a client namespace's kernel, all on one bridge.

mod dataplane_support;

use std::net::{IpAddr, Ipv6Addr};

use dataplane_support::{RunningAnnouncer, fast_config, ip, wait_until};
use ipnet::IpNet;
use lodestone_harness::netns::{Host, Topology};
use lodestone_speaker::announcer::AnnouncerEvent;
use lodestone_speaker::frames::{MacAddr, neighbor_advertisement};
use lodestone_speaker::sys::NdpSocket;

fn net(s: &str) -> Option<IpNet> {
    Some(s.parse().unwrap())
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v) => v,
        IpAddr::V4(_) => panic!("not IPv6"),
    }
}

/// The IPv6 multicast groups the host's eth0 is a member of, as `ip -6 maddr` lists them.
fn groups(host: &Host) -> String {
    host.ns()
        .exec_ok("ip", &["-6", "maddr", "show", "dev", "eth0"])
        .unwrap()
}

fn resolved_mac(host: &Host, target: IpAddr) -> Option<String> {
    host.neigh(target).unwrap().and_then(|n| n.mac)
}

#[test]
fn owned_address_resolves_by_ndp_and_falls_silent_when_released() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", None, net("2001:db8::10/64")).unwrap();
    let client = topo.add_host("ldc", None, net("2001:db8::1/64")).unwrap();
    let a = RunningAnnouncer::start(node.ns(), fast_config());
    let owned = ip("2001:db8::100");
    let unowned = ip("2001:db8::101");

    a.own(&[owned]);
    a.wait_announced(owned);
    // The node listens on the VIP's solicited-node group.
    let group = "ff02::1:ff00:100";
    assert!(groups(&node).contains(group), "{}", groups(&node));
    // The echo goes unanswered; the client kernel's Neighbor Solicitation is what we test.
    let _ = client.ping(owned).unwrap();
    assert_eq!(resolved_mac(&client, owned), Some(node.mac().unwrap()));
    let c = a.announcer.counters();
    assert!(c.ns_answered >= 1, "{c:?}");
    assert_eq!(c.ndp_dropped_hop_limit, 0);

    assert!(!client.ping(unowned).unwrap());
    assert_eq!(resolved_mac(&client, unowned), None);

    a.own(&[]);
    a.wait_event("Stopped", |e| *e == AnnouncerEvent::Stopped { ip: owned });
    wait_until("solicited-node group left", || {
        !groups(&node).contains(group)
    });
    let before = a.announcer.counters();
    client.flush_neigh().unwrap();
    assert!(!client.ping(owned).unwrap());
    assert_eq!(resolved_mac(&client, owned), None);
    assert_eq!(a.announcer.counters().ns_answered, before.ns_answered);
}

#[test]
fn unsolicited_advertisement_overrides_the_clients_entry() {
    let topo = Topology::new().unwrap();
    let node_a = topo.add_host("ldna", None, net("2001:db8::10/64")).unwrap();
    let node_b = topo.add_host("ldnb", None, net("2001:db8::11/64")).unwrap();
    let client = topo.add_host("ldc", None, net("2001:db8::1/64")).unwrap();
    let a = RunningAnnouncer::start(node_a.ns(), fast_config());
    let b = RunningAnnouncer::start(node_b.ns(), fast_config());
    let vip = ip("2001:db8::100");
    let mac_b = node_b.mac().unwrap();

    a.own(&[vip]);
    a.wait_announced(vip);
    let _ = client.ping(vip).unwrap();
    assert_eq!(resolved_mac(&client, vip), Some(node_a.mac().unwrap()));

    a.own(&[]);
    b.own(&[vip]);
    wait_until("client entry points at node B", || {
        resolved_mac(&client, vip) == Some(mac_b.clone())
    });
    let cb = b.announcer.counters();
    assert!(cb.unsolicited_na_sent >= 1);
    assert_eq!(cb.ns_answered, 0, "B answered a solicitation: {cb:?}");
}

#[test]
fn only_neighbor_discovery_reaches_user_space() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", None, net("2001:db8::10/64")).unwrap();
    let client = topo.add_host("ldc", None, net("2001:db8::1/64")).unwrap();
    let a = RunningAnnouncer::start(node.ns(), fast_config());
    let vip = ip("2001:db8::100");
    a.own(&[vip]);
    a.wait_announced(vip);
    wait_until("burst sent", || {
        a.announcer.counters().unsolicited_na_sent == 3
    });
    let before = a.announcer.counters();

    // 50 ICMPv6 echo requests and replies to and from the node's own address: ICMPv6, but
    // not NDP, so the ICMP6_FILTER keeps them in the kernel.
    let out = client
        .ns()
        .exec("ping", &["-c", "50", "-i", "0.002", "-n", "2001:db8::10"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    client.flush_neigh().unwrap();
    let _ = client.ping(vip).unwrap();
    wait_until("solicitation answered", || {
        a.announcer.counters().ns_answered > before.ns_answered
    });
    let after = a.announcer.counters();
    let received = after.ndp_messages_received - before.ndp_messages_received;
    // The client's solicitations for the node and the VIP, and its answer to the node
    // kernel's solicitation: a handful, none of the echoes.
    assert!(
        received <= 8,
        "user space saw {received} messages: {after:?}"
    );
}

#[test]
fn a_conflicting_advertisement_is_reported() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", None, net("2001:db8::10/64")).unwrap();
    let intruder = topo.add_host("ldi", None, net("2001:db8::66/64")).unwrap();
    let a = RunningAnnouncer::start(node.ns(), fast_config());
    let vip = ip("2001:db8::100");
    a.own(&[vip]);
    a.wait_announced(vip);
    // Claims right after a takeover are the previous owner's; wait until this one cannot be.
    std::thread::sleep(lodestone_speaker::announcer::HANDOFF_GRACE);

    let intruder_mac: MacAddr = intruder.mac().unwrap().parse().unwrap();
    let ifindex = intruder.ifindex().unwrap();
    intruder
        .ns()
        .run_in(|| {
            let socket = NdpSocket::open("eth0", ifindex).unwrap();
            let na = neighbor_advertisement(v6(vip), intruder_mac, false, true);
            socket.send_to(&na, "ff02::1".parse().unwrap()).unwrap();
        })
        .unwrap();
    let ev = a.wait_event("Conflict", |e| matches!(e, AnnouncerEvent::Conflict { .. }));
    assert_eq!(
        ev,
        AnnouncerEvent::Conflict {
            ip: vip,
            mac: intruder_mac,
            interface: "eth0".into()
        }
    );
}

#[test]
fn dual_stack_addresses_on_one_link() {
    let topo = Topology::new().unwrap();
    let node = topo
        .add_host("ldn", net("192.0.2.10/24"), net("2001:db8::10/64"))
        .unwrap();
    let client = topo
        .add_host("ldc", net("192.0.2.1/24"), net("2001:db8::1/64"))
        .unwrap();
    let a = RunningAnnouncer::start(node.ns(), fast_config());
    let (vip4, vip6) = (ip("192.0.2.100"), ip("2001:db8::100"));
    a.own(&[vip4, vip6]);
    a.wait_announced(vip4);
    a.wait_announced(vip6);
    let _ = client.ping(vip4).unwrap();
    let _ = client.ping(vip6).unwrap();
    let mac = node.mac().unwrap();
    assert_eq!(resolved_mac(&client, vip4), Some(mac.clone()));
    assert_eq!(resolved_mac(&client, vip6), Some(mac));

    // Dropping only the IPv6 address leaves IPv4 answered.
    a.own(&[vip4]);
    a.wait_event("Stopped v6", |e| *e == AnnouncerEvent::Stopped { ip: vip6 });
    client.flush_neigh().unwrap();
    let _ = client.ping(vip4).unwrap();
    assert!(!client.ping(vip6).unwrap());
    assert!(resolved_mac(&client, vip4).is_some());
    assert_eq!(resolved_mac(&client, vip6), None);
}

#[test]
fn unicast_reachability_probes_are_answered() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", None, net("2001:db8::10/64")).unwrap();
    let client = topo.add_host("ldc", None, net("2001:db8::1/64")).unwrap();
    let a = RunningAnnouncer::start(node.ns(), fast_config());
    let vip = ip("2001:db8::100");
    a.own(&[vip]);
    a.wait_announced(vip);
    let _ = client.ping(vip).unwrap();
    let mac = node.mac().unwrap();
    assert_eq!(resolved_mac(&client, vip), Some(mac.clone()));

    // Age the entry and let the client's kernel confirm it at once: NUD then sends
    // *unicast* solicitations to the VIP at the node's MAC (RFC 4861 §7.3.3), which never
    // reach a raw ICMPv6 socket because the VIP is not a local address of the node.
    let ns = client.ns();
    ns.sysctl("net.ipv6.neigh.eth0.delay_first_probe_time", "0")
        .unwrap();
    ns.exec_ok(
        "ip",
        &[
            "neigh",
            "change",
            "2001:db8::100",
            "lladdr",
            &mac,
            "nud",
            "stale",
            "dev",
            "eth0",
        ],
    )
    .unwrap();
    let before = a.announcer.counters();
    let _ = ns
        .exec(
            "ping",
            &["-c", "3", "-i", "0.5", "-W", "1", "-n", "2001:db8::100"],
        )
        .unwrap();
    let entry = client.neigh(vip).unwrap().expect("neighbour entry");
    assert_eq!(entry.mac, Some(mac), "{entry:?}");
    assert!(!entry.state.iter().any(|s| s == "FAILED"), "{entry:?}");
    let after = a.announcer.counters();
    assert!(after.ns_answered > before.ns_answered, "{after:?}");
}
