//! BGP mode against a real FRR router in network namespaces: failover and withdrawal times as a
//! client sees them, how long the router takes to learn 1,000 routes from 3 nodes, and the
//! speaker's memory with 1,000 addresses and 2 peers.
//!
//! Needs root and the `frr` and `bird2` packages. Run: `cargo bench -p lodestone-speaker --bench bgp`
//! (`LODESTONE_BENCH_TRIALS` overrides the 10 trials per failover scenario;
//! `LODESTONE_BENCH_ONLY=failover` or `=scale` runs one half).
//!
//! - failover with BFD: the client sends a UDP request every 5 ms on one flow; the node that
//!   flow lands on has its link pulled. Time from the cut to the first answer from another node
//!   (BFD 100 ms x 3 on both sides, FRR configured as `docs/bgp.md` shows).
//! - graceful withdraw: the same flow, its node's speaker gets SIGTERM (withdraw + Cease).
//! - learning: three speakers established with FRR and nothing to advertise; a BGPAdvertisement
//!   appears for 1,000 Services (IPv6 addresses, endpoints on every node); time until FRR's
//!   kernel FIB holds all 1,000 routes with 3 next hops each.
//! - memory: then a second peer (BIRD, with BFD as `docs/bgp.md` configures it) is added:
//!   every node holds 2 sessions with 1,000 routes each; VmRSS of one speaker (the release
//!   build, as `cargo bench` builds it; `LODESTONE_BENCH_SPEAKER=/path` measures another
//!   binary, e.g. the static musl build the images ship; `LODESTONE_BENCH_SMAPS=/file` copies
//!   that speaker's `/proc/PID/smaps` there for a breakdown), and how often BIRD saw a BFD
//!   session go down meanwhile.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use lodestone_crds::{BGPAdvertisement, BGPPeer, IPAddressPool};
use lodestone_harness::docs;
use lodestone_harness::e2e::lab::{Lab, PROBE_PORT};
use lodestone_harness::e2e::router::{self, Router};
use lodestone_harness::e2e::{Prober, objects};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const WAIT: Duration = Duration::from_secs(60);

fn speaker_bin() -> std::path::PathBuf {
    std::env::var_os("LODESTONE_BENCH_SPEAKER")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_lodestone-speaker").into())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest-rank: the smallest value with at least p% of the samples at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(name: &str, mut samples: Vec<Duration>, goal: Duration) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = percentile(&samples, 95.0);
    println!(
        "{name:<18} n={:<3} p50={:>7.1} ms  p95={:>7.1} ms  max={:>7.1} ms  (goal p95 < {:.0} ms: {})",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(p95),
        ms(samples.last().copied().unwrap_or_default()),
        ms(goal),
        if p95 < goal { "met" } else { "NOT met" }
    );
}

async fn create<K>(client: &kube::Client, v: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(v)?)
        .await?;
    Ok(())
}

fn wait_fib(
    router: &Router,
    what: &str,
    pred: impl Fn(&std::collections::BTreeMap<String, Vec<IpAddr>>) -> bool,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    router
        .wait_fib(WAIT, pred)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(t.elapsed())
}

fn has_hops(f: &std::collections::BTreeMap<String, Vec<IpAddr>>, prefix: &str, n: usize) -> bool {
    f.get(prefix).is_some_and(|h| h.len() == n)
}

/// One trial: the node of the client's flow fails by `fail`; time until another node answers.
fn trial(lab: &Lab, fail: impl FnOnce(&str)) -> anyhow::Result<(String, Duration)> {
    let vip: IpAddr = "203.0.113.10".parse()?;
    let prober = Prober::start(lab.client.ns(), vip, PROBE_PORT, Duration::from_millis(5))?;
    let first = prober
        .wait_for(WAIT, |p| p.answers().last().cloned())
        .ok_or_else(|| anyhow::anyhow!("the flow is never answered\n{}", lab.logs()))?;
    let victim = first.node.clone();
    let t0 = Instant::now();
    fail(&victim);
    let moved = prober
        .wait_for(WAIT, |p| p.first_not_from_since(&victim, t0))
        .ok_or_else(|| anyhow::anyhow!("the flow never moved off {victim}\n{}", lab.logs()))?;
    Ok((victim, moved.received.duration_since(t0)))
}

async fn failover(trials: usize) -> anyhow::Result<()> {
    let conf = docs::blocks("docs/bgp.md", "frr")?.concat();
    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let vip: IpAddr = "203.0.113.10".parse()?;
    let (mut lab, router) = router::lab_with_router(
        &nodes,
        &[vip],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
        |host| Router::frr(host, &conf),
    )
    .await?;
    let client = lab.cluster.client();
    create::<IPAddressPool>(
        &client,
        serde_json::json!({"metadata": {"name": "routed"}, "spec": {"addresses": ["203.0.113.0/24"]}}),
    )
    .await?;
    create::<BGPPeer>(
        &client,
        serde_json::json!({"metadata": {"name": "router"}, "spec": {"myASN": 64512, "peerASN": 64500,
            "peerAddress": "192.0.2.1",
            "bfd": {"receiveInterval": 100, "transmitInterval": 100, "detectMultiplier": 3}}}),
    )
    .await?;
    create::<BGPAdvertisement>(
        &client,
        serde_json::json!({"metadata": {"name": "routed"}, "spec": {}}),
    )
    .await?;
    objects::create_lb_service(&client, "default", "web", &[vip], false).await?;
    let all: Vec<(&str, bool)> = NODES.iter().map(|n| (*n, true)).collect();
    objects::set_endpoints(&client, "default", "web", &all).await?;
    lab.start_all_speakers(&[])?;
    let full =
        |f: &std::collections::BTreeMap<String, Vec<IpAddr>>| has_hops(f, "203.0.113.10/32", 3);
    wait_fib(&router, "three paths", full)?;

    let mut bfd = Vec::new();
    for _ in 0..trials {
        // BFD must be up on every session first (one packet a second until it is).
        wait_bfd_up(&client).await?;
        let (victim, gap) = trial(&lab, |n| {
            let _ = lab.node(n).map(|n| n.host.link_down());
        })?;
        bfd.push(gap);
        lab.node(&victim)?.host.link_up()?;
        wait_fib(&router, "the node back", full)?;
    }
    report("failover with BFD", bfd, Duration::from_secs(1));

    let mut graceful = Vec::new();
    for _ in 0..trials {
        let (victim, gap) = trial(&lab, |n| {
            let _ = lab.signal_speaker(n, libc::SIGTERM);
        })?;
        graceful.push(gap);
        lab.wait_speaker_exit(&victim, WAIT)?;
        lab.start_speaker(&victim, &[])?;
        wait_fib(&router, "the speaker back", full)?;
    }
    report("graceful withdraw", graceful, Duration::from_millis(100));
    Ok(())
}

async fn wait_bfd_up(client: &kube::Client) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let peer = Api::<BGPPeer>::all(client.clone()).get("router").await?;
        let sessions = peer.status.unwrap_or_default().sessions;
        if sessions.len() == NODES.len()
            && sessions
                .iter()
                .all(|s| s.state == "Established" && s.bfd.as_deref() == Some("Up"))
        {
            return Ok(());
        }
        if t.elapsed() > WAIT {
            anyhow::bail!("BFD never came up: {sessions:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scale() -> anyhow::Result<()> {
    const N: usize = 1000;
    let conf = docs::blocks("docs/bgp.md", "frr")?.concat();
    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let (mut lab, router) =
        router::lab_with_router(&nodes, &[], &speaker_bin(), |host| Router::frr(host, &conf))
            .await?;
    let client = lab.cluster.client();
    create::<IPAddressPool>(
        &client,
        serde_json::json!({"metadata": {"name": "routed"}, "spec": {"addresses": ["2001:db8:f::/116"]}}),
    )
    .await?;
    create::<BGPPeer>(
        &client,
        serde_json::json!({"metadata": {"name": "router"}, "spec": {"myASN": 64512, "peerASN": 64500,
            "peerAddress": "192.0.2.1"}}),
    )
    .await?;
    let t = Instant::now();
    let all: Vec<(&str, bool)> = NODES.iter().map(|n| (*n, true)).collect();
    for i in 0..N {
        let ip: IpAddr = format!("2001:db8:f::{:x}", 0x10 + i).parse()?;
        let name = format!("svc-{i}");
        objects::create_lb_service(&client, "default", &name, &[ip], false).await?;
        objects::set_endpoints(&client, "default", &name, &all).await?;
    }
    println!(
        "created {N} Services with endpoints on 3 nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    lab.start_all_speakers(&[])?;
    // Sessions up, nothing advertised yet.
    let t = Instant::now();
    loop {
        let peer = Api::<BGPPeer>::all(client.clone()).get("router").await?;
        let s = peer.status.unwrap_or_default().sessions;
        if s.len() == 3 && s.iter().all(|s| s.state == "Established") {
            break;
        }
        if t.elapsed() > WAIT {
            anyhow::bail!("sessions never came up: {s:?}\n{}", lab.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    create::<BGPAdvertisement>(
        &client,
        serde_json::json!({"metadata": {"name": "routed"}, "spec": {}}),
    )
    .await?;
    wait_fib(&router, "1,000 routes with 3 paths", |f| {
        f.iter()
            .filter(|(p, h)| p.starts_with("2001:db8:f::") && h.len() == 3)
            .count()
            == N
    })?;
    println!(
        "router learnt {N} routes x 3 nodes (3,000 paths, 1,000 multipath FIB entries) {:.2} s after the BGPAdvertisement was created",
        t0.elapsed().as_secs_f64()
    );

    // A second peer: BIRD at 192.0.2.3, as docs/bgp.md configures it but for that address.
    // Its log in a file of our own, to count the sessions BFD took down.
    let bird_log = tempfile::Builder::new()
        .prefix("lodestone-bench-bird-")
        .suffix(".log")
        .tempfile()?;
    let bird_conf = format!(
        "log \"{}\" all;\n{}",
        bird_log.path().display(),
        docs::blocks("docs/bgp.md", "bird")?
            .concat()
            .replace("192.0.2.1", "192.0.2.3")
    );
    let host2 = lab
        .topology
        // An IPv6 address on the segment too: BIRD drops routes whose next hop (the nodes'
        // IPv6 addresses) is on no network it is directly connected to.
        .add_host(
            "ldrt",
            Some("192.0.2.3/24".parse()?),
            Some("2001:db8::3/64".parse()?),
        )?;
    let bird = Router::bird(host2, &bird_conf)?;
    create::<BGPPeer>(
        &client,
        serde_json::json!({"metadata": {"name": "router2"}, "spec": {"myASN": 64512, "peerASN": 64500,
            "peerAddress": "192.0.2.3",
            "bfd": {"receiveInterval": 100, "transmitInterval": 100, "detectMultiplier": 3}}}),
    )
    .await?;
    let t = Instant::now();
    loop {
        let routes = bird.birdc("show route count")?;
        if routes.contains(&format!("{} of {} routes", 3 * N, 3 * N))
            || routes.contains(&format!("{} of", 3 * N))
        {
            break;
        }
        if t.elapsed() > WAIT {
            // Still measure memory (with what the sessions hold), but say why BIRD lacks routes.
            let peer = Api::<BGPPeer>::all(client.clone()).get("router2").await?;
            println!(
                "BIRD did NOT get every route within {WAIT:?}:\n{routes}\n{}\nrouter2 sessions: {:?}\n{}",
                bird.birdc("show protocols all").unwrap_or_default(),
                peer.status.unwrap_or_default().sessions,
                bird.logs()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pid = lab
        .node("node-a")?
        .speaker
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("speaker gone"))?
        .pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let rss = kb("VmRSS:");
    let sessions: Vec<(String, usize)> = {
        let mut v = Vec::new();
        for p in ["router", "router2"] {
            let peer = Api::<BGPPeer>::all(client.clone()).get(p).await?;
            let s = peer.status.unwrap_or_default().sessions;
            v.push((
                p.to_owned(),
                s.iter().filter(|s| s.state == "Established").count(),
            ));
        }
        v
    };
    println!("established sessions per peer: {sessions:?}");
    let bfd_downs = std::fs::read_to_string(bird_log.path())
        .unwrap_or_default()
        .matches("BFD session down")
        .count();
    println!("BIRD logged {bfd_downs} BGP session(s) dropped for 'BFD session down'");
    if let Some(path) = std::env::var_os("LODESTONE_BENCH_SMAPS") {
        std::fs::copy(format!("/proc/{pid}/smaps"), &path)?;
    }
    println!(
        "speaker with {N} addresses and 2 peers configured: VmRSS {:.1} MB = anonymous {:.1} MB + file-backed {:.1} MB (peak {:.1} MB; goal < 20 MB: {})",
        rss as f64 / 1024.0,
        kb("RssAnon:") as f64 / 1024.0,
        kb("RssFile:") as f64 / 1024.0,
        kb("VmHWM:") as f64 / 1024.0,
        if rss < 20 * 1024 { "met" } else { "NOT met" }
    );
    lab.signal_speaker("node-a", libc::SIGTERM)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is expected.
    if !std::path::Path::new("/usr/lib/frr/bgpd").exists()
        || !std::path::Path::new("/usr/sbin/bird").exists()
    {
        println!("skipped: FRR and BIRD are not installed (apt-get install frr bird2)");
        return Ok(());
    }
    let trials: usize = std::env::var("LODESTONE_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let only = std::env::var("LODESTONE_BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if only.is_empty() || only == "failover" {
            failover(trials).await?;
        }
        if only.is_empty() || only == "scale" {
            scale().await?;
        }
        Ok(())
    })
}
