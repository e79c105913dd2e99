//! Failover detection time of the membership, on loopback, with the default (LAN) timings.
//!
//! For each trial three speakers form a cluster; then one is killed (task aborted, socket closed,
//! no leave) or leaves gracefully, and we time from that instant until *both* survivors have
//! published a view without it (the later of the two `changed_at`). Prints p50, p95 and max.
//!
//! Run: `cargo bench -p lodestone-speaker --bench membership` (TRIALS=n to change the count;
//! PROBE_PERIOD_MS, PROBE_RTT_MS, SUSPECT_MS to try other timings).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lodestone_speaker::membership::{Membership, MembershipConfig, MembershipView};
use tokio::sync::watch;

const KEY: &[u8] = b"lodestone membership bench key 01";
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum Exit {
    Kill,
    Leave,
}

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// Defaults, unless PROBE_PERIOD_MS / PROBE_RTT_MS / SUSPECT_MS override them (to compare tunings).
fn config(name: &str, seeds: Vec<SocketAddr>) -> MembershipConfig {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut cfg = MembershipConfig::new(name, any, any, KEY.to_vec());
    cfg.seeds = seeds;
    if let Some(d) = env_ms("PROBE_PERIOD_MS") {
        cfg.probe_period = d;
    }
    if let Some(d) = env_ms("PROBE_RTT_MS") {
        cfg.probe_rtt = d;
    }
    if let Some(d) = env_ms("SUSPECT_MS") {
        cfg.suspect_to_down_after = d;
    }
    cfg
}

async fn wait(
    view: &mut watch::Receiver<MembershipView>,
    pred: impl Fn(&MembershipView) -> bool,
) -> Result<MembershipView, String> {
    let outcome = tokio::time::timeout(DEADLINE, view.wait_for(|v| pred(v)))
        .await
        .map(|r| r.map(|v| v.clone()).ok());
    match outcome {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err("membership task ended".into()),
        Err(_) => Err(format!("timed out; last view {:?}", *view.borrow())),
    }
}

async fn trial(exit: Exit) -> Result<Duration, String> {
    let start = |cfg| async move { Membership::start(cfg).await.map_err(|e| e.to_string()) };
    let (a, mut av) = start(config("node-a", vec![])).await?;
    let (b, mut bv) = start(config("node-b", vec![a.local_addr()])).await?;
    let (c, mut cv) = start(config("node-c", vec![a.local_addr(), b.local_addr()])).await?;
    for v in [&mut av, &mut bv, &mut cv] {
        wait(v, |v| v.alive.len() == 3).await?;
    }
    // Let probing settle into its steady rhythm before the event.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    match exit {
        Exit::Kill => drop(c),
        Exit::Leave => c.leave(Duration::from_secs(1)).await,
    }
    let gone = |v: &MembershipView| !v.alive.contains("node-c");
    let va = wait(&mut av, gone).await?;
    let vb = wait(&mut bv, gone).await?;
    drop((a, b));
    Ok(va
        .changed_at
        .max(vb.changed_at)
        .saturating_duration_since(t0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(label: &str, mut samples: Vec<Duration>, failures: usize) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<16} trials={:<3} failed={failures:<2} p50={:>7.1} ms  p95={:>7.1} ms  max={:>7.1} ms",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 95.0)),
        ms(samples.last().copied().unwrap_or_default()),
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; a filter argument that does not name us means "skip".
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"membership".contains(a.as_str()))
    {
        return Ok(());
    }
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(25);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let defaults = config("x", vec![]);
    println!(
        "membership failover on loopback: probe_period={:?} probe_rtt={:?} suspect_to_down_after={:?} gossip_period={:?}",
        defaults.probe_period,
        defaults.probe_rtt,
        defaults.suspect_to_down_after,
        defaults.gossip_period
    );
    for (label, exit) in [
        ("kill (no leave)", Exit::Kill),
        ("graceful leave", Exit::Leave),
    ] {
        let mut samples = Vec::with_capacity(trials);
        let mut failures = 0;
        for _ in 0..trials {
            match rt.block_on(trial(exit)) {
                Ok(d) => samples.push(d),
                Err(e) => {
                    failures += 1;
                    eprintln!("{label}: trial failed: {e}");
                }
            }
        }
        report(label, samples, failures);
    }
    Ok(())
}
