//! What 2,000 LoadBalancer Services without endpoints cost the speakers, and whether ARP stays
//! answered meanwhile.
//!
//! Needs root. Run: `cargo bench -p lodestone-speaker --bench scale`
//! (`LODESTONE_BENCH_SERVICES` changes the count, default 2000).
//!
//! Three real speakers in network namespaces, the embedded API server. One Service with
//! endpoints everywhere is announced (an IPv4 address); an independent prober asks for it
//! every 10 ms from the LAN. Then the bench plays the controller for N Services without
//! endpoints (IPv6 addresses from a /116 pool): it creates each and writes its address, 16 at
//! a time. It prints, over the storm until every Service carries its condition and the writes
//! have stopped:
//!
//! - each speaker's CPU (utime + stime, as a share of one core) and condition writes;
//! - the answers to the prober's ARP requests: latency p50 / p99 / max, the longest silence,
//!   rounds answered by two MACs;
//! - membership "gone" lines for a node that was never stopped (false failure declarations);
//! - how long a Service created right after the storm takes to be announced.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use lodestone_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use lodestone_harness::e2e::lab::Lab;
use lodestone_harness::e2e::metrics::{self, SPEAKER_METRICS_PORT};
use lodestone_harness::e2e::objects;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const DEADLINE: Duration = Duration::from_secs(900);

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
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

fn ticks_per_second() -> f64 {
    lodestone_harness::e2e::process::clock_ticks_per_second() as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn writes(lab: &Lab, node: &str, result: &str) -> f64 {
    lab.node(node)
        .ok()
        .and_then(|n| {
            metrics::scrape(n.host.ns(), SPEAKER_METRICS_PORT)
                .ok()
                .flatten()
        })
        .and_then(|body| {
            metrics::value_in(
                &body,
                "lodestone_speaker_condition_writes_total",
                &[("result", result)],
            )
        })
        .unwrap_or(f64::NAN)
}

fn gone_lines(lab: &Lab, node: &str) -> usize {
    let log = lab
        .node(node)
        .ok()
        .and_then(|n| n.speaker.as_ref())
        .map(|s| s.log())
        .unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("membership changed"))
        .filter(|l| {
            l.split_once("gone=[")
                .and_then(|(_, rest)| rest.split_once(']'))
                .is_some_and(|(gone, _)| !gone.trim().is_empty())
        })
        .count()
}

async fn run() -> anyhow::Result<()> {
    let n: usize = std::env::var("LODESTONE_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
        .min(4000);
    let vip: IpAddr = "192.0.2.100".parse()?;
    let late: IpAddr = "192.0.2.101".parse()?;
    let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
    let mut lab = Lab::start(
        &lodestone_crds::all_crds(),
        &nodes,
        &[vip, late],
        env!("CARGO_BIN_EXE_lodestone-speaker").as_ref(),
    )
    .await?;
    let client = lab.cluster.client();
    Api::<IPAddressPool>::all(client.clone())
        .create(
            &PostParams::default(),
            &IPAddressPool::new(
                "scale",
                IPAddressPoolSpec {
                    addresses: vec!["192.0.2.100-192.0.2.101".into(), "2001:db8:1::/116".into()],
                    auto_assign: true,
                    avoid_buggy_ips: false,
                    allow_link_local: false,
                    service_allocation: None,
                },
            ),
        )
        .await?;
    Api::<L2Advertisement>::all(client.clone())
        .create(
            &PostParams::default(),
            &L2Advertisement::new("scale", L2AdvertisementSpec::default()),
        )
        .await?;
    let everywhere: Vec<(&str, bool)> = NODES.iter().map(|n| (*n, true)).collect();
    objects::create_lb_service(&client, "default", "web", &[vip], false).await?;
    objects::set_endpoints(&client, "default", "web", &everywhere).await?;
    lab.start_all_speakers(&[])?;
    lab.wait_converged(Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    let np = lab.neigh_prober(&[vip], Duration::from_millis(10))?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pids: Vec<u32> = NODES
        .iter()
        .map(|n| {
            lab.node(n)
                .ok()
                .and_then(|n| n.speaker.as_ref())
                .map(|s| s.pid())
                .unwrap_or(0)
        })
        .collect();
    let cpu_before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    let gone_before: Vec<usize> = NODES.iter().map(|n| gone_lines(&lab, n)).collect();
    let storm = Instant::now();
    let created = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let ip: IpAddr = format!("2001:db8:1::{:x}", i + 1).parse()?;
                objects::create_lb_service(&client, "default", &format!("idle-{i}"), &[ip], false)
                    .await
            }
        })
        .buffer_unordered(16)
        .filter(|r| std::future::ready(r.is_err()))
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = created.into_iter().next() {
        anyhow::bail!("creating the Services: {e}");
    }
    let all_created = storm.elapsed();
    println!("created {n} Services in {:.1} s", all_created.as_secs_f64());

    // Every Service carries "not announced: no ready endpoint".
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let done = loop {
        let list = api.list(&ListParams::default()).await?;
        let said = list
            .items
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c.type_ == "lodestone.dev/Announced"
                                && c.status == "False"
                                && c.reason == "NoReadyEndpoints"
                        })
                    })
            })
            .count();
        if said >= n {
            break storm.elapsed();
        }
        if storm.elapsed() > DEADLINE {
            anyhow::bail!(
                "only {said} of {n} Services got their condition\n{}",
                lab.logs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Until the writes stop.
    let mut last: f64 = NODES.iter().map(|n| writes(&lab, n, "written")).sum();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now: f64 = NODES.iter().map(|n| writes(&lab, n, "written")).sum();
        if now == last || storm.elapsed() > DEADLINE {
            break;
        }
        last = now;
    }
    let settled = storm.elapsed();
    let end = Instant::now();
    let hz = ticks_per_second();
    println!(
        "every condition written after {:.1} s; writes stopped after {:.1} s",
        done.as_secs_f64(),
        settled.as_secs_f64()
    );
    let mut total = 0.0;
    for (i, node) in NODES.iter().enumerate() {
        let cpu = cpu_ticks(pids[i])
            .unwrap_or(0)
            .saturating_sub(cpu_before[i]) as f64
            / hz;
        let written = writes(&lab, node, "written");
        total += written;
        println!(
            "{node}: CPU {:.1} s = {:.1} % of one core over {:.0} s; conditions written {written}, conflicts {}, failed {}; membership 'gone' lines {}",
            cpu,
            100.0 * cpu / settled.as_secs_f64(),
            settled.as_secs_f64(),
            writes(&lab, node, "conflict"),
            writes(&lab, node, "failed"),
            gone_lines(&lab, node) - gone_before[i],
        );
    }
    println!("conditions written in total: {total} for {n} Services");
    let mut lat = np.answer_latencies(vip, storm, end);
    lat.sort();
    let report = &np.judge(storm, end)[&vip];
    println!(
        "ARP answers for the announced address during the storm: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms; longest silence {:.0} ms; rounds answered by two MACs {}",
        lat.len(),
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 99.0)),
        ms(lat.last().copied().unwrap_or_default()),
        ms(report.longest_silence),
        report.double_answers.len()
    );

    // A Service created now is announced without waiting behind the storm.
    let t = Instant::now();
    objects::create_lb_service(&client, "default", "late", &[late], false).await?;
    objects::set_endpoints(&client, "default", "late", &everywhere).await?;
    loop {
        let cond = objects::announced_condition(&client, "default", "late").await?;
        if cond.as_ref().is_some_and(|(s, _)| s == "True") {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the late Service was never announced\n{}", lab.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a Service created after the storm: Announced=True after {:.0} ms",
        ms(t.elapsed())
    );
    drop(np);
    lab.stop_responder("node-a").ok();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}
