//! Real speakers' membership over real UDP sockets on loopback.
//!
//! No durations are asserted: every wait has a generous deadline that only exists so a broken
//! build fails instead of hanging. Where a test must tell "left gracefully" from "timed out as a
//! suspect", the suspicion timeout is set far beyond that deadline.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use lodestone_speaker::membership::{Membership, MembershipConfig, MembershipView, auth::Sealer};
use tokio::sync::watch;

const KEY: &[u8] = b"lodestone membership test key 0001";
const OTHER_KEY: &[u8] = b"not the cluster key, but as long!!";
/// Long enough for a loaded two-core machine; a correct implementation needs a fraction.
const DEADLINE: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn config(name: &str, key: &[u8], seeds: Vec<SocketAddr>) -> MembershipConfig {
    let mut cfg = MembershipConfig::new(name, loopback(), loopback(), key.to_vec());
    cfg.seeds = seeds;
    cfg
}

/// Timings so relaxed that a busy machine never causes a false suspicion.
fn relaxed(mut cfg: MembershipConfig) -> MembershipConfig {
    cfg.probe_period = Duration::from_millis(500);
    cfg.probe_rtt = Duration::from_millis(200);
    cfg.suspect_to_down_after = Duration::from_secs(5);
    cfg
}

struct Node {
    handle: Membership,
    view: watch::Receiver<MembershipView>,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
}

async fn start(cfg: MembershipConfig) -> Node {
    let (handle, view) = Membership::start(cfg).await.expect("membership starts");
    Node { handle, view }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Wait until the view satisfies `pred`; panic with the last view after [`DEADLINE`].
async fn wait_for(
    view: &mut watch::Receiver<MembershipView>,
    what: &str,
    pred: impl Fn(&MembershipView) -> bool,
) {
    let outcome = tokio::time::timeout(DEADLINE, view.wait_for(|v| pred(v)))
        .await
        .map(|r| r.is_ok());
    match outcome {
        Ok(true) => {}
        Ok(false) => panic!("membership task ended while waiting for {what}"),
        Err(_) => panic!("gave up waiting for {what}; last view {:?}", *view.borrow()),
    }
}

async fn wait_until(what: &str, pred: impl Fn() -> bool) {
    let result = tokio::time::timeout(DEADLINE, async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(result.is_ok(), "gave up waiting for {what}");
}

/// a alone, b seeded with a, c seeded only with b: the cluster must form from any seed.
async fn three(tune: impl Fn(MembershipConfig) -> MembershipConfig) -> (Node, Node, Node) {
    let mut a = start(tune(config("node-a", KEY, vec![]))).await;
    let mut b = start(tune(config("node-b", KEY, vec![a.addr()]))).await;
    let mut c = start(tune(config("node-c", KEY, vec![b.addr()]))).await;
    let all = names(&["node-a", "node-b", "node-c"]);
    for (node, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        wait_for(&mut node.view, &format!("{name} to see all three"), |v| {
            v.alive == all && v.formed
        })
        .await;
    }
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_form_a_cluster() {
    let (mut a, mut b, mut c) = three(|c| c).await;
    for node in [&mut a, &mut b, &mut c] {
        wait_for(&mut node.view, "both peers authenticated", |v| {
            v.authenticated_peers == 2 && !v.keyring_failing
        })
        .await;
    }
    for node in [&a, &b, &c] {
        let stats = node.handle.stats();
        assert_eq!(stats.members, 3);
        assert!(stats.formed);
        assert!(stats.datagrams_in > 0 && stats.datagrams_out > 0);
        assert_eq!(stats.auth_failures, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unformed_until_a_peer_answers() {
    // A seed nobody listens on: bind a socket and keep it silent.
    let silent = std::net::UdpSocket::bind(loopback()).unwrap();
    let lonely = start(config("lonely", KEY, vec![silent.local_addr().unwrap()])).await;
    assert!(!lonely.view.borrow().formed);
    assert_eq!(lonely.view.borrow().alive, names(&["lonely"]));

    // No seeds at all: alone by configuration, trusted at once.
    let single = start(config("single", KEY, vec![])).await;
    assert!(single.view.borrow().formed);

    // Once a real peer is given, it forms, and `formed` stays true after the peer is gone.
    let mut lonely = lonely;
    lonely.handle.join(vec![single.addr()]);
    wait_for(&mut lonely.view, "formed with the real peer", |v| {
        v.formed && v.alive == names(&["lonely", "single"])
    })
    .await;
    drop(single);
    wait_for(&mut lonely.view, "the peer to be declared down", |v| {
        v.alive == names(&["lonely"])
    })
    .await;
    assert!(lonely.view.borrow().formed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_seen_gone() {
    let (mut a, mut b, c) = three(|c| c).await;
    // Abort the task and close the socket without a word, as kill -9 would.
    drop(c);
    let rest = names(&["node-a", "node-b"]);
    wait_for(&mut a.view, "a to drop c", |v| v.alive == rest).await;
    wait_for(&mut b.view, "b to drop c", |v| v.alive == rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_is_seen_without_suspicion() {
    // A suspect would only be declared down after ten minutes, far past the deadline: seeing c
    // gone proves the leave message did it.
    let (mut a, mut b, c) = three(|cfg| {
        let mut cfg = relaxed(cfg);
        cfg.suspect_to_down_after = Duration::from_secs(600);
        cfg
    })
    .await;
    c.handle.leave(Duration::from_secs(1)).await;
    let rest = names(&["node-a", "node-b"]);
    wait_for(&mut a.view, "a to drop c", |v| v.alive == rest).await;
    wait_for(&mut b.view, "b to drop c", |v| v.alive == rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_rejoins() {
    let (mut a, mut b, c) = three(|c| c).await;
    let port = c.addr();
    let seeds = vec![a.addr(), b.addr()];
    drop(c);
    let rest = names(&["node-a", "node-b"]);
    wait_for(&mut a.view, "a to drop c", |v| v.alive == rest).await;

    // Same name, same address: the old socket closes asynchronously, so retry the bind.
    let mut cfg = config("node-c", KEY, seeds);
    cfg.bind = port;
    cfg.advertise = port;
    let mut c = None;
    for _ in 0..200 {
        match Membership::start(cfg.clone()).await {
            Ok((handle, view)) => {
                c = Some(Node { handle, view });
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    let mut c = c.expect("restarted member binds its old port");
    let all = names(&["node-a", "node-b", "node-c"]);
    wait_for(&mut a.view, "a to see c again", |v| v.alive == all).await;
    wait_for(&mut b.view, "b to see c again", |v| v.alive == all).await;
    wait_for(&mut c.view, "c to see everyone", |v| {
        v.alive == all && v.formed
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_key_a_speaker_cannot_join() {
    let (mut a, b, _c) = three(relaxed).await;
    let mut intruder = start(relaxed(config(
        "intruder",
        OTHER_KEY,
        vec![a.addr(), b.addr()],
    )))
    .await;
    // The intruder announces at start and every second; wait until both have rejected some.
    wait_until("a and b to reject the intruder", || {
        a.handle.stats().auth_failures > 0 && b.handle.stats().auth_failures > 0
    })
    .await;
    // Let a few more announce rounds fail before looking.
    let failures = a.handle.stats().auth_failures;
    wait_until("more rejected announces", || {
        a.handle.stats().auth_failures >= failures + 2
    })
    .await;
    assert!(!a.view.borrow_and_update().alive.contains("intruder"));
    assert!(!b.view.borrow().alive.contains("intruder"));
    let seen = intruder.view.borrow_and_update().clone();
    assert_eq!(seen.alive, names(&["intruder"]));
    assert!(!seen.formed, "the intruder must not believe it joined");
    assert_eq!(intruder.handle.stats().datagrams_in, 0);
    // The cluster itself is untouched.
    assert_eq!(a.view.borrow().alive.len(), 3);
    assert!(!intruder.view.borrow().keyring_failing);

    // Once the cluster knows the intruder's node (its address becomes a seed), the cluster
    // announces to it and the intruder learns that its key is the odd one out; the cluster,
    // which still authenticates its own, does not conclude the same about itself.
    a.handle.join(vec![intruder.addr()]);
    wait_for(
        &mut intruder.view,
        "the intruder to see its key fail",
        |v| v.keyring_failing && v.authenticated_peers == 0,
    )
    .await;
    let view = a.view.borrow().clone();
    assert!(
        !view.keyring_failing && view.authenticated_peers == 2,
        "{view:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_peers_decay_when_a_peer_goes_quiet() {
    let (mut a, b, c) = three(|c| c).await;
    wait_for(&mut a.view, "a to count both peers", |v| {
        v.authenticated_peers == 2
    })
    .await;
    drop(c);
    drop(b);
    wait_for(&mut a.view, "a to count nobody", |v| {
        v.authenticated_peers == 0 && !v.keyring_failing
    })
    .await;
}

/// Build the datagram a SWIM member would send to `a` declaring `victim` down, and seal it
/// with `key` under the name `sender`.
fn forged_eviction(
    a: &lodestone_speaker::membership::NodeId,
    victim: &lodestone_speaker::membership::NodeId,
    key: &[u8],
    sender: &str,
) -> Vec<u8> {
    use foca::{AccumulatingRuntime, Foca, Member, PostcardCodec, State};
    use rand_foca::SeedableRng;

    let me = lodestone_speaker::membership::NodeId {
        name: sender.to_owned(),
        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        bump: 1,
    };
    let mut rt = AccumulatingRuntime::new();
    let mut swim = Foca::new(
        me,
        foca::Config::simple(),
        rand_foca::rngs::SmallRng::seed_from_u64(7),
        PostcardCodec,
    );
    swim.apply_many(
        [
            Member::alive(a.clone()),
            Member::alive(victim.clone()),
            Member::new(victim.clone(), 0, State::Down),
        ]
        .into_iter(),
        true,
        &mut rt,
    )
    .unwrap();
    while rt.to_send().is_some() {}
    swim.gossip(&mut rt).unwrap();
    let (dst, payload) = rt.to_send().expect("a gossip to a");
    assert_eq!(&dst, a);
    Sealer::new(key, sender, 1).unwrap().seal(&payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_key_nobody_can_be_evicted() {
    let (a, b, _c) = three(relaxed).await;
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();

    let forged = forged_eviction(
        &a.handle.identity(),
        &b.handle.identity(),
        OTHER_KEY,
        "intruder",
    );
    let before = a.handle.stats().auth_failures;
    socket.send_to(&forged, a.addr()).unwrap();
    wait_until("a to reject the forged eviction", || {
        a.handle.stats().auth_failures > before
    })
    .await;
    assert!(a.view.borrow().alive.contains("node-b"));
    assert_eq!(b.handle.stats().rejoins, 0, "b was never declared down");

    // Control: the very same message sealed with the cluster key does evict b from a's view.
    // Without this, the check above could pass because the forged message was harmless anyway.
    // (b itself is not told: no courtesy "you are down" message, see MembershipConfig.)
    let genuine = forged_eviction(&a.handle.identity(), &b.handle.identity(), KEY, "insider");
    socket.send_to(&genuine, a.addr()).unwrap();
    wait_until("a to take b for gone", || {
        !a.view.borrow().alive.contains("node-b")
    })
    .await;

    // And replaying the genuine datagram is dropped as a replay.
    let replays = a.handle.stats().replays;
    socket.send_to(&genuine, a.addr()).unwrap();
    wait_until("a to drop the replay", || {
        a.handle.stats().replays > replays
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_given_later_form_the_cluster() {
    let mut a = start(config("node-a", KEY, vec![])).await;
    let mut b = start(config("node-b", KEY, vec![])).await;
    // Both alone by configuration: formed, but knowing only themselves.
    assert_eq!(b.view.borrow().alive, names(&["node-b"]));
    assert!(b.view.borrow().formed);
    // The Node list arrives: our own address in the seed list is ignored.
    b.handle.set_seeds(vec![b.addr(), a.addr()]);
    let both = names(&["node-a", "node-b"]);
    wait_for(&mut a.view, "a to see b", |v| v.alive == both).await;
    wait_for(&mut b.view, "b to see a", |v| v.alive == both).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_over_ipv6() {
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    let Ok(probe) = std::net::UdpSocket::bind(v6) else {
        // No IPv6 loopback in this environment: nothing to test against.
        eprintln!("skipping: cannot bind [::1]");
        return;
    };
    drop(probe);
    let mut a = start(MembershipConfig::new("node-a", v6, v6, KEY.to_vec())).await;
    let mut cfg = MembershipConfig::new("node-b", v6, v6, KEY.to_vec());
    cfg.seeds = vec![a.addr()];
    let mut b = start(cfg).await;
    let both = names(&["node-a", "node-b"]);
    wait_for(&mut a.view, "a to see b", |v| v.alive == both).await;
    wait_for(&mut b.view, "b to see a", |v| v.alive == both && v.formed).await;
}

/// The key file is read again while running: a valid keyring is used at once (the old key is
/// still accepted, so nobody is cut off), an unusable one is refused and the keys in use stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_file_is_followed_and_bad_contents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, KEY).unwrap();
    let (mut a, mut b, _c) = three(|mut cfg| {
        if cfg.node_name == "node-a" {
            cfg.key_file = Some(file.clone());
            cfg.key_reload_period = Duration::from_millis(50);
        }
        cfg
    })
    .await;
    let reloads = |n: &Node| {
        (
            n.handle.stats().key_reloads,
            n.handle.stats().key_reload_failures,
        )
    };

    // A key too short: refused, counted, nothing changes.
    std::fs::write(&file, "short\n").unwrap();
    wait_until("the short key to be refused", || reloads(&a) == (0, 1)).await;
    assert_eq!(a.handle.stats().keys, 1);

    // The new key first, the cluster's second: node-a now seals with a key only it holds, and
    // the others (one key, the old one) reject it...
    std::fs::write(&file, [OTHER_KEY, b"\n", KEY, b"\n"].concat()).unwrap();
    wait_until("the keyring to be taken", || reloads(&a) == (1, 1)).await;
    assert_eq!(a.handle.stats().keys, 2);
    wait_until("node-b to reject node-a's new key", || {
        b.handle.stats().auth_failures > 0
    })
    .await;
    // ...while node-a still accepts theirs, under its second key.
    wait_until("node-a to hear the old key", || {
        a.handle.stats().accepted_secondary > 0
    })
    .await;

    // Back to the cluster's key only: everyone hears everyone again.
    std::fs::write(&file, KEY).unwrap();
    wait_until("the old key back", || reloads(&a) == (2, 1)).await;
    let all = names(&["node-a", "node-b", "node-c"]);
    wait_for(&mut a.view, "a to see everyone", |v| v.alive == all).await;
    wait_for(&mut b.view, "b to see everyone", |v| v.alive == all).await;
}

/// The replay protection does not order boots: a member restarted with a clock behind its
/// previous life is heard, and outranks its old identity in the others' views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_below_the_previous_identity_rejoins() {
    let (mut a, mut b, c) = three(|c| c).await;
    let old = c.handle.identity();
    let port = c.addr();
    drop(c);
    let rest = names(&["node-a", "node-b"]);
    wait_for(&mut a.view, "a to drop c", |v| v.alive == rest).await;
    wait_for(&mut b.view, "b to drop c", |v| v.alive == rest).await;

    // Five minutes of nanoseconds below the old identity, as after an NTP step back.
    let mut cfg = config("node-c", KEY, vec![a.addr(), b.addr()]);
    cfg.bind = port;
    cfg.advertise = port;
    cfg.initial_bump = Some(old.bump - 300_000_000_000);
    let mut c = None;
    for _ in 0..200 {
        match Membership::start(cfg.clone()).await {
            Ok((handle, view)) => {
                c = Some(Node { handle, view });
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    let mut c = c.expect("restarted member binds its old port");
    let all = names(&["node-a", "node-b", "node-c"]);
    wait_for(&mut a.view, "a to see c again", |v| v.alive == all).await;
    wait_for(&mut b.view, "b to see c again", |v| v.alive == all).await;
    wait_for(&mut c.view, "c to see everyone", |v| v.alive == all).await;
    assert!(c.handle.stats().identity_outranked >= 1);
    assert!(c.handle.identity().bump > old.bump);
}

/// A renewal starts a new generation of views, in which the peers are heard again; the
/// speaker skips every view of an older generation (see `run::view_is_current`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_starts_a_new_generation_of_views() {
    let (mut a, _b, _c) = three(|c| c).await;
    assert_eq!(a.view.borrow().generation, 0);
    let generation = a.handle.renew();
    assert_eq!(generation, 1);
    wait_for(&mut a.view, "a view of the new generation", |v| {
        v.generation == generation
    })
    .await;
    let all = names(&["node-a", "node-b", "node-c"]);
    wait_for(&mut a.view, "the peers heard again", |v| {
        v.generation == generation && v.alive == all
    })
    .await;
    assert_eq!(a.handle.renew(), 2);
}
