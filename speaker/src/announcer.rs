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
mod groups;

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

/// What to do with a received ARP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpAction {
    /// Answer it: the target is ours here.
    Reply,
    /// Someone else claims an address we own.
    Conflict,
    /// Not our business.
    Ignore,
}

/// Decides what to do with an ARP frame received on a link.
///
/// `owned_here(ip)` says whether we announce `ip` on that link right now; `is_local(mac)`
/// whether a MAC is one of this host's (our own frames are not conflicts).
pub fn arp_action(
    frame: &ArpFrame,
    is_local: impl Fn(MacAddr) -> bool,
    owned_here: impl Fn(Ipv4Addr) -> bool,
) -> ArpAction {
    // A sender no unicast reply can reach (a zero, broadcast or multicast MAC) or one claiming a
    // broadcast or multicast address is malformed or forged: a reply would go to every host, or
    // to none, and such a "claim" is no conflict.
    if !usable_sender(frame) {
        return ArpAction::Ignore;
    }
    // Any frame whose *sender* is an address we own, from a MAC that is not ours, means
    // another machine uses it: a reply, a gratuitous ARP, or a request it sends from it.
    if !frame.sender_ip.is_unspecified()
        && owned_here(frame.sender_ip)
        && !is_local(frame.sender_mac)
    {
        return ArpAction::Conflict;
    }
    if frame.op == ArpOp::Request && owned_here(frame.target_ip) && !is_local(frame.sender_mac) {
        return ArpAction::Reply;
    }
    ArpAction::Ignore
}

/// Whether an ARP frame's sender is a host that could own an address and take a unicast reply.
pub fn usable_sender(frame: &ArpFrame) -> bool {
    let mac = frame.sender_mac;
    mac.is_unicast()
        && !mac.is_zero()
        && !frame.sender_ip.is_broadcast()
        && !frame.sender_ip.is_multicast()
}

/// What to do with a received NDP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdpAction {
    /// Send a Neighbor Advertisement for `target` to `dst`.
    Reply {
        /// Owned address being resolved.
        target: Ipv6Addr,
        /// Where to send the advertisement.
        dst: Ipv6Addr,
        /// S flag (false when answering a DAD probe, which goes to all-nodes).
        solicited: bool,
    },
    /// Another machine advertises an address we own.
    Conflict {
        /// The address.
        target: Ipv6Addr,
        /// Its MAC.
        mac: MacAddr,
    },
    /// Drop it.
    Ignore,
}

/// Decides what to do with an NDP message from `source` that arrived with `hop_limit`.
pub fn ndp_action(
    msg: &NdpMessage,
    source: Ipv6Addr,
    hop_limit: Option<u8>,
    is_local: impl Fn(MacAddr) -> bool,
    owned_here: impl Fn(Ipv6Addr) -> bool,
) -> NdpAction {
    // RFC 4861 §7.1: a hop limit below 255 means the packet was routed: not from this link.
    if hop_limit != Some(255) {
        return NdpAction::Ignore;
    }
    match msg {
        NdpMessage::Solicitation(ns) => {
            if !owned_here(ns.target) {
                return NdpAction::Ignore;
            }
            if source.is_unspecified() {
                // DAD probe for our address: defend it on all-nodes (RFC 4861 §7.2.4). A
                // probe carrying a source link-layer option is invalid (§7.1.1).
                if ns.source_mac.is_some() {
                    return NdpAction::Ignore;
                }
                return NdpAction::Reply {
                    target: ns.target,
                    dst: ALL_NODES,
                    solicited: false,
                };
            }
            if ns.source_mac.is_some_and(&is_local) {
                return NdpAction::Ignore;
            }
            NdpAction::Reply {
                target: ns.target,
                dst: source,
                solicited: true,
            }
        }
        NdpMessage::Advertisement(na) => match na.target_mac {
            Some(mac) if owned_here(na.target) && !is_local(mac) => NdpAction::Conflict {
                target: na.target,
                mac,
            },
            _ => NdpAction::Ignore,
        },
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

/// The sockets and receive tasks of one interface.
struct Worker {
    name: String,
    mac: MacAddr,
    arp: Option<(Arc<AsyncFd<ArpSocket>>, AbortOnDrop<()>)>,
    ndp: Option<(Arc<AsyncFd<NdpSocket>>, AbortOnDrop<()>)>,
    /// Receives the unicast solicitations the raw socket cannot see; answers go out
    /// through `ndp`.
    unicast_ns: Option<AbortOnDrop<()>>,
    /// Solicited-node memberships of the IPv6 addresses planned here.
    groups: Groups<GroupSocket>,
}

/// Turns desired state + link view into a plan, sockets, group memberships and bursts.
struct Manager {
    shared: Arc<Shared>,
    config: AnnouncerConfig,
    filter: InterfaceFilter,
    links: watch::Receiver<Arc<Vec<LinkInfo>>>,
    _watcher: LinkWatcher,
    workers: BTreeMap<u32, Worker>,
    bursts: BTreeMap<(IpAddr, u32), AbortOnDrop<()>>,
    announced: BTreeMap<IpAddr, Vec<String>>,
    /// The [`Shared::reassert`] generation last acted on.
    reasserted: u64,
    /// Since when each link has been down (by index).
    down_since: BTreeMap<u32, Instant>,
    /// Links back from a long outage, not used until the shell confirms or the time given
    /// here (see [`LINK_DOWN_HOLDS`]).
    held: BTreeMap<u32, Instant>,
    /// The [`Shared::confirmed`] generation last acted on.
    confirmed: u64,
    /// Probe tasks by (address, interface index), with the round they probe for.
    probes: BTreeMap<(IpAddr, u32), (u32, AbortOnDrop<()>)>,
}

impl Manager {
    async fn run(mut self, mut wake: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
        // The first tick of an interval is immediate; the refresh starts one period in.
        let period = self.config.refresh_interval.filter(|p| !p.is_zero());
        let mut refresh =
            period.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
        let mut flush = tokio::time::interval(CONFLICT_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            self.reconcile();
            let claim_due = lock(&self.shared.claims).next_deadline();
            let hold_ends = self.held.values().min().copied();
            let hold_ends = match (hold_ends, claim_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                r = self.links.changed() => if r.is_err() { break },
                () = async { match hold_ends {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                } } => {}
                // Err: every handle is gone, so nobody can change the desired state again.
                r = wake.changed() => if r.is_err() { break },
                r = stop.changed() => if r.is_err() { break },
                _ = flush.tick() => {
                    let reports = lock(&self.shared.conflicts).flush(Instant::now());
                    for report in reports {
                        self.shared.emit(AnnouncerEvent::Conflict(report));
                    }
                }
                _ = async { match refresh.as_mut() {
                    Some(r) => { r.tick().await; }
                    None => std::future::pending().await,
                } } => {
                    self.shared.reassert.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        write(&self.shared.plan).clear();
        self.bursts.clear();
        self.probes.clear();
        self.workers.clear();
        for ip in std::mem::take(&mut self.announced).into_keys() {
            self.shared.emit(AnnouncerEvent::Stopped { ip });
        }
        self.shared.finished.notify_one();
    }

    fn reconcile(&mut self) {
        let links = self.links.borrow_and_update().clone();
        let desired = read(&self.shared.desired).clone();
        *write(&self.shared.local_macs) = links.iter().filter_map(|l| l.mac).collect();

        let confirmed = self.shared.confirmed.load(Ordering::Relaxed);
        if confirmed != self.confirmed {
            self.confirmed = confirmed;
            self.held.clear();
        }
        let now = Instant::now();
        for l in links.iter() {
            if !l.up {
                self.down_since.entry(l.index).or_insert(now);
            } else if let Some(since) = self.down_since.remove(&l.index)
                && now.duration_since(since) >= LINK_DOWN_HOLDS
            {
                tracing::debug!(interface = %l.name, "link back after a long outage: held until the shell confirms");
                self.held.insert(l.index, now + LINK_HOLD_MAX);
            }
        }
        self.held.retain(|index, until| {
            let keep = *until > now;
            if !keep {
                tracing::debug!(index, "held link released without a confirmation");
            }
            keep
        });
        self.down_since
            .retain(|index, _| links.iter().any(|l| l.index == *index));

        // Probes due for a decision are decided first: a free address joins the plan below.
        let outcomes = lock(&self.shared.claims).step(now);
        for outcome in outcomes {
            match outcome {
                ClaimOutcome::Free(ip) => {
                    tracing::debug!(service = %self.shared.service_of(ip), %ip, "probes unanswered: the address is free");
                }
                ClaimOutcome::InUse {
                    ip,
                    mac,
                    interface,
                    attempt,
                    retry_in,
                } => self.shared.emit(AnnouncerEvent::AddressInUse {
                    ip,
                    mac,
                    interface,
                    attempt,
                    retry_in,
                }),
                ClaimOutcome::Reprobe(_) => {}
            }
        }
        let (pending, probing): (BTreeSet<IpAddr>, BTreeMap<IpAddr, u32>) = {
            let claims = lock(&self.shared.claims);
            (
                desired
                    .keys()
                    .filter(|ip| claims.pending(ip))
                    .copied()
                    .collect(),
                desired
                    .keys()
                    .filter_map(|ip| claims.probing(ip).map(|a| (*ip, a)))
                    .collect(),
            )
        };
        let mut probe_plan: Plan = BTreeMap::new();
        let mut plan: Plan = BTreeMap::new();
        for (ip, requested) in &desired {
            let chosen = choose_interfaces(*ip, requested.as_deref(), &links, &self.filter);
            if pending.contains(ip) {
                if probing.contains_key(ip) {
                    probe_plan.insert(
                        *ip,
                        chosen
                            .iter()
                            .filter(|l| !self.held.contains_key(&l.index))
                            .map(|l| (l.index, l.name.clone()))
                            .collect(),
                    );
                }
                continue;
            }
            plan.insert(
                *ip,
                chosen
                    .iter()
                    .filter(|l| !self.held.contains_key(&l.index))
                    .map(|l| (l.index, l.name.clone()))
                    .collect(),
            );
        }

        // A worker whose link vanished, or was renamed or got a new MAC, starts afresh; a new
        // MAC must also be announced anew (below), or neighbours keep the old one.
        let mut replaced = BTreeSet::new();
        self.workers.retain(|index, w| {
            let same = links
                .iter()
                .any(|l| l.index == *index && l.name == w.name && l.mac == Some(w.mac));
            if !same {
                replaced.insert(*index);
            }
            same
        });
        for (ip, interfaces) in plan.iter_mut() {
            let v4 = ip.is_ipv4();
            interfaces.retain(|index, name| {
                let Some(mac) = links.iter().find(|l| l.index == *index).and_then(|l| l.mac) else {
                    return false;
                };
                match self.ensure_socket(*index, name, mac, v4) {
                    Ok(()) => true,
                    Err(e) => {
                        self.shared.emit(AnnouncerEvent::InterfaceError {
                            interface: name.clone(),
                            error: e.to_string(),
                        });
                        false
                    }
                }
            });
        }

        // Probes go out as whole frames on the ARP socket, and an IPv6 probe's answer comes in
        // on the NDP socket: a probed address needs both kinds.
        for (ip, interfaces) in probe_plan.iter_mut() {
            let v6 = ip.is_ipv6();
            interfaces.retain(|index, name| {
                let Some(mac) = links.iter().find(|l| l.index == *index).and_then(|l| l.mac) else {
                    return false;
                };
                let opened = self.ensure_socket(*index, name, mac, true).and_then(|()| {
                    if v6 {
                        self.ensure_socket(*index, name, mac, false)
                    } else {
                        Ok(())
                    }
                });
                match opened {
                    Ok(()) => true,
                    Err(e) => {
                        self.shared.emit(AnnouncerEvent::InterfaceError {
                            interface: name.clone(),
                            error: e.to_string(),
                        });
                        false
                    }
                }
            });
        }
        self.probes.retain(|(ip, index), (attempt, _)| {
            probing.get(ip) == Some(attempt)
                && probe_plan.get(ip).is_some_and(|m| m.contains_key(index))
                && !replaced.contains(index)
        });
        for (ip, interfaces) in &probe_plan {
            let Some(attempt) = probing.get(ip).copied() else {
                continue;
            };
            for index in interfaces.keys() {
                if !self.probes.contains_key(&(*ip, *index))
                    && let Some(task) = self.spawn_probe(*ip, *index, attempt)
                {
                    self.probes.insert((*ip, *index), (attempt, task));
                }
            }
        }

        // From here on answers follow the new plan.
        let previous = std::mem::replace(&mut *write(&self.shared.plan), plan.clone());

        self.update_groups(&plan);

        let pairs = |p: &Plan| -> BTreeSet<(IpAddr, u32)> {
            p.iter()
                .flat_map(|(ip, m)| m.keys().map(move |i| (*ip, *i)))
                .collect()
        };
        let (now, before) = (pairs(&plan), pairs(&previous));
        self.bursts.retain(|(ip, index), task| {
            now.contains(&(*ip, *index)) && !replaced.contains(index) && !task.0.is_finished()
        });
        // Asked to re-assert: every owned address is "starting" again.
        let reassert = self.shared.reassert.load(Ordering::Relaxed);
        let all = reassert != self.reasserted;
        self.reasserted = reassert;
        let starting = now
            .iter()
            .filter(|(ip, index)| {
                all || !before.contains(&(*ip, *index)) || replaced.contains(index)
            })
            .copied()
            .collect::<Vec<_>>();
        for (ip, index) in starting {
            if let Some(task) = self.spawn_burst(ip, index) {
                self.bursts.insert((ip, index), task);
            }
        }

        let used: BTreeSet<u32> = now
            .iter()
            .map(|(_, i)| *i)
            .chain(probe_plan.values().flat_map(|m| m.keys().copied()))
            .collect();
        self.workers.retain(|index, _| used.contains(index));

        for (ip, interfaces) in &plan {
            let names: Vec<String> = interfaces.values().cloned().collect();
            if names.is_empty() {
                if self.announced.remove(ip).is_some() {
                    self.shared.emit(AnnouncerEvent::Stopped { ip: *ip });
                }
            } else if self.announced.get(ip) != Some(&names) {
                self.announced.insert(*ip, names.clone());
                self.shared.emit(AnnouncerEvent::Announcing {
                    ip: *ip,
                    interfaces: names,
                });
            }
        }
        let gone: Vec<IpAddr> = self
            .announced
            .keys()
            .filter(|ip| !plan.contains_key(*ip))
            .copied()
            .collect();
        for ip in gone {
            self.announced.remove(&ip);
            self.shared.emit(AnnouncerEvent::Stopped { ip });
        }
    }

    fn ensure_socket(
        &mut self,
        index: u32,
        name: &str,
        mac: MacAddr,
        v4: bool,
    ) -> std::io::Result<()> {
        let worker = self.workers.entry(index).or_insert_with(|| Worker {
            name: name.to_owned(),
            mac,
            arp: None,
            ndp: None,
            unicast_ns: None,
            groups: Groups::default(),
        });
        if v4 && worker.arp.is_none() {
            let socket = Arc::new(sys::register(ArpSocket::open(index)?)?);
            let task = tokio::spawn(arp_loop(
                self.shared.clone(),
                socket.clone(),
                index,
                name.to_owned(),
                mac,
            ));
            worker.arp = Some((socket, AbortOnDrop(task)));
        }
        if !v4 && worker.ndp.is_none() {
            let socket = Arc::new(sys::register(NdpSocket::open(name, index)?)?);
            let task = tokio::spawn(ndp_loop(
                self.shared.clone(),
                socket.clone(),
                index,
                name.to_owned(),
                mac,
            ));
            worker.ndp = Some((socket.clone(), AbortOnDrop(task)));
            let unicast = sys::register(UnicastNsSocket::open(index)?)?;
            let task = tokio::spawn(unicast_ns_loop(
                self.shared.clone(),
                unicast,
                socket,
                index,
                name.to_owned(),
                mac,
            ));
            worker.unicast_ns = Some(AbortOnDrop(task));
        }
        Ok(())
    }

    /// Joins the solicited-node group of each IPv6 address planned on a link, leaves the
    /// groups no longer needed. A join that fails is counted and reported with the addresses
    /// it leaves unanswered, and tried again on the next reconcile.
    fn update_groups(&mut self, plan: &Plan) {
        for (index, worker) in &mut self.workers {
            if worker.ndp.is_none() {
                continue;
            }
            let addresses = plan
                .iter()
                .filter(|(_, m)| m.contains_key(index))
                .filter_map(|(ip, _)| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                });
            let index = *index;
            let report = worker.groups.sync(addresses, || GroupSocket::open(index));
            for (group, error) in report.leave_failures {
                tracing::warn!(%group, interface = %worker.name, %error, "leaving solicited-node group");
            }
            for failure in report.join_failures {
                inc(&self.shared.counters.ndp_group_join_failures);
                let addresses = failure
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                self.shared.emit(AnnouncerEvent::InterfaceError {
                    interface: worker.name.clone(),
                    error: format!(
                        "joining solicited-node group {} failed, so solicitations for {addresses} go unanswered: {}",
                        failure.group, failure.error
                    ),
                });
            }
            tracing::debug!(
                interface = %worker.name,
                groups = worker.groups.joined(),
                sockets = worker.groups.sockets(),
                "solicited-node memberships"
            );
        }
    }

    /// Sends the probes of one round for `ip` on interface `index`: ARP probes (sender IP
    /// 0.0.0.0, RFC 5227 §2.1.1) or DAD solicitations (source `::`, to the solicited-node group,
    /// no source link-layer option; RFC 4862 §5.4.2), as whole frames on the packet socket.
    fn spawn_probe(&self, ip: IpAddr, index: u32, attempt: u32) -> Option<AbortOnDrop<()>> {
        let worker = self.workers.get(&index)?;
        let socket = worker.arp.as_ref()?.0.clone();
        let shared = self.shared.clone();
        let name = worker.name.clone();
        let config = self.config.probe;
        let frame = match ip {
            IpAddr::V4(v4) => arp_request(worker.mac, Ipv4Addr::UNSPECIFIED, v4),
            IpAddr::V6(v6) => {
                let group = solicited_node_multicast(v6);
                ipv6_icmp_frame(
                    worker.mac,
                    ipv6_multicast_mac(group),
                    Ipv6Addr::UNSPECIFIED,
                    group,
                    255,
                    &neighbor_solicitation(v6, None),
                )
            }
        };
        tracing::debug!(service = %shared.service_of(ip), %ip, interface = %name, attempt, "probing a newly assigned address");
        let task = tokio::spawn(async move {
            for i in 0..config.count {
                if lock(&shared.claims).probing(&ip) != Some(attempt) {
                    return;
                }
                match sys::send_arp(&socket, &frame).await {
                    Ok(_) => inc(&shared.counters.probes_sent),
                    Err(e) => shared.send_failed("probe", ip, &name, &e),
                }
                if i + 1 < config.count {
                    tokio::time::sleep(config.probe_gap()).await;
                }
            }
        });
        Some(AbortOnDrop(task))
    }

    fn spawn_burst(&self, ip: IpAddr, index: u32) -> Option<AbortOnDrop<()>> {
        let worker = self.workers.get(&index)?;
        let shared = self.shared.clone();
        let count = self.config.gratuitous_count;
        let interval = self.config.gratuitous_interval;
        let name = worker.name.clone();
        let task = match ip {
            IpAddr::V4(v4) => {
                let socket = worker.arp.as_ref()?.0.clone();
                let frame = gratuitous_arp(v4, worker.mac);
                tokio::spawn(async move {
                    for i in 0..count {
                        if !shared.answers(ip, index) {
                            return;
                        }
                        match sys::send_arp(&socket, &frame).await {
                            Ok(_) => inc(&shared.counters.gratuitous_arp_sent),
                            Err(e) => shared.send_failed("gratuitous ARP", ip, &name, &e),
                        }
                        if i + 1 < count {
                            tokio::time::sleep(interval).await;
                        }
                    }
                })
            }
            IpAddr::V6(v6) => {
                let socket = worker.ndp.as_ref()?.0.clone();
                let body = neighbor_advertisement(v6, worker.mac, false, true);
                tokio::spawn(async move {
                    for i in 0..count {
                        if !shared.answers(ip, index) {
                            return;
                        }
                        // From the address itself, as the kernel advertises its own.
                        match sys::send_ndp(&socket, &body, v6, ALL_NODES).await {
                            Ok(_) => inc(&shared.counters.unsolicited_na_sent),
                            Err(e) => shared.send_failed("unsolicited NA", ip, &name, &e),
                        }
                        if i + 1 < count {
                            tokio::time::sleep(interval).await;
                        }
                    }
                })
            }
        };
        Some(AbortOnDrop(task))
    }
}

async fn arp_loop(
    shared: Arc<Shared>,
    socket: Arc<AsyncFd<ArpSocket>>,
    index: u32,
    name: String,
    mac: MacAddr,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = match sys::recv_arp(&socket, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // E.g. ENETDOWN once when the link goes down; the manager retires the
                // socket if the link is no longer usable.
                shared.emit(AnnouncerEvent::InterfaceError {
                    interface: name.clone(),
                    error: format!("receiving ARP: {e}"),
                });
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        inc(&shared.counters.arp_frames_received);
        let Some(Ok(frame)) = buf.get(..n).map(frames::parse_arp) else {
            continue;
        };
        // Looked up once per request: counted here, reused by the decision below.
        let target_owned =
            frame.op == ArpOp::Request && shared.answers(IpAddr::V4(frame.target_ip), index);
        if frame.op == ArpOp::Request {
            inc(&shared.counters.arp_requests_seen);
            // Answered or not (a forged sender is not): what the metric documents.
            if target_owned {
                inc(&shared.counters.arp_requests_owned);
            }
        }
        // While an address is probed, a frame whose sender is that address from another MAC
        // (a reply to the probe, a gratuitous ARP) means a machine uses it. Another host's probe
        // for it (sender 0.0.0.0) is not counted, unlike RFC 5227 §2.1.1: it is most likely
        // another speaker whose view of the cluster has not converged yet, and the election,
        // not a back-off, decides between speakers.
        if usable_sender(&frame)
            && !frame.sender_ip.is_unspecified()
            && !shared.is_local_mac(frame.sender_mac)
        {
            shared.probe_heard(IpAddr::V4(frame.sender_ip), frame.sender_mac, &name);
        }
        let action = arp_action(
            &frame,
            |m| shared.is_local_mac(m),
            |ip| {
                if frame.op == ArpOp::Request && ip == frame.target_ip {
                    target_owned
                } else {
                    shared.answers(IpAddr::V4(ip), index)
                }
            },
        );
        match action {
            ArpAction::Reply => match sys::send_arp(&socket, &arp_reply(&frame, mac)).await {
                Ok(_) => inc(&shared.counters.arp_requests_answered),
                Err(e) => shared.send_failed("ARP reply", IpAddr::V4(frame.target_ip), &name, &e),
            },
            ArpAction::Conflict => {
                let ip = IpAddr::V4(frame.sender_ip);
                if shared.conflict(ip, frame.sender_mac, &name) {
                    // Defend: announce again, so the neighbours that took the claim come back.
                    // Linux ignores a second change of an entry within its ARP lock time (1 s),
                    // so the announcement goes out at once and once more after it.
                    let announcement = gratuitous_arp(frame.sender_ip, mac);
                    match sys::send_arp(&socket, &announcement).await {
                        Ok(_) => inc(&shared.counters.defences_sent),
                        Err(e) => shared.send_failed("defending ARP", ip, &name, &e),
                    }
                    let (shared, socket, name) = (shared.clone(), socket.clone(), name.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(DEFENCE_REPEAT).await;
                        if shared.answers(ip, index)
                            && let Err(e) = sys::send_arp(&socket, &announcement).await
                        {
                            shared.send_failed("defending ARP", ip, &name, &e);
                        }
                    });
                }
            }
            ArpAction::Ignore => {}
        }
    }
}

async fn ndp_loop(
    shared: Arc<Shared>,
    socket: Arc<AsyncFd<NdpSocket>>,
    index: u32,
    name: String,
    mac: MacAddr,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let received = match sys::recv_ndp(&socket, &mut buf).await {
            Ok(r) => r,
            Err(e) => {
                shared.emit(AnnouncerEvent::InterfaceError {
                    interface: name.clone(),
                    error: format!("receiving NDP: {e}"),
                });
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        inc(&shared.counters.ndp_messages_received);
        let Some(Ok(msg)) = buf.get(..received.len).map(frames::parse_ndp) else {
            continue;
        };
        handle_ndp(
            &shared,
            &socket,
            index,
            &name,
            mac,
            &msg,
            received.source,
            received.hop_limit,
        )
        .await;
    }
}

/// Receives Neighbor Solicitations unicast to our MAC (reachability probes for an owned
/// address) and answers them through the interface's raw ICMPv6 socket.
async fn unicast_ns_loop(
    shared: Arc<Shared>,
    unicast: AsyncFd<UnicastNsSocket>,
    ndp: Arc<AsyncFd<NdpSocket>>,
    index: u32,
    name: String,
    mac: MacAddr,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = match sys::recv_unicast_ns(&unicast, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                shared.emit(AnnouncerEvent::InterfaceError {
                    interface: name.clone(),
                    error: format!("receiving unicast NDP: {e}"),
                });
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        inc(&shared.counters.ndp_messages_received);
        let Some(Ok(packet)) = buf.get(..n).map(frames::parse_ipv6_icmp_frame) else {
            continue;
        };
        let Ok(msg) = frames::parse_ndp(packet.icmp) else {
            continue;
        };
        handle_ndp(
            &shared,
            &ndp,
            index,
            &name,
            mac,
            &msg,
            packet.source,
            Some(packet.hop_limit),
        )
        .await;
    }
}

/// Counts, decides and acts on one received NDP message.
#[allow(clippy::too_many_arguments)] // the context of one interface, spelled out
async fn handle_ndp(
    shared: &Shared,
    socket: &AsyncFd<NdpSocket>,
    index: u32,
    name: &str,
    mac: MacAddr,
    msg: &NdpMessage,
    source: Ipv6Addr,
    hop_limit: Option<u8>,
) {
    if hop_limit != Some(255) {
        inc(&shared.counters.ndp_dropped_hop_limit);
        return;
    }
    // Looked up once per solicitation: counted here, reused by the decision below.
    let solicited = match msg {
        NdpMessage::Solicitation(ns) => {
            Some((ns.target, shared.answers(IpAddr::V6(ns.target), index)))
        }
        _ => None,
    };
    if let Some((_, owned)) = solicited {
        inc(&shared.counters.ns_seen);
        if owned {
            inc(&shared.counters.ns_owned);
        }
    }
    if let NdpMessage::Advertisement(na) = msg
        && let Some(other) = na.target_mac
        && !shared.is_local_mac(other)
    {
        shared.probe_heard(IpAddr::V6(na.target), other, name);
    }
    let action = ndp_action(
        msg,
        source,
        hop_limit,
        |m| shared.is_local_mac(m),
        |ip| match solicited {
            Some((target, owned)) if target == ip => owned,
            _ => shared.answers(IpAddr::V6(ip), index),
        },
    );
    match action {
        NdpAction::Reply {
            target,
            dst,
            solicited,
        } => {
            let body = neighbor_advertisement(target, mac, solicited, true);
            // Source = target, as the kernel answers for its own addresses: ndisc6 and
            // other tools ignore advertisements from any other source.
            match sys::send_ndp(socket, &body, target, dst).await {
                Ok(_) => inc(&shared.counters.ns_answered),
                // E.g. a solicitation from an off-link source, which no route reaches: one line
                // per interval, not one per packet.
                Err(e) => shared.send_failed("NA", IpAddr::V6(target), name, &e),
            }
        }
        NdpAction::Conflict { target, mac: other } => {
            if shared.conflict(IpAddr::V6(target), other, name) {
                let body = neighbor_advertisement(target, mac, false, true);
                match sys::send_ndp(socket, &body, target, ALL_NODES).await {
                    Ok(_) => inc(&shared.counters.defences_sent),
                    Err(e) => shared.send_failed("defending NA", IpAddr::V6(target), name, &e),
                }
            }
        }
        NdpAction::Ignore => {}
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
