//! Figures for the embedded API server, printed, never asserted (machines are shared):
//! create throughput through a kube client, create→watch-event latency, list time.
//!
//! `cargo nextest run -p lodestone-harness --test apiserver_bench --run-ignored only --no-capture`
//! (add `--release` for optimised figures).

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;
use lodestone_harness::apiserver::{Server, ServerConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly, prints figures"]
async fn apiserver_figures() {
    const N: usize = 1000;
    let s = Server::start(ServerConfig::default()).await.unwrap();
    let client = s.client().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let mut latencies = Vec::with_capacity(N);
    let start = Instant::now();
    for i in 0..N {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("cm-{i}")),
                ..Default::default()
            },
            data: Some([("k".to_string(), "v".repeat(64))].into()),
            ..Default::default()
        };
        let t = Instant::now();
        api.create(&PostParams::default(), &cm).await.unwrap();
        loop {
            match watch.next().await.unwrap().unwrap() {
                WatchEvent::Added(o) if o.metadata.name.as_deref() == Some(&format!("cm-{i}")) => {
                    break;
                }
                WatchEvent::Added(o) => panic!("out of order: {:?}", o.metadata.name),
                _ => {}
            }
        }
        latencies.push(t.elapsed());
    }
    let total = start.elapsed();
    latencies.sort();
    let t = Instant::now();
    let listed = api.list(&ListParams::default()).await.unwrap();
    let list_time = t.elapsed();
    assert_eq!(listed.items.len(), N);
    println!("embedded apiserver: {N} creates (each awaited until its watch event)");
    println!(
        "  throughput        {:.0} creates/s",
        N as f64 / total.as_secs_f64()
    );
    println!(
        "  create→event      p50 {:?}  p99 {:?}  max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[N - 1]
    );
    println!("  list {N} objects  {list_time:?}");
}
