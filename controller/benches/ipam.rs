//! Cost of one allocation and one release with 100,000 assignments already present, in a `/8`
//! IPv4 pool (with `avoidBuggyIPs`) and a `/64` IPv6 pool. One in eight of the first assignments
//! is released again so that free holes are scattered through the used runs.
//!
//! `cargo bench -p lodestone-controller --bench ipam`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use lodestone_controller::ipam::{
    FamilyPolicy, Ipam, PoolConfig, Protocol, ServiceKey, ServiceRequest,
};
use lodestone_crds::addresses::{IpFamily, parse_pool};

const PRESENT: usize = 100_000;

fn request(n: usize, family: IpFamily) -> ServiceRequest {
    ServiceRequest {
        key: ServiceKey::new("bench", format!("svc-{n}")),
        labels: BTreeMap::new(),
        namespace_labels: Default::default(),
        families: FamilyPolicy::SingleStack(family),
        requested: vec![],
        pool: None,
        sharing_key: None,
        ports: vec![(80, Protocol::Tcp)],
        traffic_local: false,
        pod_selector: BTreeMap::new(),
    }
}

/// An IPAM holding exactly `PRESENT` assignments, with holes.
fn populated(cidr: &str, family: IpFamily) -> (Ipam, Vec<(ServiceRequest, Vec<IpAddr>)>) {
    let pool = PoolConfig {
        name: "big".into(),
        addresses: parse_pool(&[cidr.to_string()]).expect("valid benchmark pool"),
        auto_assign: true,
        avoid_buggy_ips: family == IpFamily::V4,
        allocation: None,
        accepts_new: true,
    };
    let mut ipam = Ipam::new();
    ipam.set_pools(vec![pool]);
    // Assign PRESENT + PRESENT/7, then release every eighth until PRESENT remain.
    let total = PRESENT + PRESENT.div_ceil(7);
    let reqs: Vec<ServiceRequest> = (0..total).map(|n| request(n, family)).collect();
    for r in &reqs {
        ipam.assign(r).expect("pool is large enough");
    }
    let mut kept = Vec::new();
    let mut remaining = total;
    for (n, r) in reqs.into_iter().enumerate() {
        if n % 8 == 0 && remaining > PRESENT {
            ipam.release(&r.key);
            remaining -= 1;
        } else {
            let held = ipam
                .assignment(&r.key)
                .map(|a| a.addresses.clone())
                .unwrap_or_default();
            kept.push((r, held));
        }
    }
    (ipam, kept)
}

fn bench_family(c: &mut Criterion, label: &str, cidr: &str, family: IpFamily) {
    let (mut ipam, kept) = populated(cidr, family);
    assert_eq!(ipam.assignments().count(), PRESENT);
    let fresh = request(usize::MAX, family);

    c.bench_function(&format!("allocate/{label}/100k-present"), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let a = ipam.assign(black_box(&fresh));
                spent += t.elapsed();
                black_box(a.is_ok());
                ipam.release(&fresh.key);
            }
            spent
        })
    });

    let mut next = 0usize;
    c.bench_function(&format!("release/{label}/100k-present"), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let (req, held) = &kept[next % kept.len()];
                next += 1;
                let t = Instant::now();
                let old = ipam.release(black_box(&req.key));
                spent += t.elapsed();
                black_box(old);
                // Put it back exactly where it was, untimed.
                let _ = ipam.reserve(req, held);
            }
            spent
        })
    });
    assert_eq!(ipam.assignments().count(), PRESENT);
}

fn ipam_benches(c: &mut Criterion) {
    bench_family(c, "ipv4-slash8", "10.0.0.0/8", IpFamily::V4);
    bench_family(c, "ipv6-slash64", "2001:db8::/64", IpFamily::V6);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = ipam_benches
}
criterion_main!(benches);
