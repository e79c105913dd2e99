//! The membership through real operations, with real speakers in node namespaces: the key
//! rotation of "docs/install.md", its commands read from the page, a restart with the clock stepped back, and an
//! unauthenticated flood. The judges are the speakers' own metrics (nobody declared down) and
//! the client's side (every address answered by exactly one MAC, `arping`).
//!
//! No durations are asserted: deadlines only turn a hang into a failure.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lodestone_crds::L2AdvertisementSpec;
use lodestone_harness::docs;
use lodestone_harness::e2e::flood::Flood;
use lodestone_harness::e2e::lab::{self, Lab};
use lodestone_harness::e2e::metrics::{self, SPEAKER_METRICS_PORT};
use lodestone_harness::e2e::objects;
use lodestone_speaker::membership::CLOCK_OFFSET_ENV;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const WAIT: Duration = Duration::from_secs(30);

fn vips() -> Vec<IpAddr> {
    (100..106).map(|i| IpAddr::from([192, 0, 2, i])).collect()
}

/// A Secret volume as the kubelet writes it: `key -> ..data/key`, `..data -> ..<generation>`.
/// An update writes a new generation directory, then renames a new `..data` link over the old
/// one, so a reader sees the old file or the new one, never a mix.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf, content: &str) -> SecretVolume {
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = SecretVolume { dir, generation: 0 };
        v.write(content);
        std::os::unix::fs::symlink("..data/key", v.dir.join("key")).unwrap();
        v
    }

    fn key_file(&self) -> PathBuf {
        self.dir.join("key")
    }

    fn write(&mut self, content: &str) {
        self.generation += 1;
        let name = format!("..gen{}", self.generation);
        let generation = self.dir.join(&name);
        std::fs::create_dir(&generation).unwrap();
        std::fs::write(generation.join("key"), content).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if self.generation > 1 {
            let old = self.dir.join(format!("..gen{}", self.generation - 1));
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

async fn lab_with_services() -> Lab {
    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let lab = Lab::start(
        &lodestone_crds::all_crds(),
        &nodes,
        &vips(),
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
    )
    .await
    .unwrap();
    let client = lab.cluster.client();
    objects::lab_pool_and_advert(&client, L2AdvertisementSpec::default())
        .await
        .unwrap();
    for (i, vip) in vips().into_iter().enumerate() {
        let name = format!("web-{i}");
        objects::create_lb_service(&client, "default", &name, &[vip], false)
            .await
            .unwrap();
        objects::set_endpoints(
            &client,
            "default",
            &name,
            &[("node-a", true), ("node-b", true), ("node-c", true)],
        )
        .await
        .unwrap();
    }
    lab
}

fn scrape(lab: &Lab, node: &str) -> String {
    let ns = lab.node(node).unwrap().host.ns();
    metrics::scrape(ns, SPEAKER_METRICS_PORT)
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn value(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::value_in(body, name, labels).unwrap_or(f64::NAN)
}

/// Waits until every speaker is ready and sees all three members, and `extra` holds.
async fn wait_all(lab: &Lab, what: &str, extra: impl Fn(&str, &str) -> bool) {
    let outcome = metrics::poll(what, WAIT, || async {
        let mut state = String::new();
        let mut ok = true;
        for n in NODES {
            let body = scrape(lab, n);
            let members = metrics::gauge_in(&body, "lodestone_speaker_membership_members");
            let formed = metrics::gauge_in(&body, "lodestone_speaker_membership_formed");
            let good = members == Some(3.0) && formed == Some(1.0) && extra(n, &body);
            ok &= good;
            state.push_str(&format!(
                "{n}: members {members:?} formed {formed:?} ok {good}\n"
            ));
        }
        if ok { Ok(()) } else { Err(state) }
    })
    .await;
    if let Err(e) = outcome {
        panic!("{e}\n{}", lab.logs());
    }
}

/// Nobody was declared down and nobody had to rejoin, on any speaker, since it started.
fn assert_no_false_failure(lab: &Lab, when: &str) {
    for n in NODES {
        let body = scrape(lab, n);
        let down = value(
            &body,
            "lodestone_speaker_membership_members_down_total",
            &[],
        );
        let rejoins = value(&body, "lodestone_speaker_membership_rejoins_total", &[]);
        assert_eq!(
            (down, rejoins),
            (0.0, 0.0),
            "{when}: {n} saw members go down or rejoined\n{}",
            lab.logs()
        );
    }
}

/// Every address is answered by exactly one MAC, a node's. (Not necessarily its election
/// winner's: a node that restarted takes nothing back from the node that served its addresses
/// meanwhile, see docs/announcing.md.)
fn assert_one_mac_each(lab: &Lab, when: &str) {
    for vip in vips() {
        let macs = lab::arping_macs(&lab.client, vip, 2).unwrap();
        let owners: Vec<&str> = macs.iter().filter_map(|m| lab.node_by_mac(m)).collect();
        assert!(
            macs.len() == 1 && owners.len() == 1,
            "{when}: {vip} answered by {macs:?} ({owners:?})\n{}",
            lab.logs()
        );
    }
}

/// Runs the command of docs/install.md containing `needle` in `dir` (which holds `deploy/`).
fn run_documented(dir: &Path, needle: &str) -> String {
    let c = docs::command("docs/install.md", needle).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&c.text)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{c}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The documented metrics check, run from the client's namespace against `node`.
fn documented_check(lab: &Lab, node: &str) -> String {
    let c = docs::command("docs/install.md", "membership_(keys|keyring_failing)")
        .unwrap_or_else(|e| panic!("{e}"));
    let ip = lab.node(node).unwrap().ip4.to_string();
    let script = c.text.replace("NODE_IP", &ip);
    let out = lab.client.ns().exec("sh", &["-c", &script]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rotation of docs/install.md, its commands taken from the page and run as written (the
/// `kubectl apply -k deploy/` between them is run by the install test in
/// sandbox/tests/docs_commands.rs; here the kubelet's part follows it: each node's Secret volume
/// gets the new file, one node after the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_done_as_documented_splits_nothing() {
    let mut lab = lab_with_services().await;
    let dir = lab.work_dir().to_owned();
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("deploy")).unwrap();
    run_documented(&repo, "base64 > deploy/memberlist.key");
    let key_file = || std::fs::read_to_string(repo.join("deploy/memberlist.key")).unwrap();
    let mut volumes: Vec<SecretVolume> = NODES
        .iter()
        .map(|n| SecretVolume::new(dir.join(format!("secret-{n}")), &key_file()))
        .collect();
    for (n, v) in NODES.iter().zip(&volumes) {
        lab.start_speaker_with(n, &[], &[], Some(&v.key_file()))
            .unwrap();
    }
    wait_all(&lab, "the cluster to form on the old key", |_, _| true).await;
    assert_one_mac_each(&lab, "before the rotation");

    let keys_are = |want: f64| {
        move |_: &str, body: &str| value(body, "lodestone_speaker_membership_keys", &[]) == want
    };
    // 1. Add the new key after the old one. The kubelet updates nodes one after the other:
    // check the mixed state after the first one.
    run_documented(&repo, "cp deploy/memberlist.key deploy/memberlist.old");
    run_documented(&repo, "base64 > deploy/memberlist.new");
    run_documented(&repo, "cat deploy/memberlist.old deploy/memberlist.new");
    assert_eq!(key_file().lines().count(), 2, "{}", key_file());
    volumes[0].write(&key_file());
    wait_all(&lab, "node-a to hold two keys", |n, body| {
        n != "node-a" || value(body, "lodestone_speaker_membership_keys", &[]) == 2.0
    })
    .await;
    assert_one_mac_each(&lab, "one node with both keys");
    for v in &mut volumes[1..] {
        v.write(&key_file());
    }
    wait_all(&lab, "every node to hold two keys", keys_are(2.0)).await;
    for n in NODES {
        let shown = documented_check(&lab, n);
        assert!(
            shown.contains("lodestone_speaker_membership_keys 2")
                && shown.contains("lodestone_speaker_membership_keyring_failing 0"),
            "{n}: {shown}"
        );
    }

    // 2. Make the new key the first, one node first: it seals with the new key, the others
    // still with the old, and each accepts both.
    run_documented(&repo, "cat deploy/memberlist.new deploy/memberlist.old");
    volumes[0].write(&key_file());
    wait_all(&lab, "node-b to hear node-a's new key", |n, body| {
        n != "node-b"
            || value(
                body,
                "lodestone_speaker_membership_datagrams_accepted_total",
                &[("key", "secondary")],
            ) > 0.0
    })
    .await;
    assert_one_mac_each(&lab, "mixed primaries");
    assert_no_false_failure(&lab, "mixed primaries");
    for v in &mut volumes[1..] {
        v.write(&key_file());
    }
    // Every speaker now seals with the new key, so nobody hears the old one any more: the
    // secondary counters stop moving, as the page says to wait for.
    let secondary = |lab: &Lab| -> Vec<f64> {
        NODES
            .iter()
            .map(|n| {
                value(
                    &scrape(lab, n),
                    "lodestone_speaker_membership_datagrams_accepted_total",
                    &[("key", "secondary")],
                )
            })
            .collect()
    };
    let outcome = metrics::poll("the old key to fall silent", WAIT, || async {
        let before = secondary(&lab);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = secondary(&lab);
        if before == after {
            Ok(())
        } else {
            Err(format!("{before:?} -> {after:?}"))
        }
    })
    .await;
    outcome.unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // 3. Remove the old key.
    let old = std::fs::read_to_string(repo.join("deploy/memberlist.old")).unwrap();
    let new = std::fs::read_to_string(repo.join("deploy/memberlist.new")).unwrap();
    run_documented(&repo, "cp deploy/memberlist.new deploy/memberlist.key");
    for v in &mut volumes {
        v.write(&key_file());
    }
    run_documented(&repo, "rm deploy/memberlist.old");
    assert!(!repo.join("deploy/memberlist.old").exists());
    wait_all(&lab, "every node to hold only the new key", keys_are(1.0)).await;
    assert_one_mac_each(&lab, "after the rotation");
    assert_no_false_failure(&lab, "after the rotation");
    for n in NODES {
        let body = scrape(&lab, n);
        assert_eq!(
            value(
                &body,
                "lodestone_speaker_membership_key_reloads_total",
                &[("result", "ok")]
            ),
            3.0,
            "{n}"
        );
        let log = lab.node(n).unwrap().speaker.as_ref().unwrap().log();
        assert!(log.contains("keyring reloaded"), "{log}");
        assert!(
            !log.contains(old.trim()) && !log.contains(new.trim()),
            "a key in the log"
        );
    }

    // Control: the judges above can see a split. A node given a key nobody else has is cut
    // off: it knows why, and the others see it go.
    volumes[2].write("a-key-nobody-else-has-0123456789\n");
    let outcome = metrics::poll("node-c to be cut off by its key", WAIT, || async {
        let c = scrape(&lab, "node-c");
        let a = scrape(&lab, "node-a");
        let failing = value(&c, "lodestone_speaker_membership_keyring_failing", &[]);
        let members = value(&a, "lodestone_speaker_membership_members", &[]);
        if failing == 1.0 && members == 2.0 {
            Ok(())
        } else {
            Err(format!(
                "node-c keyring_failing {failing}, node-a members {members}"
            ))
        }
    })
    .await;
    outcome.unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    let shown = documented_check(&lab, "node-c");
    assert!(
        shown.contains("lodestone_speaker_membership_keyring_failing 1"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_clock_stepped_back_rejoins() {
    let mut lab = lab_with_services().await;
    lab.start_all_speakers(&[]).unwrap();
    wait_all(&lab, "the cluster to form", |_, _| true).await;
    assert_one_mac_each(&lab, "before the restart");

    // kill -9, then start again as if NTP had stepped the clock back five minutes meanwhile.
    lab.signal_speaker("node-c", libc::SIGKILL).unwrap();
    lab.wait_speaker_exit("node-c", WAIT).unwrap();
    let outcome = metrics::poll("the others to see node-c gone", WAIT, || async {
        let members: Vec<f64> = ["node-a", "node-b"]
            .iter()
            .map(|n| {
                value(
                    &scrape(&lab, n),
                    "lodestone_speaker_membership_members",
                    &[],
                )
            })
            .collect();
        if members == [2.0, 2.0] {
            Ok(())
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await;
    outcome.unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    lab.start_speaker_with("node-c", &[], &[(CLOCK_OFFSET_ENV, "-300")], None)
        .unwrap();

    wait_all(&lab, "node-c to rejoin with its clock behind", |_, _| true).await;
    // The restarted speaker really started below its previous identity, and corrected it.
    let c = scrape(&lab, "node-c");
    assert!(
        value(
            &c,
            "lodestone_speaker_membership_identity_outranked_total",
            &[]
        ) >= 1.0,
        "node-c never learnt it was outranked: the test did not step the clock back\n{}",
        lab.logs()
    );
    assert_one_mac_each(&lab, "after the restart");
    // And it stays: nobody declares it down again once it is back.
    let rejoins = value(&c, "lodestone_speaker_membership_rejoins_total", &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_all(&lab, "the cluster to stay whole", |n, body| {
        n != "node-c" || value(body, "lodestone_speaker_membership_rejoins_total", &[]) == rejoins
    })
    .await;
    assert_one_mac_each(&lab, "a while after the restart");
}

/// 40,000 unauthenticated datagrams a second at one node for 10 s: counted, logged a few
/// times, and nobody is declared down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_declares_nobody_down() {
    let mut lab = lab_with_services().await;
    lab.start_all_speakers(&[]).unwrap();
    wait_all(&lab, "the cluster to form", |_, _| true).await;

    let target = SocketAddr::new(lab.node("node-a").unwrap().ip4, 7946);
    let flood = Flood::start(lab.client.ns(), target, 40_000).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent = flood.sent();
    drop(flood);
    assert!(sent > 100_000, "the flood sent only {sent} datagrams");

    wait_all(&lab, "the cluster to be whole after the flood", |_, _| true).await;
    assert_no_false_failure(&lab, "after the flood");
    let a = scrape(&lab, "node-a");
    let rejected: f64 = ["bad_mac", "malformed"]
        .iter()
        .map(|r| {
            value(
                &a,
                "lodestone_speaker_membership_datagrams_rejected_total",
                &[("reason", r)],
            )
        })
        .sum();
    assert!(
        rejected > 0.5 * sent as f64,
        "node-a counted {rejected} of {sent} datagrams"
    );
    // One warning per source and reason every 10 s, not one per datagram.
    let log = lab.node("node-a").unwrap().speaker.as_ref().unwrap().log();
    let lines = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("membership datagram"))
        .count();
    assert!(
        (1..=8).contains(&lines),
        "{lines} warning lines for {sent} rejected datagrams"
    );
    assert_one_mac_each(&lab, "after the flood");
}

/// The scheduling policy and real-time priority of thread `tid` of `pid` (`/proc/.../stat`
/// fields 41 and 40).
fn sched_of(pid: u32, tid: &str) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces, start at field 3 (the state).
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3)?.parse().ok();
    Some((field(41)?, field(40)?))
}

/// Each speaker's membership thread runs under the real-time round-robin policy (a speaker
/// starved of CPU for a second looks dead to the others), and only that thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_membership_thread_runs_ahead_of_ordinary_work() {
    let mut lab = lab_with_services().await;
    lab.start_all_speakers(&[]).unwrap();
    wait_all(&lab, "the cluster to form", |_, _| true).await;
    for name in NODES {
        let speaker = lab.node(name).unwrap().speaker.as_ref().unwrap();
        let pid = speaker.pid();
        let mut threads = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let tid = task.unwrap().file_name().to_string_lossy().into_owned();
            let comm =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
            if let Some(sched) = sched_of(pid, &tid) {
                threads.push((comm.trim().to_owned(), sched));
            }
        }
        let membership: Vec<_> = threads.iter().filter(|(c, _)| c == "membership").collect();
        assert_eq!(
            membership.len(),
            1,
            "{name}: one membership thread among {threads:?}"
        );
        assert_eq!(
            membership[0].1,
            (libc::SCHED_RR as u32, 1),
            "{name}: the membership thread's (policy, priority)"
        );
        let others_rt: Vec<_> = threads
            .iter()
            .filter(|(c, (policy, _))| c != "membership" && *policy != libc::SCHED_OTHER as u32)
            .collect();
        assert!(
            others_rt.is_empty(),
            "{name}: other real-time threads {others_rt:?}"
        );
        assert!(
            speaker
                .log()
                .contains("membership thread runs at real-time priority"),
            "{name} says so at start"
        );
    }
}
