//! IPv6 data plane against the real kernel: Neighbor Discovery answered by an announcer in a
//! "node" namespace for a client namespace's kernel, all on one bridge.

mod dataplane_support;

use std::net::{IpAddr, Ipv6Addr};

use dataplane_support::{RunningAnnouncer, fast_config, ip, wait_until};
use ipnet::IpNet;
use lodestone_harness::netns::{Host, Topology};
use lodestone_speaker::announcer::AnnouncerEvent;
use lodestone_speaker::frames::{
    MacAddr, NdpMessage, neighbor_advertisement, neighbor_solicitation, parse_ndp,
    solicited_node_multicast,
};
use lodestone_speaker::sys::{GroupSocket, NdpSocket, is_membership_full};

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

    // The client captures the advertisements on the wire (all-nodes reaches every host).
    let capture = listen(&client);
    a.own(&[]);
    b.own(&[vip]);
    wait_until("client entry points at node B", || {
        resolved_mac(&client, vip) == Some(mac_b.clone())
    });
    let cb = b.announcer.counters();
    assert!(cb.unsolicited_na_sent >= 1);
    assert_eq!(cb.ns_answered, 0, "B answered a solicitation: {cb:?}");
    let mac_b: MacAddr = mac_b.parse().unwrap();
    let mut seen = Vec::new();
    wait_until("B's unsolicited advertisement captured", || {
        seen.extend(advertisements(&capture));
        seen.iter().any(|na| na.target_mac == Some(mac_b))
    });
    for na in seen.iter().filter(|na| na.target_mac == Some(mac_b)) {
        // Sent from the address itself, as the kernel does for its own.
        assert_eq!(na.source, v6(vip), "{na:?}");
        assert_eq!(na.target, v6(vip), "{na:?}");
        assert!(!na.solicited && na.override_flag, "{na:?}");
    }
}

/// A raw ICMPv6 socket on `host`'s eth0 that receives the NS and NA reaching its kernel.
fn listen(host: &Host) -> NdpSocket {
    let ifindex = host.ifindex().unwrap();
    host.ns()
        .run_in(move || NdpSocket::open("eth0", ifindex).unwrap())
        .unwrap()
}

/// One captured Neighbor Advertisement.
#[derive(Debug)]
struct CapturedNa {
    source: Ipv6Addr,
    target: Ipv6Addr,
    target_mac: Option<MacAddr>,
    solicited: bool,
    override_flag: bool,
}

/// The Neighbor Advertisements queued on `socket` (drained, non-blocking).
fn advertisements(socket: &NdpSocket) -> Vec<CapturedNa> {
    let mut buf = [0u8; 2048];
    let mut found = Vec::new();
    while let Ok(r) = socket.recv(&mut buf) {
        if let Ok(NdpMessage::Advertisement(na)) = parse_ndp(&buf[..r.len]) {
            assert_eq!(r.hop_limit, Some(255), "{r:?}");
            found.push(CapturedNa {
                source: r.source,
                target: na.target,
                target_mac: na.target_mac,
                solicited: na.solicited,
                override_flag: na.override_flag,
            });
        }
    }
    found
}

/// The real `ndisc6` accepts only advertisements whose source is the target (as the kernel
/// sends them). The speaker's must be such: ndisc6 prints the owner's MAC and "from ADDR".
#[test]
fn ndisc6_gets_the_owners_mac_from_the_address_itself() {
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
    let capture = listen(&client);
    let before = a.announcer.counters();

    let out = client
        .ns()
        .exec("ndisc6", &["-1", "-n", "2001:db8::100", "eth0"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(out.status.success(), "ndisc6 failed: {out:?}");
    let mac = node.mac().unwrap().to_ascii_lowercase();
    assert!(
        text.contains(&format!("target link-layer address: {mac}")),
        "{text}"
    );
    assert!(text.contains("from 2001:db8::100"), "{text}");
    assert!(a.announcer.counters().ns_answered > before.ns_answered);

    // The answer on the wire: solicited, unicast to the client, from the target.
    let mac: MacAddr = mac.parse().unwrap();
    let mut seen = Vec::new();
    wait_until("the solicited advertisement captured", || {
        seen.extend(advertisements(&capture));
        seen.iter().any(|na| na.solicited)
    });
    for na in seen.iter().filter(|na| na.solicited) {
        assert_eq!(
            (na.source, na.target, na.target_mac),
            (v6(vip), v6(vip), Some(mac)),
            "{na:?}"
        );
    }
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
    let ev = a.wait_event("Conflict", |e| matches!(e, AnnouncerEvent::Conflict(_)));
    let AnnouncerEvent::Conflict(report) = ev else {
        unreachable!()
    };
    assert_eq!(
        (
            report.ip,
            report.mac,
            report.interface.as_str(),
            report.count
        ),
        (vip, intruder_mac, "eth0", 1)
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

/// Targets of the Neighbor Solicitations queued on `socket` (drained, non-blocking).
fn solicited_targets(socket: &NdpSocket) -> Vec<Ipv6Addr> {
    let mut buf = [0u8; 2048];
    let mut targets = Vec::new();
    while let Ok(r) = socket.recv(&mut buf) {
        assert_eq!(r.hop_limit, Some(255), "{r:?}");
        if let Ok(NdpMessage::Solicitation(ns)) = parse_ndp(&buf[..r.len]) {
            targets.push(ns.target);
        }
    }
    targets
}

/// The design rests on this: a solicited-node membership held by *another* socket makes the
/// interface accept the group, and the NDP socket (bound to the device, no memberships of its
/// own) receives the solicitations sent to it. Groups nobody joined stay out.
#[test]
fn a_group_joined_on_another_socket_reaches_the_ndp_socket() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", None, net("2001:db8::10/64")).unwrap();
    let client = topo.add_host("ldc", None, net("2001:db8::1/64")).unwrap();
    let (node_if, client_if) = (node.ifindex().unwrap(), client.ifindex().unwrap());
    let client_mac: MacAddr = client.mac().unwrap().parse().unwrap();
    let joined = v6(ip("2001:db8::cd:1"));
    let unjoined = v6(ip("2001:db8::cd:2"));
    let (group, other) = (
        solicited_node_multicast(joined),
        solicited_node_multicast(unjoined),
    );

    let (ndp, member) = node
        .ns()
        .run_in(move || {
            (
                NdpSocket::open("eth0", node_if).unwrap(),
                GroupSocket::open(node_if).unwrap(),
            )
        })
        .unwrap();
    let sender = client
        .ns()
        .run_in(move || NdpSocket::open("eth0", client_if).unwrap())
        .unwrap();
    assert!(!groups(&node).contains(&group.to_string()));
    member.join(group).unwrap();
    assert!(
        groups(&node).contains(&group.to_string()),
        "{}",
        groups(&node)
    );
    assert!(!groups(&node).contains(&other.to_string()));

    // The unjoined group's solicitation goes first; every later one is for the joined group.
    // Same sender, same path: the node's kernel sees them in that order, so once the joined
    // ones have arrived, the unjoined one would have too.
    sender
        .send_to(&neighbor_solicitation(unjoined, Some(client_mac)), other)
        .unwrap();
    let mut seen = Vec::new();
    wait_until("a solicitation for the joined group", || {
        sender
            .send_to(&neighbor_solicitation(joined, Some(client_mac)), group)
            .unwrap();
        seen.extend(solicited_targets(&ndp));
        seen.contains(&joined)
    });
    assert!(!seen.contains(&unjoined), "{seen:?}");

    // Closing the membership socket leaves the group.
    drop(member);
    wait_until("group left", || !groups(&node).contains(&group.to_string()));
}

/// Sockets among this process's open file descriptors.
fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// How many solicited-node groups one socket can join on `host`'s eth0 before the kernel
/// refuses (`net.core.optmem_max`), measured with the same kind of socket the announcer uses.
fn groups_per_socket(host: &Host) -> usize {
    let ifindex = host.ifindex().unwrap();
    host.ns()
        .run_in(move || {
            let socket = GroupSocket::open(ifindex).unwrap();
            let mut n: u32 = 0;
            loop {
                // ff02::1:ff80:0 upwards: no address of the test uses these.
                let group = Ipv6Addr::from(
                    u128::from(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff80, 0)) + u128::from(n),
                );
                match socket.join(group) {
                    Ok(()) => n += 1,
                    Err(e) if is_membership_full(&e) => return n as usize,
                    Err(e) => panic!("joining {group}: {e}"),
                }
                assert!(n < 1 << 20, "no membership limit met");
            }
        })
        .unwrap()
}

/// More IPv6 addresses on one interface than one socket can hold memberships for (the old
/// limit): the memberships spread over several sockets and every address is answered,
/// including those past the first socket's capacity.
#[test]
fn more_addresses_than_one_socket_holds_groups_for_are_all_answered() {
    let topo = Topology::new().unwrap();
    let node = topo.add_host("ldn", None, net("2001:db8::10/64")).unwrap();
    let client = topo.add_host("ldc", None, net("2001:db8::1/64")).unwrap();
    let optmem = node
        .ns()
        .exec_ok("cat", &["/proc/sys/net/core/optmem_max"])
        .unwrap();
    let per_socket = groups_per_socket(&node);
    assert!(per_socket > 0);
    // At least two full sockets and part of a third; 600 at the least (the figure).
    let count = (2 * per_socket + 50).max(600);
    eprintln!(
        "optmem_max {}: {per_socket} groups per socket; announcing {count} IPv6 addresses",
        optmem.trim()
    );
    // 2001:db8::ab:0 upwards: each address has its own solicited-node group.
    let base = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xab, 0));
    let nth = |i: usize| IpAddr::V6(Ipv6Addr::from(base + i as u128));
    let all: Vec<IpAddr> = (0..count).map(nth).collect();

    let a = RunningAnnouncer::start(node.ns(), fast_config());
    a.own(&all);
    wait_until("every address announced", || {
        a.announcer.announced_on().len() == count
    });
    let want: Vec<String> = all
        .iter()
        .map(|ip| solicited_node_multicast(v6(*ip)).to_string())
        .collect();
    wait_until("every solicited-node group joined", || {
        let listed = groups(&node);
        want.iter().all(|g| listed.contains(g.as_str()))
    });

    // First, last, around each socket's boundary, and the middle.
    let mut sample = vec![
        0,
        per_socket - 1,
        per_socket,
        per_socket + 1,
        2 * per_socket - 1,
        2 * per_socket,
        count / 2,
        count - 1,
    ];
    sample.sort_unstable();
    sample.dedup();
    let mac = node.mac().unwrap();
    for i in sample {
        let target = nth(i);
        wait_until(&format!("address #{i} ({target}) resolves"), || {
            // The echo goes unanswered; the client kernel's solicitation is what counts.
            let _ = client.ping(target).unwrap();
            resolved_mac(&client, target) == Some(mac.clone())
        });
    }
    let c = a.announcer.counters();
    assert_eq!(c.ndp_group_join_failures, 0, "{c:?}");
    assert!(c.ns_answered >= 8, "{c:?}");
    let announcing = open_sockets();

    // Releasing everything leaves every group (the spare sockets close).
    a.own(&[]);
    wait_until("every solicited-node group left", || {
        let listed = groups(&node);
        !want.iter().any(|g| listed.contains(g.as_str()))
    });
    // A figure for docs/performance.md, not an assertion: the NDP and unicast-NS sockets plus
    // the membership sockets close with the last address.
    eprintln!(
        "sockets open in this process: {announcing} while announcing, {} after release",
        open_sockets()
    );
}
