//! End-to-end figures for the release controller binary, against the embedded API server or, with
//! `TEST_ASSET_KUBE_APISERVER` and `TEST_ASSET_ETCD` set, a real kube-apiserver and etcd:
//!
//! - for 1,000 and then 10,000 Services: the time until all new ones have an address, and per
//!   Service the time from its create request to `status.loadBalancer.ingress` (p50, p99);
//! - where that time goes: CPU of the controller (and how much of it was deciding) against CPU
//!   of the API server (and etcd), and the API server's own create latency;
//! - cold start: the controller killed and started again with every Service assigned, until
//!   `/readyz` (which it answers only once every existing address is reserved and every Service
//!   decided), and how many addresses moved;
//! - the controller's resident memory (VmRSS, and the peak VmHWM) while running and after each
//!   cold start.
//!
//! `cargo bench -p lodestone-controller --bench e2e_scale` (`SCALE_MAX=1000` for a quick run,
//! `SCALE_CONCURRENCY` creates in flight, 64 by default; `LODESTONE_BENCH_CONTROLLER` measures
//! another controller binary). Prints plain `name: value` lines, each
//! prefixed by the server it ran against; asserts nothing about time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use lodestone_crds::IPAddressPool;
use lodestone_harness::cluster::TestCluster;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long after a cold start memory is read again and addresses compared.
const SETTLE: Duration = Duration::from_secs(8);

/// How long any one wait may take before the bench gives up with a message instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30 * 60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `/proc/<pid>/status` values in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0
        )
    }
}

fn memory_of(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// CPU time (user + system, all threads) a process has used so far.
fn cpu_of(pid: u32, ticks_per_s: f64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / ticks_per_s)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One plain HTTP/1.0 GET on loopback: status code and body.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

struct Controller {
    child: Child,
    health: u16,
}

impl Controller {
    fn start(kubeconfig: &Path) -> Controller {
        let health = free_port();
        let bin = std::env::var_os("LODESTONE_BENCH_CONTROLLER")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_lodestone-controller").into());
        let child = Command::new(bin)
            .args(["--leader-elect=false", "--health-addr"])
            .arg(format!("127.0.0.1:{health}"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("controller starts");
        Controller { child, health }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some((200, _)) = http_get(self.health, "/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the controller exited before it was ready: {status}");
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the controller was not ready within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Seconds spent deciding and the number of batches decided, from `/metrics`.
    async fn decisions(&self) -> (f64, u64) {
        let body = http_get(self.health, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        let value = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (
            value("lodestone_controller_reconcile_duration_seconds_sum"),
            value("lodestone_controller_reconcile_duration_seconds_count") as u64,
        )
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // SIGKILL: a cold start must not depend on a clean shutdown.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which API server the figures are about, and how to read its CPU time.
struct Server {
    label: String,
    /// (name, pid) of the processes that serve the API: kube-apiserver and etcd, or this
    /// process for the embedded server (which then includes the bench's own client).
    processes: Vec<(&'static str, u32)>,
}

async fn describe(cluster: &TestCluster) -> Server {
    if let Some((apiserver, etcd)) = cluster.real_pids() {
        let version = cluster
            .client()
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_else(|_| "(version unknown)".into());
        let etcd_version = std::env::var_os("TEST_ASSET_ETCD")
            .and_then(|bin| Command::new(bin).arg("--version").output().ok())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                    l.strip_prefix("etcd Version:")
                        .map(|v| v.trim().to_string())
                })
            })
            .unwrap_or_else(|| "(version unknown)".into());
        let mut processes = vec![("etcd", etcd)];
        if let Some(pid) = apiserver {
            processes.insert(0, ("kube-apiserver", pid));
        }
        Server {
            label: format!("kube-apiserver {version}, etcd {etcd_version}"),
            processes,
        }
    } else {
        Server {
            label: "embedded (lodestone-harness)".into(),
            processes: vec![("embedded API server and bench client", std::process::id())],
        }
    }
}

/// The Services' IP family settings. The pool is IPv6 (documentation space, room for every
/// Service); a Service must have IPv6 among its families to get an address from it. A server
/// without an IPv6 service range refuses `ipFamilies: [IPv6]`: there PreferDualStack gives the
/// Service an IPv4 cluster IP and the controller an IPv6 address to assign.
async fn family_spec(api: &Api<Service>) -> (Value, &'static str) {
    let single = json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"});
    let probe = svc("family-probe", &single);
    match api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &probe,
        )
        .await
    {
        Ok(_) => (single, "SingleStack IPv6"),
        Err(_) => (
            json!({"ipFamilyPolicy": "PreferDualStack"}),
            "PreferDualStack (the server has no IPv6 service range)",
        ),
    }
}

fn svc(name: &str, families: &Value) -> Service {
    let mut spec = json!({
        "type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": name},
        // 10,000 Services would exhaust the 2,768 NodePorts, as on a real cluster.
        "allocateLoadBalancerNodePorts": false,
    });
    if let (Some(spec), Some(families)) = (spec.as_object_mut(), families.as_object()) {
        spec.extend(families.clone());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .expect("service object")
}

fn assigned(s: &Service) -> bool {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| !i.is_empty())
}

/// When each Service was first seen holding an address, from a watch that runs all along.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn watch_assignments(api: Api<Service>) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(s) = ev else { continue };
            if assigned(&s) {
                let now = Instant::now();
                let name = s.metadata.name.clone().unwrap_or_default();
                out.lock().expect("seen map").entry(name).or_insert(now);
            }
        }
    });
    seen
}

/// Create `names`, `concurrency` at a time; returns when each create request was sent and when
/// the API server answered it.
async fn create_services(
    api: &Api<Service>,
    names: &[String],
    families: &Value,
    concurrency: usize,
) -> HashMap<String, (Instant, Instant)> {
    futures::stream::iter(names.iter().map(|name| {
        let api = api.clone();
        let s = svc(name, families);
        async move {
            let sent = Instant::now();
            api.create(&PostParams::default(), &s)
                .await
                .unwrap_or_else(|e| panic!("creating Service {name}: {e}"));
            (name.clone(), (sent, Instant::now()))
        }
    }))
    .buffer_unordered(concurrency)
    .collect()
    .await
}

async fn wait_all_seen(seen: &Seen, names: &[String]) {
    let started = Instant::now();
    loop {
        let missing = {
            let map = seen.lock().expect("seen map");
            names.iter().filter(|n| !map.contains_key(*n)).count()
        };
        if missing == 0 {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{missing} of {} Services still have no address after {PATIENCE:?}",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

async fn snapshot(api: &Api<Service>) -> BTreeMap<String, String> {
    api.list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter_map(|s| {
            let ip = s
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?
                .ip
                .clone()?;
            Some((s.metadata.name.clone()?, ip))
        })
        .collect()
}

/// kube-apiserver's own accounting: per kind of request (verb, resource, subresource) and per
/// etcd operation, the count and total seconds so far. Empty for the embedded server.
type ServerTimes = BTreeMap<String, (f64, f64)>;

/// The label value `name="..."` in a Prometheus sample's label set.
fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("")
}

async fn server_times(cluster: &TestCluster) -> ServerTimes {
    let mut out = ServerTimes::new();
    if cluster.is_embedded() {
        return out;
    }
    let Ok(req) = http::Request::get("/metrics").body(Vec::new()) else {
        return out;
    };
    let Ok(text) = cluster.client().request_text(req).await else {
        return out;
    };
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let Some((metric, labels)) = series.split_once('{') else {
            continue;
        };
        let labels = labels.trim_end_matches('}');
        let (key, is_sum) = match metric {
            "apiserver_request_duration_seconds_sum"
            | "apiserver_request_duration_seconds_count" => {
                let sub = label(labels, "subresource");
                let key = format!(
                    "{} {}{}{}",
                    label(labels, "verb"),
                    label(labels, "resource"),
                    if sub.is_empty() { "" } else { "/" },
                    sub
                );
                (key, metric.ends_with("_sum"))
            }
            "etcd_request_duration_seconds_sum" | "etcd_request_duration_seconds_count" => (
                format!(
                    "etcd {} {}",
                    label(labels, "operation"),
                    label(labels, "type")
                ),
                metric.ends_with("_sum"),
            ),
            _ => continue,
        };
        let e = out.entry(key).or_default();
        if is_sum {
            e.1 += value;
        } else {
            e.0 += value;
        }
    }
    out
}

/// The kinds of request (and etcd operations) the API server spent most time on between two
/// readings: `count x mean`.
fn busiest(before: &ServerTimes, after: &ServerTimes, etcd: bool, n: usize) -> String {
    let mut rows: Vec<(String, f64, f64)> = after
        .iter()
        .filter(|(k, _)| k.starts_with("etcd ") == etcd && !k.starts_with("WATCH"))
        .map(|(k, (count, sum))| {
            let (c0, s0) = before.get(k).copied().unwrap_or_default();
            (k.clone(), count - c0, sum - s0)
        })
        .filter(|(_, count, _)| *count > 0.0)
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows.iter()
        .take(n)
        .map(|(k, count, sum)| {
            format!(
                "{} {count:.0} x {:.1} ms",
                k.trim_start_matches("etcd "),
                1000.0 * sum / count
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU used so far by the controller and by each API-serving process.
struct CpuMark {
    controller: Duration,
    servers: Vec<Duration>,
    decisions: (f64, u64),
    at: Instant,
}

async fn cpu_mark(server: &Server, controller: &Controller, ticks: f64) -> CpuMark {
    CpuMark {
        controller: cpu_of(controller.pid(), ticks),
        servers: server
            .processes
            .iter()
            .map(|(_, pid)| cpu_of(*pid, ticks))
            .collect(),
        decisions: controller.decisions().await,
        at: Instant::now(),
    }
}

fn where_time_goes(server: &Server, before: &CpuMark, after: &CpuMark) -> String {
    let wall = after.at - before.at;
    let share = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
    let ctl = after.controller.saturating_sub(before.controller);
    let deciding = after.decisions.0 - before.decisions.0;
    let batches = after.decisions.1 - before.decisions.1;
    let mut out = format!(
        "wall {:.2} s; controller CPU {:.2} s ({:.0}% of one core), of which deciding {:.2} s in {batches} batches",
        wall.as_secs_f64(),
        ctl.as_secs_f64(),
        share(ctl),
        deciding
    );
    for ((name, _), (b, a)) in server
        .processes
        .iter()
        .zip(before.servers.iter().zip(&after.servers))
    {
        let d = a.saturating_sub(*b);
        out.push_str(&format!(
            "; {name} CPU {:.2} s ({:.0}%)",
            d.as_secs_f64(),
            share(d)
        ));
    }
    out
}

/// Kill the controller, start a new one, and time it until ready; then check nothing moved.
async fn cold_start(
    tag: &str,
    cluster: &TestCluster,
    api: &Api<Service>,
    old: Controller,
) -> Controller {
    let before = snapshot(api).await;
    drop(old);
    let t = Instant::now();
    let mut restarted = Controller::start(cluster.kubeconfig_path());
    restarted.wait_ready().await;
    let ready = t.elapsed();
    let at_ready = memory_of(restarted.pid());
    // Give any (wrong) rewrite time to land before comparing, and the controller time to go
    // idle and hand back what the start-up peak freed (it does after 5 s idle).
    tokio::time::sleep(SETTLE).await;
    let settled = memory_of(restarted.pid());
    let after = snapshot(api).await;
    let moved = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .count();
    println!(
        "{tag} cold_start_{n}: ready (every address reserved) after {:.3} s; {moved} of {n} addresses moved",
        ready.as_secs_f64(),
        n = before.len(),
    );
    println!(
        "{tag} controller_memory_after_cold_start_{n}: at ready {at_ready}; {} s later {settled}",
        SETTLE.as_secs(),
        n = before.len(),
    );
    restarted
}

#[tokio::main]
async fn main() {
    let max: usize = std::env::var("SCALE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let concurrency: usize = std::env::var("SCALE_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let ticks = clock_ticks();
    let cluster = TestCluster::start().await.expect("cluster");
    let server = describe(&cluster).await;
    let tag = if cluster.is_embedded() {
        "[embedded]"
    } else {
        "[kube-apiserver]"
    };
    println!("{tag} server: {}", server.label);
    cluster
        .apply_crds(&lodestone_crds::all_crds())
        .await
        .expect("crds");
    let client = cluster.client();
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    let pool: IPAddressPool = serde_json::from_value(json!({
        "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
        "metadata": {"name": "bench"},
        // IPv6 documentation space: room for every Service without leaving 2001:db8::/32.
        "spec": {"addresses": ["2001:db8:1::/112"]},
    }))
    .expect("pool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("pool");
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let (families, families_text) = family_spec(&api).await;
    println!("{tag} services: {families_text}, {concurrency} creates in flight");
    let seen = watch_assignments(api.clone());

    let mut controller = Controller::start(cluster.kubeconfig_path());
    controller.wait_ready().await;

    let mut created = 0;
    for n in [1_000usize, 10_000] {
        if n > max {
            continue;
        }
        let names: Vec<String> = (created..n).map(|i| format!("s-{i:05}")).collect();
        let mark = cpu_mark(&server, &controller, ticks).await;
        let times = server_times(&cluster).await;
        let t = Instant::now();
        let created_at = create_services(&api, &names, &families, concurrency).await;
        let create_time = t.elapsed();
        wait_all_seen(&seen, &names).await;
        let all = t.elapsed();
        let done = cpu_mark(&server, &controller, ticks).await;
        let times_done = server_times(&cluster).await;
        // From the create request, from its answer, and the answer itself, per Service.
        let (mut latency, mut after_answer, mut answer) = (Vec::new(), Vec::new(), Vec::new());
        {
            let map = seen.lock().expect("seen map");
            for n in &names {
                if let (Some(at), Some((sent, answered))) = (map.get(n), created_at.get(n)) {
                    latency.push(at.saturating_duration_since(*sent));
                    after_answer.push(at.saturating_duration_since(*answered));
                    answer.push(answered.saturating_duration_since(*sent));
                }
            }
        }
        for v in [&mut latency, &mut after_answer, &mut answer] {
            v.sort();
        }
        created = n;
        println!(
            "{tag} services_{n}: {} new Services created in {:.2} s ({:.0} creates/s), all assigned after {:.2} s; create to ingress p50 {}, p99 {}, max {}",
            names.len(),
            create_time.as_secs_f64(),
            names.len() as f64 / create_time.as_secs_f64(),
            all.as_secs_f64(),
            ms(percentile(&latency, 0.5)),
            ms(percentile(&latency, 0.99)),
            ms(percentile(&latency, 1.0)),
        );
        println!(
            "{tag} where_time_goes_{n}: the API server answers a create in p50 {}, p99 {}; from that answer to the ingress seen p50 {}, p99 {}; {}",
            ms(percentile(&answer, 0.5)),
            ms(percentile(&answer, 0.99)),
            ms(percentile(&after_answer, 0.5)),
            ms(percentile(&after_answer, 0.99)),
            where_time_goes(&server, &mark, &done),
        );
        if !times_done.is_empty() {
            println!(
                "{tag} api_server_time_{n}: requests {}; etcd {}",
                busiest(&times, &times_done, false, 5),
                busiest(&times, &times_done, true, 4),
            );
        }
        tokio::time::sleep(SETTLE).await;
        println!(
            "{tag} controller_memory_running_{n}: {} ({} s after the last assignment)",
            memory_of(controller.pid()),
            SETTLE.as_secs()
        );
        controller = cold_start(tag, &cluster, &api, controller).await;
    }
    drop(controller);
}
