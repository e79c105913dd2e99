//! End-to-end figures for the controller against the embedded API server, with the release binary:
//!
//! - time until 1,000 and 10,000 new Services all have an address;
//! - cold start with 10,000 assigned Services until `/readyz`, and how many addresses moved;
//! - resident memory of the controller holding 10,000 assignments.
//!
//! `cargo bench -p lodestone-controller --bench e2e_scale` (set `SCALE_MAX=1000` for a quick run).
//! Prints plain `name: value` lines; asserts nothing about time.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use lodestone_crds::IPAddressPool;
use lodestone_harness::cluster::TestCluster;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Controller {
    child: Child,
    health: u16,
}

impl Controller {
    fn start(kubeconfig: &std::path::Path) -> Controller {
        let health = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_lodestone-controller"))
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

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.health);
        loop {
            if let Ok(out) = Command::new("curl").args(["-sf", &url]).output()
                && out.status.success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill9(self) {
        // Drop does it.
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn svc(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": name},
                 "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack",
                 // 10,000 Services would exhaust the 2,768 NodePorts, as on a real cluster.
                 "allocateLoadBalancerNodePorts": false},
    }))
    .expect("service object")
}

async fn create_services(api: &Api<Service>, prefix: &str, n: usize) {
    futures::stream::iter((0..n).map(|i| {
        let api = api.clone();
        let s = svc(&format!("{prefix}-{i:05}"));
        async move {
            api.create(&PostParams::default(), &s)
                .await
                .expect("create")
        }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
}

fn assigned(s: &Service) -> bool {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| !i.is_empty())
}

/// Wait until `n` Services whose names start with `prefix` hold an address, watching rather than polling.
async fn wait_assigned(api: &Api<Service>, prefix: &str, n: usize) {
    let mut done = std::collections::HashSet::new();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .try_filter_map(|ev| async move {
            Ok(match ev {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => Some(s),
                _ => None,
            })
        });
    futures::pin_mut!(stream);
    while let Some(Ok(s)) = stream.next().await {
        let name = s.metadata.name.clone().unwrap_or_default();
        if name.starts_with(prefix) && assigned(&s) {
            done.insert(name);
            if done.len() >= n {
                return;
            }
        }
    }
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

#[tokio::main]
async fn main() {
    let max: usize = std::env::var("SCALE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let cluster = TestCluster::start().await.expect("cluster");
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

    let controller = Controller::start(cluster.kubeconfig_path());
    controller.wait_ready().await;

    let mut created = 0;
    for n in [1_000usize, 10_000] {
        if n > max {
            continue;
        }
        let fresh = n - created;
        let prefix = format!("s{n}");
        let t = Instant::now();
        create_services(&api, &prefix, fresh).await;
        let create_time = t.elapsed();
        wait_assigned(&api, &prefix, fresh).await;
        let all = t.elapsed();
        created = n;
        println!(
            "new_services_{n}_total: {fresh} new Services created in {:.2} s, all assigned after {:.2} s ({:.0} Services/s end to end)",
            create_time.as_secs_f64(),
            all.as_secs_f64(),
            fresh as f64 / all.as_secs_f64()
        );
    }
    println!(
        "controller_rss_{created}_services: {:.1} MiB",
        controller.rss_kib() as f64 / 1024.0
    );

    let before = snapshot(&api).await;
    controller.kill9();
    let t = Instant::now();
    let restarted = Controller::start(cluster.kubeconfig_path());
    restarted.wait_ready().await;
    let ready = t.elapsed();
    // Give any (wrong) rewrite time to land before comparing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = snapshot(&api).await;
    let moved = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .count();
    println!(
        "cold_start_{}_assigned: ready after {:.3} s, {} of {} addresses moved",
        before.len(),
        ready.as_secs_f64(),
        moved,
        before.len()
    );
    println!(
        "controller_rss_after_cold_start: {:.1} MiB",
        restarted.rss_kib() as f64 / 1024.0
    );
    restarted.kill9();
}
