//! Tests of the toolkit against the real kernel (they need root, as all network tests here).

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn namespace_exists_while_guard_lives_and_is_deleted_on_drop() {
    let ns = Netns::new("ldt").unwrap();
    let name = ns.name().to_owned();
    assert!(list().unwrap().contains(&name));
    let out = ns.exec_ok("ip", &["-o", "link", "show"]).unwrap();
    // A fresh namespace holds only its loopback, which we brought up.
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("lo:") && out.contains("UP"), "{out}");
    drop(ns);
    assert!(!list().unwrap().contains(&name));
}

#[test]
fn namespace_is_deleted_when_a_test_panics() {
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new("ldt").unwrap();
        *name.lock().unwrap() = ns.name().to_owned();
        panic!("test failure while the namespace exists");
    });
    assert!(result.is_err());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(!list().unwrap().contains(&name));
}

#[test]
fn names_are_unique() {
    let a = Netns::new("ldt").unwrap();
    let b = Netns::new("ldt").unwrap();
    assert_ne!(a.name(), b.name());
}

#[test]
fn run_in_enters_the_namespace_and_propagates_results() {
    let ns = Netns::new("ldt").unwrap();
    let ns_ino = std::fs::metadata(format!("/var/run/netns/{}", ns.name()))
        .unwrap()
        .ino();
    let outside = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let inside = ns
        .run_in(|| std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
        .unwrap();
    assert_eq!(inside, ns_ino);
    assert_ne!(outside, ns_ino);
    // The caller's thread did not move.
    assert_eq!(
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
        outside
    );
}

#[test]
fn spawned_children_die_with_their_guard() {
    let ns = Netns::new("ldt").unwrap();
    let child = ns.spawn("sleep", &["600"]).unwrap();
    let pid = child.0.id();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(child);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let detached = ns.spawn_detached("sleep", &["600"]).unwrap();
    drop(ns);
    assert!(!std::path::Path::new(&format!("/proc/{detached}")).exists());
}

#[test]
fn two_hosts_on_a_bridge_reach_each_other_and_everything_is_removed() {
    let topo = Topology::new().unwrap();
    let a = topo
        .add_host(
            "ldta",
            Some("192.0.2.1/24".parse().unwrap()),
            Some("2001:db8::1/64".parse().unwrap()),
        )
        .unwrap();
    let b = topo
        .add_host(
            "ldtb",
            Some("192.0.2.2/24".parse().unwrap()),
            Some("2001:db8::2/64".parse().unwrap()),
        )
        .unwrap();
    let names = [
        topo.switch().name().to_owned(),
        a.ns().name().to_owned(),
        b.ns().name().to_owned(),
    ];

    assert!(a.ping(ip("192.0.2.2")).unwrap());
    assert!(a.ping(ip("2001:db8::2")).unwrap());
    let b_mac = b.mac().unwrap();
    assert_eq!(b_mac.len(), 17);
    let n = a.neigh(ip("192.0.2.2")).unwrap().unwrap();
    assert_eq!(n.mac.as_deref(), Some(b_mac.as_str()));
    let n6 = a.neigh(ip("2001:db8::2")).unwrap().unwrap();
    assert_eq!(n6.mac.as_deref(), Some(b_mac.as_str()));
    assert!(a.neigh(ip("192.0.2.99")).unwrap().is_none());
    assert!(b.ifindex().unwrap() > 1);

    // Pulling the cable on the switch side takes the carrier away from the host.
    b.link_down().unwrap();
    let state = b
        .ns()
        .exec_ok("ip", &["-o", "link", "show", "eth0"])
        .unwrap();
    assert!(state.contains("NO-CARRIER"), "{state}");
    a.flush_neigh().unwrap();
    assert!(!a.ping(ip("192.0.2.2")).unwrap());
    b.link_up().unwrap();
    assert!(
        a.ping_until(ip("192.0.2.2"), std::time::Duration::from_secs(20))
            .unwrap()
    );

    drop((a, b, topo));
    let after = list().unwrap();
    for name in names {
        assert!(!after.contains(&name), "{name} still exists");
    }
}

#[test]
fn thread_in_runs_in_the_background_inside_the_namespace() {
    let ns = Netns::new("ldt").unwrap();
    let ns_ino = std::fs::metadata(format!("/var/run/netns/{}", ns.name()))
        .unwrap()
        .ino();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let handle = ns
        .thread_in(move || {
            // Still running while the caller goes on: it waits for the caller's signal.
            rx.recv().unwrap();
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
        })
        .unwrap();
    assert!(!handle.is_finished());
    tx.send(()).unwrap();
    assert_eq!(handle.join().unwrap().unwrap(), ns_ino);
}
