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
//! | `probes_sent_total` | counter | ARP probes / DAD solicitations sent before claiming a new address |
//! | `addresses_in_use_total` | counter | probe rounds another machine answered (the address was not announced) |
//! | `defences_sent_total` | counter | announcements sent to defend an owned address against a foreign claim |
//! | `addresses_announced` | gauge | addresses this node announces now |
//! | `membership_members` | gauge | alive speakers, this one included |
//! | `membership_formed` | gauge | 1 when liveness comes from membership, 0 on the Node Ready fallback |
//! | `in_election` | gauge | 1 while this speaker takes part in the election, 0 after it withdrew |
//! | `condition_writes_total{result}` | counter | `lodestone.dev/Announced` writes: `written`, `conflict` (a newer write won), `failed` |
//! | `membership_datagrams_accepted_total{key}` | counter | authenticated datagrams, by the key that verified them |
//! | `membership_datagrams_rejected_total{reason}` | counter | datagrams dropped: `bad_mac`, `replay`, `malformed`, `oversized` |
//! | `membership_keys` | gauge | keys in the keyring |
//! | `membership_key_reloads_total{result}` | counter | key file changes applied (`ok`) or refused (`error`) |
//! | `membership_members_down_total` | counter | members seen going down |
//! | `membership_rejoins_total` | counter | times the others declared this speaker down |
//! | `membership_identity_outranked_total` | counter | restarts below a remembered identity, corrected |
//! | `membership_authenticated_peers` | gauge | peers heard with a valid MAC in the last 3 s |
//! | `membership_keyring_failing` | gauge | 1 while other nodes are heard but none authenticates |
//! | `membership_local_health` | gauge | timeout multiplier, 1 when healthy |
//! | `membership_suspicions_refuted_total` | counter | suspicions this speaker raised that the suspect refuted in time |
//! | `membership_suspicions_deferred_total` | counter | expired suspicions of a peer that still talked |
//! | `membership_starved_periods_total` | counter | probe periods in which this node's timers ran late |
//! | `membership_stalls_total` | counter | times the membership thread woke late and paused its timers |
//! | `bgp_sessions_established` | gauge | BGP sessions in state Established |
//! | `bgp_prefixes_advertised` | gauge | prefixes advertised, summed over sessions |
//! | `bgp_malformed_messages_total` | counter | malformed BGP messages received (each answered with a NOTIFICATION) |
//! | `bgp_notifications_sent_total` | counter | BGP NOTIFICATIONs sent |
//! | `bgp_notifications_received_total` | counter | BGP NOTIFICATIONs received |
//! | `bgp_updates_sent_total` | counter | BGP UPDATE messages sent |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

use crate::announcer::CountersSnapshot;
use crate::membership::{MembershipStats, StatsReader};

/// `protocol` label values.
pub type ProtocolLabel = Vec<(String, String)>;

fn protocol(p: &str) -> ProtocolLabel {
    label("protocol", p)
}

fn label(name: &str, value: &str) -> ProtocolLabel {
    vec![(name.to_owned(), value.to_owned())]
}

fn result(r: &str) -> ResultLabel {
    vec![("result".to_owned(), r.to_owned())]
}

/// All of the speaker's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests_seen: Family<ProtocolLabel, Counter>,
    requests_answered: Family<ProtocolLabel, Counter>,
    gratuitous_sent: Family<ProtocolLabel, Counter>,
    ndp_group_join_failures: Counter,
    probes_sent: Counter,
    defences_sent: Counter,
    /// Probe rounds another machine answered.
    pub addresses_in_use: Counter,
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
    /// 1 while this speaker takes part in the election.
    pub in_election: Gauge,
    condition_writes: Family<ResultLabel, Counter>,
    membership: MembershipMetrics,
    membership_source: Mutex<Option<StatsReader>>,
    /// BGP mode's metrics (`bgp_*`).
    pub bgp: crate::bgp::BgpMetrics,
}

/// The membership's own counters, copied from [`MembershipStats`] at each scrape.
#[derive(Debug, Default)]
struct MembershipMetrics {
    accepted: Family<ProtocolLabel, Counter>,
    rejected: Family<ProtocolLabel, Counter>,
    keys: Gauge,
    key_reloads: Family<ProtocolLabel, Counter>,
    members_down: Counter,
    rejoins: Counter,
    identity_outranked: Counter,
    authenticated_peers: Gauge,
    keyring_failing: Gauge,
    local_health: Gauge,
    suspicions_refuted: Counter,
    suspicions_deferred: Counter,
    starved_periods: Counter,
    stalls: Counter,
}

/// `result` label values.
pub type ResultLabel = Vec<(String, String)>;

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
            probes_sent: Counter::default(),
            defences_sent: Counter::default(),
            addresses_in_use: Counter::default(),
            ownership_changes: Counter::default(),
            failover_detections: Counter::default(),
            address_conflicts: Counter::default(),
            addresses_announced: Gauge::default(),
            membership_members: Gauge::default(),
            membership_formed: Gauge::default(),
            in_election: Gauge::default(),
            condition_writes: Family::default(),
            membership: MembershipMetrics::default(),
            membership_source: Mutex::new(None),
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
            "probes_sent",
            "ARP probes and DAD solicitations sent before claiming a newly assigned address",
            m.probes_sent.clone(),
        );
        registry.register(
            "addresses_in_use",
            "Probe rounds another machine answered: the address was not announced and is probed again later",
            m.addresses_in_use.clone(),
        );
        registry.register(
            "defences_sent",
            "Announcements sent to defend an owned address against a foreign claim (at most one per address per 10 s)",
            m.defences_sent.clone(),
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
        registry.register(
            "in_election",
            "1 while this speaker takes part in the election, 0 after it withdrew (see /readyz for why)",
            m.in_election.clone(),
        );
        registry.register(
            "condition_writes",
            "Writes of the lodestone.dev/Announced condition, by result: written, conflict (a newer write won), failed",
            m.condition_writes.clone(),
        );
        for r in ["written", "conflict", "failed"] {
            let _ = m.condition_writes.get_or_create(&result(r));
        }
        let mm = &m.membership;
        registry.register(
            "membership_datagrams_accepted",
            "Membership datagrams accepted, by the key of the keyring that verified them (primary, secondary)",
            mm.accepted.clone(),
        );
        registry.register(
            "membership_datagrams_rejected",
            "Membership datagrams dropped, by reason (bad_mac, replay, malformed, oversized)",
            mm.rejected.clone(),
        );
        registry.register(
            "membership_keys",
            "Keys in the membership keyring",
            mm.keys.clone(),
        );
        registry.register(
            "membership_key_reloads",
            "Changes of the membership key file applied (ok) or refused (error)",
            mm.key_reloads.clone(),
        );
        registry.register(
            "membership_members_down",
            "Members this speaker saw go down (declared down, or left)",
            mm.members_down.clone(),
        );
        registry.register(
            "membership_rejoins",
            "Times the other speakers declared this one down and it rejoined",
            mm.rejoins.clone(),
        );
        registry.register(
            "membership_identity_outranked",
            "Times this speaker found its node remembered with a larger identity bump (clock set back) and rejoined above it",
            mm.identity_outranked.clone(),
        );
        registry.register(
            "membership_authenticated_peers",
            "Peers this speaker heard with a valid MAC in the last 3 s",
            mm.authenticated_peers.clone(),
        );
        registry.register(
            "membership_keyring_failing",
            "1 while datagrams from other nodes arrive but none authenticates (this speaker's key does not match)",
            mm.keyring_failing.clone(),
        );
        registry.register(
            "membership_local_health",
            "Multiplier of this speaker's probe and suspicion timeouts: 1 when healthy, more while its own timers run late",
            mm.local_health.clone(),
        );
        registry.register(
            "membership_suspicions_refuted",
            "Suspicions this speaker raised that the suspect refuted in time (it answered a probe late)",
            mm.suspicions_refuted.clone(),
        );
        registry.register(
            "membership_suspicions_deferred",
            "Expired suspicions not turned into down because the suspect had talked since",
            mm.suspicions_deferred.clone(),
        );
        registry.register(
            "membership_starved_periods",
            "Probe periods in which this speaker's own membership timers fired late",
            mm.starved_periods.clone(),
        );
        registry.register(
            "membership_stalls",
            "Times the membership thread was not scheduled while its timers were due, and paused them instead of judging the others by that time",
            mm.stalls.clone(),
        );
        m.bgp.register(&mut registry);
        // Touch the labelled series so that they are exported at zero from the start.
        for k in ["primary", "secondary"] {
            let _ = mm.accepted.get_or_create(&label("key", k));
        }
        for r in ["bad_mac", "replay", "malformed", "oversized"] {
            let _ = mm.rejected.get_or_create(&label("reason", r));
        }
        for r in ["ok", "error"] {
            let _ = mm.key_reloads.get_or_create(&label("result", r));
        }
        mm.local_health.set(1);
        for p in ["arp", "ndp"] {
            let _ = m.requests_seen.get_or_create(&protocol(p));
            let _ = m.requests_answered.get_or_create(&protocol(p));
            let _ = m.gratuitous_sent.get_or_create(&protocol(p));
        }
        Metrics { registry, ..m }
    }

    /// Copy the announcer's cumulative frame counters into the exported counters: requests
    /// seen are those for owned addresses.
    pub fn set_frames(&self, c: &CountersSnapshot) {
        let set = |fam: &Family<ProtocolLabel, Counter>, p: &str, v: u64| {
            fam.get_or_create(&protocol(p))
                .inner()
                .store(v, Ordering::Relaxed);
        };
        set(&self.requests_seen, "arp", c.arp_requests_owned);
        set(&self.requests_seen, "ndp", c.ns_owned);
        set(&self.requests_answered, "arp", c.arp_requests_answered);
        set(&self.requests_answered, "ndp", c.ns_answered);
        set(&self.gratuitous_sent, "arp", c.gratuitous_arp_sent);
        set(&self.gratuitous_sent, "ndp", c.unsolicited_na_sent);
        self.ndp_group_join_failures
            .inner()
            .store(c.ndp_group_join_failures, Ordering::Relaxed);
        self.probes_sent
            .inner()
            .store(c.probes_sent, Ordering::Relaxed);
        self.defences_sent
            .inner()
            .store(c.defences_sent, Ordering::Relaxed);
    }

    /// Counts one condition write with its result (`written`, `conflict`, `failed`).
    pub fn condition_write(&self, r: &str) {
        self.condition_writes.get_or_create(&result(r)).inc();
    }

    /// Copy the membership's counters at every scrape from now on.
    pub fn attach_membership(&self, source: StatsReader) {
        let stats = source.snapshot();
        if let Ok(mut slot) = self.membership_source.lock() {
            *slot = Some(source);
        }
        self.set_membership(&stats);
    }

    fn refresh_membership(&self) {
        let stats = match self.membership_source.lock() {
            Ok(slot) => slot.as_ref().map(StatsReader::snapshot),
            Err(_) => None,
        };
        if let Some(stats) = stats {
            self.set_membership(&stats);
        }
    }

    /// Copy the membership's cumulative counters into the exported ones.
    pub fn set_membership(&self, s: &MembershipStats) {
        let r = Ordering::Relaxed;
        let mm = &self.membership;
        let set = |fam: &Family<ProtocolLabel, Counter>, name: &str, value: &str, v: u64| {
            fam.get_or_create(&label(name, value)).inner().store(v, r);
        };
        set(&mm.accepted, "key", "primary", s.accepted_primary);
        set(&mm.accepted, "key", "secondary", s.accepted_secondary);
        set(&mm.rejected, "reason", "bad_mac", s.auth_failures);
        set(&mm.rejected, "reason", "replay", s.replays);
        set(&mm.rejected, "reason", "malformed", s.malformed);
        set(&mm.rejected, "reason", "oversized", s.oversized);
        set(&mm.key_reloads, "result", "ok", s.key_reloads);
        set(&mm.key_reloads, "result", "error", s.key_reload_failures);
        let gauge = |g: &Gauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&mm.keys, s.keys);
        gauge(&mm.authenticated_peers, s.authenticated_peers);
        mm.keyring_failing.set(i64::from(s.keyring_failing));
        mm.local_health.set(i64::from(s.local_health.max(1)));
        mm.members_down.inner().store(s.members_down, r);
        mm.rejoins.inner().store(s.rejoins, r);
        mm.identity_outranked.inner().store(s.identity_outranked, r);
        mm.suspicions_refuted.inner().store(s.suspicions_refuted, r);
        mm.suspicions_deferred
            .inner()
            .store(s.suspicions_deferred, r);
        mm.starved_periods.inner().store(s.late_timers, r);
        mm.stalls.inner().store(s.stalls, r);
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
    /// Set once the first plan has been applied, cleared while the speaker is out of the
    /// election.
    pub ready: AtomicBool,
    /// Why `/readyz` answers 503 (empty: no plan applied yet).
    pub reason: std::sync::Mutex<String>,
}

impl Health {
    /// Ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Not ready, for `reason` (shown by `/readyz`).
    pub fn set_not_ready(&self, reason: &str) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_owned();
        self.ready.store(false, Ordering::Relaxed);
    }
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
    s.metrics.refresh_membership();
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
        (StatusCode::OK, "ready".to_owned())
    } else {
        let reason = s
            .health
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let reason = if reason.is_empty() {
            "no plan applied yet".to_owned()
        } else {
            reason
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
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
        m.set_frames(&CountersSnapshot {
            arp_requests_seen: 70,
            arp_requests_owned: 7,
            arp_requests_answered: 6,
            ns_seen: 50,
            ns_owned: 5,
            ns_answered: 4,
            gratuitous_arp_sent: 3,
            unsolicited_na_sent: 2,
            ndp_group_join_failures: 1,
            probes_sent: 9,
            defences_sent: 8,
            ..CountersSnapshot::default()
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
            "lodestone_speaker_probes_sent_total 9",
            "lodestone_speaker_defences_sent_total 8",
            "lodestone_speaker_addresses_in_use_total 0",
            "lodestone_speaker_addresses_announced 12",
            "lodestone_speaker_membership_members 0",
            "lodestone_speaker_membership_formed 0",
            "lodestone_speaker_in_election 0",
            "lodestone_speaker_condition_writes_total{result=\"conflict\"} 0",
            "lodestone_speaker_membership_datagrams_rejected_total{reason=\"bad_mac\"} 0",
            "lodestone_speaker_membership_local_health 1",
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

    #[test]
    fn membership_counters_are_copied() {
        let m = Metrics::new();
        m.set_membership(&MembershipStats {
            accepted_primary: 10,
            accepted_secondary: 2,
            auth_failures: 7,
            replays: 3,
            oversized: 1,
            keys: 2,
            key_reloads: 1,
            members_down: 4,
            rejoins: 1,
            authenticated_peers: 2,
            keyring_failing: true,
            local_health: 3,
            suspicions_refuted: 8,
            suspicions_deferred: 5,
            late_timers: 6,
            stalls: 9,
            ..MembershipStats::default()
        });
        let text = m.render();
        for line in [
            "lodestone_speaker_membership_datagrams_accepted_total{key=\"primary\"} 10",
            "lodestone_speaker_membership_datagrams_accepted_total{key=\"secondary\"} 2",
            "lodestone_speaker_membership_datagrams_rejected_total{reason=\"bad_mac\"} 7",
            "lodestone_speaker_membership_datagrams_rejected_total{reason=\"replay\"} 3",
            "lodestone_speaker_membership_datagrams_rejected_total{reason=\"oversized\"} 1",
            "lodestone_speaker_membership_keys 2",
            "lodestone_speaker_membership_key_reloads_total{result=\"ok\"} 1",
            "lodestone_speaker_membership_members_down_total 4",
            "lodestone_speaker_membership_rejoins_total 1",
            "lodestone_speaker_membership_authenticated_peers 2",
            "lodestone_speaker_membership_keyring_failing 1",
            "lodestone_speaker_membership_local_health 3",
            "lodestone_speaker_membership_suspicions_refuted_total 8",
            "lodestone_speaker_membership_suspicions_deferred_total 5",
            "lodestone_speaker_membership_starved_periods_total 6",
            "lodestone_speaker_membership_stalls_total 9",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
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
        health.set_ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.set_not_ready("out of the election: the API server has been unreachable for 31 s");
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(
            r.contains("not ready: out of the election: the API server"),
            "{r}"
        );
        health.set_ready();
        let body = get(addr, "/metrics").await;
        assert!(
            body.contains("lodestone_speaker_membership_members 3"),
            "{body}"
        );
    }
}
