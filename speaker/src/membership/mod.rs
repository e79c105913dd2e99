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
//! [`Membership::start`] binds the socket and spawns one task that owns foca, the socket and a
//! timer queue. Every change foca reports is published on a [`tokio::sync::watch`] channel
//! *before* the task does anything else, because that latency adds to failover time.
//!
//! - Identity ([`NodeId`]): node name + advertised socket address + a `bump` taken from the
//!   clock at start. A restarted speaker has a larger bump, which wins foca's address conflict,
//!   so it rejoins at once instead of waiting for its old identity to be forgotten; after a false
//!   suspicion foca renews the identity (bump + 1) by itself.
//! - Authentication ([`auth`]): every datagram is sealed with HMAC-SHA256 under the shared key,
//!   with a per-sender boot + sequence number against replays. Datagrams that fail are dropped
//!   and counted in [`MembershipStats`].
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
pub mod peers;
pub mod state;
mod task;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

/// Largest datagram we send: stays under a 1500-byte Ethernet MTU with IP/UDP headers.
pub const MAX_DATAGRAM: usize = 1400;

/// One speaker as foca knows it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Kubernetes node name.
    pub name: String,
    /// Where the speaker receives membership datagrams.
    pub addr: SocketAddr,
    /// Grows across restarts; the higher bump wins when two identities share an address.
    pub bump: u64,
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.addr, self.bump)
    }
}

impl foca::Identity for NodeId {
    // The socket address is what a seed is known by before we learn its name, and foca accepts
    // an Announce addressed to any identity with our address.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

impl NodeId {
    /// A placeholder for a seed whose name is not known yet: only good as an Announce target.
    fn seed(addr: SocketAddr) -> Self {
        Self {
            name: String::new(),
            addr,
            bump: 0,
        }
    }
}

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
    /// Shared secret from the Kubernetes Secret; at least [`auth::MIN_KEY_LEN`] bytes.
    pub key: Vec<u8>,
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
}

impl std::fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("MembershipConfig")
            .field("node_name", &self.node_name)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("key_len", &self.key.len())
            .field("seeds", &self.seeds)
            .field("probe_period", &self.probe_period)
            .field("probe_rtt", &self.probe_rtt)
            .field("suspect_to_down_after", &self.suspect_to_down_after)
            .field("indirect_probes", &self.indirect_probes)
            .field("gossip_period", &self.gossip_period)
            .field("seed_announce_period", &self.seed_announce_period)
            .field("peer_window", &self.peer_window)
            .finish()
    }
}

impl MembershipConfig {
    /// LAN defaults: a dead member is suspected within a probe cycle or two and declared down
    /// 300 ms later.
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
            key,
            seeds: Vec::new(),
            probe_period: Duration::from_millis(150),
            probe_rtt: Duration::from_millis(50),
            suspect_to_down_after: Duration::from_millis(300),
            indirect_probes: 3,
            gossip_period: Duration::from_millis(100),
            seed_announce_period: Duration::from_secs(1),
            peer_window: Duration::from_secs(3),
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
        {
            return bad(
                "suspect_to_down_after, gossip_period, seed_announce_period and peer_window must be non-zero",
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
}

/// Counters for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Alive members, self included.
    pub members: usize,
    /// Whether [`MembershipView::formed`] is true.
    pub formed: bool,
    /// Datagrams accepted and handed to foca.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams dropped because the MAC was wrong (wrong key or tampering).
    pub auth_failures: u64,
    /// Authentic datagrams dropped as replays.
    pub replays: u64,
    /// Datagrams dropped as malformed (envelope or foca payload).
    pub malformed: u64,
    /// Sends the kernel refused.
    pub send_errors: u64,
    /// Times the others declared this speaker down and it rejoined under a renewed identity.
    pub rejoins: u64,
}

#[derive(Default)]
struct SharedStats {
    members: AtomicUsize,
    formed: AtomicBool,
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    auth_failures: AtomicU64,
    replays: AtomicU64,
    malformed: AtomicU64,
    send_errors: AtomicU64,
    rejoins: AtomicU64,
}

impl SharedStats {
    fn snapshot(&self) -> MembershipStats {
        let r = Ordering::Relaxed;
        MembershipStats {
            members: self.members.load(r),
            formed: self.formed.load(r),
            datagrams_in: self.datagrams_in.load(r),
            datagrams_out: self.datagrams_out.load(r),
            auth_failures: self.auth_failures.load(r),
            replays: self.replays.load(r),
            malformed: self.malformed.load(r),
            send_errors: self.send_errors.load(r),
            rejoins: self.rejoins.load(r),
        }
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
}

enum Command {
    Announce(Vec<SocketAddr>),
    SetSeeds(Vec<SocketAddr>),
    Leave(oneshot::Sender<()>),
    SetState(state::SpeakerState),
    Renew,
}

/// Handle on a running membership task. Dropping it stops the task without a leave, as a crash
/// would; call [`Membership::leave`] for a graceful exit.
pub struct Membership {
    identity: NodeId,
    local_addr: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    stats: Arc<SharedStats>,
    states: watch::Receiver<state::States>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Bind the socket, start the task and announce to `cfg.seeds`.
    pub async fn start(
        cfg: MembershipConfig,
    ) -> Result<(Membership, watch::Receiver<MembershipView>), MembershipError> {
        let foca_config = cfg.foca_config()?;
        let mut cfg = cfg;
        let opener = auth::Opener::new(&cfg.key)?;
        let socket = tokio::net::UdpSocket::bind(cfg.bind)
            .await
            .map_err(|source| MembershipError::Bind {
                addr: cfg.bind,
                source,
            })?;
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
        let identity = NodeId {
            name: cfg.node_name.clone(),
            addr: cfg.advertise,
            bump: boot_number(),
        };
        let sealer = auth::Sealer::new(&cfg.key, &cfg.node_name, identity.bump)?;

        let stats = Arc::new(SharedStats::default());
        let (state_book, own_state, states) = state::StateBook::new(cfg.node_name.clone());
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (task, view_rx) = task::spawn(task::Parts {
            cfg,
            foca_config,
            identity: identity.clone(),
            socket,
            sealer,
            opener,
            commands: command_rx,
            stats: Arc::clone(&stats),
            state_book,
            own_state,
        });
        Ok((
            Membership {
                identity,
                local_addr,
                commands,
                stats,
                states,
                task,
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
    pub fn renew(&self) {
        let _ = self.commands.send(Command::Renew);
    }

    /// Tell the others we are leaving, then stop. Waits at most `timeout` for the departure to
    /// be sent. Afterwards the handle is inert: the task has stopped and the socket is closed.
    pub async fn leave(&self, timeout: Duration) {
        let (done, done_rx) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(timeout, done_rx).await;
        }
        self.task.abort();
    }

    /// Current counters.
    pub fn stats(&self) -> MembershipStats {
        self.stats.snapshot()
    }

    /// Our identity as the others see it.
    pub fn identity(&self) -> &NodeId {
        &self.identity
    }

    /// The address the socket is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A number that grows across restarts of a speaker: nanoseconds since the Unix epoch.
fn boot_number() -> u64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        // A clock before 1970 is broken; any value works as long as it is not reused.
        Err(_) => rand::random::<u64>() >> 1,
    }
}
