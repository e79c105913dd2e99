//! Prometheus metrics and the probe endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Every name is listed in `docs/announcing.md`. Names carry the `lodestone_speaker_` prefix;
//! counters end in `_total` (added by prometheus-client).
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `requests_seen_total{protocol}` | counter | ARP requests / neighbour solicitations for an address we own |
//! | `requests_answered_total{protocol}` | counter | replies sent to them |
//! | `gratuitous_sent_total{protocol}` | counter | gratuitous ARP / unsolicited NA sent |
//! | `ownership_changes_total` | counter | addresses this node started or stopped announcing |
//! | `failover_detections_total` | counter | addresses taken over from a member that went down |
//! | `address_conflicts_total` | counter | replies from a foreign MAC for an address we announce |
//! | `ndp_group_join_failures_total` | counter | solicited-node group joins the kernel refused |
//! | `addresses_announced` | gauge | addresses this node announces now |
//! | `membership_members` | gauge | alive speakers, this one included |
//! | `membership_formed` | gauge | 1 when liveness comes from membership, 0 on the Node Ready fallback |
//! | `bgp_sessions_established` | gauge | BGP sessions in state Established |
//! | `bgp_prefixes_advertised` | gauge | prefixes advertised, summed over sessions |
//! | `bgp_malformed_messages_total` | counter | malformed BGP messages received (each answered with a NOTIFICATION) |
//! | `bgp_notifications_sent_total` | counter | BGP NOTIFICATIONs sent |
//! | `bgp_notifications_received_total` | counter | BGP NOTIFICATIONs received |
//! | `bgp_updates_sent_total` | counter | BGP UPDATE messages sent |

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `protocol` label values.
pub type ProtocolLabel = Vec<(String, String)>;

fn protocol(p: &str) -> ProtocolLabel {
    vec![("protocol".to_owned(), p.to_owned())]
}

/// Frame counters as the announcer reports them (cumulative since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounts {
    /// ARP requests seen for owned addresses.
    pub arp_seen: u64,
    /// ARP replies sent.
    pub arp_answered: u64,
    /// Neighbour solicitations seen for owned addresses.
    pub ndp_seen: u64,
    /// Neighbour advertisements sent in reply.
    pub ndp_answered: u64,
    /// Gratuitous ARP sent.
    pub garp_sent: u64,
    /// Unsolicited neighbour advertisements sent.
    pub unsolicited_na_sent: u64,
    /// Solicited-node group joins the kernel refused (those addresses go unanswered).
    pub ndp_group_join_failures: u64,
}

/// All of the speaker's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests_seen: Family<ProtocolLabel, Counter>,
    requests_answered: Family<ProtocolLabel, Counter>,
    gratuitous_sent: Family<ProtocolLabel, Counter>,
    ndp_group_join_failures: Counter,
    /// Addresses this node started or stopped announcing.
    pub ownership_changes: Counter,
    /// Addresses taken over from a member that went down.
    pub failover_detections: Counter,
    /// Foreign-MAC conflicts seen.
    pub address_conflicts: Counter,
    /// Addresses announced now.
    pub addresses_announced: Gauge,
    /// Alive speakers.
    pub membership_members: Gauge,
    /// 1 when membership is formed.
    pub membership_formed: Gauge,
    /// BGP mode's metrics (`bgp_*`).
    pub bgp: crate::bgp::BgpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lodestone_speaker");
        let m = Metrics {
            registry: Registry::default(),
            requests_seen: Family::default(),
            requests_answered: Family::default(),
            gratuitous_sent: Family::default(),
            ndp_group_join_failures: Counter::default(),
            ownership_changes: Counter::default(),
            failover_detections: Counter::default(),
            address_conflicts: Counter::default(),
            addresses_announced: Gauge::default(),
            membership_members: Gauge::default(),
            membership_formed: Gauge::default(),
            bgp: crate::bgp::BgpMetrics::default(),
        };
        registry.register(
            "requests_seen",
            "ARP requests and neighbour solicitations seen for addresses this node announces",
            m.requests_seen.clone(),
        );
        registry.register(
            "requests_answered",
            "ARP replies and neighbour advertisements sent in answer",
            m.requests_answered.clone(),
        );
        registry.register(
            "gratuitous_sent",
            "Gratuitous ARP and unsolicited neighbour advertisements sent",
            m.gratuitous_sent.clone(),
        );
        registry.register(
            "ndp_group_join_failures",
            "Solicited-node multicast group joins the kernel refused; solicitations for those addresses go unanswered",
            m.ndp_group_join_failures.clone(),
        );
        registry.register(
            "ownership_changes",
            "Addresses this node started or stopped announcing",
            m.ownership_changes.clone(),
        );
        registry.register(
            "failover_detections",
            "Addresses taken over from a speaker that went down while announcing them",
            m.failover_detections.clone(),
        );
        registry.register(
            "address_conflicts",
            "Answers from a foreign MAC address for an address this node announces",
            m.address_conflicts.clone(),
        );
        registry.register(
            "addresses_announced",
            "Addresses this node announces",
            m.addresses_announced.clone(),
        );
        registry.register(
            "membership_members",
            "Alive speakers in the membership, this one included",
            m.membership_members.clone(),
        );
        registry.register(
            "membership_formed",
            "1 when liveness comes from the membership, 0 while falling back on Node Ready",
            m.membership_formed.clone(),
        );
        m.bgp.register(&mut registry);
        // Touch the labelled series so that they are exported at zero from the start.
        for p in ["arp", "ndp"] {
            let _ = m.requests_seen.get_or_create(&protocol(p));
            let _ = m.requests_answered.get_or_create(&protocol(p));
            let _ = m.gratuitous_sent.get_or_create(&protocol(p));
        }
        Metrics { registry, ..m }
    }

    /// Copy the announcer's cumulative frame counters into the exported counters.
    pub fn set_frames(&self, c: FrameCounts) {
        let set = |fam: &Family<ProtocolLabel, Counter>, p: &str, v: u64| {
            fam.get_or_create(&protocol(p))
                .inner()
                .store(v, Ordering::Relaxed);
        };
        set(&self.requests_seen, "arp", c.arp_seen);
        set(&self.requests_seen, "ndp", c.ndp_seen);
        set(&self.requests_answered, "arp", c.arp_answered);
        set(&self.requests_answered, "ndp", c.ndp_answered);
        set(&self.gratuitous_sent, "arp", c.garp_sent);
        set(&self.gratuitous_sent, "ndp", c.unsolicited_na_sent);
        self.ndp_group_join_failures
            .inner()
            .store(c.ndp_group_join_failures, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only mean a broken metric name.
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What the probe endpoints look at.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the first plan has been applied.
    pub ready: AtomicBool,
}

/// Called before every `/metrics` render to pull counters kept elsewhere (announcer).
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    refresh: Refresh,
}

/// The router serving `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>, refresh: Refresh) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState {
            metrics,
            health,
            refresh,
        })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (s.refresh)(&s.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no plan applied yet",
        )
    }
}

/// Bind `addr` and serve the router until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn names_and_values() {
        let m = Metrics::new();
        m.set_frames(FrameCounts {
            arp_seen: 7,
            arp_answered: 6,
            ndp_seen: 5,
            ndp_answered: 4,
            garp_sent: 3,
            unsolicited_na_sent: 2,
            ndp_group_join_failures: 1,
        });
        m.ownership_changes.inc();
        m.addresses_announced.set(12);
        let text = m.render();
        for line in [
            "lodestone_speaker_requests_seen_total{protocol=\"arp\"} 7",
            "lodestone_speaker_requests_seen_total{protocol=\"ndp\"} 5",
            "lodestone_speaker_requests_answered_total{protocol=\"arp\"} 6",
            "lodestone_speaker_requests_answered_total{protocol=\"ndp\"} 4",
            "lodestone_speaker_gratuitous_sent_total{protocol=\"arp\"} 3",
            "lodestone_speaker_gratuitous_sent_total{protocol=\"ndp\"} 2",
            "lodestone_speaker_ownership_changes_total 1",
            "lodestone_speaker_failover_detections_total 0",
            "lodestone_speaker_address_conflicts_total 0",
            "lodestone_speaker_ndp_group_join_failures_total 1",
            "lodestone_speaker_addresses_announced 12",
            "lodestone_speaker_membership_members 0",
            "lodestone_speaker_membership_formed 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    /// The metrics tables of docs/announcing.md and docs/bgp.md list exactly the names the
    /// registry exposes.
    #[test]
    fn every_exposed_name_is_documented_and_back() {
        let exposed = lodestone_harness::e2e::metrics::exposed_names(&Metrics::new().render());
        let mut documented = lodestone_harness::e2e::metrics::documented_names(
            include_str!("../../docs/announcing.md"),
            "lodestone_speaker_",
        );
        documented.extend(lodestone_harness::e2e::metrics::documented_names(
            include_str!("../../docs/bgp.md"),
            "lodestone_speaker_",
        ));
        // Every registered metric is in the exposition (split so this line does not count).
        let needle = concat!("registry", ".register(");
        let registered = include_str!("metrics.rs").matches(needle).count()
            + include_str!("bgp/mod.rs").matches(needle).count();
        assert_eq!(exposed.len(), registered, "{exposed:?}");
        assert_eq!(
            exposed, documented,
            "registry vs docs/announcing.md and docs/bgp.md"
        );
    }

    #[tokio::test]
    async fn probes_and_metrics_over_http() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let refresh: Refresh = Arc::new(|m: &Metrics| {
            m.membership_members.set(3);
        });
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            router(metrics, Arc::clone(&health), refresh),
        )
        .await
        .unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let body = get(addr, "/metrics").await;
        assert!(
            body.contains("lodestone_speaker_membership_members 3"),
            "{body}"
        );
    }
}
