//! ARP reply latency: the announcer (user space, answering for an owned address) against the
//! kernel answering for its own address, in the same namespace topology.
//!
//! Needs root (it creates network namespaces). Run with
//! `cargo bench -p lodestone-speaker --bench arp_latency`; set `ARP_LATENCY_N` to change the
//! number of requests per target (default 500). Prints plain `key: value` lines.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lodestone_harness::netns::Topology;
use lodestone_speaker::announcer::{Announcer, AnnouncerConfig};
use lodestone_speaker::frames::{ArpOp, MacAddr, arp_request, parse_arp};
use lodestone_speaker::sys::{self, ArpSocket};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Sends one request for `target` and waits for its reply; `None` when none came in time.
async fn probe(
    socket: &tokio::io::unix::AsyncFd<ArpSocket>,
    mac: MacAddr,
    target: Ipv4Addr,
) -> Result<Option<Duration>> {
    let frame = arp_request(mac, CLIENT_IP, target);
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    sys::send_arp(socket, &frame).await?;
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, sys::recv_arp(socket, &mut buf)).await {
            Ok(n) => n?,
            Err(_) => return Ok(None),
        };
        let Some(Ok(reply)) = buf.get(..n).map(parse_arp) else {
            continue;
        };
        if reply.op == ArpOp::Reply && reply.sender_ip == target && reply.target_mac == mac {
            return Ok(Some(start.elapsed()));
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, lost: usize) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.50);
    println!("{name}_replies: {}", samples.len());
    println!("{name}_lost: {lost}");
    println!("{name}_p50_us: {:.1}", p50.as_secs_f64() * 1e6);
    println!(
        "{name}_p95_us: {:.1}",
        percentile(&samples, 0.95).as_secs_f64() * 1e6
    );
    println!(
        "{name}_max_us: {:.1}",
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e6
    );
    p50
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass other flags: only run
    // when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("arp_latency: run with `cargo bench` (needs root)");
        return Ok(());
    }
    let n: usize = std::env::var("ARP_LATENCY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);

    let topo = Topology::new()?;
    let node = topo.add_host("ldbn", Some(format!("{NODE_IP}/24").parse()?), None)?;
    let client = topo.add_host("ldbc", Some(format!("{CLIENT_IP}/24").parse()?), None)?;
    let client_mac: MacAddr = client.mac()?.parse().context("client MAC")?;
    let client_ifindex = client.ifindex()?;

    // The announcer runs on its own thread inside the node namespace until told to stop.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node_thread = node.ns().thread_in(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (announcer, _events) = Announcer::start(AnnouncerConfig::default()).await?;
            announcer.set_owned([(IpAddr::V4(VIP), None)].into_iter().collect());
            while announcer.announced_on().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = ready_tx.send(());
            let _ = stop_rx.await;
            announcer.shutdown().await;
            Ok(())
        })
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .context("announcer did not start announcing")?;

    let results = client.ns().run_in(move || -> Result<_> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let socket = sys::register(ArpSocket::open(client_ifindex)?)?;
            let (mut user, mut kernel) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut user_lost, mut kernel_lost) = (0, 0);
            // Warm up both paths (neighbour entries, caches) before measuring.
            for _ in 0..20 {
                probe(&socket, client_mac, VIP).await?;
                probe(&socket, client_mac, NODE_IP).await?;
            }
            // Interleaved so that machine noise hits both alike.
            for _ in 0..n {
                match probe(&socket, client_mac, VIP).await? {
                    Some(d) => user.push(d),
                    None => user_lost += 1,
                }
                match probe(&socket, client_mac, NODE_IP).await? {
                    Some(d) => kernel.push(d),
                    None => kernel_lost += 1,
                }
            }
            Ok((user, user_lost, kernel, kernel_lost))
        })
    })??;
    let _ = stop_tx.send(());
    match node_thread.join() {
        Ok(r) => r??,
        Err(_) => bail!("announcer thread panicked"),
    }

    let (user, user_lost, kernel, kernel_lost) = results;
    println!("arp_latency_requests_per_target: {n}");
    let user_p50 = report("announcer", user, user_lost);
    let kernel_p50 = report("kernel", kernel, kernel_lost);
    let ratio = user_p50.as_secs_f64() / kernel_p50.as_secs_f64().max(1e-9);
    println!("p50_ratio_announcer_over_kernel: {ratio:.2}");
    println!("within_3x: {}", ratio <= 3.0);
    Ok(())
}
