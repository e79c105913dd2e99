//! BGP mode: this node's sessions with the routers of its [`BGPPeer`]s, advertising the Service
//! addresses the [`BGPAdvertisement`]s give it, with itself as next hop. See `docs/bgp.md`.
//!
//! - [`routes`]: pure: which routes this node advertises to which peer (MetalLB's semantics).
//! - [`wire`]: messages, built and parsed (`netgauze-bgp-pkt` plus what it does not do).
//! - [`fsm`]: pure: the RFC 4271 state machine of one session.
//! - [`adj_rib_out`]: pure: what to send so that a peer holds exactly the desired routes.
//! - [`session`]: the I/O shell of one session (TCP, timers, MD5, TTL, BFD).
//! - [`Bgp`] (here): the seam with the speaker's loop, the sessions' manager, the status writer
//!   and the listener of passive sessions.
//!
//! The speaker's loop calls [`Bgp::update`] on every recomputation with the objects it already
//! holds; the decision runs there and then, and only a changed result reaches the manager task,
//! which starts, stops and updates sessions. Nothing here waits on the API server: the status
//! is written by its own task.

pub mod adj_rib_out;
pub mod fsm;
pub mod routes;
pub mod session;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use lodestone_crds::bgp::PasswordSecret;
use lodestone_crds::{BGPAdvertisement, BGPPeer, BGPSessionStatus};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::Digest;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::bfd::{self, Bfd};
use crate::plan::{PlanInput, ReadyEndpoints};
use crate::run::Withdrawal;
use routes::{Desired, Routes, RoutesInput};
use session::{Command, Report, SessionHandle, SessionSpec};
use wire::{Family, Notification};

/// Field manager of a node's status entries: one per node, so that each node's apply owns
/// (and may remove) only its own entry of `status.sessions`.
pub fn field_manager(node: &str) -> String {
    format!("lodestone-speaker/{node}")
}

/// How long the goodbye (withdrawals, Cease, BFD AdminDown) may take on SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// A session that could not start (its password Secret unreadable) is tried again this often.
const RETRY_START: Duration = Duration::from_secs(10);

/// The BGP metrics, exported with the speaker's.
#[derive(Clone, Debug, Default)]
pub struct BgpMetrics {
    /// Sessions in Established.
    pub sessions_established: Gauge,
    /// Prefixes advertised, summed over sessions.
    pub prefixes_advertised: Gauge,
    /// Malformed messages received (each answered with a NOTIFICATION).
    pub malformed: Counter,
    /// NOTIFICATIONs sent.
    pub notifications_sent: Counter,
    /// NOTIFICATIONs received.
    pub notifications_received: Counter,
    /// UPDATE messages sent.
    pub updates_sent: Counter,
}

impl BgpMetrics {
    /// Registers every BGP metric in `registry` (the speaker's, prefixed `lodestone_speaker`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bgp_sessions_established",
            "BGP sessions in state Established",
            self.sessions_established.clone(),
        );
        registry.register(
            "bgp_prefixes_advertised",
            "Prefixes advertised, summed over BGP sessions",
            self.prefixes_advertised.clone(),
        );
        registry.register(
            "bgp_malformed_messages",
            "Malformed BGP messages received, each answered with a NOTIFICATION",
            self.malformed.clone(),
        );
        registry.register(
            "bgp_notifications_sent",
            "BGP NOTIFICATION messages sent",
            self.notifications_sent.clone(),
        );
        registry.register(
            "bgp_notifications_received",
            "BGP NOTIFICATION messages received",
            self.notifications_received.clone(),
        );
        registry.register(
            "bgp_updates_sent",
            "BGP UPDATE messages sent",
            self.updates_sent.clone(),
        );
    }
}

/// A BGP identifier for a node without an IPv4 address: four bytes of a hash of its name,
/// never zero.
pub fn derived_router_id(node: &str) -> Ipv4Addr {
    let h = sha2::Sha256::digest(node.as_bytes());
    let mut b = [h[0], h[1], h[2], h[3]];
    if b == [0, 0, 0, 0] {
        b[3] = 1;
    }
    Ipv4Addr::from(b)
}

/// What a BGPPeer means for this node's session with it (the password is read later, from
/// the Secret the second item names).
pub fn session_spec(
    peer: &BGPPeer,
    node: &Node,
) -> Result<(SessionSpec, Option<PasswordSecret>), String> {
    let name = peer.metadata.name.clone().unwrap_or_default();
    let s = &peer.spec;
    let addr: IpAddr = s
        .peer_address
        .trim()
        .parse()
        .map_err(|_| format!("peerAddress {:?} is not an IP address", s.peer_address))?;
    let source = s
        .source_address
        .as_deref()
        .map(|a| {
            a.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("sourceAddress {a:?} is not an IP address"))
        })
        .transpose()?;
    let hold = s.hold_time().map_err(|e| format!("holdTime: {e}"))?;
    let hold = u16::try_from(hold.as_secs()).map_err(|_| "holdTime: above 65535s".to_owned())?;
    if hold == 1 || hold == 2 {
        return Err("holdTime must be 0s or at least 3s".into());
    }
    let keepalive = s
        .keepalive_time()
        .map_err(|e| format!("keepaliveTime: {e}"))?;
    let connect_time = s.connect_time().map_err(|e| format!("connectTime: {e}"))?;
    let bgp_id = match s.router_id.as_deref() {
        Some(id) => id
            .trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("routerID {id:?} is not an IPv4 address"))?,
        None => match crate::plan::internal_ip(node) {
            Some(IpAddr::V4(a)) => a,
            _ => derived_router_id(node.metadata.name.as_deref().unwrap_or_default()),
        },
    };
    let ebgp = s.my_asn != s.peer_asn;
    let spec = SessionSpec {
        peer_name: name,
        peer: SocketAddr::new(addr.to_canonical(), s.peer_port),
        source,
        ttl: if ebgp && !s.ebgp_multi_hop { 1 } else { 255 },
        fsm: fsm::Config {
            local_asn: s.my_asn,
            peer_asn: s.peer_asn,
            hold_time: hold,
            keepalive,
            bgp_id,
            passive: s.passive,
            connect_time,
            families: vec![Family::Ipv4, Family::Ipv6],
        },
        password: None,
        bfd: s.bfd.as_ref().map(|b| bfd::fsm::Config {
            desired_min_tx: Duration::from_millis(u64::from(b.transmit_interval)),
            required_min_rx: Duration::from_millis(u64::from(b.receive_interval)),
            detect_mult: b.detect_multiplier,
            passive: b.passive_mode,
        }),
    };
    Ok((spec, s.password_secret.clone()))
}

/// One peer as the manager needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    spec: SessionSpec,
    password: Option<PasswordSecret>,
    routes: Arc<Routes>,
    /// `status.summary` to write, when this node is the one that writes it.
    summary: Option<String>,
}

/// Whether a node out of the layer 2 election also withdraws its BGP routes (keeping its
/// sessions, so that coming back is one UPDATE). See "Leaving the election" in `docs/bgp.md`.
///
/// Yes when its view of the cluster is stale or it is cut off while the others are not: it
/// could advertise an address that meanwhile went to another Service, or a Local Service whose
/// endpoint moved, and the other nodes' routes carry the traffic. Each of these reasons needs
/// another speaker that hears the API server (or none at all), so an outage of the API server
/// for the whole cluster withdraws nothing.
/// No for a membership key mismatch: BGP reads nothing from the membership, the node's view is
/// fresh, and a rotation gone wrong on every node must not take BGP down with layer 2.
pub fn withdraws_routes(reason: &Withdrawal) -> bool {
    match reason {
        Withdrawal::ApiLost { .. }
        | Withdrawal::CutOff
        | Withdrawal::LinkReturned
        | Withdrawal::StaleAfterIsolation => true,
        Withdrawal::KeyringMismatch => false,
    }
}

/// The node that writes a peer's `status.summary`: the election winner among the alive nodes
/// the peer selects, so that every speaker agrees on one writer.
pub fn summary_writer<'a>(peer: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    crate::election::owner(&format!("bgppeer/{peer}"), nodes)
}

/// `2/3 Established`, from the sessions the peer's status holds.
pub fn summary(sessions: &[BGPSessionStatus]) -> String {
    let up = sessions.iter().filter(|s| s.state == "Established").count();
    format!("{up}/{} Established", sessions.len())
}

enum ToManager {
    Desired(BTreeMap<String, Wanted>),
    Shutdown(oneshot::Sender<()>),
}

/// BGP in the speaker: the handle the run loop holds.
pub struct Bgp {
    node: String,
    peers: Store<BGPPeer>,
    adverts: Store<BGPAdvertisement>,
    tx: mpsc::UnboundedSender<ToManager>,
    last: Option<BTreeMap<String, Wanted>>,
    logged: BTreeSet<String>,
    /// Routes withdrawn because the node left the election (for the log line on a change).
    withdrawn: bool,
    task: tokio::task::JoinHandle<()>,
    /// The two reflectors' tasks, stopped with the manager.
    watches: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Bgp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bgp").field("node", &self.node).finish()
    }
}

impl Bgp {
    /// Watches BGPPeers and BGPAdvertisements (waking `notify` on changes) and starts the
    /// manager. Password Secrets are read from `namespace`.
    pub(crate) fn start(
        client: &Client,
        notify: &Arc<Notify>,
        api: &Arc<crate::run::ApiHealth>,
        node: &str,
        namespace: &str,
        metrics: BgpMetrics,
    ) -> Bgp {
        let mut watches = Vec::new();
        let peers = crate::run::watch_kind(
            client,
            "BGPPeer",
            Arc::clone(notify),
            Arc::clone(api),
            &mut watches,
            crate::trim::metadata,
        );
        let adverts = crate::run::watch_kind(
            client,
            "BGPAdvertisement",
            Arc::clone(notify),
            Arc::clone(api),
            &mut watches,
            crate::trim::metadata,
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(manager(
            client.clone(),
            node.to_owned(),
            namespace.to_owned(),
            rx,
            metrics,
        ));
        Bgp {
            node: node.to_owned(),
            peers,
            adverts,
            tx,
            last: None,
            logged: BTreeSet::new(),
            withdrawn: false,
            task,
            watches,
        }
    }

    /// The seam: recomputes this node's sessions and routes from the loop's objects (and the
    /// ready endpoints layer 2's plan read from them) and hands a changed result to the
    /// manager. `out_of_election`: why this node left the layer 2 election, if it did (see
    /// [`withdraws_routes`]). Cheap when nothing changed.
    pub fn update(
        &mut self,
        input: &PlanInput,
        ready: &ReadyEndpoints,
        out_of_election: Option<&Withdrawal>,
    ) {
        let peers = self.peers.state();
        let adverts = self.adverts.state();
        let withdraw = out_of_election.filter(|w| withdraws_routes(w));
        if withdraw.is_some() != self.withdrawn {
            self.withdrawn = withdraw.is_some();
            match withdraw {
                Some(reason) => {
                    tracing::warn!(%reason, "withdrawing every BGP route; the sessions stay up")
                }
                None => tracing::info!("advertising BGP routes again"),
            }
        }
        let desired: Desired = routes::desired(&RoutesInput {
            node_name: &self.node,
            nodes: &input.nodes,
            services: &input.services,
            ready,
            pools: &input.pools,
            advertisements: &adverts,
            peers: &peers,
            class: &input.class,
        });
        let mut problems = desired.problems;
        let node = input
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node.as_str()));
        let mut wanted = BTreeMap::new();
        for (name, routes) in desired.peers {
            let (Some(peer), Some(node)) = (
                peers
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(name.as_str())),
                node,
            ) else {
                continue;
            };
            let candidates: Vec<&str> = input
                .nodes
                .iter()
                .filter(|n| {
                    n.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| input.alive.contains(n))
                })
                .filter(|n| routes::peer_selects_node(peer, n, &mut Vec::new()))
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            let summary = (summary_writer(&name, candidates) == Some(self.node.as_str()))
                .then(|| summary(&peer.status.clone().unwrap_or_default().sessions));
            match session_spec(peer, node) {
                Ok((spec, password)) => {
                    let routes = if withdraw.is_some() {
                        Routes::new()
                    } else {
                        routes
                    };
                    wanted.insert(
                        name,
                        Wanted {
                            spec,
                            password,
                            routes: Arc::new(routes),
                            summary,
                        },
                    );
                }
                Err(e) => problems.push(format!("BGPPeer {name}: {e}")),
            }
        }
        for p in &problems {
            if self.logged.insert(p.clone()) {
                tracing::warn!(problem = %p, "BGP configuration problem");
            }
        }
        self.logged.retain(|p| problems.contains(p));
        if self.last.as_ref() != Some(&wanted) {
            self.last = Some(wanted.clone());
            let _ = self.tx.send(ToManager::Desired(wanted));
        }
    }

    /// On SIGTERM: every session withdraws its routes and closes with a Cease
    /// (administrative shutdown); BFD sessions send AdminDown. Returns within
    /// [`SHUTDOWN_TIMEOUT`] or so.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(ToManager::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT * 2, rx).await;
        }
        self.task.abort();
        for w in &self.watches {
            w.abort();
        }
    }
}

/// Reads the MD5 password from its Secret.
async fn read_password(
    client: &Client,
    namespace: &str,
    s: &PasswordSecret,
) -> Result<Vec<u8>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let key = s
        .key
        .as_deref()
        .unwrap_or(lodestone_crds::bgp::DEFAULT_PASSWORD_KEY);
    let secret = api
        .get(&s.name)
        .await
        .map_err(|e| format!("reading Secret {namespace}/{}: {e}", s.name))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {namespace}/{} has no key {key:?}", s.name))?;
    if value.0.len() > crate::sys::TCP_MD5_MAX_KEY {
        return Err(format!(
            "the password in Secret {namespace}/{} is longer than {} bytes",
            s.name,
            crate::sys::TCP_MD5_MAX_KEY
        ));
    }
    Ok(value.0.clone())
}

/// Status of one session as written to the peer.
fn status_entry(node: &str, r: &Report, since: &str) -> BGPSessionStatus {
    BGPSessionStatus {
        node: node.to_owned(),
        state: r.state.as_str().to_owned(),
        advertised_prefixes: i64::try_from(r.advertised).unwrap_or(i64::MAX),
        bfd: r.bfd.map(|b| b.as_str().to_owned()),
        last_error: r.last_error.clone(),
        since: Some(since.to_owned()),
    }
}

/// What this node writes on one peer's status: its session entry and, if it is the writer,
/// the summary. `None` for both removes what it wrote.
type StatusWrite = (Option<BGPSessionStatus>, Option<String>);

/// Writes each peer's entry for this node (or removes it), latest value only, retrying
/// failures; never blocks the sessions.
async fn status_writer(
    client: Client,
    node: String,
    mut rx: mpsc::UnboundedReceiver<(String, StatusWrite)>,
) {
    let api: Api<BGPPeer> = Api::all(client);
    let params = PatchParams::apply(&field_manager(&node)).force();
    let mut pending: BTreeMap<String, StatusWrite> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((peer, s)) => {
                    pending.insert(peer, s);
                }
                None => return,
            }
        }
        while let Ok((peer, s)) = rx.try_recv() {
            pending.insert(peer, s);
        }
        let mut failed = BTreeMap::new();
        for (peer, s) in std::mem::take(&mut pending) {
            let sessions: Vec<&BGPSessionStatus> = s.0.iter().collect();
            let mut status = serde_json::json!({"sessions": sessions});
            if let Some(summary) = &s.1 {
                status["summary"] = summary.clone().into();
            }
            let body = serde_json::json!({
                "apiVersion": "lodestone.dev/v1alpha1",
                "kind": "BGPPeer",
                "metadata": {"name": peer},
                "status": status,
            });
            match api.patch_status(&peer, &params, &Patch::Apply(&body)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(error) => {
                    tracing::debug!(%peer, %error, "writing the BGPPeer status failed; will retry");
                    failed.insert(peer, s);
                }
            }
        }
        if !failed.is_empty() {
            pending = failed;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A listener on port 179 for passive sessions, with the MD5 keys of their peers.
fn passive_listener(keys: &[(IpAddr, Vec<u8>)]) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))
        .or_else(|_| Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)))?;
    let v6 = s.domain().map(|d| d == Domain::IPV6).unwrap_or(false);
    if v6 {
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    for (peer, key) in keys {
        // A dual-stack socket sees IPv4 peers as v4-mapped addresses.
        let addr = match (v6, peer) {
            (true, IpAddr::V4(a)) => IpAddr::V6(a.to_ipv6_mapped()),
            _ => *peer,
        };
        crate::sys::set_tcp_md5(&s, addr, key)?;
    }
    let any: SocketAddr = if v6 {
        (
            std::net::Ipv6Addr::UNSPECIFIED,
            lodestone_crds::bgp::BGP_PORT,
        )
            .into()
    } else {
        (Ipv4Addr::UNSPECIFIED, lodestone_crds::bgp::BGP_PORT).into()
    };
    s.bind(&any.into())?;
    s.listen(16)?;
    TcpListener::from_std(s.into())
}

async fn accept_loop(listener: TcpListener, tx: mpsc::UnboundedSender<(TcpStream, SocketAddr)>) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                if tx.send((stream, from)).is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(%error, "accepting a BGP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The peers of passive sessions with their MD5 keys (empty: none).
type PassiveKeys = Vec<(IpAddr, Vec<u8>)>;

struct Manager {
    client: Client,
    node: String,
    namespace: String,
    metrics: BgpMetrics,
    bfd: Bfd,
    sessions: BTreeMap<String, (Wanted, SessionHandle)>,
    wanted: BTreeMap<String, Wanted>,
    reports_tx: mpsc::UnboundedSender<Report>,
    status_tx: mpsc::UnboundedSender<(String, StatusWrite)>,
    since: BTreeMap<String, (fsm::State, String)>,
    /// The last entry and summary sent per peer.
    written: BTreeMap<String, StatusWrite>,
    listener: Option<(PassiveKeys, crate::interfaces::AbortOnDrop<()>)>,
    accepted_tx: mpsc::UnboundedSender<(TcpStream, SocketAddr)>,
}

impl Manager {
    async fn reconcile(&mut self) {
        // Stop what is no longer wanted, or wanted differently.
        let stale: Vec<String> = self
            .sessions
            .iter()
            .filter(|(name, (w, _))| {
                self.wanted
                    .get(*name)
                    .is_none_or(|now| now.spec != w.spec || now.password != w.password)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((_, handle)) = self.sessions.remove(&name) {
                let removed = !self.wanted.contains_key(&name);
                let subcode = if removed {
                    wire::codes::CEASE_PEER_DECONFIGURED
                } else {
                    6 // other configuration change
                };
                tracing::info!(peer = %name, removed, "stopping BGP session");
                handle
                    .stop(Notification::cease(subcode), SHUTDOWN_TIMEOUT)
                    .await;
                if removed {
                    self.since.remove(&name);
                    self.written.remove(&name);
                    let _ = self.status_tx.send((name, (None, None)));
                }
            }
        }
        let mut passive_keys = Vec::new();
        let wanted: Vec<(String, Wanted)> = self
            .wanted
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, w) in wanted {
            if let Some((old, handle)) = self.sessions.get_mut(&name) {
                if old.routes != w.routes {
                    handle.send(Command::Routes(Arc::clone(&w.routes)));
                    old.routes = Arc::clone(&w.routes);
                }
                old.summary = w.summary.clone();
                self.write_status(&name, None);
            } else {
                let mut spec = w.spec.clone();
                if let Some(secret) = &w.password {
                    match read_password(&self.client, &self.namespace, secret).await {
                        Ok(p) => spec.password = Some(p),
                        Err(e) => {
                            tracing::warn!(peer = %name, error = %e, "cannot start the BGP session: no password");
                            let r = Report {
                                peer_name: name.clone(),
                                state: fsm::State::Idle,
                                advertised: 0,
                                last_error: Some(e),
                                bfd: None,
                            };
                            self.on_report(r);
                            continue;
                        }
                    }
                }
                let bfd_session = spec.bfd.and_then(|cfg| match self.bfd.session(spec.peer.ip(), cfg) {
                    Ok(s) => Some(s),
                    Err(error) => {
                        tracing::warn!(peer = %name, %error, "cannot start BFD; the session runs without it");
                        None
                    }
                });
                tracing::info!(peer = %name, address = %spec.peer, passive = spec.fsm.passive, bfd = bfd_session.is_some(), "starting BGP session");
                let handle = session::spawn(
                    spec,
                    Arc::clone(&w.routes),
                    self.reports_tx.clone(),
                    self.metrics.clone(),
                    bfd_session,
                );
                self.sessions.insert(name.clone(), (w.clone(), handle));
            }
            if let Some((_, h)) = self.sessions.get(&name)
                && h.spec.fsm.passive
            {
                passive_keys.push((
                    h.spec.peer.ip(),
                    h.spec.password.clone().unwrap_or_default(),
                ));
            }
        }
        passive_keys.sort();
        self.ensure_listener(passive_keys);
    }

    fn ensure_listener(&mut self, keys: Vec<(IpAddr, Vec<u8>)>) {
        if keys.is_empty() {
            self.listener = None;
            return;
        }
        if self.listener.as_ref().is_some_and(|(k, _)| *k == keys) {
            return;
        }
        // Drop the old one first: the new one binds the same port.
        self.listener = None;
        let md5: Vec<(IpAddr, Vec<u8>)> = keys
            .iter()
            .filter(|(_, k)| !k.is_empty())
            .cloned()
            .collect();
        match passive_listener(&md5) {
            Ok(l) => {
                let task = tokio::spawn(accept_loop(l, self.accepted_tx.clone()));
                self.listener = Some((keys, crate::interfaces::AbortOnDrop(task)));
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen on port 179 for passive BGP sessions")
            }
        }
    }

    fn on_accept(&mut self, stream: TcpStream, from: SocketAddr) {
        let ip = from.ip().to_canonical();
        match self
            .sessions
            .values()
            .find(|(_, h)| h.spec.fsm.passive && h.spec.peer.ip() == ip)
        {
            Some((_, h)) => {
                if let Err(error) = socket2::SockRef::from(&stream).set_tcp_nodelay(true) {
                    tracing::debug!(%error, "TCP_NODELAY");
                }
                h.send(Command::Accepted(stream));
            }
            None => tracing::debug!(%from, "connection from an unknown BGP peer refused"),
        }
    }

    fn on_report(&mut self, r: Report) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let since = match self.since.get(&r.peer_name) {
            Some((state, at)) if *state == r.state => at.clone(),
            _ => {
                self.since
                    .insert(r.peer_name.clone(), (r.state, now.clone()));
                now
            }
        };
        let entry = status_entry(&self.node, &r, &since);
        self.write_status(&r.peer_name, Some(entry));
    }

    /// Sends this node's entry (the new one, or the last one) and its summary, if either
    /// changed.
    fn write_status(&mut self, peer: &str, entry: Option<BGPSessionStatus>) {
        let last = self.written.get(peer).cloned().unwrap_or_default();
        let entry = entry.or(last.0.clone());
        let summary = self.wanted.get(peer).and_then(|w| w.summary.clone());
        let now = (entry, summary);
        if now != last && now.0.is_some() {
            self.written.insert(peer.to_owned(), now.clone());
            let _ = self.status_tx.send((peer.to_owned(), now));
        }
    }

    async fn shutdown(&mut self) {
        let sessions = std::mem::take(&mut self.sessions);
        let stops = sessions.into_values().map(|(_, h)| {
            h.stop(
                Notification::cease(wire::codes::CEASE_ADMIN_SHUTDOWN),
                SHUTDOWN_TIMEOUT,
            )
        });
        futures::future::join_all(stops).await;
        self.listener = None;
    }
}

async fn manager(
    client: Client,
    node: String,
    namespace: String,
    mut rx: mpsc::UnboundedReceiver<ToManager>,
    metrics: BgpMetrics,
) {
    let (reports_tx, mut reports_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let (accepted_tx, mut accepted_rx) = mpsc::unbounded_channel();
    let writer = crate::interfaces::AbortOnDrop(tokio::spawn(status_writer(
        client.clone(),
        node.clone(),
        status_rx,
    )));
    let mut m = Manager {
        client,
        node,
        namespace,
        metrics,
        bfd: Bfd::new(),
        sessions: BTreeMap::new(),
        wanted: BTreeMap::new(),
        reports_tx,
        status_tx,
        since: BTreeMap::new(),
        written: BTreeMap::new(),
        listener: None,
        accepted_tx,
    };
    let mut retry = tokio::time::interval(RETRY_START);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(ToManager::Desired(w)) => {
                    m.wanted = w;
                    m.reconcile().await;
                }
                Some(ToManager::Shutdown(done)) => {
                    m.shutdown().await;
                    // The last state of each session, best effort, before the process ends.
                    while let Ok(r) = reports_rx.try_recv() {
                        m.on_report(r);
                    }
                    // Closing the channel lets the writer finish what is queued, then end.
                    drop(m);
                    let mut writer = writer;
                    let _ = tokio::time::timeout(Duration::from_millis(300), &mut writer.0).await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    m.shutdown().await;
                    return;
                }
            },
            Some(r) = reports_rx.recv() => m.on_report(r),
            Some((stream, from)) = accepted_rx.recv() => m.on_accept(stream, from),
            _ = retry.tick() => {
                if m.wanted.keys().any(|k| !m.sessions.contains_key(k)) {
                    m.reconcile().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn peer(spec: serde_json::Value) -> BGPPeer {
        serde_json::from_value(json!({"metadata": {"name": "tor"}, "spec": spec})).unwrap()
    }

    fn node(ip: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
        .unwrap()
    }

    #[test]
    fn routes_go_with_a_stale_or_cut_off_view_not_with_a_key_mismatch() {
        let silent = Duration::from_secs(40);
        for (reason, withdraws) in [
            (Withdrawal::ApiLost { silent }, true),
            (Withdrawal::CutOff, true),
            (Withdrawal::LinkReturned, true),
            (Withdrawal::StaleAfterIsolation, true),
            (Withdrawal::KeyringMismatch, false),
        ] {
            assert_eq!(withdraws_routes(&reason), withdraws, "{reason}");
        }
        // An API server down for every node takes no node out of the election: with no peer
        // reporting a fresh view, nobody withdraws, in either mode.
        let everyone_lost_it = crate::run::withdrawal(crate::run::WithdrawalInput {
            api_silent_for: silent,
            api_loss_timeout: Duration::from_secs(30),
            fresh_peer_for: None,
            keyring_failing: false,
            alone: false,
            view_fresh: false,
            isolated: false,
            link_returned: false,
        });
        assert_eq!(everyone_lost_it, None);
    }

    #[test]
    fn session_specs_follow_the_peer() {
        let (s, pw) = session_spec(
            &peer(
                json!({"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1",
                "holdTime": "9s", "passwordSecret": {"name": "md5"},
                "bfd": {"receiveInterval": 100, "transmitInterval": 150, "detectMultiplier": 4}}),
            ),
            &node("192.0.2.11"),
        )
        .unwrap();
        assert_eq!(s.peer, "192.0.2.1:179".parse().unwrap());
        assert_eq!(s.ttl, 1, "directly connected eBGP");
        assert_eq!(s.fsm.hold_time, 9);
        assert_eq!(s.fsm.bgp_id, "192.0.2.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(pw.unwrap().name, "md5");
        let b = s.bfd.unwrap();
        assert_eq!(
            (b.desired_min_tx, b.required_min_rx, b.detect_mult),
            (Duration::from_millis(150), Duration::from_millis(100), 4)
        );
        // iBGP, and multihop eBGP, leave with TTL 255.
        let (s, _) = session_spec(
            &peer(json!({"myASN": 64512, "peerASN": 64512, "peerAddress": "2001:db8::1"})),
            &node("2001:db8::11"),
        )
        .unwrap();
        assert_eq!(s.ttl, 255);
        // No IPv4 address on the node: an identifier derived from its name.
        assert_eq!(s.fsm.bgp_id, derived_router_id("n1"));
        let (s, _) = session_spec(
            &peer(json!({"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1", "ebgpMultiHop": true})),
            &node("192.0.2.11"),
        )
        .unwrap();
        assert_eq!(s.ttl, 255);
        assert!(
            session_spec(
                &peer(json!({"myASN": 1, "peerASN": 2, "peerAddress": "x"})),
                &node("192.0.2.11")
            )
            .is_err()
        );
    }
}
