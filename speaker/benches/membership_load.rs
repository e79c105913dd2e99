//! False failure detections of the membership under load: three real speakers in network
//! namespaces against the embedded API server, no fault injected, for a fixed time.
//!
//! Needs root and `stress-ng` (`apt-get install stress-ng`). Run:
//! `cargo bench -p lodestone-speaker --bench membership_load`
//!
//! Loads, all on by default except the flood:
//! - `stress-ng --cpu N` in the root namespace (`LODESTONE_BENCH_STRESS=N`, default 10 workers on
//!   this 2-core machine: load average about 10; 0 turns it off);
//! - N LoadBalancer Services without endpoints (`LODESTONE_BENCH_SERVICES=N`, default 2000),
//!   created once the speakers have formed their membership, so their start and the condition
//!   writes fall inside the measurement;
//! - an unauthenticated UDP flood at N datagrams/s to node-a's membership port from the client
//!   namespace (`LODESTONE_BENCH_FLOOD=N`, default 0; half of it random bytes, half well-formed
//!   envelopes with a wrong MAC, which cost a full MAC check to reject).
//!
//! `LODESTONE_BENCH_DURATION_S` sets the measured time (default 180 s; the documented figure is
//! 1800 s; it is extended to the end of the Service creation if that takes longer),
//! `LODESTONE_BENCH_SPEAKER` another speaker binary (e.g. an older build, for a before/after
//! comparison), `LODESTONE_BENCH_KEEP_LOGS=DIR` copies the speakers' logs there.
//!
//! Every "member down" in any speaker's view during the run is false (nothing failed), as is
//! every rejoin (a speaker that learnt the others had declared it down). Both are counted from the
//! speakers' logs, which every version writes (`membership changed ... gone=[..]`, `rejoined with
//! a new identity`). CPU is each speaker's user + system time over the run.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, PostParams};
use lodestone_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use lodestone_harness::e2e::flood::Flood;
use lodestone_harness::e2e::lab::Lab;
use lodestone_harness::e2e::metrics;
use lodestone_harness::e2e::objects;
use lodestone_harness::e2e::stress::Stress;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const MEMBERSHIP_PORT: u16 = 7946;
const WAIT: Duration = Duration::from_secs(60);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn speaker_bin() -> std::path::PathBuf {
    std::env::var_os("LODESTONE_BENCH_SPEAKER")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_lodestone-speaker").into())
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `text` without ANSI colour sequences (tracing colours its output even into a file).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Down declarations and rejoins in a speaker's log text.
fn count_false_failures(log: &str) -> (usize, usize) {
    let mut downs = 0;
    let mut rejoins = 0;
    for line in strip_ansi(log).lines() {
        if line.contains("membership changed")
            && let Some((_, rest)) = line.split_once("gone=[")
        {
            let gone = rest.split(']').next().unwrap_or("");
            downs += gone.matches('"').count() / 2;
        }
        if line.contains("rejoined with a new identity") {
            rejoins += 1;
        }
    }
    (downs, rejoins)
}

async fn create_services(client: &kube::Client, n: u64) -> anyhow::Result<()> {
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    let spec = IPAddressPoolSpec {
        addresses: vec!["2001:db8:1::/112".into()],
        auto_assign: true,
        avoid_buggy_ips: false,
        allow_link_local: false,
        service_allocation: None,
    };
    pools
        .create(&PostParams::default(), &IPAddressPool::new("load", spec))
        .await?;
    Api::<L2Advertisement>::all(client.clone())
        .create(
            &PostParams::default(),
            &L2Advertisement::new("load", L2AdvertisementSpec::default()),
        )
        .await?;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let ip: IpAddr = format!("2001:db8:1::{:x}", i + 1).parse()?;
                objects::create_lb_service(&client, "default", &format!("load-{i}"), &[ip], false)
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

fn members(lab: &Lab, node: &str) -> Option<f64> {
    let ns = lab.node(node).ok()?.host.ns();
    metrics::speaker_gauge(ns, "lodestone_speaker_membership_members")
        .ok()
        .flatten()
}

async fn run() -> anyhow::Result<()> {
    let duration = Duration::from_secs(env_u64("LODESTONE_BENCH_DURATION_S", 180));
    let services = env_u64("LODESTONE_BENCH_SERVICES", 2000);
    let stress = env_u64("LODESTONE_BENCH_STRESS", 10);
    let flood = env_u64("LODESTONE_BENCH_FLOOD", 0);

    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let mut lab = Lab::start(&lodestone_crds::all_crds(), &nodes, &[], &speaker_bin()).await?;
    let client = lab.cluster.client();
    lab.start_all_speakers(&[])?;
    let deadline = Instant::now() + WAIT;
    while !NODES.iter().all(|n| members(&lab, n) == Some(3.0)) {
        if Instant::now() > deadline {
            anyhow::bail!("the speakers never formed one membership\n{}", lab.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The measurement starts here: everything below is "no fault".
    let offsets: Vec<usize> = NODES
        .iter()
        .map(|n| {
            lab.node(n)
                .ok()
                .and_then(|n| n.speaker.as_ref())
                .map_or(0, |s| s.log().len())
        })
        .collect();
    let cpu_before: Vec<Duration> = NODES
        .iter()
        .map(|n| {
            lab.node(n)
                .ok()
                .and_then(|n| n.speaker.as_ref())
                .and_then(|s| s.cpu_time().ok())
                .unwrap_or_default()
        })
        .collect();
    let t0 = Instant::now();
    let _stress = if stress > 0 {
        Some(Stress::start(stress)?)
    } else {
        None
    };
    let flooder = if flood > 0 {
        let target = SocketAddr::new(lab.node("node-a")?.ip4, MEMBERSHIP_PORT);
        Some(Flood::start(lab.client.ns(), target, flood)?)
    } else {
        None
    };
    let loads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let loads = Arc::clone(&loads);
        tokio::spawn(async move {
            loop {
                if let (Some(l), Ok(mut v)) = (loadavg(), loads.lock()) {
                    v.push(l);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let created = if services > 0 {
        let c = Instant::now();
        create_services(&client, services).await?;
        Some(c.elapsed())
    } else {
        None
    };

    if let Some(rest) = duration.checked_sub(t0.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    sampler.abort();
    let loads: Vec<f64> = loads.lock().map(|v| v.clone()).unwrap_or_default();
    let elapsed = t0.elapsed();
    let flood_sent = flooder.as_ref().map_or(0, Flood::sent);
    drop(flooder);

    println!(
        "membership under load: 3 speakers, {services} Services without endpoints, stress-ng --cpu {stress}, flood {flood}/s to node-a, {:.0} s",
        elapsed.as_secs_f64()
    );
    if let Some(c) = created {
        println!("  {services} Services created in {:.1} s", c.as_secs_f64());
    }
    if flood > 0 {
        println!(
            "  flood: {flood_sent} datagrams sent ({:.0}/s)",
            flood_sent as f64 / elapsed.as_secs_f64()
        );
    }
    if !loads.is_empty() {
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        let min = loads.iter().copied().fold(f64::INFINITY, f64::min);
        let max = loads.iter().copied().fold(0.0, f64::max);
        println!("  load average (1 min): mean {mean:.1}, min {min:.1}, max {max:.1}");
    }
    let mut total_downs = 0;
    let mut total_rejoins = 0;
    for (i, name) in NODES.iter().enumerate() {
        let node = lab.node(name)?;
        let Some(sp) = node.speaker.as_ref() else {
            anyhow::bail!("speaker of {name} is gone");
        };
        let log = sp.log();
        let (downs, rejoins) = count_false_failures(log.get(offsets[i]..).unwrap_or(""));
        let cpu = sp.cpu_time()?.saturating_sub(cpu_before[i]);
        let body = metrics::scrape(node.host.ns(), metrics::SPEAKER_METRICS_PORT)
            .ok()
            .flatten()
            .unwrap_or_default();
        let sum = |name: &str| -> Option<f64> {
            let values: Vec<f64> = metrics::samples(&body)
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>())
        };
        // Speakers that export them (not older builds): what the membership itself counted.
        let counted = [
            (
                "rejected",
                "lodestone_speaker_membership_datagrams_rejected_total",
            ),
            (
                "refuted",
                "lodestone_speaker_membership_suspicions_refuted_total",
            ),
            (
                "deferred",
                "lodestone_speaker_membership_suspicions_deferred_total",
            ),
            (
                "starved periods",
                "lodestone_speaker_membership_starved_periods_total",
            ),
            ("stalls", "lodestone_speaker_membership_stalls_total"),
        ]
        .iter()
        .filter_map(|(label, name)| sum(name).map(|v| format!(", {label} {v:.0}")))
        .collect::<String>();
        if let Some(dir) = std::env::var_os("LODESTONE_BENCH_KEEP_LOGS") {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.log")), &log)?;
        }
        println!(
            "  {name}: members declared down {downs}, rejoins {rejoins}, CPU {:.1} % of one core{counted}",
            cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        );
        total_downs += downs;
        total_rejoins += rejoins;
    }
    let per_hour = |n: usize| n as f64 * 3600.0 / elapsed.as_secs_f64();
    println!(
        "false down declarations: {total_downs} ({:.1} per hour), rejoins: {total_rejoins} ({:.1} per hour) (goal: 0)",
        per_hour(total_downs),
        per_hour(total_rejoins)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only for real.
    if !std::env::args().any(|a| a == "--bench") {
        // The log counting is what the figures rest on: check it on the lines speakers write.
        let log = "INFO membership changed joined=[] \u{1b}[3mgone\u{1b}[0m\u{1b}[2m=\u{1b}[0m[\"node-b\"] alive=2\n\
                   INFO membership changed joined=[\"node-b\"] gone=[] alive=3\n\
                   INFO membership changed joined=[] gone=[\"node-b\", \"node-c\"] alive=1\n\
                   WARN declared down by the others; rejoined with a new identity id=x\n";
        anyhow::ensure!(count_false_failures(log) == (3, 1), "log counting broken");
        println!("membership_load bench: skipped (run with cargo bench)");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}
