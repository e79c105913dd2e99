//! The I/O shell around foca: one thread, with its own single-threaded runtime, owning the
//! socket, the timers, the keyring and the state machine.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Codec, Foca, OwnedNotification, PostcardCodec, Timer};
use rand_foca::SeedableRng;
use rand_foca::rngs::SmallRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::auth::{AuthError, KIND_HINT, KIND_SWIM, Keyring, Opener, Sealer};
use super::health::{self, LocalHealth};
use super::identity::{self, NodeId};
use super::peers::PeerTracker;
use super::ratelimit::{LogLimiter, Verdict};
use super::state::{OwnState, StateBook};
use super::{Command, MembershipConfig, MembershipView, SharedStats};

/// Datagrams read per turn of the loop before timers get their turn: a flood cannot starve
/// the probes, and acks that arrived are still read before the timeouts they answer.
const RECV_BATCH: usize = 256;
/// One warning per source address and reason this often; the rest are counted.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Source addresses tracked one by one for those warnings (more share one line).
const REJECT_LOG_SOURCES: usize = 256;
/// This speaker's state is repeated this often (and whenever a member joins), so that every
/// member learns it even when the first broadcast was lost or came before it joined.
const STATE_REFRESH: Duration = Duration::from_secs(10);
/// At most one identity hint per destination this often.
const HINT_EVERY: Duration = Duration::from_millis(250);

/// Everything [`super::Membership::start`] prepared for the task.
pub(super) struct Parts {
    pub cfg: MembershipConfig,
    pub foca_config: foca::Config,
    pub identity: NodeId,
    pub shared_identity: Arc<Mutex<NodeId>>,
    pub socket: std::net::UdpSocket,
    pub sealer: Sealer,
    pub opener: Opener,
    pub keys: Keyring,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub stats: Arc<SharedStats>,
    pub state_book: StateBook,
    pub own_state: OwnState,
}

type Swim = Foca<NodeId, PostcardCodec, SmallRng, StateBook>;

/// Start the membership thread; the receiver already holds the initial view.
pub(super) fn spawn(parts: Parts) -> std::io::Result<watch::Receiver<MembershipView>> {
    let Parts {
        cfg,
        foca_config,
        identity,
        shared_identity,
        socket,
        sealer,
        opener,
        keys,
        commands,
        stats,
        state_book,
        own_state,
    } = parts;
    stats.keys.store(keys.len(), Ordering::Relaxed);
    stats.local_health.store(1, Ordering::Relaxed);
    let mut state = State {
        foca: Foca::with_custom_broadcast(
            identity,
            foca_config.clone(),
            SmallRng::seed_from_u64(rand::random()),
            PostcardCodec,
            state_book.clone(),
        ),
        foca_config,
        state_book,
        own_state,
        runtime: AccumulatingRuntime::new(),
        codec: PostcardCodec,
        sealer,
        opener,
        keys,
        key_file: cfg.key_file.clone(),
        key_file_seen: None,
        key_file_failing: false,
        timers: BinaryHeap::new(),
        timer_seq: 0,
        seeds: BTreeSet::new(),
        seed_ips: BTreeSet::new(),
        advertise: cfg.advertise,
        heard_peer: false,
        dirty: true,
        peers: PeerTracker::new(cfg.peer_window),
        health: LocalHealth::new(),
        probe_rtt: cfg.probe_rtt,
        suspect_to_down_after: cfg.suspect_to_down_after,
        suspect_max_wait: cfg.suspect_max_wait,
        rejects: LogLimiter::new(REJECT_LOG_EVERY, REJECT_LOG_SOURCES),
        hints: HashMap::new(),
        outbox: Vec::new(),
        shared_identity,
        stats,
        view_tx: None,
        generation: 0,
    };
    state.set_seeds(cfg.seeds.iter().copied());
    let initial = state.current_view();
    if !initial.formed {
        tracing::info!(
            seeds = state.seeds.len(),
            "membership not formed yet; liveness falls back on the Node Ready condition"
        );
    }
    state.store_view_stats(&initial);
    let (view_tx, view_rx) = watch::channel(initial);
    state.view_tx = Some(view_tx);
    let realtime_priority = cfg.realtime_priority;
    let periods = Periods {
        seed: cfg.seed_announce_period,
        peer: cfg.peer_window / 4,
        keys: cfg.key_reload_period,
    };
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            if let Some(priority) = realtime_priority {
                log_priority(crate::sys::raise_thread_priority(priority, NICE_FALLBACK));
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, "membership: cannot build its runtime; this speaker will look dead to the others");
                    return;
                }
            };
            runtime.block_on(async move {
                match UdpSocket::from_std(socket) {
                    Ok(socket) => state.run(socket, commands, periods).await,
                    Err(error) => tracing::error!(%error, "membership: cannot register its socket; this speaker will look dead to the others"),
                }
            });
        })?;
    Ok(view_rx)
}

/// Nice value asked for when the real-time policy is refused.
const NICE_FALLBACK: i8 = -10;

fn log_priority(got: crate::sys::ThreadPriority) {
    use crate::sys::ThreadPriority;
    match got {
        ThreadPriority::Realtime(p) => {
            tracing::info!(priority = p, "membership thread runs at real-time priority")
        }
        ThreadPriority::Nice(n) => tracing::info!(
            nice = n,
            "membership thread runs at a raised nice value (real-time refused)"
        ),
        ThreadPriority::Unchanged(error) => tracing::warn!(
            %error,
            "membership thread runs at ordinary priority (no CAP_SYS_NICE): under CPU pressure it may go unscheduled long enough for the others to take this node for dead"
        ),
    }
}

struct Periods {
    seed: Duration,
    peer: Duration,
    keys: Duration,
}

/// A timer foca asked for. `raised_at` is when it was first scheduled (a deferred suspicion
/// keeps it). Ordered by due time, then foca's own order for timers due together (see foca
/// issue #26), then submission order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    timer: Timer<NodeId>,
    seq: u64,
    raised_at: Instant,
}

/// Why a datagram was dropped: the `reason` label of the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reject {
    BadMac,
    Replay,
    Malformed,
    Oversized,
}

struct State {
    foca: Swim,
    /// Kept to start a fresh foca on renewal.
    foca_config: foca::Config,
    state_book: StateBook,
    own_state: OwnState,
    runtime: AccumulatingRuntime<NodeId>,
    codec: PostcardCodec,
    sealer: Sealer,
    opener: Opener,
    keys: Keyring,
    key_file: Option<PathBuf>,
    /// The key file's content as last read, valid or not: only a change is acted on.
    key_file_seen: Option<Vec<u8>>,
    key_file_failing: bool,
    timers: BinaryHeap<Reverse<Due>>,
    timer_seq: u64,
    seeds: BTreeSet<SocketAddr>,
    /// The seeds' IPs: unauthenticated datagrams from them mean a key mismatch, not noise.
    seed_ips: BTreeSet<IpAddr>,
    advertise: SocketAddr,
    heard_peer: bool,
    /// Something the view is made of may have changed since it was last published: building
    /// it is skipped otherwise, so a flood of rejected datagrams costs no view per turn.
    dirty: bool,
    peers: PeerTracker,
    health: LocalHealth,
    probe_rtt: Duration,
    suspect_to_down_after: Duration,
    suspect_max_wait: Duration,
    rejects: LogLimiter<(IpAddr, Reject)>,
    /// When each address was last sent an identity hint.
    hints: HashMap<SocketAddr, Instant>,
    /// Datagrams of our own (identity hints) to send with foca's.
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    shared_identity: Arc<Mutex<NodeId>>,
    stats: Arc<SharedStats>,
    view_tx: Option<watch::Sender<MembershipView>>,
    /// The last renewal's generation (see [`MembershipView::generation`]).
    generation: u64,
}

impl State {
    async fn run(
        mut self,
        socket: UdpSocket,
        mut commands: mpsc::UnboundedReceiver<Command>,
        periods: Periods,
    ) {
        let interval = |period| {
            let mut i = tokio::time::interval(period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        let mut seed_tick = interval(periods.seed);
        // The peer counts decay without any event: look again a few times per window.
        let mut peer_tick = interval(periods.peer);
        let mut key_tick = interval(periods.keys);
        let mut state_tick = interval(STATE_REFRESH);
        // Largest UDP payload, so an oversized datagram is read whole and then rejected.
        let mut buf = vec![0u8; 65_535];
        let mut turn_ended = Instant::now();
        loop {
            let next_timer = self.timers.peek().map(|Reverse(d)| d.at);
            tokio::select! {
                biased;
                command = commands.recv() => {
                    self.dirty = true;
                    match command {
                    // The handle is gone: stop without a word, like a crash.
                    None => return,
                    Some(Command::Leave(done)) => {
                        self.leave(&socket).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::Announce(seeds)) => {
                        let seeds: Vec<SocketAddr> =
                            seeds.into_iter().filter(|s| *s != self.advertise).collect();
                        self.seeds.extend(seeds.iter().copied());
                        self.seed_ips.extend(seeds.iter().map(SocketAddr::ip));
                        for seed in seeds {
                            self.announce(seed);
                        }
                    }
                    Some(Command::SetSeeds(seeds)) => {
                        self.set_seeds(seeds);
                        self.announce_to_seeds();
                    }
                    Some(Command::SetState(s)) => self.say_state(Some(s)),
                    Some(Command::Renew(generation)) => {
                        self.generation = generation;
                        self.renew();
                    }
                }},
                // Read below, once per turn whatever woke us.
                _ = socket.readable() => {}
                _ = sleep_until(next_timer), if next_timer.is_some() => {}
                _ = seed_tick.tick() => {
                    self.dirty = true;
                    self.announce_to_seeds();
                }
                _ = peer_tick.tick() => self.dirty = true,
                _ = key_tick.tick() => self.reload_keys(),
                _ = state_tick.tick() => self.say_state(None),
            }
            // Datagrams before timers: an ack that has arrived must be seen before the probe
            // timeout that it answers fires.
            self.receive(&socket, &mut buf);
            self.pause_timers_over_a_stall(turn_ended);
            self.fire_due_timers();
            self.check_outranked();
            self.flush(&socket).await;
            turn_ended = Instant::now();
        }
    }

    /// Broadcast this speaker's state (a new one, or the current one again).
    fn say_state(&mut self, new: Option<super::state::SpeakerState>) {
        let data = self.own_state.next(new);
        if let Err(error) = self.foca.add_broadcast(&data) {
            tracing::debug!(%error, "speaker state broadcast failed");
        }
        // Send it now rather than at the next probe: a withdrawal is a handover.
        if let Err(error) = self.foca.gossip(&mut self.runtime) {
            tracing::debug!(%error, "speaker state gossip failed");
        }
    }

    /// Forget every peer and rejoin under a renewed identity (see
    /// [`super::Membership::renew`]).
    fn renew(&mut self) {
        let Some(renewed) = foca::Identity::renew(self.foca.identity()) else {
            return;
        };
        tracing::info!(identity = ?renewed, "membership: alone; forgetting every peer and rejoining under a renewed identity");
        // A new instance, not `change_identity`: that keeps the member list and the updates
        // waiting to be gossiped, which are exactly the stale "down" verdicts to forget.
        self.foca = Foca::with_custom_broadcast(
            renewed,
            self.foca_config.clone(),
            SmallRng::seed_from_u64(rand::random()),
            PostcardCodec,
            self.state_book.clone(),
        );
        self.sync_shared_identity();
        self.timers.clear();
        while self.runtime.to_send().is_some() {}
        while self.runtime.to_schedule().is_some() {}
        while self.runtime.to_notify().is_some() {}
        // Still formed: it did hear peers, and hears nobody now, which is what the shell acts on.
        self.announce_to_seeds();
        self.say_state(None);
    }

    fn set_seeds(&mut self, seeds: impl IntoIterator<Item = SocketAddr>) {
        let advertise = self.advertise;
        self.seeds = seeds.into_iter().filter(|s| *s != advertise).collect();
        self.seed_ips = self.seeds.iter().map(SocketAddr::ip).collect();
    }

    fn announce(&mut self, seed: SocketAddr) {
        if let Err(error) = self.foca.announce(NodeId::seed(seed), &mut self.runtime) {
            tracing::debug!(%seed, %error, "membership announce failed");
        }
    }

    /// Announce to every seed that is not a live member: joins, and heals partitions.
    fn announce_to_seeds(&mut self) {
        let live: BTreeSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        let missing: Vec<SocketAddr> = self.seeds.difference(&live).copied().collect();
        for seed in missing {
            self.announce(seed);
        }
    }

    /// Read what the socket holds, up to [`RECV_BATCH`] datagrams.
    fn receive(&mut self, socket: &UdpSocket, buf: &mut [u8]) {
        for _ in 0..RECV_BATCH {
            match socket.try_recv_from(buf) {
                Ok((len, from)) => {
                    let datagram = buf.get(..len).unwrap_or_default();
                    self.handle_datagram(datagram, from);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::debug!(%error, "membership receive failed");
                    return;
                }
            }
        }
    }

    fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let now = Instant::now();
        let stats = Arc::clone(&self.stats);
        let opened = match self.opener.open(datagram) {
            Ok(opened) => opened,
            Err(error) => {
                let reason = match error {
                    AuthError::BadMac => {
                        stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                        if self.seed_ips.contains(&from.ip()) {
                            self.peers.unauthenticated_from_seed(now);
                        }
                        Reject::BadMac
                    }
                    AuthError::Replay => {
                        stats.replays.fetch_add(1, Ordering::Relaxed);
                        Reject::Replay
                    }
                    AuthError::Oversized => {
                        stats.oversized.fetch_add(1, Ordering::Relaxed);
                        Reject::Oversized
                    }
                    _ => {
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                        Reject::Malformed
                    }
                };
                self.log_reject(from, reason, now);
                return;
            }
        };
        stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        if opened.key_index == 0 {
            stats.accepted_primary.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.accepted_secondary.fetch_add(1, Ordering::Relaxed);
        }
        self.peers.authenticated(opened.sender, now);
        self.dirty = true;
        match opened.kind {
            KIND_SWIM => {
                self.hint_if_outranked(opened.payload, now);
                if let Err(error) = self.foca.handle_data(opened.payload, &mut self.runtime) {
                    if matches!(
                        error,
                        foca::Error::Decode(_)
                            | foca::Error::MalformedPacket
                            | foca::Error::DataTooBig
                    ) {
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(%from, sender = opened.sender, %error, "membership datagram not applied");
                }
            }
            KIND_HINT => self.on_hint(opened.payload, opened.sender),
            _ => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn log_reject(&mut self, from: SocketAddr, reason: Reject, now: Instant) {
        let (suppressed, overflow) = match self.rejects.check(&(from.ip(), reason), now) {
            Verdict::Suppress => return,
            Verdict::Log {
                suppressed,
                overflow,
            } => (suppressed, overflow),
        };
        // With the map full, the line stands for many sources: naming one would mislead.
        let from = if overflow {
            "many addresses".to_owned()
        } else {
            from.to_string()
        };
        match reason {
            Reject::BadMac => tracing::warn!(
                %from,
                reason = "bad_mac",
                suppressed,
                "membership datagram failed authentication (a speaker with another key, or forged)"
            ),
            Reject::Replay => tracing::warn!(
                %from,
                reason = "replay",
                suppressed,
                "membership datagram dropped as a replay"
            ),
            Reject::Malformed => tracing::warn!(
                %from,
                reason = "malformed",
                suppressed,
                "malformed membership datagram dropped"
            ),
            Reject::Oversized => tracing::warn!(
                %from,
                reason = "oversized",
                suppressed,
                "oversized membership datagram dropped"
            ),
        }
    }

    /// A peer restarted with an identity that one we remember outranks (its clock went back):
    /// tell it the bump to beat, or foca ignores it for as long as it remembers the old one.
    fn hint_if_outranked(&mut self, payload: &[u8], now: Instant) {
        let Ok(header): Result<foca::Header<NodeId>, _> = self.codec.decode_header(payload) else {
            return;
        };
        let sender = header.src;
        let Some(bump) =
            identity::hint_for(&sender, self.foca.iter_membership_state().map(|m| m.id()))
        else {
            return;
        };
        let to = sender.addr;
        if self
            .hints
            .get(&to)
            .is_some_and(|at| now.saturating_duration_since(*at) < HINT_EVERY)
        {
            return;
        }
        if self.hints.len() > 1024 {
            self.hints.clear();
        }
        self.hints.insert(to, now);
        let mut body = bump.to_be_bytes().to_vec();
        body.extend_from_slice(sender.name.as_bytes());
        tracing::info!(peer = %sender.name, identity = ?sender, remembered_bump = bump, "membership: a peer restarted below an identity it had before; hinting the bump to beat");
        let datagram = self.sealer.seal_kind(KIND_HINT, &body);
        self.outbox.push((to, datagram));
        self.stats.hints_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A peer says an earlier identity of ours outranks the current one.
    fn on_hint(&mut self, payload: &[u8], from: &str) {
        let Some((bump, name)) = payload.split_first_chunk::<8>() else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let bump = u64::from_be_bytes(*bump);
        if name != self.foca.identity().name.as_bytes() || bump < self.foca.identity().bump {
            // For another node, or already behind us: nothing to do.
            return;
        }
        tracing::info!(
            peer = from,
            "membership: a peer remembers a previous identity of this node"
        );
        self.outrank(bump);
    }

    /// Our own member list may hold a previous identity of ours (from a peer's feed).
    fn check_outranked(&mut self) {
        let me = self.foca.identity().clone();
        if let Some(bump) =
            identity::outranking_bump(&me, self.foca.iter_membership_state().map(|m| m.id()))
        {
            self.outrank(bump);
        }
    }

    fn outrank(&mut self, bump: u64) {
        let old = self.foca.identity().clone();
        let Some(next) = old.outranking(bump) else {
            tracing::warn!(identity = ?old, "membership: no identity above the remembered one");
            return;
        };
        tracing::warn!(
            old = ?old,
            new = ?next,
            "membership: the cluster remembers this node with a larger bump (was the clock set back?); rejoining above it"
        );
        self.dirty = true;
        if let Err(error) = self.foca.change_identity(next.clone(), &mut self.runtime) {
            tracing::warn!(%error, "membership: changing identity failed");
            return;
        }
        self.stats
            .identity_outranked
            .fetch_add(1, Ordering::Relaxed);
        // Every peer, member or not, must learn the new identity now.
        for seed in self.seeds.clone() {
            self.announce(seed);
        }
    }

    /// Show the handle foca's identity as it is now (renewals and outranking change it, in
    /// whatever order their notifications arrive).
    fn sync_shared_identity(&self) {
        let current = self.foca.identity();
        let mut shared = match self.shared_identity.lock() {
            Ok(shared) => shared,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *shared != *current {
            *shared = current.clone();
        }
    }

    /// If this thread was not scheduled while timers were due, the protocol's clock stops for
    /// as long: every timer moves that much later. Fired together on waking, they would
    /// conclude that the others were silent when it was this node that could not listen or
    /// send (a probe's indirect round and its verdict in one turn, a suspicion that could not
    /// be refuted because our gossip never left).
    fn pause_timers_over_a_stall(&mut self, turn_ended: Instant) {
        let now = Instant::now();
        let earliest = self.timers.peek().map(|Reverse(d)| d.at);
        let stall = health::overslept(turn_ended, earliest, now);
        let tolerance = self.probe_rtt / 2;
        if stall <= tolerance {
            return;
        }
        self.timers = std::mem::take(&mut self.timers)
            .into_iter()
            .map(|Reverse(d)| {
                Reverse(Due {
                    at: d.at + stall,
                    raised_at: d.raised_at + stall,
                    ..d
                })
            })
            .collect();
        self.stats.stalls.fetch_add(1, Ordering::Relaxed);
        if self.health.timer_fired(stall, tolerance) {
            self.stats.late_timers.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .local_health
            .store(self.health.multiplier(), Ordering::Relaxed);
        if stall >= self.suspect_to_down_after {
            tracing::warn!(
                stall_ms = stall.as_millis(),
                "membership thread was not scheduled while its timers were due; its timers wait as long (the others may have taken this node for dead meanwhile)"
            );
        } else {
            tracing::debug!(
                stall_ms = stall.as_millis(),
                "membership thread ran late; its timers wait as long"
            );
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        // A healthy loop fires a timer within a few milliseconds; half the probe round trip
        // late means what we conclude from our timeouts is no longer trustworthy.
        let tolerance = self.probe_rtt / 2;
        while let Some(Reverse(due)) = self.timers.peek() {
            if due.at > now {
                break;
            }
            let Some(Reverse(due)) = self.timers.pop() else {
                break;
            };
            let late = now.saturating_duration_since(due.at);
            match &due.timer {
                Timer::ProbeRandomMember(_) => {
                    self.health.period_started(now);
                    self.note_lateness(late, tolerance);
                }
                Timer::SendIndirectProbe { .. } => self.note_lateness(late, tolerance),
                Timer::ChangeSuspectToDown {
                    member_id,
                    incarnation,
                    ..
                } => {
                    if !health::still_suspected(
                        self.foca.iter_membership_state(),
                        member_id,
                        *incarnation,
                    ) {
                        self.stats
                            .suspicions_refuted
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let verdict = health::suspicion_verdict(
                        due.raised_at,
                        now,
                        self.peers.last_heard(&member_id.name),
                        self.health.scale(self.suspect_to_down_after),
                        self.health.scale(self.suspect_max_wait),
                    );
                    if let health::Verdict::WaitUntil(at) = verdict {
                        self.stats
                            .suspicions_deferred
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(member = ?member_id, "membership: suspect still talks to us; waiting for its refutation");
                        self.timers.push(Reverse(Due { at, ..due }));
                        continue;
                    }
                }
                _ => {}
            }
            if let Err(error) = self.foca.handle_timer(due.timer, &mut self.runtime) {
                tracing::debug!(%error, "membership timer not applied");
            }
        }
    }

    fn note_lateness(&mut self, late: Duration, tolerance: Duration) {
        if self.health.timer_fired(late, tolerance) {
            self.stats.late_timers.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                late_ms = late.as_millis(),
                multiplier = self.health.multiplier(),
                "membership: own timers late; stretching timeouts"
            );
        }
        self.stats
            .local_health
            .store(self.health.multiplier(), Ordering::Relaxed);
    }

    fn reload_keys(&mut self) {
        let Some(path) = self.key_file.clone() else {
            return;
        };
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(error) => {
                if !self.key_file_failing {
                    self.key_file_failing = true;
                    self.stats
                        .key_reload_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(path = %path.display(), %error, "membership: cannot read the key file; keeping the keys in use");
                }
                return;
            }
        };
        self.key_file_failing = false;
        if self.key_file_seen.as_deref() == Some(raw.as_slice()) {
            return;
        }
        let keys = Keyring::parse(&raw);
        self.key_file_seen = Some(raw);
        let keys = match keys {
            Ok(keys) => keys,
            Err(error) => {
                self.stats
                    .key_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), %error, "membership: the key file changed but holds no usable keyring; keeping the keys in use");
                return;
            }
        };
        if keys == self.keys {
            return;
        }
        if let Err(error) = self
            .opener
            .set_keys(&keys)
            .and_then(|()| self.sealer.set_key(keys.primary()))
        {
            self.stats
                .key_reload_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "membership: the new keyring cannot be used; keeping the keys in use");
            return;
        }
        tracing::info!(
            keys = keys.len(),
            fingerprints = ?keys.fingerprints(),
            previous = ?self.keys.fingerprints(),
            "membership: keyring reloaded; sealing with the first, accepting all"
        );
        self.stats.keys.store(keys.len(), Ordering::Relaxed);
        self.stats.key_reloads.fetch_add(1, Ordering::Relaxed);
        self.keys = keys;
    }

    /// React to what foca asked for: publish changes first (that latency is failover time),
    /// then send, then arm timers.
    async fn flush(&mut self, socket: &UdpSocket) {
        while let Some(notification) = self.runtime.to_notify() {
            self.dirty = true;
            match notification {
                OwnedNotification::Defunct => {
                    tracing::warn!("this speaker was declared down by the others")
                }
                OwnedNotification::Rejoin(id) => {
                    self.stats.rejoins.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        ?id,
                        "declared down by the others; rejoined with a new identity"
                    );
                }
                OwnedNotification::MemberDown(id) => {
                    self.stats.members_down.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(member = ?id, "membership: member down");
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(?old, ?new, "membership: member restarted")
                }
                OwnedNotification::MemberUp(id) => {
                    tracing::debug!(?id, "membership: member up");
                    // A newcomer has not heard this speaker's state yet.
                    let data = self.own_state.next(None);
                    if let Err(error) = self.foca.add_broadcast(&data) {
                        tracing::debug!(%error, "speaker state broadcast failed");
                    }
                }
                other => tracing::debug!(notification = ?other, "membership notification"),
            }
        }
        if std::mem::take(&mut self.dirty) {
            self.sync_shared_identity();
            // Also covers seed changes, which alter `formed` without a foca notification.
            self.publish();
        }

        while let Some((dst, data)) = self.runtime.to_send() {
            let datagram = self.sealer.seal(&data);
            self.send(socket, dst.addr, &datagram).await;
        }
        for (dst, datagram) in std::mem::take(&mut self.outbox) {
            self.send(socket, dst, &datagram).await;
        }

        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            // Lifeguard: a starved node waits longer before concluding anything. The same
            // multiplier for every timer of this turn keeps a probe's timeout inside its period.
            let after = match timer {
                Timer::ProbeRandomMember(_)
                | Timer::SendIndirectProbe { .. }
                | Timer::ChangeSuspectToDown { .. } => self.health.scale(after),
                _ => after,
            };
            self.timer_seq = self.timer_seq.wrapping_add(1);
            self.timers.push(Reverse(Due {
                at: now + after,
                timer,
                seq: self.timer_seq,
                raised_at: now,
            }));
        }
    }

    async fn send(&self, socket: &UdpSocket, to: SocketAddr, datagram: &[u8]) {
        match socket.send_to(datagram, to).await {
            Ok(_) => {
                self.stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%to, %error, "membership send failed");
            }
        }
    }

    fn current_view(&mut self) -> MembershipView {
        let peers = self.peers.summary(Instant::now());
        let mut alive: BTreeSet<String> = self
            .foca
            .iter_members()
            .map(|m| m.id().name.clone())
            .collect();
        alive.insert(self.foca.identity().name.clone());
        MembershipView {
            alive,
            formed: self.heard_peer || self.seeds.is_empty(),
            authenticated_peers: peers.authenticated_peers,
            keyring_failing: peers.keyring_failing,
            changed_at: Instant::now(),
            generation: self.generation,
        }
    }

    fn store_view_stats(&self, view: &MembershipView) {
        let r = Ordering::Relaxed;
        self.stats.members.store(view.alive.len(), r);
        self.stats.formed.store(view.formed, r);
        self.stats
            .authenticated_peers
            .store(view.authenticated_peers, r);
        self.stats.keyring_failing.store(view.keyring_failing, r);
    }

    fn publish(&mut self) {
        if self.foca.num_members() > 0 {
            self.heard_peer = true;
        }
        let next = self.current_view();
        let Some(tx) = &self.view_tx else {
            return;
        };
        let previous = tx.borrow().clone();
        if previous.alive == next.alive
            && previous.generation == next.generation
            && previous.formed == next.formed
            && previous.authenticated_peers == next.authenticated_peers
            && previous.keyring_failing == next.keyring_failing
        {
            return;
        }
        if next.keyring_failing && !previous.keyring_failing {
            tracing::warn!(
                keys = ?self.keys.fingerprints(),
                "membership: datagrams from other nodes arrive but none authenticates; this speaker's membership key does not match the cluster's"
            );
        } else if previous.keyring_failing && !next.keyring_failing {
            tracing::info!(
                authenticated_peers = next.authenticated_peers,
                "membership: authenticated with peers again"
            );
        }
        let joined: Vec<&String> = next.alive.difference(&previous.alive).collect();
        let gone: Vec<&String> = previous.alive.difference(&next.alive).collect();
        if !joined.is_empty() || !gone.is_empty() {
            tracing::info!(
                ?joined,
                ?gone,
                alive = next.alive.len(),
                "membership changed"
            );
        }
        if next.formed && !previous.formed {
            tracing::info!(
                alive = next.alive.len(),
                "membership formed; liveness now comes from the speakers"
            );
        }
        self.store_view_stats(&next);
        if let Some(tx) = &self.view_tx {
            tx.send_replace(next);
        }
    }

    async fn leave(&mut self, socket: &UdpSocket) {
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::warn!(%error, "membership leave failed");
        }
        self.flush(socket).await;
        // UDP may drop the departure; a second copy of the same update is cheap insurance so
        // the others do not have to fall back on the suspicion timeout.
        if let Err(error) = self.foca.gossip(&mut self.runtime) {
            tracing::debug!(%error, "membership leave gossip failed");
        }
        self.flush(socket).await;
        tracing::info!("left the membership");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
