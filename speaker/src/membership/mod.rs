//! Fast liveness of the other speakers, over UDP between nodes, authenticated.
//!
//! The election ([`crate::election`]) may only pick nodes whose speaker is alive, so how fast a
//! dead speaker is noticed *is* the failover time. Kubernetes' own signal (the Node `Ready`
//! condition) takes tens of seconds, and MetalLB's memberlist seconds; here speakers probe each
//! other directly and notice a dead one in well under a second on a LAN.
//!
//! # Why foca
//!
//! [`foca`] implements SWIM (randomised direct + indirect probes, suspicion with refutation by
//! incarnation, dissemination piggy-backed on probes) as a sans-I/O state machine: we feed it
//! datagrams and timer events and it hands back datagrams to send, timers to arm and
//! notifications. That fits our "pure core, thin shell" rule exactly: the socket, the clock and
//! the authentication envelope stay in this module and foca never sees them, and its per-member
//! cost is constant (one probe per period, whatever the cluster size). `chitchat` was the
//! alternative: scuttlebutt anti-entropy of a replicated key-value state with phi-accrual
//! failure detection. Phi-accrual needs a history of heartbeat intervals before it is confident,
//! so detection is slower and tuned statistically rather than by two explicit timeouts, and we
//! would carry a replicated KV store we do not need. We need only "who is alive", fast.
//!
//! # Shape
//!
//! [`Membership::start`] binds the socket and starts one OS thread, with its own single-threaded
//! runtime, that owns foca, the socket and a timer queue. The speaker's main loop may be busy
//! for a while (recomputing thousands of Services, writing conditions); the membership must
//! still answer probes within milliseconds, or the others declare this node down. Every change
//! foca reports is published on a [`tokio::sync::watch`] channel *before* the task does
//! anything else, because that latency adds to failover time.
//!
//! - Identity ([`NodeId`], [`identity`]): node name + advertised socket address + a `bump`. A
//!   restarted speaker must outrank its previous identity; the wall clock gives a first guess,
//!   and when the clock went back, a peer that remembers the old identity hints its bump and
//!   the speaker takes the next one. After a false suspicion foca renews the identity (bump +
//!   1) by itself.
//! - Authentication ([`auth`]): every datagram is sealed with HMAC-SHA256 under the primary key
//!   of the keyring and accepted under any of its keys, with a random per-process boot number
//!   and a sequence number against replays. The key file is read again every
//!   [`MembershipConfig::key_reload_period`], so a rotated Secret takes effect without a
//!   restart. Datagrams that fail are dropped, counted in [`MembershipStats`] by reason, and
//!   logged at warn at most once per source address and reason every 10 s.
//! - Load ([`health`]): timeouts stretch while this node's own timers run late (Lifeguard's
//!   local health), and a suspect that keeps talking to us is given time to refute.
//! - Joining: the shell passes seed addresses (the other nodes' IPs and this port). The task
//!   announces to every seed that is not a live member, at start and every
//!   [`MembershipConfig::seed_announce_period`], so a cluster forms from any one reachable seed
//!   and heals after partitions or restarts.
//! - Leaving: [`Membership::leave`] declares this identity down to the others (foca's
//!   `leave_cluster`), repeats it once against loss, and only then closes the socket, so the
//!   others drop this node at once instead of after a suspicion timeout.
//! - `formed`: true once a peer has answered (sticky), or at once when there are no seeds
//!   other than ourselves (alone by configuration). Until then the speaker shell should fall
//!   back on the Node `Ready` condition; the transition is logged.

pub mod auth;
pub mod health;
pub mod identity;
pub mod peers;
pub mod ratelimit;
pub mod state;
mod task;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

pub use auth::Keyring;
pub use identity::NodeId;

/// Largest datagram we send: stays under a 1500-byte Ethernet MTU with IP/UDP headers.
pub const MAX_DATAGRAM: usize = 1400;

/// Test-only: seconds added to the wall clock that gives a new process its first identity bump,
/// to play a clock stepped back across a restart (`-300`: five minutes back). Read once at start.
pub const CLOCK_OFFSET_ENV: &str = "LODESTONE_TEST_CLOCK_OFFSET_SECS";

/// Settings of one speaker's membership. [`MembershipConfig::new`] gives LAN defaults tuned for
/// sub-second detection.
#[derive(Clone)]
pub struct MembershipConfig {
    /// This node's name (as in the Node object); it is what [`MembershipView::alive`] holds.
    pub node_name: String,
    /// Local address the UDP socket binds to (e.g. `0.0.0.0:7946`).
    pub bind: SocketAddr,
    /// Address the others reach us at (the node IP and the port).
    pub advertise: SocketAddr,
    /// The keyring from the Kubernetes Secret: the first key seals, every key is accepted;
    /// each at least [`auth::MIN_KEY_LEN`] bytes (checked by [`Membership::start`]).
    pub keys: Vec<Vec<u8>>,
    /// The key file to read again every [`Self::key_reload_period`] (one key per line, first
    /// primary); `None` when the keys do not come from a file.
    pub key_file: Option<PathBuf>,
    /// How often the key file is checked for a change. Default 2 s: the kubelet updates a
    /// mounted Secret within about a minute, this adds little.
    pub key_reload_period: Duration,
    /// Other speakers to announce to at start (see [`Membership::set_seeds`]).
    pub seeds: Vec<SocketAddr>,
    /// How often a random member is probed. Default 150 ms.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe. Default 50 ms.
    pub probe_rtt: Duration,
    /// How long a suspect may refute before it is declared down. Default 300 ms.
    pub suspect_to_down_after: Duration,
    /// Members asked to probe indirectly (and to receive each gossip). Default 3.
    pub indirect_probes: usize,
    /// How often cluster updates are gossiped besides probes. Default 100 ms.
    pub gossip_period: Duration,
    /// How often seeds that are not live members are announced to. Default 1 s.
    pub seed_announce_period: Duration,
    /// How far back [`MembershipView::authenticated_peers`] and
    /// [`MembershipView::keyring_failing`] look. Default 3 s: peers that are not members yet
    /// announce to us every [`Self::seed_announce_period`], so a healthy peer is heard at least
    /// twice in that time even before the cluster forms.
    pub peer_window: Duration,
    /// Longest a suspect that keeps talking to us, without refuting, is kept alive (see
    /// [`health::suspicion_verdict`]). Default 1.2 s (four suspicion timeouts). A silent suspect
    /// is declared down after [`Self::suspect_to_down_after`] as before.
    pub suspect_max_wait: Duration,
    /// Bytes of kernel receive buffer asked for, so a burst of garbage does not push out
    /// the acks behind it. Default 4 MiB (the kernel caps it at `net.core.rmem_max`).
    pub recv_buffer: usize,
    /// The first identity bump; `None`: from the wall clock (see [`identity::initial_bump`],
    /// shifted by [`CLOCK_OFFSET_ENV`] when set).
    pub initial_bump: Option<u64>,
    /// Real-time (`SCHED_RR`) priority asked for the membership thread; `None` leaves it an
    /// ordinary thread. Default 1, the lowest real-time priority: enough to run ahead of every
    /// ordinary thread on a node under CPU pressure, below the kernel's own real-time threads.
    /// Needs `CAP_SYS_NICE`; without it the thread asks for nice -10, and failing that runs as
    /// it is (logged once at start).
    pub realtime_priority: Option<u8>,
}

impl std::fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("MembershipConfig")
            .field("node_name", &self.node_name)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("keys", &self.keys.len())
            .field("key_file", &self.key_file)
            .field("key_reload_period", &self.key_reload_period)
            .field("seeds", &self.seeds)
            .field("probe_period", &self.probe_period)
            .field("probe_rtt", &self.probe_rtt)
            .field("suspect_to_down_after", &self.suspect_to_down_after)
            .field("indirect_probes", &self.indirect_probes)
            .field("gossip_period", &self.gossip_period)
            .field("seed_announce_period", &self.seed_announce_period)
            .field("peer_window", &self.peer_window)
            .field("suspect_max_wait", &self.suspect_max_wait)
            .field("recv_buffer", &self.recv_buffer)
            .field("initial_bump", &self.initial_bump)
            .field("realtime_priority", &self.realtime_priority)
            .finish()
    }
}

impl MembershipConfig {
    /// LAN defaults with the single key `key`: a dead member is suspected within a probe cycle
    /// or two and declared down 300 ms later.
    pub fn new(
        node_name: impl Into<String>,
        bind: SocketAddr,
        advertise: SocketAddr,
        key: Vec<u8>,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            bind,
            advertise,
            keys: vec![key],
            key_file: None,
            key_reload_period: Duration::from_secs(2),
            seeds: Vec::new(),
            probe_period: Duration::from_millis(150),
            probe_rtt: Duration::from_millis(50),
            suspect_to_down_after: Duration::from_millis(300),
            indirect_probes: 3,
            gossip_period: Duration::from_millis(100),
            seed_announce_period: Duration::from_secs(1),
            peer_window: Duration::from_secs(3),
            suspect_max_wait: Duration::from_millis(1200),
            recv_buffer: 4 << 20,
            initial_bump: None,
            realtime_priority: Some(1),
        }
    }

    /// The foca settings derived from this config, after checking them.
    pub fn foca_config(&self) -> Result<foca::Config, MembershipError> {
        let bad = |what: &str| Err(MembershipError::InvalidConfig(what.to_owned()));
        if self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_period {
            return bad("probe_rtt must be non-zero and shorter than probe_period");
        }
        if self.suspect_to_down_after.is_zero()
            || self.gossip_period.is_zero()
            || self.seed_announce_period.is_zero()
            || self.peer_window.is_zero()
            || self.key_reload_period.is_zero()
        {
            return bad(
                "suspect_to_down_after, gossip_period, seed_announce_period, peer_window and key_reload_period must be non-zero",
            );
        }
        let Some(indirect) = NonZeroUsize::new(self.indirect_probes) else {
            return bad("indirect_probes must be at least 1");
        };
        let payload = MAX_DATAGRAM.saturating_sub(auth::overhead(&self.node_name));
        let Some(max_packet_size) = NonZeroUsize::new(payload).filter(|p| p.get() >= 512) else {
            return bad("node name too long for the datagram size");
        };
        let lan = foca::Config::new_lan(std::num::NonZeroU32::MIN);
        Ok(foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: indirect,
            // Small clusters (tens of nodes): a handful of piggy-backs reaches everyone.
            max_transmissions: NonZeroU8::new(6).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: lan.remove_down_after,
            max_packet_size,
            // No courtesy "you are down" message to a member declared down: a speaker whose own
            // link is down declares everyone down, and the kernel holds those messages in its
            // neighbour queue until the link returns, then delivers them to healthy peers,
            // which foca obeys even from a member it considers gone. A member declared down
            // learns it from its own failed probes instead (then it is alone and rejoins).
            notify_down_members: false,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(5),
                num_members: NonZeroUsize::MIN,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: Duration::from_secs(2),
                num_members: NonZeroUsize::MIN.saturating_add(1),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_period,
                num_members: indirect,
            }),
        })
    }
}

/// What the rest of the speaker sees: who is alive, and whether to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipView {
    /// Names of the nodes whose speaker is alive (or suspected but not yet down), self included.
    pub alive: BTreeSet<String>,
    /// A peer has answered at least once, or there are no peers to wait for. While false, the
    /// caller should decide liveness from the Node `Ready` condition instead.
    pub formed: bool,
    /// Distinct peers (by node name, self excluded) from which an authenticated datagram was
    /// accepted within the last [`MembershipConfig::peer_window`]. Zero while other speakers
    /// exist means this one cannot currently prove it talks with anyone.
    pub authenticated_peers: usize,
    /// Datagrams arrive from other nodes' addresses (seeds) but none of them authenticates
    /// (within [`MembershipConfig::peer_window`]): this speaker's keyring does not match the
    /// cluster's, e.g. a restart after the Secret changed. Such a speaker should not decide
    /// ownership on its own, since it sees everyone else as gone.
    pub keyring_failing: bool,
    /// When this view was published.
    pub changed_at: Instant,
    /// How many times the membership was renewed ([`Membership::renew`]) before this view was
    /// made. A view made before the renewal that [`Membership::renew`] returned still shows
    /// the peers the previous instance knew: the caller should skip it.
    pub generation: u64,
}

crate::stats::stats! {
    /// The membership's counters and gauges, written by its thread.
    struct SharedStats;
    /// Counters and gauges for metrics and tests.
    pub struct MembershipStats {
        /// Alive members, self included.
        members: usize,
        /// Whether [`MembershipView::formed`] is true.
        formed: bool,
        /// [`MembershipView::authenticated_peers`].
        authenticated_peers: usize,
        /// [`MembershipView::keyring_failing`].
        keyring_failing: bool,
        /// Keys in the keyring.
        keys: usize,
        /// Local health multiplier: 1 healthy, up to 9 while this node's timers run late.
        local_health: u32,
        /// Datagrams accepted (authentic and not replayed).
        datagrams_in: u64,
        /// Of those, sealed with the primary key.
        accepted_primary: u64,
        /// Of those, sealed with another key of the keyring (a rotation in progress).
        accepted_secondary: u64,
        /// Datagrams sent.
        datagrams_out: u64,
        /// Datagrams dropped because no key verified them (another keyring, or forged).
        auth_failures: u64,
        /// Authentic datagrams dropped as replays.
        replays: u64,
        /// Datagrams dropped as malformed (envelope or SWIM payload).
        malformed: u64,
        /// Datagrams dropped for being larger than any speaker sends.
        oversized: u64,
        /// Sends the kernel refused.
        send_errors: u64,
        /// Times the others declared this speaker down and it rejoined under a renewed identity.
        rejoins: u64,
        /// Members this speaker saw go down (declared down, or left).
        members_down: u64,
        /// Times this speaker found a previous identity of its node still remembered and took one
        /// above it (a restart with the clock behind).
        identity_outranked: u64,
        /// Identity hints sent to restarted peers that their old identity outranks.
        hints_sent: u64,
        /// Key file changes applied.
        key_reloads: u64,
        /// Key file changes refused (unreadable, or no valid keyring); the previous keys stay.
        key_reload_failures: u64,
        /// Suspicions this node raised that the suspect refuted in time (a probe answered late).
        suspicions_refuted: u64,
        /// Expired suspicions not turned into "down" because the suspect had spoken since.
        suspicions_deferred: u64,
        /// Probe periods in which this node's own timers fired late (the loop was starved).
        late_timers: u64,
        /// Times the membership thread woke well after its timers were due, and paused them
        /// rather than judge the others by time it could not act in.
        stalls: u64,
    }
}

/// Reads a running membership's counters; cheap to clone and to keep after the handle.
#[derive(Clone, Debug)]
pub struct StatsReader(Arc<SharedStats>);

impl StatsReader {
    /// Current counters.
    pub fn snapshot(&self) -> MembershipStats {
        self.0.snapshot()
    }
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The UDP socket could not be bound.
    #[error("binding membership socket {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The key or node name cannot be used for the envelope.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A timing or size setting is out of range.
    #[error("invalid membership config: {0}")]
    InvalidConfig(String),
    /// The membership's thread could not be started.
    #[error("starting the membership thread: {0}")]
    Thread(std::io::Error),
}

enum Command {
    Announce(Vec<SocketAddr>),
    SetSeeds(Vec<SocketAddr>),
    Leave(oneshot::Sender<()>),
    SetState(state::SpeakerState),
    Renew(u64),
}

/// Handle on a running membership. Dropping it stops the membership without a leave, as a crash
/// would; call [`Membership::leave`] for a graceful exit.
pub struct Membership {
    identity: Arc<Mutex<NodeId>>,
    local_addr: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    stats: Arc<SharedStats>,
    states: watch::Receiver<state::States>,
    /// The generation the last [`Membership::renew`] asked for.
    generation: AtomicU64,
}

/// The UDP socket, non-blocking, with the receive buffer asked for.
fn bind(addr: SocketAddr, recv_buffer: usize) -> Result<std::net::UdpSocket, MembershipError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| MembershipError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if let Err(error) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::debug!(%error, "membership: cannot enlarge the receive buffer");
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}

impl Membership {
    /// Bind the socket, start the membership's thread and announce to `cfg.seeds`.
    pub async fn start(
        cfg: MembershipConfig,
    ) -> Result<(Membership, watch::Receiver<MembershipView>), MembershipError> {
        let foca_config = cfg.foca_config()?;
        let mut cfg = cfg;
        let keys = Keyring::new(cfg.keys.clone())?;
        let opener = auth::Opener::new(&keys)?;
        let socket = bind(cfg.bind, cfg.recv_buffer)?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| MembershipError::Bind {
                addr: cfg.bind,
                source,
            })?;
        // Port 0 means "whatever the kernel gave us" (tests, ad-hoc runs).
        if cfg.advertise.port() == 0 {
            cfg.advertise.set_port(local_addr.port());
        }
        let bump = cfg.initial_bump.unwrap_or_else(|| {
            let offset = std::env::var(CLOCK_OFFSET_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            identity::initial_bump(SystemTime::now().duration_since(UNIX_EPOCH).ok(), offset)
        });
        let identity = NodeId {
            name: cfg.node_name.clone(),
            addr: cfg.advertise,
            bump,
        };
        let sealer = auth::Sealer::new(keys.primary(), &cfg.node_name, auth::random_boot())?;

        let stats = Arc::new(SharedStats::default());
        let shared_identity = Arc::new(Mutex::new(identity.clone()));
        let (state_book, own_state, states) = state::StateBook::new(cfg.node_name.clone());
        let (commands, command_rx) = mpsc::unbounded_channel();
        let view_rx = task::spawn(task::Parts {
            cfg,
            foca_config,
            identity,
            shared_identity: Arc::clone(&shared_identity),
            socket,
            sealer,
            opener,
            keys,
            commands: command_rx,
            stats: Arc::clone(&stats),
            state_book,
            own_state,
        })
        .map_err(MembershipError::Thread)?;
        Ok((
            Membership {
                identity: shared_identity,
                local_addr,
                commands,
                stats,
                states,
                generation: AtomicU64::new(0),
            },
            view_rx,
        ))
    }

    /// Announce to these seeds now and add them to the seeds re-announced to periodically.
    pub fn join(&self, seeds: Vec<SocketAddr>) {
        // The task only stops on leave or drop of this handle, so a failed send means we are
        // already shutting down and there is nothing to join.
        let _ = self.commands.send(Command::Announce(seeds));
    }

    /// Replace the seed list (e.g. when Nodes come and go); new seeds are announced to at once.
    pub fn set_seeds(&self, seeds: Vec<SocketAddr>) {
        let _ = self.commands.send(Command::SetSeeds(seeds));
    }

    /// Tell the others this speaker's state (see [`state`]) now and keep repeating it.
    pub fn set_state(&self, state: state::SpeakerState) {
        let _ = self.commands.send(Command::SetState(state));
    }

    /// The states the speakers told (this one's included), by node name.
    pub fn states(&self) -> watch::Receiver<state::States> {
        self.states.clone()
    }

    /// Forget every conclusion about the others and rejoin under a renewed identity.
    ///
    /// For a speaker that just found itself alone: it declared every peer down while it could
    /// not hear them (its own link was down, say). Gossiping those declarations once it hears
    /// them again would make healthy speakers be taken for dead; a fresh start has nothing to
    /// gossip, and its seeds bring it back in as soon as the network lets it.
    ///
    /// Returns the [`MembershipView::generation`] of the views made after the renewal: a view
    /// already on its way (or published before the thread acts on this) has a lower one.
    pub fn renew(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.commands.send(Command::Renew(generation));
        generation
    }

    /// Tell the others we are leaving, then stop. Waits at most `timeout` for the departure to
    /// be sent. Afterwards the membership has stopped and its socket is closed (or will be as
    /// soon as its thread sees the handle dropped, should the departure take longer).
    pub async fn leave(&self, timeout: Duration) {
        let (done, done_rx) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(timeout, done_rx).await;
        }
    }

    /// Current counters.
    pub fn stats(&self) -> MembershipStats {
        self.stats.snapshot()
    }

    /// A reader of the counters that outlives borrowing the handle (for `/metrics`).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(Arc::clone(&self.stats))
    }

    /// Our identity as the others see it now (it changes on a rejoin or when outranked).
    pub fn identity(&self) -> NodeId {
        match self.identity.lock() {
            Ok(id) => id.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The address the socket is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}
