//! Failover time of real speakers in network namespaces, and the speaker's footprint.
//!
//! Needs root. Run: `cargo bench -p lodestone-speaker --bench failover`
//! (`LODESTONE_BENCH_TRIALS` overrides the 20 trials per scenario; `LODESTONE_BENCH_ONLY=failover`
//! or `=footprint` runs one half). Footprint switches: `LODESTONE_BENCH_ADDRESSES` (default 1000),
//! `LODESTONE_BENCH_SMAPS=1` prints where the resident memory is (per mapping, from
//! `/proc/PID/smaps`), `LODESTONE_BENCH_SPEAKER=/path` measures another speaker binary (a musl
//! build, another profile).
//!
//! Failover: three nodes, one Service, a client prober sending a UDP request every 5 ms.
//! Time is measured from the event (kill -9 of the owner's speaker; its link pulled;
//! SIGTERM) until the first answer *from the new owner* reaches the client — the client's
//! neighbour entry must have followed the gratuitous ARP and the new node must answer.
//! Between trials the old owner is restored; the address stays with the new owner (a
//! returning node takes nothing back), so the next trial fails the node that owns it then.
//!
//! Footprint: one node owning 1,000 addresses; VmRSS and CPU (utime+stime) over 10 s idle.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use lodestone_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use lodestone_harness::e2e::lab::{Lab, POOL_V4, POOL_V6, PROBE_PORT};
use lodestone_harness::e2e::{Prober, objects};
use lodestone_speaker::election;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const WAIT: Duration = Duration::from_secs(30);

fn speaker_bin() -> std::path::PathBuf {
    std::env::var_os("LODESTONE_BENCH_SPEAKER")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_lodestone-speaker").into())
}

async fn pool_and_advert(client: &kube::Client, addresses: Vec<String>) -> anyhow::Result<()> {
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    let spec = IPAddressPoolSpec {
        addresses,
        auto_assign: true,
        avoid_buggy_ips: false,
        allow_link_local: false,
        service_allocation: None,
    };
    pools
        .create(&PostParams::default(), &IPAddressPool::new("bench", spec))
        .await?;
    let adverts: Api<L2Advertisement> = Api::all(client.clone());
    adverts
        .create(
            &PostParams::default(),
            &L2Advertisement::new("bench", L2AdvertisementSpec::default()),
        )
        .await?;
    Ok(())
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
        "{name:<10} n={:<3} p50={:>7.1} ms  p95={:>7.1} ms  max={:>7.1} ms  (goal p95 < {:.0} ms: {})",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(p95),
        ms(samples.last().copied().unwrap_or_default()),
        ms(goal),
        if p95 < goal { "met" } else { "NOT met" }
    );
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    Kill,
    Link,
    Term,
}

async fn failover(trials: usize) -> anyhow::Result<()> {
    let vip: IpAddr = "192.0.2.100".parse()?;
    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let mut lab = Lab::start(&lodestone_crds::all_crds(), &nodes, &[vip], &speaker_bin()).await?;
    let client = lab.cluster.client();
    pool_and_advert(&client, vec![POOL_V4.into(), POOL_V6.into()]).await?;
    objects::create_lb_service(&client, "default", "web", &[vip], false).await?;
    objects::set_endpoints(
        &client,
        "default",
        "web",
        &[("node-a", true), ("node-b", true), ("node-c", true)],
    )
    .await?;
    // Gratuitous bursts of 3 × 500 ms would outlive a trial; 3 × 100 ms keeps them short.
    let args = ["--gratuitous-interval-ms", "100"];
    lab.start_all_speakers(&args)?;
    let mut owner = election::owner(&vip.to_string(), NODES)
        .ok_or_else(|| anyhow::anyhow!("no owner"))?
        .to_owned();
    let prober = Prober::start(lab.client.ns(), vip, PROBE_PORT, Duration::from_millis(5))?;
    let t0 = Instant::now();
    if prober
        .wait_for(WAIT, |p| p.first_from_since(&owner, t0))
        .is_none()
    {
        anyhow::bail!("{owner} never answered\n{}", lab.logs());
    }

    converged(&lab, &owner)?;
    for scenario in [Scenario::Kill, Scenario::Link, Scenario::Term] {
        let mut samples = Vec::new();
        for trial in 0..trials {
            // Settle: the owner has answered recently and nobody else since.
            std::thread::sleep(Duration::from_millis(300));
            let event = Instant::now();
            match scenario {
                Scenario::Kill => lab.signal_speaker(&owner, libc::SIGKILL)?,
                Scenario::Link => lab.node(&owner)?.host.link_down()?,
                Scenario::Term => lab.signal_speaker(&owner, libc::SIGTERM)?,
            }
            let Some(answer) = prober.wait_for(WAIT, |p| p.first_not_from_since(&owner, event))
            else {
                anyhow::bail!("{scenario:?} trial {trial}: no takeover\n{}", lab.logs());
            };
            samples.push(answer.received.duration_since(event));
            let failed = std::mem::replace(&mut owner, answer.node.clone());
            // Restore and wait until the owner answers again.
            match scenario {
                Scenario::Kill | Scenario::Term => {
                    if matches!(scenario, Scenario::Term) {
                        lab.wait_speaker_exit(&failed, WAIT)?;
                    }
                    lab.start_speaker(&failed, &args)?;
                }
                Scenario::Link => lab.node(&failed)?.host.link_up()?,
            }
            // Start the next trial from a converged cluster: every speaker back in one
            // membership, the new owner alone announcing.
            converged(&lab, &owner)?;
            if matches!(scenario, Scenario::Link) {
                // The node whose link came back still counts the peers alive for this long
                // (it heard nobody while cut off): a fault within it is a second, overlapping
                // fault, not what this trial measures.
                std::thread::sleep(lodestone_speaker::run::LINK_SETTLE);
            }
        }
        let (name, goal) = match scenario {
            Scenario::Kill => ("kill -9", Duration::from_secs(1)),
            Scenario::Link => ("link cut", Duration::from_secs(1)),
            Scenario::Term => ("SIGTERM", Duration::from_millis(100)),
        };
        report(name, samples, goal);
    }
    Ok(())
}

/// Waits until every speaker sees all three members and only `owner` announces.
fn converged(lab: &Lab, owner: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut ok = true;
        let mut seen = Vec::new();
        for node in NODES {
            let members = metrics_gauge(lab, node, "lodestone_speaker_membership_members")?;
            let announced = metrics_gauge(lab, node, "lodestone_speaker_addresses_announced")?;
            let want = if node == owner { 1.0 } else { 0.0 };
            ok &= members == Some(3.0) && announced == Some(want);
            seen.push(format!(
                "{node}: members {members:?}, announced {announced:?}"
            ));
        }
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "cluster did not converge on {owner} ({})\n{}",
                seen.join("; "),
                lab.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metrics_gauge(lab: &Lab, node: &str, name: &str) -> anyhow::Result<Option<f64>> {
    let body = lab
        .node(node)?
        .host
        .ns()
        .run_in(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", 7473))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?;
    let Ok(body) = body else { return Ok(None) };
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()))
}

fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
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
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

/// Resident kB per mapping group of `/proc/PID/smaps`: file mappings by path and permissions,
/// anonymous ones as heap, stacks, or other (thread arenas and stacks, tokio, ...).
fn smaps_breakdown(pid: u32) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut groups: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: range perms offset dev inode [path].
            let perms = words.next().unwrap_or("");
            let path = words.nth(3).unwrap_or("");
            current = if path.is_empty() {
                format!("[anon {perms}]")
            } else {
                let short = path.rsplit('/').next().unwrap_or(path);
                format!("{short} {perms}")
            };
        } else if first == "Rss:" || first == "Anonymous:" {
            let kb: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let e = groups.entry(current.clone()).or_default();
            if first == "Rss:" {
                e.0 += kb;
            } else {
                e.1 += kb;
            }
        }
    }
    let mut out: Vec<(String, u64, u64)> = groups
        .into_iter()
        .filter(|(_, (rss, _))| *rss > 0)
        .map(|(k, (rss, anon))| (k, rss, anon))
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.1));
    Ok(out)
}

async fn footprint() -> anyhow::Result<()> {
    // `LODESTONE_BENCH_ADDRESSES` (default 1000, at most 1000) e.g. 0 for the baseline.
    let n: usize = std::env::var("LODESTONE_BENCH_ADDRESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(1000);
    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &[("node-a", &[][..])],
        &[],
        &speaker_bin(),
    )
    .await?;
    let client = lab.cluster.client();
    pool_and_advert(
        &client,
        vec![
            "198.51.100.0/24".into(),
            "203.0.113.0/24".into(),
            "192.0.2.20-192.0.2.253".into(),
            "2001:db8:1::/120".into(),
        ],
    )
    .await?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for i in 0..=255u8 {
        ips.push(IpAddr::from([198, 51, 100, i]));
        ips.push(IpAddr::from([203, 0, 113, i]));
    }
    // 746 IPv4 and 254 IPv6: the announcer joins one solicited-node group per IPv6 address,
    // and the kernel refuses more than about 256 per socket (optmem_max), reported separately.
    for i in 20..=253u8 {
        ips.push(IpAddr::from([192, 0, 2, i]));
    }
    let mut k = 0u16;
    while ips.len() < 1000 {
        ips.push(format!("2001:db8:1::{k:x}").parse()?);
        k += 1;
    }
    let start = Instant::now();
    for (i, ip) in ips.iter().take(n).enumerate() {
        let name = format!("svc-{i}");
        objects::create_lb_service(&client, "default", &name, &[*ip], false).await?;
        objects::set_endpoints(&client, "default", &name, &[("node-a", true)]).await?;
    }
    println!(
        "created {n} Services in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    lab.start_speaker("node-a", &["--gratuitous-interval-ms", "100"])?;
    let t = Instant::now();
    loop {
        let announced = metrics_gauge(&lab, "node-a", "lodestone_speaker_addresses_announced")?;
        if announced == Some(n as f64) {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("only {announced:?} of {n} announced\n{}", lab.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{n} addresses announced {:.1} s after start",
        t.elapsed().as_secs_f64()
    );
    // Let the gratuitous bursts and the condition writes finish before measuring idle.
    std::thread::sleep(Duration::from_secs(5));
    let pid = lab
        .node("node-a")?
        .speaker
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("speaker gone"))?
        .pid();
    let ticks_per_s = lodestone_harness::e2e::process::clock_ticks_per_second() as f64;
    let before = cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_secs(10));
    let after = cpu_ticks(pid)?;
    let rss = proc_status_kb(pid, "VmRSS:")?;
    let hwm = proc_status_kb(pid, "VmHWM:")?;
    let anon = proc_status_kb(pid, "RssAnon:")?;
    let file = proc_status_kb(pid, "RssFile:")?;
    let cpu = (after - before) as f64 / ticks_per_s / 10.0 * 100.0;
    println!(
        "footprint with {n} addresses: VmRSS {:.1} MB = anonymous {:.1} MB + file-backed {:.1} MB (peak {:.1} MB; goal < 20 MB: {}), idle CPU {cpu:.2} % of one core over 10 s",
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        hwm as f64 / 1024.0,
        if rss < 20 * 1024 { "met" } else { "NOT met" }
    );
    if std::env::var_os("LODESTONE_BENCH_SMAPS").is_some() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .map(str::trim)
            .unwrap_or("?");
        println!("resident by mapping (kB; {threads} threads):");
        for (name, rss, anon) in smaps_breakdown(pid)? {
            println!("  {rss:>7} rss {anon:>7} anon  {name}");
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only for real.
    if !std::env::args().any(|a| a == "--bench") {
        println!("failover bench: skipped (run with cargo bench)");
        return Ok(());
    }
    let trials = std::env::var("LODESTONE_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // `LODESTONE_BENCH_ONLY=failover` or `=footprint` runs one half.
    let only = std::env::var("LODESTONE_BENCH_ONLY").unwrap_or_default();
    rt.block_on(async {
        if only != "footprint" {
            failover(trials).await?;
        }
        if only != "failover" {
            footprint().await?;
        }
        Ok(())
    })
}
