//! The I/O shell around foca: one task owning the socket, the timers and the state machine.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use rand_foca::SeedableRng;
use rand_foca::rngs::SmallRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::auth::{AuthError, Opener, Sealer};
use super::peers::PeerTracker;
use super::state::{OwnState, StateBook};
use super::{Command, MembershipConfig, MembershipView, NodeId, SharedStats};

/// This speaker's state is repeated this often (and whenever a member joins), so that every
/// member learns it even when the first broadcast was lost or came before it joined.
const STATE_REFRESH: Duration = Duration::from_secs(10);

/// Everything [`super::Membership::start`] prepared for the task.
pub(super) struct Parts {
    pub cfg: MembershipConfig,
    pub foca_config: foca::Config,
    pub identity: NodeId,
    pub socket: UdpSocket,
    pub sealer: Sealer,
    pub opener: Opener,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub stats: Arc<SharedStats>,
    pub state_book: StateBook,
    pub own_state: OwnState,
}

type Swim = Foca<NodeId, PostcardCodec, SmallRng, StateBook>;

/// Start the task; the receiver already holds the initial view.
pub(super) fn spawn(
    parts: Parts,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<MembershipView>) {
    let Parts {
        cfg,
        foca_config,
        identity,
        socket,
        sealer,
        opener,
        commands,
        stats,
        state_book,
        own_state,
    } = parts;
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
        runtime: AccumulatingRuntime::new(),
        sealer,
        opener,
        timers: BinaryHeap::new(),
        timer_seq: 0,
        seeds: BTreeSet::new(),
        seed_ips: BTreeSet::new(),
        advertise: cfg.advertise,
        heard_peer: false,
        peers: PeerTracker::new(cfg.peer_window),
        stats,
        view_tx: None,
        own_state,
    };
    state.set_seeds(cfg.seeds.iter().copied());
    let initial = state.current_view();
    if !initial.formed {
        tracing::info!(
            seeds = state.seeds.len(),
            "membership not formed yet; liveness falls back on the Node Ready condition"
        );
    }
    state.stats.formed.store(initial.formed, Ordering::Relaxed);
    state
        .stats
        .members
        .store(initial.alive.len(), Ordering::Relaxed);
    let (view_tx, view_rx) = watch::channel(initial);
    state.view_tx = Some(view_tx);
    let handle =
        tokio::spawn(state.run(socket, commands, cfg.seed_announce_period, cfg.peer_window));
    (handle, view_rx)
}

struct State {
    foca: Swim,
    /// Kept to start a fresh foca on renewal.
    foca_config: foca::Config,
    state_book: StateBook,
    runtime: AccumulatingRuntime<NodeId>,
    sealer: Sealer,
    opener: Opener,
    /// Due time, then foca's own order for timers due together (see foca issue #26), then
    /// submission order.
    timers: BinaryHeap<Reverse<(Instant, Timer<NodeId>, u64)>>,
    timer_seq: u64,
    seeds: BTreeSet<SocketAddr>,
    /// The seeds' IPs: unauthenticated datagrams from them mean a key mismatch, not noise.
    seed_ips: BTreeSet<std::net::IpAddr>,
    advertise: SocketAddr,
    heard_peer: bool,
    peers: PeerTracker,
    stats: Arc<SharedStats>,
    view_tx: Option<watch::Sender<MembershipView>>,
    own_state: OwnState,
}

impl State {
    async fn run(
        mut self,
        socket: UdpSocket,
        mut commands: mpsc::UnboundedReceiver<Command>,
        seed_period: Duration,
        peer_window: Duration,
    ) {
        let mut seed_tick = tokio::time::interval(seed_period);
        seed_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state_tick = tokio::time::interval(STATE_REFRESH);
        state_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The peer counts decay without any event: look again a few times per window.
        let mut peer_tick = tokio::time::interval(peer_window / 4);
        peer_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Largest UDP payload, so an oversized datagram is read whole and then rejected.
        let mut buf = vec![0u8; 65_535];
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                // Datagrams before timers: an ack that has arrived must be seen before the
                // probe timeout that it answers fires.
                biased;
                command = commands.recv() => match command {
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
                    Some(Command::Renew) => self.renew(),
                },
                received = socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let datagram = buf.get(..len).unwrap_or_default();
                        self.handle_datagram(datagram, from);
                    }
                    Err(error) => tracing::debug!(%error, "membership receive failed"),
                },
                _ = sleep_until(next_timer), if next_timer.is_some() => self.fire_due_timers(),
                _ = seed_tick.tick() => self.announce_to_seeds(),
                _ = state_tick.tick() => self.say_state(None),
                _ = peer_tick.tick() => {}
            }
            self.flush(&socket).await;
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

    fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let stats = &self.stats;
        match self.opener.open(datagram) {
            Ok(opened) => {
                stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
                self.peers
                    .authenticated(opened.sender, std::time::Instant::now());
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
            Err(AuthError::BadMac) => {
                stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                if self.seed_ips.contains(&from.ip()) {
                    self.peers
                        .unauthenticated_from_seed(std::time::Instant::now());
                }
                tracing::debug!(%from, "membership datagram with a bad MAC dropped");
            }
            Err(AuthError::Replay) => {
                stats.replays.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "replayed membership datagram dropped");
            }
            Err(error) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, %error, "malformed membership datagram dropped");
            }
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, timer, _))) = self.timers.pop() else {
                break;
            };
            if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(%error, "membership timer not applied");
            }
        }
    }

    /// React to what foca asked for: publish changes first (that latency is failover time),
    /// then send, then arm timers.
    async fn flush(&mut self, socket: &UdpSocket) {
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::Defunct => {
                    tracing::warn!("this speaker was declared down by the others")
                }
                OwnedNotification::Rejoin(id) => {
                    self.stats.rejoins.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        ?id,
                        "declared down by the others; rejoined with a new identity"
                    )
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
        // Also covers seed changes, which alter `formed` without a foca notification.
        self.publish();

        while let Some((dst, data)) = self.runtime.to_send() {
            let datagram = self.sealer.seal(&data);
            match socket.send_to(&datagram, dst.addr).await {
                Ok(_) => {
                    self.stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(to = %dst.addr, %error, "membership send failed");
                }
            }
        }

        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq = self.timer_seq.wrapping_add(1);
            self.timers
                .push(Reverse((now + after, timer, self.timer_seq)));
        }
    }

    fn current_view(&mut self) -> MembershipView {
        let peers = self.peers.summary(std::time::Instant::now());
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
            changed_at: std::time::Instant::now(),
        }
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
            && previous.formed == next.formed
            && previous.authenticated_peers == next.authenticated_peers
            && previous.keyring_failing == next.keyring_failing
        {
            return;
        }
        if next.keyring_failing && !previous.keyring_failing {
            tracing::warn!(
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
        self.stats
            .members
            .store(next.alive.len(), Ordering::Relaxed);
        self.stats.formed.store(next.formed, Ordering::Relaxed);
        tx.send_replace(next);
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
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
