//! Cost of a flood of forged frames at one announcer (issue 14, item 4): 20,000 forged frames a
//! second for 10 s, each from another MAC, in two phases:
//!
//! 1. gratuitous ARPs claiming the owned IPv4 address (conflicts to aggregate and defend);
//! 2. Neighbour Solicitations for the owned IPv6 address from an off-link source, which no
//!    route reaches (answers that fail to send, to be logged with a count, not one line each).
//!
//! For each phase it prints the conflict reports (each becomes one Event per Service in the
//! speaker, and one WARN line), the log lines at WARN and INFO written meanwhile, the resident
//! memory before and after, the conflict series kept, and the latency of a legitimate client's
//! ARP requests answered during the flood.
//!
//! Needs root (it creates network namespaces). Run with
//! `cargo bench -p lodestone-speaker --bench conflict_flood`; `FLOOD_RATE` (frames/s, default
//! 20000) and `FLOOD_SECS` (default 10) change the flood. Prints plain `key: value` lines.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lodestone_harness::netns::Topology;
use lodestone_speaker::announcer::{Announcer, AnnouncerConfig, AnnouncerEvent};
use lodestone_speaker::frames::{
    ArpOp, MacAddr, arp_request, gratuitous_arp, ipv6_icmp_frame, ipv6_multicast_mac,
    neighbor_solicitation, parse_arp, solicited_node_multicast,
};
use lodestone_speaker::sys::{self, ArpSocket};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter::LevelFilter};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// A source on no link of the node, with no route to it.
const OFF_LINK: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Counts log lines by level, as the speaker's log would receive them.
#[derive(Clone, Default)]
struct LineCount {
    warn: Arc<AtomicU64>,
    info: Arc<AtomicU64>,
}

impl<S: tracing::Subscriber> Layer<S> for LineCount {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *e.metadata().level() <= tracing::Level::WARN {
            self.warn.fetch_add(1, Ordering::Relaxed);
        } else {
            self.info.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// One ARP request for the VIP from the client; the time to its reply.
async fn ask(
    socket: &tokio::io::unix::AsyncFd<ArpSocket>,
    mac: MacAddr,
) -> Result<Option<Duration>> {
    let frame = arp_request(mac, CLIENT_IP, VIP);
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
        if reply.op == ArpOp::Reply && reply.sender_ip == VIP && reply.target_mac == mac {
            return Ok(Some(start.elapsed()));
        }
    }
}

/// Sends `rate` frames a second for `secs` seconds, frame `i` built by `make(i)`; returns how
/// many went out.
fn flood(ifindex: u32, rate: u64, secs: u64, make: impl Fn(u32) -> Vec<u8>) -> Result<u64> {
    let socket = ArpSocket::open(ifindex)?;
    let start = Instant::now();
    let total = rate * secs;
    let mut sent = 0u64;
    let mut i = 0u32;
    while start.elapsed() < Duration::from_secs(secs) && sent < total {
        // Catch up with the schedule in batches, then sleep a millisecond.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(total) {
            if socket.send(&make(i)).is_ok() {
                sent += 1;
            }
            i = i.wrapping_add(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(sent)
}

fn forged_mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr::new(0x02, 0x66, b[0], b[1], b[2], b[3])
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("conflict_flood: run with `cargo bench` (needs root)");
        return Ok(());
    }
    let rate: u64 = std::env::var("FLOOD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let secs: u64 = std::env::var("FLOOD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let lines = LineCount::default();
    tracing_subscriber::registry()
        .with(lines.clone().with_filter(LevelFilter::INFO))
        .init();

    let topo = Topology::new()?;
    let node = topo.add_host(
        "ldfn",
        Some("192.0.2.10/24".parse()?),
        Some("2001:db8::10/64".parse()?),
    )?;
    let forger = topo.add_host("ldff", Some("192.0.2.66/24".parse()?), None)?;
    let client = topo.add_host("ldfc", Some(format!("{CLIENT_IP}/24").parse()?), None)?;
    let client_mac: MacAddr = client.mac()?.parse().context("client MAC")?;
    let client_ifindex = client.ifindex()?;
    let forger_ifindex = forger.ifindex()?;
    let node_mac: MacAddr = node.mac()?.parse().context("node MAC")?;

    let rss_start = rss_kib();
    let reports = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node_reports = Arc::clone(&reports);
    let node_thread = node.ns().thread_in(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (announcer, mut events) = Announcer::start(AnnouncerConfig::default()).await?;
            announcer.set_owned(
                [(IpAddr::V4(VIP), None), (IpAddr::V6(VIP6), None)]
                    .into_iter()
                    .collect(),
            );
            while announcer.announced_on().len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = ready_tx.send(announcer.clone());
            let mut stop = std::pin::pin!(stop_rx);
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(AnnouncerEvent::Conflict(_)) => { node_reports.fetch_add(1, Ordering::Relaxed); }
                        Some(_) => {}
                        None => break,
                    },
                    _ = &mut stop => break,
                }
            }
            announcer.shutdown().await;
            Ok(())
        })
    })?;
    let announcer = ready_rx
        .recv_timeout(Duration::from_secs(20))
        .context("announcer did not start announcing")?;
    // Past the handoff grace: every forged claim is a conflict.
    std::thread::sleep(lodestone_speaker::announcer::HANDOFF_GRACE);

    type Phase = (&'static str, Box<dyn Fn(u32) -> Vec<u8> + Send + Sync>);
    let phases: Vec<Phase> = vec![
        ("garp", Box::new(|i| gratuitous_arp(VIP, forged_mac(i)))),
        (
            "offlink_ns",
            Box::new(move |i| {
                let group = solicited_node_multicast(VIP6);
                ipv6_icmp_frame(
                    forged_mac(i),
                    ipv6_multicast_mac(group),
                    OFF_LINK,
                    group,
                    255,
                    &neighbor_solicitation(VIP6, Some(forged_mac(i))),
                )
            }),
        ),
    ];
    println!("flood_rate_per_s: {rate}");
    println!("flood_secs: {secs}");
    println!("rss_start_kib: {rss_start}");
    let _ = node_mac;
    for (name, make) in phases {
        let (warn0, info0) = (
            lines.warn.load(Ordering::Relaxed),
            lines.info.load(Ordering::Relaxed),
        );
        let reports0 = reports.load(Ordering::Relaxed);
        let counters0 = announcer.counters();
        let rss_before = rss_kib();
        let flooding = Arc::new(AtomicBool::new(true));
        let asking = Arc::clone(&flooding);
        let latency = client
            .ns()
            .thread_in(move || -> Result<(Vec<Duration>, u64)> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let socket = sys::register(ArpSocket::open(client_ifindex)?)?;
                    let (mut samples, mut lost) = (Vec::new(), 0u64);
                    while asking.load(Ordering::Relaxed) {
                        match ask(&socket, client_mac).await? {
                            Some(d) => samples.push(d),
                            None => lost += 1,
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Ok((samples, lost))
                })
            })?;
        let started = Instant::now();
        let sent = forger
            .ns()
            .run_in(move || flood(forger_ifindex, rate, secs, make))??;
        let took = started.elapsed();
        flooding.store(false, Ordering::Relaxed);
        let (mut samples, lost) = match latency.join() {
            Ok(r) => r??,
            Err(_) => bail!("client thread panicked"),
        };
        // Let the last reports due come out.
        std::thread::sleep(Duration::from_secs(2));
        let c = announcer.counters();
        samples.sort();
        println!("{name}_frames_sent: {sent}");
        println!(
            "{name}_achieved_rate_per_s: {:.0}",
            sent as f64 / took.as_secs_f64()
        );
        println!(
            "{name}_conflicts_counted: {}",
            c.conflicts - counters0.conflicts
        );
        println!(
            "{name}_conflict_reports (Events, 1 per Service each): {}",
            reports.load(Ordering::Relaxed) - reports0
        );
        println!(
            "{name}_defences_sent: {}",
            c.defences_sent - counters0.defences_sent
        );
        println!("{name}_ns_seen: {}", c.ns_seen - counters0.ns_seen);
        println!(
            "{name}_log_lines_warn: {}",
            lines.warn.load(Ordering::Relaxed) - warn0
        );
        println!(
            "{name}_log_lines_info: {}",
            lines.info.load(Ordering::Relaxed) - info0
        );
        println!(
            "{name}_conflict_series_kept: {}",
            announcer.conflict_series()
        );
        println!("{name}_rss_before_kib: {rss_before}");
        println!("{name}_rss_after_kib: {}", rss_kib());
        println!("{name}_client_arp_answered: {}", samples.len());
        println!("{name}_client_arp_lost: {lost}");
        for (p, label) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
            println!(
                "{name}_client_arp_{label}_us: {:.0}",
                percentile(&samples, p).as_secs_f64() * 1e6
            );
        }
        println!(
            "{name}_client_arp_max_us: {:.0}",
            samples.last().copied().unwrap_or_default().as_secs_f64() * 1e6
        );
    }
    let _ = stop_tx.send(());
    match node_thread.join() {
        Ok(r) => r??,
        Err(_) => bail!("announcer thread panicked"),
    }
    Ok(())
}
