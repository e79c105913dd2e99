//! The announcer: answers ARP and NDP for the addresses this node owns, on the chosen links.
//!
//! The speaker's shell tells it the desired state with [`Announcer::set_owned`]; the
//! election that produces it lives elsewhere. For each owned address the announcer
//!
//! - answers ARP requests (IPv4) or Neighbor Solicitations (IPv6) with the link's MAC,
//! - sends a burst of gratuitous ARPs / unsolicited Neighbor Advertisements when it starts
//!   announcing on a link (takeover, restart, or the link coming back up), again for every
//!   owned address when the shell asks ([`Announcer::reassert`]: after a partition heals, a peer
//!   rejoins or the API server comes back, clients may have been pointed elsewhere), and, if
//!   configured, periodically ([`AnnouncerConfig::refresh_interval`]) — only ever for addresses
//!   it owns,
//! - stops answering at once when the address is no longer owned: every answer checks the
//!   *current* desired state and plan, never a copy taken earlier,
//! - reports other machines claiming the address as [`AnnouncerEvent::Conflict`], except during
//!   the first [`HANDOFF_GRACE`] after it took the address over, when the previous owner's last
//!   gratuitous messages may still be on the wire.
//!
//! What to answer is decided by pure functions ([`arp_action`], [`ndp_action`]); the tasks
//! around them only move bytes. [`Announcer::start_dedicated`] runs all of it on a thread of
//! its own, so that answering never waits behind the speaker's planning or API traffic. The solicited-node group memberships that let IPv6
//! solicitations in are kept per interface by `groups`, over as many sockets as needed.

pub mod claims;
pub mod conflicts;
mod decide;
mod groups;
mod manager;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use lodestone_crds::ServiceKey;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::frames::{
    self, ArpFrame, ArpOp, MacAddr, NdpMessage, arp_reply, arp_request, gratuitous_arp,
    ipv6_icmp_frame, ipv6_multicast_mac, neighbor_advertisement, neighbor_solicitation,
    solicited_node_multicast,
};
use crate::interfaces::{
    AbortOnDrop, DEFAULT_EXCLUDE, InterfaceFilter, InterfacesError, LinkInfo, LinkWatcher,
    choose_interfaces, watch_links,
};
use crate::membership::ratelimit::{LogLimiter, Verdict};
use crate::stats::inc;
use crate::sys::{self, ArpSocket, GroupSocket, NdpSocket, UnicastNsSocket};
use claims::{ClaimOutcome, Claims, ProbeConfig, defend_due};
use conflicts::{ConflictLimits, ConflictReport, ConflictTracker};
use groups::Groups;
use manager::Manager;

pub use decide::{ArpAction, NdpAction, arp_action, ndp_action, usable_sender};

/// All-nodes multicast, the destination of unsolicited Neighbor Advertisements.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Pause after a socket error so a persistent one cannot spin a task.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);
/// Receive buffer: an Ethernet frame or an ICMPv6 body always fits.
const RECV_BUF: usize = 2048;
/// A failure to send an answer (e.g. a solicitation from an off-link source, which no route
/// reaches) is logged at most this often per kind and interface, with the count left out.
const SEND_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// A defence is announced twice, this far apart: after a forged claim, a neighbour that
/// took it ignores another change for its ARP lock time (Linux: 1 s).
const DEFENCE_REPEAT: Duration = Duration::from_millis(1100);
/// How often aggregated conflicts are looked at for a report.
const CONFLICT_FLUSH: Duration = Duration::from_secs(1);

/// Settings of the announcer.
#[derive(Debug, Clone)]
pub struct AnnouncerConfig {
    /// Gratuitous ARPs / unsolicited NAs per burst (0 disables bursts).
    pub gratuitous_count: u32,
    /// Pause between two messages of a burst.
    pub gratuitous_interval: Duration,
    /// Regular expression of interface names never chosen automatically.
    pub exclude: String,
    /// Longest time the link view may stay stale if netlink notifications are lost.
    pub resync_interval: Duration,
    /// Capacity of the event channel; events beyond it are dropped (and logged).
    pub event_capacity: usize,
    /// Re-send the burst for every owned address this often (`None`: only on changes and when
    /// asked). For networks whose switches or clients forget entries that see no traffic.
    pub refresh_interval: Option<Duration>,
    /// Probing of newly assigned addresses before they are announced (see [`claims`]).
    pub probe: ProbeConfig,
    /// Bounds of the conflict reports (see [`conflicts`]).
    pub conflicts: ConflictLimits,
}

impl Default for AnnouncerConfig {
    fn default() -> Self {
        AnnouncerConfig {
            gratuitous_count: 3,
            gratuitous_interval: Duration::from_millis(500),
            exclude: DEFAULT_EXCLUDE.to_owned(),
            resync_interval: Duration::from_secs(30),
            event_capacity: 1024,
            refresh_interval: None,
            probe: ProbeConfig::default(),
            conflicts: ConflictLimits::default(),
        }
    }
}

/// Something the speaker's shell should log, count or report on the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnouncerEvent {
    /// Another MAC claims an address we announce (ARP reply, gratuitous ARP or NA): one
    /// report per series of claims (see [`conflicts`]), not one per frame.
    Conflict(ConflictReport),
    /// A newly assigned address was not announced: another MAC answered its probes. It is
    /// probed again after `retry_in`.
    AddressInUse {
        /// The address.
        ip: IpAddr,
        /// Who answered.
        mac: MacAddr,
        /// Where.
        interface: String,
        /// Rounds of probes answered so far.
        attempt: u32,
        /// Until the next round.
        retry_in: Duration,
    },
    /// The address is now announced on these interfaces (sent whenever the set changes).
    Announcing {
        /// The address.
        ip: IpAddr,
        /// Interface names, ordered by index.
        interfaces: Vec<String>,
    },
    /// The address is no longer announced anywhere.
    Stopped {
        /// The address.
        ip: IpAddr,
    },
    /// A socket on an interface could not be opened or failed.
    InterfaceError {
        /// Interface name.
        interface: String,
        /// What went wrong.
        error: String,
    },
}

/// Errors starting the announcer.
#[derive(Debug, thiserror::Error)]
pub enum AnnouncerError {
    /// The interface exclusion pattern is not a valid regular expression.
    #[error("invalid interface exclusion pattern: {0}")]
    Exclude(#[from] regex::Error),
    /// The link view could not be set up.
    #[error("watching links: {0}")]
    Links(#[from] InterfacesError),
    /// The data-plane thread or its runtime could not be started.
    #[error("starting the data-plane thread: {0}")]
    Runtime(std::io::Error),
}

crate::stats::stats! {
    /// Monotonic counters of the data plane.
    pub struct Counters;
    /// A copy of [`Counters`] at one moment.
    pub struct CountersSnapshot {
        /// Frames the ARP sockets delivered to user space (the kernel filter passes only ARP).
        arp_frames_received: u64,
        /// ARP requests among them.
        arp_requests_seen: u64,
        /// ARP requests for an address this node answers for on that interface.
        arp_requests_owned: u64,
        /// ARP replies sent.
        arp_requests_answered: u64,
        /// Messages the NDP sockets delivered to user space (the kernel filter passes NS/NA).
        ndp_messages_received: u64,
        /// NDP messages dropped because their hop limit was not 255 (RFC 4861).
        ndp_dropped_hop_limit: u64,
        /// Neighbor Solicitations received.
        ns_seen: u64,
        /// Neighbor Solicitations for an address this node answers for on that interface.
        ns_owned: u64,
        /// Neighbor Advertisements sent in answer.
        ns_answered: u64,
        /// Gratuitous ARPs sent.
        gratuitous_arp_sent: u64,
        /// Unsolicited Neighbor Advertisements sent.
        unsolicited_na_sent: u64,
        /// Conflicts detected.
        conflicts: u64,
        /// Solicited-node group joins that failed (each is also reported as an
        /// [`AnnouncerEvent::InterfaceError`] naming the addresses): solicitations for those
        /// addresses go unanswered until a later attempt succeeds.
        ndp_group_join_failures: u64,
        /// ARP probes and DAD solicitations sent for newly assigned addresses.
        probes_sent: u64,
        /// Announcements sent to defend an address against a foreign claim.
        defences_sent: u64,
    }
}

/// Where each address is announced: address → (interface index → name).
type Plan = BTreeMap<IpAddr, BTreeMap<u32, String>>;

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave these plain maps half-updated in a way
    // that matters more than stopping the data plane would.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// How long after taking an address over a foreign claim to it is not reported as a conflict.
///
/// In a handoff the previous owner stops its gratuitous burst when its own election runs, a few
/// milliseconds after ours; the frames it sent meanwhile are not another machine using the
/// address. A real squatter keeps answering and is reported once this has passed.
pub const HANDOFF_GRACE: Duration = Duration::from_secs(2);

/// A link that was down at least this long may have been taken for dead by the other
/// speakers (they suspect after a missed probe and declare down 300 ms later), and its
/// addresses taken over. When it comes back it announces and answers nothing until the
/// shell confirms what this node owns ([`Announcer::set_owned`] or [`Announcer::reassert`]):
/// the shell learns of the link on another thread, and a burst sent in between would claim
/// addresses the others now serve.
pub const LINK_DOWN_HOLDS: Duration = Duration::from_millis(250);
/// A held link is used again after this long even without a confirmation (a link the shell
/// does not watch, whose addresses it keeps owning).
const LINK_HOLD_MAX: Duration = Duration::from_secs(2);

/// State shared by the handle, the manager and the per-interface tasks.
///
/// Why five `RwLock`s and not one, or a lock-free snapshot: the shell's thread writes each map
/// on its own occasions (ownership, the plan of links, the MACs, the Service names), rarely; the
/// data-plane thread reads them per frame. Separate locks keep a write of one from stalling
/// readers of another, and no reader needs two maps consistent with each other: `answers`
/// requires an address to be both owned and planned, so a frame seen between the two writes
/// errs towards not answering, which the next request or burst repairs. Reads never await while
/// holding a guard, so a writer waits at most for one frame's lookup.
#[derive(Debug)]
struct Shared {
    desired: RwLock<BTreeMap<IpAddr, Option<Vec<String>>>>,
    /// When each owned address was taken over, for [`HANDOFF_GRACE`].
    taken_at: RwLock<BTreeMap<IpAddr, Instant>>,
    plan: RwLock<Plan>,
    local_macs: RwLock<BTreeSet<MacAddr>>,
    /// The Services behind each owned address, so log lines name their object.
    services: RwLock<BTreeMap<IpAddr, Vec<ServiceKey>>>,
    counters: Counters,
    events: mpsc::Sender<AnnouncerEvent>,
    /// Bumped by [`Announcer::reassert`]: the manager re-sends every burst when it changes.
    reassert: AtomicU64,
    /// Bumped by every confirmation from the shell: links held after coming back are freed.
    confirmed: AtomicU64,
    /// Signalled when the manager has stopped (see [`Announcer::start_dedicated`]).
    finished: tokio::sync::Notify,
    /// Newly assigned addresses being probed or found in use: neither answered nor announced.
    claims: Mutex<Claims>,
    /// Foreign claims of announced addresses, aggregated.
    conflicts: Mutex<ConflictTracker>,
    /// When each announced address was last defended.
    defended: Mutex<HashMap<IpAddr, Instant>>,
    /// Per-packet failures, logged with a count instead of one line each.
    send_failures: Mutex<LogLimiter<(&'static str, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // As for the RwLocks: plain data, better kept than stopping the data plane.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The answer-time check: owned now, and planned on this interface now.
    fn answers(&self, ip: IpAddr, ifindex: u32) -> bool {
        read(&self.desired).contains_key(&ip)
            && read(&self.plan)
                .get(&ip)
                .is_some_and(|m| m.contains_key(&ifindex))
    }

    fn is_local_mac(&self, mac: MacAddr) -> bool {
        read(&self.local_macs).contains(&mac)
    }

    /// `namespace/name` of the Service(s) holding `ip`, or `-` before the first plan names them.
    fn service_of(&self, ip: IpAddr) -> String {
        read(&self.services)
            .get(&ip)
            .map_or_else(|| "-".to_owned(), crate::plan::service_names)
    }

    /// Another MAC claims an owned address: counted into its series (reported when due), unless
    /// we only just took it over. Returns whether to defend the address now (re-announce it).
    fn conflict(&self, ip: IpAddr, mac: MacAddr, interface: &str) -> bool {
        let fresh = read(&self.taken_at)
            .get(&ip)
            .is_some_and(|t| t.elapsed() < HANDOFF_GRACE);
        if fresh {
            tracing::debug!(service = %self.service_of(ip), %ip, %mac, %interface, "claim from the previous owner during handoff; not a conflict");
            return false;
        }
        inc(&self.counters.conflicts);
        let now = Instant::now();
        let report = lock(&self.conflicts).observe(ip, mac, interface, now, SystemTime::now());
        if let Some(report) = report {
            self.emit(AnnouncerEvent::Conflict(report));
        }
        let mut defended = lock(&self.defended);
        let due = defend_due(defended.get(&ip).copied(), now);
        if due {
            defended.insert(ip, now);
        }
        due
    }

    /// A foreign MAC claimed `ip` (or probes for it): remembered if `ip` is being probed.
    fn probe_heard(&self, ip: IpAddr, mac: MacAddr, interface: &str) {
        if lock(&self.claims).heard(ip, mac, interface) {
            tracing::debug!(service = %self.service_of(ip), %ip, %mac, %interface, "probe answered: another machine uses the address");
        }
    }

    /// Logs a failure to send an answer, at most once per [`SEND_FAILURE_LOG_EVERY`] per kind
    /// and interface.
    fn send_failed(&self, what: &'static str, ip: IpAddr, interface: &str, error: &std::io::Error) {
        let verdict =
            lock(&self.send_failures).check(&(what, interface.to_owned()), Instant::now());
        if let Verdict::Log { suppressed, .. } = verdict {
            tracing::warn!(service = %self.service_of(ip), %ip, %interface, %error, suppressed, "{what} failed (similar failures since the previous line: suppressed)");
        }
    }

    fn emit(&self, event: AnnouncerEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let verdict =
                    lock(&self.send_failures).check(&("event", String::new()), Instant::now());
                if let Verdict::Log { suppressed, .. } = verdict {
                    tracing::warn!(suppressed, "announcer event channel full; event dropped");
                }
            }
            // Nobody listens any more: nothing to report to.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Handle to the announcer. Cheap to clone; the work runs in tasks on the tokio runtime that
/// was current in [`Announcer::start`]. It stops on [`Announcer::shutdown`], or when every
/// handle has been dropped.
#[derive(Debug, Clone)]
pub struct Announcer {
    shared: Arc<Shared>,
    links: watch::Receiver<Arc<Vec<LinkInfo>>>,
    wake: Arc<watch::Sender<u64>>,
    stop: Arc<watch::Sender<bool>>,
    manager: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Announcer {
    /// Starts watching links and returns the handle and the event stream.
    pub async fn start(
        config: AnnouncerConfig,
    ) -> Result<(Announcer, mpsc::Receiver<AnnouncerEvent>), AnnouncerError> {
        let filter = InterfaceFilter::new(&config.exclude)?;
        let watcher = watch_links(config.resync_interval).await?;
        let (events, rx) = mpsc::channel(config.event_capacity.max(1));
        let shared = Arc::new(Shared {
            desired: RwLock::new(BTreeMap::new()),
            taken_at: RwLock::new(BTreeMap::new()),
            plan: RwLock::new(BTreeMap::new()),
            local_macs: RwLock::new(BTreeSet::new()),
            services: RwLock::new(BTreeMap::new()),
            counters: Counters::default(),
            events,
            reassert: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            finished: tokio::sync::Notify::new(),
            claims: Mutex::new(Claims::new(config.probe)),
            conflicts: Mutex::new(ConflictTracker::new(config.conflicts)),
            defended: Mutex::new(HashMap::new()),
            send_failures: Mutex::new(LogLimiter::new(SEND_FAILURE_LOG_EVERY, 64)),
        });
        let (wake, wake_rx) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        let links = watcher.subscribe();
        let manager = Manager {
            shared: shared.clone(),
            config,
            filter,
            links: watcher.subscribe(),
            _watcher: watcher,
            workers: BTreeMap::new(),
            bursts: BTreeMap::new(),
            announced: BTreeMap::new(),
            reasserted: 0,
            down_since: BTreeMap::new(),
            held: BTreeMap::new(),
            confirmed: 0,
            probes: BTreeMap::new(),
        };
        let task = tokio::spawn(manager.run(wake_rx, stop_rx));
        Ok((
            Announcer {
                shared,
                links,
                wake: Arc::new(wake),
                stop: Arc::new(stop),
                manager: Arc::new(Mutex::new(Some(task))),
            },
            rx,
        ))
    }

    /// Starts the announcer on a thread of its own, with its own single-threaded runtime: its
    /// sockets, bursts and link watch then never wait behind work on the caller's runtime (a
    /// plan over thousands of Services, decoding a large list from the API server). The handle
    /// works from any thread; the thread ends after [`Announcer::shutdown`] or once every handle
    /// is gone.
    pub async fn start_dedicated(
        config: AnnouncerConfig,
    ) -> Result<(Announcer, mpsc::Receiver<AnnouncerEvent>), AnnouncerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("data-plane".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(AnnouncerError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = Announcer::start(config).await;
                    let (shared, mut stop) = match &started {
                        Ok((a, _)) => (a.shared.clone(), a.stop.subscribe()),
                        Err(_) => {
                            let _ = tx.send(started);
                            return;
                        }
                    };
                    if tx.send(started).is_err() {
                        return;
                    }
                    // Err: every handle is gone, and with them the manager's wake-up.
                    let _ = stop.wait_for(|s| *s).await;
                    shared.finished.notified().await;
                });
            });
        if let Err(e) = spawned {
            return Err(AnnouncerError::Runtime(e));
        }
        rx.await.unwrap_or_else(|_| {
            Err(AnnouncerError::Runtime(std::io::Error::other(
                "the data-plane thread ended before starting the announcer",
            )))
        })
    }

    /// Sends the gratuitous burst again for every address owned now, on every link it is
    /// announced on. For the moments when clients may have been pointed elsewhere while this
    /// node kept owning the address: a partition healed, a peer rejoined, the API server came
    /// back. Addresses not owned are never announced.
    pub fn reassert(&self) {
        self.shared.reassert.fetch_add(1, Ordering::Relaxed);
        self.shared.confirmed.fetch_add(1, Ordering::Relaxed);
        self.wake
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// The links of this node as the announcer sees them (snapshots, updated on every
    /// change): the shell watches its own link coming back.
    pub fn links(&self) -> watch::Receiver<Arc<Vec<LinkInfo>>> {
        self.links.clone()
    }

    /// Tells the announcer which Services hold its addresses (see
    /// [`crate::plan::Plan::services_by_address`]); used only to name them in log lines.
    pub fn set_services(&self, services: BTreeMap<IpAddr, Vec<ServiceKey>>) {
        *write(&self.shared.services) = services;
    }

    /// Desired state, replacing the previous one: each owned address with the interface
    /// names to use (`None` = automatic choice, see [`choose_interfaces`]). Newly owned
    /// addresses are answered and announced with a burst; addresses no longer owned are not
    /// answered from the moment this returns (their groups are left and bursts cancelled
    /// shortly after).
    pub fn set_owned(&self, owned: BTreeMap<IpAddr, Option<Vec<String>>>) {
        self.set_owned_probing(owned, &BTreeSet::new());
    }

    /// As [`Announcer::set_owned`], but the addresses of `probe` that are not owned yet are
    /// first probed (see [`claims`]): they are answered and announced only once nobody else
    /// answered for them. For addresses new to the cluster; never for a failover, which must
    /// not wait.
    pub fn set_owned_probing(
        &self,
        owned: BTreeMap<IpAddr, Option<Vec<String>>>,
        probe: &BTreeSet<IpAddr>,
    ) {
        {
            let now = Instant::now();
            let mut claims = lock(&self.shared.claims);
            claims.retain(|ip| owned.contains_key(ip));
            let desired = read(&self.shared.desired);
            for ip in probe {
                if owned.contains_key(ip) && !desired.contains_key(ip) {
                    claims.start(*ip, now);
                }
            }
        }
        lock(&self.shared.conflicts).retain_addresses(|ip| owned.contains_key(ip));
        lock(&self.shared.defended).retain(|ip, _| owned.contains_key(ip));
        {
            let now = Instant::now();
            let mut taken = write(&self.shared.taken_at);
            taken.retain(|ip, _| owned.contains_key(ip));
            for ip in owned.keys() {
                taken.entry(*ip).or_insert(now);
            }
        }
        *write(&self.shared.desired) = owned;
        self.shared.confirmed.fetch_add(1, Ordering::Relaxed);
        self.wake
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Where each owned address is currently announced (interface names by index).
    pub fn announced_on(&self) -> BTreeMap<IpAddr, Vec<String>> {
        let desired = read(&self.shared.desired);
        read(&self.shared.plan)
            .iter()
            .filter(|(ip, m)| !m.is_empty() && desired.contains_key(*ip))
            .map(|(ip, m)| (*ip, m.values().cloned().collect()))
            .collect()
    }

    /// Owned addresses not announced because another MAC answered their probes.
    pub fn in_use(&self) -> BTreeMap<IpAddr, MacAddr> {
        lock(&self.shared.claims).in_use()
    }

    /// Owned addresses being probed or found in use (neither answered nor announced).
    pub fn pending_claims(&self) -> usize {
        // One lock at a time: set_owned_probing takes the claims before the desired state.
        let desired: Vec<IpAddr> = read(&self.shared.desired).keys().copied().collect();
        let claims = lock(&self.shared.claims);
        desired.iter().filter(|ip| claims.pending(ip)).count()
    }

    /// Series of foreign claims tracked now (bounded, see [`conflicts`]).
    pub fn conflict_series(&self) -> usize {
        lock(&self.shared.conflicts).len()
    }

    /// Current counter values.
    pub fn counters(&self) -> CountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// Stops answering everything and waits for the background tasks to end.
    pub async fn shutdown(self) {
        write(&self.shared.desired).clear();
        write(&self.shared.plan).clear();
        self.stop.send_replace(true);
        let task = self
            .manager
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            // A JoinError means the manager panicked or was cancelled; it is gone either way.
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{NeighborAdvertisement, NeighborSolicitation, arp_request, parse_arp};

    const OURS: MacAddr = MacAddr(2, 0, 0, 0, 0, 1);
    const THEIRS: MacAddr = MacAddr(2, 0, 0, 0, 0, 2);
    const OWNED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn local(m: MacAddr) -> bool {
        m == OURS
    }
    fn owned4(ip: Ipv4Addr) -> bool {
        ip == OWNED
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    fn owned6(ip: Ipv6Addr) -> bool {
        ip == v6("2001:db8::100")
    }

    #[test]
    fn arp_decisions() {
        let req = parse_arp(&arp_request(THEIRS, CLIENT, OWNED)).unwrap();
        assert_eq!(arp_action(&req, local, owned4), ArpAction::Reply);
        // Not owned (or no longer owned): silence.
        assert_eq!(arp_action(&req, local, |_| false), ArpAction::Ignore);
        let other = parse_arp(&arp_request(THEIRS, CLIENT, Ipv4Addr::new(192, 0, 2, 7))).unwrap();
        assert_eq!(arp_action(&other, local, owned4), ArpAction::Ignore);
        // A probe for our address is answered (defended).
        let probe = parse_arp(&arp_request(THEIRS, Ipv4Addr::UNSPECIFIED, OWNED)).unwrap();
        assert_eq!(arp_action(&probe, local, owned4), ArpAction::Reply);
        // Someone else's gratuitous ARP or reply for our address is a conflict.
        let garp = parse_arp(&gratuitous_arp(OWNED, THEIRS)).unwrap();
        assert_eq!(arp_action(&garp, local, owned4), ArpAction::Conflict);
        let reply = parse_arp(&arp_reply(&req, THEIRS)).unwrap();
        assert_eq!(arp_action(&reply, local, owned4), ArpAction::Conflict);
        // Our own frames are neither.
        let ours = parse_arp(&gratuitous_arp(OWNED, OURS)).unwrap();
        assert_eq!(arp_action(&ours, local, owned4), ArpAction::Ignore);
        let our_reply = parse_arp(&arp_reply(&req, OURS)).unwrap();
        assert_eq!(arp_action(&our_reply, local, owned4), ArpAction::Ignore);
        // A reply about someone else's address is ignored.
        let unrelated = parse_arp(&arp_reply(&other, THEIRS)).unwrap();
        assert_eq!(arp_action(&unrelated, local, owned4), ArpAction::Ignore);
        // Senders no reply could reach, or claiming a broadcast or multicast address: silence,
        // and no conflict either.
        for mac in [
            MacAddr::zero(),
            MacAddr::broadcast(),
            MacAddr(0x01, 0x00, 0x5e, 0, 0, 1),
        ] {
            let req = parse_arp(&arp_request(mac, CLIENT, OWNED)).unwrap();
            assert_eq!(arp_action(&req, local, owned4), ArpAction::Ignore, "{mac}");
            let garp = parse_arp(&gratuitous_arp(OWNED, mac)).unwrap();
            assert_eq!(arp_action(&garp, local, owned4), ArpAction::Ignore, "{mac}");
        }
        for ip in [Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 1)] {
            let req = parse_arp(&arp_request(THEIRS, ip, OWNED)).unwrap();
            assert_eq!(arp_action(&req, local, owned4), ArpAction::Ignore, "{ip}");
        }
    }

    #[test]
    fn ndp_decisions() {
        let target = v6("2001:db8::100");
        let client = v6("2001:db8::1");
        let ns = NdpMessage::Solicitation(NeighborSolicitation {
            target,
            source_mac: Some(THEIRS),
        });
        assert_eq!(
            ndp_action(&ns, client, Some(255), local, owned6),
            NdpAction::Reply {
                target,
                dst: client,
                solicited: true
            }
        );
        // Routed (hop limit < 255) or unknown hop limit: dropped.
        assert_eq!(
            ndp_action(&ns, client, Some(64), local, owned6),
            NdpAction::Ignore
        );
        assert_eq!(
            ndp_action(&ns, client, None, local, owned6),
            NdpAction::Ignore
        );
        assert_eq!(
            ndp_action(&ns, client, Some(255), local, |_| false),
            NdpAction::Ignore
        );
        let dad = NdpMessage::Solicitation(NeighborSolicitation {
            target,
            source_mac: None,
        });
        assert_eq!(
            ndp_action(&dad, Ipv6Addr::UNSPECIFIED, Some(255), local, owned6),
            NdpAction::Reply {
                target,
                dst: ALL_NODES,
                solicited: false
            }
        );
        // DAD with a source link-layer option is invalid.
        assert_eq!(
            ndp_action(&ns, Ipv6Addr::UNSPECIFIED, Some(255), local, owned6),
            NdpAction::Ignore
        );
        let na = |mac| {
            NdpMessage::Advertisement(NeighborAdvertisement {
                target,
                target_mac: Some(mac),
                router: false,
                solicited: false,
                override_flag: true,
            })
        };
        assert_eq!(
            ndp_action(&na(THEIRS), client, Some(255), local, owned6),
            NdpAction::Conflict {
                target,
                mac: THEIRS
            }
        );
        assert_eq!(
            ndp_action(&na(OURS), client, Some(255), local, owned6),
            NdpAction::Ignore
        );
        assert_eq!(
            ndp_action(&na(THEIRS), client, Some(255), local, |_| false),
            NdpAction::Ignore
        );
    }

    fn arb_mac() -> impl proptest::strategy::Strategy<Value = MacAddr> {
        use proptest::prelude::*;
        // Small alphabet so that collisions with "ours" happen often, with the zero and
        // broadcast MACs a forged frame may carry.
        (0u8..6).prop_map(|b| match b {
            4 => MacAddr::zero(),
            5 => MacAddr::broadcast(),
            b => MacAddr::new(2, 0, 0, 0, 0, b),
        })
    }

    proptest::proptest! {
        #[test]
        fn arp_decisions_are_sound(
            sender_mac in arb_mac(), ours in arb_mac(), reply in proptest::bool::ANY,
            s in 0u32..4, t in 0u32..4, owned in proptest::collection::btree_set(0u32..4, 0..4)
        ) {
            let base = u32::from(Ipv4Addr::new(192, 0, 2, 0));
            let (sip, tip) = (Ipv4Addr::from(base + s), Ipv4Addr::from(base + t));
            let mut frame = parse_arp(&arp_request(sender_mac, sip, tip)).unwrap();
            if reply {
                frame.op = ArpOp::Reply;
            }
            let owned_here = |ip: Ipv4Addr| owned.contains(&(u32::from(ip) - base));
            let action = arp_action(&frame, |m| m == ours, owned_here);
            match action {
                ArpAction::Reply => {
                    proptest::prop_assert!(usable_sender(&frame));
                    proptest::prop_assert!(frame.op == ArpOp::Request);
                    proptest::prop_assert!(owned_here(tip));
                    proptest::prop_assert!(sender_mac != ours);
                }
                ArpAction::Conflict => {
                    proptest::prop_assert!(usable_sender(&frame));
                    proptest::prop_assert!(owned_here(sip) && sender_mac != ours);
                }
                ArpAction::Ignore => {
                    // Never silent about a request for an owned address from a usable sender
                    // who is not us and not themselves claiming an owned address.
                    proptest::prop_assert!(
                        !usable_sender(&frame) || frame.op != ArpOp::Request || !owned_here(tip)
                            || sender_mac == ours || owned_here(sip)
                    );
                }
            }
            // Nothing owned: nothing but silence.
            proptest::prop_assert_eq!(arp_action(&frame, |m| m == ours, |_| false), ArpAction::Ignore);
        }

        #[test]
        fn ndp_decisions_are_sound(
            mac in arb_mac(), ours in arb_mac(), hop in proptest::num::u8::ANY,
            t in 0u16..4, owned in proptest::collection::btree_set(0u16..4, 0..4),
            na in proptest::bool::ANY, dad in proptest::bool::ANY
        ) {
            let target = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100 + t);
            let source = if dad { Ipv6Addr::UNSPECIFIED } else { v6("2001:db8::1") };
            let msg = if na {
                NdpMessage::Advertisement(NeighborAdvertisement {
                    target, target_mac: Some(mac), router: false, solicited: false, override_flag: true,
                })
            } else {
                NdpMessage::Solicitation(NeighborSolicitation {
                    target, source_mac: if dad { None } else { Some(mac) },
                })
            };
            let owned_here = |ip: Ipv6Addr| owned.iter().any(|o| ip.segments()[7] == 0x100 + o);
            let action = ndp_action(&msg, source, Some(hop), |m| m == ours, owned_here);
            if hop != 255 || !owned_here(target) {
                proptest::prop_assert_eq!(action, NdpAction::Ignore);
            }
            match action {
                NdpAction::Reply { target: r, dst, solicited } => {
                    proptest::prop_assert!(!na);
                    proptest::prop_assert_eq!(r, target);
                    // A solicited answer goes back to the asker; a DAD defence to all nodes.
                    proptest::prop_assert_eq!(solicited, !dad);
                    proptest::prop_assert_eq!(dst, if dad { ALL_NODES } else { source });
                }
                NdpAction::Conflict { mac: m, .. } => {
                    proptest::prop_assert!(na && m != ours);
                }
                NdpAction::Ignore => {}
            }
        }
    }

    #[test]
    fn counters_snapshot_reads_each_counter() {
        let c = Counters::default();
        inc(&c.arp_requests_seen);
        inc(&c.arp_requests_seen);
        inc(&c.conflicts);
        let s = c.snapshot();
        assert_eq!(s.arp_requests_seen, 2);
        assert_eq!(s.conflicts, 1);
        assert_eq!(
            s,
            CountersSnapshot {
                arp_requests_seen: 2,
                conflicts: 1,
                ..CountersSnapshot::default()
            }
        );
    }

    #[test]
    fn defaults_match_the_issue() {
        let c = AnnouncerConfig::default();
        assert_eq!(c.gratuitous_count, 3);
        assert_eq!(c.gratuitous_interval, Duration::from_millis(500));
        assert!(InterfaceFilter::new(&c.exclude).is_ok());
    }
}
