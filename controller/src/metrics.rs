//! Prometheus metrics and the probe endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Names carry the `lodestone_controller_` prefix; counters end in `_total` (added by
//! prometheus-client). Every name is listed in `docs/metrics.md`.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `pool_addresses_in_use{pool,family}` | gauge | addresses of the pool held by Services |
//! | `pool_addresses_available{pool,family}` | gauge | addresses still free (saturates at 2^63-1) |
//! | `services_assigned` | gauge | Services holding at least one address |
//! | `allocation_failures_total{reason}` | counter | failed allocations, by condition reason |
//! | `status_writes_total{result}` | counter | every write to the API server (Service status and its release, pool status, pool finalizer, Event), counted once by the writer's one write helper when its answer arrives: `ok` or `error` |
//! | `reconcile_duration_seconds` | histogram | time to decide one batch of changes |
//! | `leader` | gauge | 1 while this replica holds the Lease |
//! | `pool_kind_served` | gauge | 1 while the API server serves IPAddressPools (0: CRD missing, decisions on hold) |
//! | `services_held_without_pool` | gauge | Services keeping an address whose pool vanished without releasing it |

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use lodestone_crds::addresses::IpFamily;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// All of the controller's metrics, plus the readiness flag the probe reports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pool_in_use: Family<Labels, Gauge>,
    pool_available: Family<Labels, Gauge>,
    allocation_failures: Family<Labels, Counter>,
    writes: Family<Labels, Counter>,
    /// Services holding at least one address.
    pub services_assigned: Gauge,
    /// Seconds spent deciding one batch of changes.
    pub reconcile_duration: Histogram,
    leader_gauge: Gauge,
    pool_kind_served: Gauge,
    /// Services keeping an address of a pool that vanished without releasing it.
    pub services_held_without_pool: Gauge,
    /// Caches synced and, when leading, the first full pass decided.
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn family_word(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lodestone_controller");
        let pool_in_use = Family::<Labels, Gauge>::default();
        registry.register(
            "pool_addresses_in_use",
            "Addresses of the pool held by Services",
            pool_in_use.clone(),
        );
        let pool_available = Family::<Labels, Gauge>::default();
        registry.register(
            "pool_addresses_available",
            "Addresses of the pool still free",
            pool_available.clone(),
        );
        let allocation_failures = Family::<Labels, Counter>::default();
        registry.register(
            "allocation_failures",
            "Failed allocations by reason",
            allocation_failures.clone(),
        );
        let writes = Family::<Labels, Counter>::default();
        registry.register(
            "status_writes",
            "Writes to the API server by result",
            writes.clone(),
        );
        let services_assigned = Gauge::default();
        registry.register(
            "services_assigned",
            "Services holding at least one address",
            services_assigned.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        registry.register(
            "reconcile_duration_seconds",
            "Time to decide one batch of changes",
            reconcile_duration.clone(),
        );
        let leader_gauge = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease",
            leader_gauge.clone(),
        );
        let pool_kind_served = Gauge::default();
        registry.register(
            "pool_kind_served",
            "1 while the API server serves IPAddressPools; 0 while it answers 404 (CRD missing) and decisions are on hold",
            pool_kind_served.clone(),
        );
        let services_held_without_pool = Gauge::default();
        registry.register(
            "services_held_without_pool",
            "Services keeping an address whose pool vanished without releasing it",
            services_held_without_pool.clone(),
        );
        Metrics {
            registry,
            pool_kind_served,
            services_held_without_pool,
            pool_in_use,
            pool_available,
            allocation_failures,
            writes,
            services_assigned,
            reconcile_duration,
            leader_gauge,
            ready: AtomicBool::new(false),
        }
    }

    pub fn set_pool(&self, pool: &str, family: IpFamily, in_use: u128, available: u128) {
        let labels = vec![
            ("pool".to_string(), pool.to_string()),
            ("family".to_string(), family_word(family).to_string()),
        ];
        let clamp = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        self.pool_in_use.get_or_create(&labels).set(clamp(in_use));
        self.pool_available
            .get_or_create(&labels)
            .set(clamp(available));
    }

    /// Forget a pool that no longer exists, so it does not linger in scrapes.
    pub fn remove_pool(&self, pool: &str) {
        for family in [IpFamily::V4, IpFamily::V6] {
            let labels = vec![
                ("pool".to_string(), pool.to_string()),
                ("family".to_string(), family_word(family).to_string()),
            ];
            self.pool_in_use.remove(&labels);
            self.pool_available.remove(&labels);
        }
    }

    pub fn allocation_failed(&self, reason: &str) {
        self.allocation_failures
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    pub fn write(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.writes
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    /// Show whether this replica leads (the writes check the reconciler's own flag).
    pub fn set_leader(&self, leader: bool) {
        self.leader_gauge.set(i64::from(leader));
    }

    pub fn set_pool_kind_served(&self, served: bool) {
        self.pool_kind_served.set(i64::from(served));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
                    .into_response()
            }),
        )
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.set_pool("blue", IpFamily::V4, 3, 13);
        m.set_pool("big", IpFamily::V6, 1, u128::MAX);
        m.allocation_failed("PoolExhausted");
        m.write(true);
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains(
                r#"lodestone_controller_pool_addresses_in_use{pool="blue",family="IPv4"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"lodestone_controller_pool_addresses_available{pool="big",family="IPv6"} 9223372036854775807"#), "{text}");
        assert!(
            text.contains(
                r#"lodestone_controller_allocation_failures_total{reason="PoolExhausted"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("lodestone_controller_leader 1"), "{text}");
        m.remove_pool("blue");
        assert!(!m.encode().contains(r#"pool="blue""#));
    }

    /// docs/metrics.md lists exactly the names the registry exposes.
    #[test]
    fn every_exposed_name_is_documented_and_back() {
        // Labelled families are described only once they hold a series.
        let m = Metrics::new();
        m.set_pool("blue", IpFamily::V4, 1, 1);
        m.allocation_failed("PoolExhausted");
        m.write(true);
        let exposed = lodestone_harness::e2e::metrics::exposed_names(&m.encode());
        let documented = lodestone_harness::e2e::metrics::documented_names(
            include_str!("../../docs/metrics.md"),
            "lodestone_controller_",
        );
        // Every registered metric is in the exposition (split so this line does not count).
        let registered = include_str!("metrics.rs")
            .matches(concat!("registry", ".register("))
            .count();
        assert_eq!(exposed.len(), registered, "{exposed:?}");
        assert_eq!(exposed, documented, "registry vs docs/metrics.md");
    }
}
