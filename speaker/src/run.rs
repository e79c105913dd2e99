//! The speaker's I/O shell: watch the cluster, feed [`crate::plan::plan`], drive the announcer,
//! report on the Services.
//!
//! One loop owns all state and reacts to: a change in any watched kind, a new membership view or
//! new speaker states, an announcer event, the result of a condition write, and a one-second
//! tick that judges the API server's health. A membership change is the failover path: the loop
//! recomputes the plan and calls [`Announcer::set_owned`] before doing anything else, with no
//! sleep or debounce. Changes of watched objects are batched instead: after a recomputation the
//! next one waits a few times as long as the last one took (at most [`MAX_RECOMPUTE_GAP`]), so a
//! storm of thousands of Service updates costs a bounded share of the CPU instead of one full
//! plan per update. The announcer runs on a thread of its own
//! ([`Announcer::start_dedicated`]): answering ARP never waits for the plan.
//!
//! Losing the API server withdraws nothing by itself: the reflector stores keep their last
//! content (watchers retry with backoff), and the plan keeps being computed from them. But a
//! speaker whose API server has been silent for longer than
//! [`SpeakerConfig::api_loss_timeout`] while a peer still hears it withdraws from the election
//! (its view is stale: new Services, deleted ones), and so does one that cannot authenticate
//! with any peer; see [`withdrawal`].
//!
//! Conditions are written level-triggered: each pass compares what the plan wants with the
//! condition the Service carries now, and writes only the difference, with the Service's
//! `resourceVersion` as a precondition. So a late write can never overwrite a newer one, a
//! queued write that the plan no longer wants is dropped before it is sent, and a speaker whose
//! caches lag behind writes nothing until they caught up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use lodestone_crds::{IPAddressPool, L2Advertisement, ServiceKey};
use lodestone_crds::{announced, conditions};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};

use crate::announcer::{Announcer, AnnouncerConfig, AnnouncerError, AnnouncerEvent};
use crate::election;
use crate::membership::state::{SpeakerState, States};
use crate::membership::{Membership, MembershipConfig, MembershipError, MembershipView};
use crate::metrics::{self, Health, Metrics};
use crate::plan::{self, AliveSource, ClassFilter, NoOwner, Observed, Plan, PlanInput};
use crate::trim;

/// The status condition type the speaker writes on Services.
pub use lodestone_crds::announced::CONDITION_TYPE;
/// Field manager of every write the speaker makes.
pub use lodestone_crds::conditions::SPEAKER_FIELD_MANAGER as FIELD_MANAGER;

mod api;
mod decide;
mod report;
use api::*;
pub(crate) use api::{ApiHealth, watch_kind};
pub use decide::*;
use report::*;
/// How long the departure notice may take on SIGTERM.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);
/// Reason of `Announced=False` on a Service whose address another machine answers for.
pub const REASON_ADDRESS_IN_USE: &str = "AddressInUse";
/// After start, Ready nodes the membership has not shown yet still count as alive for this
/// long (see [`plan::alive_set`]): peers are normally heard within one seed announce (1 s).
const JOINING_GRACE: Duration = Duration::from_secs(5);
/// Freed memory goes back to the system once the loop has been idle this long (see
/// [`lodestone_heap`]): after the start, and after each later burst of changes.
const RELEASE_MEMORY_AFTER: Duration = Duration::from_secs(5);
/// A condition write that failed or lost a race is looked at again after this long.
const CONDITION_RETRY: Duration = Duration::from_secs(1);
/// One condition write may take this long before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `Announced=False` is written only once the Service has had no owner this long in this
/// speaker's view: a view still converging (a restart, endpoints becoming ready) says nothing.
const FALSE_SETTLE: Duration = Duration::from_secs(2);
/// How often the API server is asked for its version (besides every watch event).
const API_PROBE_PERIOD: Duration = Duration::from_secs(2);
/// How long that question may take.
const API_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// This speaker tells its peers its view is fresh while it heard from the API server this
/// recently.
pub const API_FRESH_WINDOW: Duration = Duration::from_secs(6);
/// A speaker cut from the API server withdraws only once some peer has been reporting a fresh
/// view for this long: when the API server comes back for everybody, each speaker's own probe
/// succeeds within this time, so nobody withdraws for having been a little slower.
pub const FRESH_PEER_SETTLE: Duration = Duration::from_secs(8);
/// Server-side timeout of each watch. kube re-establishes a watch whose connection died
/// silently 5 s after this, so a speaker's caches follow the API server again at most that
/// long after the network does.
const WATCH_TIMEOUT_SECS: u32 = 30;
/// After watched objects change, the next recomputation waits this many times as long as the
/// previous one took...
const RECOMPUTE_GAP_FACTOR: u32 = 4;
/// ...but never longer than this.
pub const MAX_RECOMPUTE_GAP: Duration = Duration::from_millis(500);
/// A speaker whose own link was down this long has been declared down by the others, so it
/// must rejoin before it announces again (the announcer holds the link meanwhile).
pub use crate::announcer::LINK_DOWN_HOLDS as LINK_DOWN_ISOLATES;
/// A speaker back in the election after a withdrawal announces nothing for this long. Its
/// state tells the others at once that it is electable again, and each hands back the
/// addresses it served meanwhile as soon as it hears that (their conditions still name this
/// node, the sticky owner); announcing before they heard made two nodes answer for such an
/// address (seen under load in the link-flap scenario: 9 prober rounds, about 1 s after the
/// link came back). A pause in ARP answers is harmless instead: clients keep their entry,
/// which points at the node that served meanwhile, and its kube-proxy still forwards.
pub const REENTRY_HOLD: Duration = Duration::from_secs(1);
/// After this node's own link comes back, peers that were alive when it went down still count
/// as alive for this long. While the link was down this node heard nobody, so its membership
/// may have declared peers down that never were; taking their addresses over on that word made
/// two nodes answer for one address in the link-flap scenario (node-a answering for node-c's
/// address right after a short flap, its view still lacking node-c). Long enough for the
/// membership to hear every live peer again; a peer that really died meanwhile is taken over
/// this much later by this node (the others, whose links stayed up, are not held back).
pub const LINK_SETTLE: Duration = Duration::from_secs(2);
/// Condition writes that failed are logged at most this often (with the count since).
const WRITE_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Settings of one speaker.
#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    /// This node's name.
    pub node_name: String,
    /// Which Services are ours.
    pub class: ClassFilter,
    /// UDP port of the membership protocol (the same on every node).
    pub membership_port: u16,
    /// Local address to bind; default: the unspecified address of the advertised family.
    pub membership_bind: Option<IpAddr>,
    /// Address the others reach us at; default: this Node's `InternalIP`.
    pub membership_advertise: Option<IpAddr>,
    /// Membership keyring, primary first.
    pub keys: Vec<Vec<u8>>,
    /// The key file to watch for a rotation, when the keys came from one.
    pub key_file: Option<std::path::PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub health_addr: SocketAddr,
    /// Announcer settings.
    pub announcer: AnnouncerConfig,
    /// How long the API server may stay unreachable before this speaker withdraws from the
    /// election, provided a peer still reaches it (see [`withdrawal`]).
    pub api_loss_timeout: Duration,
    /// The speaker's namespace, where BGP password Secrets live.
    pub namespace: String,
}

/// Why the speaker stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The probe/metrics listener could not be bound.
    #[error("binding {addr} for /metrics and probes: {source}")]
    Health {
        /// Address asked for.
        addr: SocketAddr,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// A watch ended before its first listing (cannot happen while the writer lives).
    #[error("the {0} watch ended before its first listing")]
    StoreNeverReady(&'static str),
    /// No advertise address: the Node has no InternalIP and none was given.
    #[error("node {0} not found or without an InternalIP address; set --membership-advertise")]
    NoAdvertiseAddress(String),
    /// Membership could not start.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The announcer could not start.
    #[error(transparent)]
    Announcer(#[from] AnnouncerError),
}

/// Everything the loop remembers between iterations.
struct Shell {
    cfg: SpeakerConfig,
    stores: Stores,
    announcer: Announcer,
    membership: Membership,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    api: Arc<ApiHealth>,
    events: mpsc::UnboundedSender<EventReport>,
    writes: Arc<PendingWrites>,
    bgp: crate::bgp::Bgp,
    plan: Plan,
    owners: BTreeMap<IpAddr, String>,
    alive_source: Option<AliveSource>,
    seeds: Vec<SocketAddr>,
    /// What the announcer reports as announced (from its events).
    announced: BTreeMap<IpAddr, Vec<String>>,
    /// What the announcer was last told about the Services behind each owned address.
    by_address: BTreeMap<IpAddr, Vec<ServiceKey>>,
    /// Services per owned address, kept for addresses still announced after the Service
    /// vanished, so that "stopped" can be reported on it.
    services_of: BTreeMap<IpAddr, BTreeSet<ServiceKey>>,
    /// Condition writes made and not yet seen in the cache, by Service.
    sent: BTreeMap<ServiceKey, Sent>,
    /// Numbers the writes, so a late result is matched to its own write.
    write_id: u64,
    /// Since when each Service has had no owner in this speaker's view.
    no_owner_since: HashMap<ServiceKey, Instant>,
    /// Owned addresses answered on no interface (none of the named ones exists here), as last
    /// reported: see [`plan::unanswerable`].
    unanswerable: BTreeMap<IpAddr, Vec<String>>,
    /// The latest membership view.
    view: MembershipView,
    /// What the speakers say about themselves.
    states: States,
    /// Every node the membership has shown alive since start.
    seen: BTreeSet<String>,
    /// Still in the joining grace period (after the start, or after the membership was
    /// renewed): peers not heard yet still count as alive through their Node.
    joining: bool,
    /// When the joining grace period ends.
    joining_until: tokio::time::Instant,
    /// Why this speaker is out of the election, if it is.
    withdrawal: Option<Withdrawal>,
    /// The state last told to the others.
    told: Option<SpeakerState>,
    /// Since when some alive peer has been reporting a fresh view.
    fresh_peer_since: Option<Instant>,
    /// Whether the API server was reachable at the last judgement.
    api_was_fresh: bool,
    /// The membership has shown a peer since it was last renewed.
    had_peers: bool,
    /// Failed writes not logged yet, and when the last such line was written.
    write_failures: (u64, Option<Instant>),
    /// When to look at the conditions again (a retry, a settle period ending).
    retry_at: Option<tokio::time::Instant>,
    /// How long the last recomputation took.
    last_recompute: Duration,
    client: Client,
    notify: Arc<Notify>,
    /// The API server was silent long enough that the watches may be stuck on dead
    /// connections: the caches are re-read from scratch once it answers again.
    needs_resync: bool,
    /// Caches being filled to replace [`Shell::stores`], numbered; the number comes back on
    /// [`Shell::resync_done`] once they are.
    resyncing: Option<(u64, Stores)>,
    resync_generation: u64,
    resync_done: mpsc::UnboundedSender<u64>,
    /// This speaker heard no peer at some point since its view was last fresh.
    isolated: bool,
    /// Whether the API server answered recently at the last judgement.
    api_was_reachable: bool,
    /// When this node's own link came back after a long enough outage (see
    /// [`Withdrawal::LinkReturned`]); cleared once it caught up.
    link_returned_at: Option<Instant>,
    /// When it came back into the election, until [`REENTRY_HOLD`] has passed.
    back_since: Option<tokio::time::Instant>,
    /// The membership generation asked for by the last renewal: older views are skipped.
    renewed_to: u64,
    /// The address the others reach this speaker at: its link is "this node's link".
    own_ip: IpAddr,
    /// Since when that link has been down.
    own_link_down_since: Option<Instant>,
    /// The peers alive when that link went down: they stay alive in this node's eyes while it
    /// is down and until `link_settle_until` (see [`LINK_SETTLE`]).
    alive_at_link_down: BTreeSet<String>,
    link_settle_until: Option<tokio::time::Instant>,
    /// Pools that vanished while their addresses were served.
    pool_hold: crate::hold::PoolHold,
}

impl Shell {
    /// Takes a new view; true when a peer joined (or rejoined, or a partition healed).
    fn set_view(&mut self, view: MembershipView) -> bool {
        if !view_is_current(&view, self.renewed_to) {
            tracing::debug!(
                generation = view.generation,
                renewed_to = self.renewed_to,
                "membership view from before the renewal skipped"
            );
            return false;
        }
        let me = self.cfg.node_name.as_str();
        let joined = view
            .alive
            .iter()
            .any(|n| n != me && !self.view.alive.contains(n));
        self.seen.extend(view.alive.iter().cloned());
        if view.alive.iter().any(|n| n != me) {
            self.had_peers = true;
        }
        self.view = view;
        joined
    }

    /// Whether the membership says no peer's datagram authenticates.
    fn keyring_failing(&self) -> bool {
        self.view.keyring_failing
    }

    /// The API server answered recently and the caches need no re-read: this speaker's view
    /// follows the cluster. (A failed watch is no sign: kube re-establishes it from where it
    /// was, silently when nothing changed meanwhile; an outage long enough to matter makes
    /// the caches be re-read.)
    fn view_fresh(&self) -> bool {
        self.api.silent_for() <= API_FRESH_WINDOW && !self.needs_resync
    }

    /// A new snapshot of the links: when this node's own link comes back after being down
    /// for [`LINK_DOWN_ISOLATES`] or more, the others have declared this speaker down and
    /// taken its addresses over. It rejoins under a fresh identity and stays out of the
    /// election until it hears them again and has re-read the cluster. Returns whether that
    /// happened.
    fn on_links(&mut self, links: &[crate::interfaces::LinkInfo]) -> bool {
        let own = links
            .iter()
            .find(|l| l.addrs.iter().any(|net| net.addr() == self.own_ip));
        // A link without the address (renamed, address moved) says nothing either way.
        let Some(own) = own else {
            return false;
        };
        match (own.up, self.own_link_down_since) {
            (false, None) => {
                tracing::warn!(interface = %own.name, "this node's link is down");
                self.own_link_down_since = Some(Instant::now());
                self.alive_at_link_down = self.view.alive.clone();
                self.link_settle_until = None;
                false
            }
            (true, Some(since)) => {
                self.own_link_down_since = None;
                self.link_settle_until = Some(tokio::time::Instant::now() + LINK_SETTLE);
                let down = since.elapsed();
                if down < LINK_DOWN_ISOLATES {
                    tracing::info!(interface = %own.name, down_ms = down.as_millis(), "this node's link is back");
                    return false;
                }
                tracing::warn!(interface = %own.name, down_ms = down.as_millis(), "this node's link is back after the others took it for dead; rejoining before announcing again");
                self.renewed_to = self.membership.renew();
                // What the renewed membership will publish: nobody heard yet.
                self.view.alive = BTreeSet::from([self.cfg.node_name.clone()]);
                self.had_peers = false;
                self.seen.clear();
                self.joining = true;
                self.joining_until = tokio::time::Instant::now() + JOINING_GRACE;
                self.isolated = true;
                self.needs_resync = true;
                self.link_returned_at = Some(Instant::now());
                true
            }
            _ => false,
        }
    }

    /// Whether this node's own link is down or came back less than [`LINK_SETTLE`] ago: its
    /// membership's word that a peer is down may stem from its own outage.
    fn link_suspect(&self) -> bool {
        self.own_link_down_since.is_some()
            || self
                .link_settle_until
                .is_some_and(|t| tokio::time::Instant::now() < t)
    }

    /// Re-read number `generation` is complete: use its caches from now on (unless a newer
    /// one replaced it meanwhile).
    fn finish_resync(&mut self, generation: u64) {
        if self
            .resyncing
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
            && let Some((_, stores)) = self.resyncing.take()
        {
            tracing::info!("every watched kind re-read; the view of the cluster is fresh again");
            self.stores = stores;
            self.needs_resync = false;
        }
    }

    fn alive(&self, nodes: &[Arc<Node>]) -> (BTreeSet<String>, AliveSource) {
        let me = self.cfg.node_name.as_str();
        let withdrawn: BTreeSet<String> = self
            .states
            .iter()
            .filter(|(n, s)| !s.electable && n.as_str() != me)
            .map(|(n, _)| n.clone())
            .collect();
        let m = plan::MembershipInput {
            alive: &self.view.alive,
            formed: self.view.formed,
            seen: &self.seen,
            joining: self.joining,
            withdrawn: &withdrawn,
        };
        let (mut alive, source) = plan::alive_set(me, Some(m), nodes);
        if self.link_suspect() {
            keep_alive_over_own_outage(&mut alive, &self.alive_at_link_down, me, nodes);
        }
        // Out of the election, or just back (the others are still handing over); or just
        // started and not heard from any peer yet, which may mean a key the others do not
        // share: they serve this node's addresses meanwhile.
        if !stands(
            self.withdrawal.is_some(),
            self.back_since.map(|t| t.elapsed()),
            source == AliveSource::NodeReady && self.joining,
        ) {
            alive.remove(me);
        }
        (alive, source)
    }

    /// Judges the API server's health and this speaker's place in the election; tells the
    /// others. Returns (the alive set may have changed, the owned addresses must be
    /// re-announced).
    fn judge(&mut self) -> (bool, bool) {
        let me = self.cfg.node_name.clone();
        let silent = self.api.silent_for();
        let reachable = silent <= API_FRESH_WINDOW;
        if !reachable && !self.needs_resync {
            tracing::warn!(
                silent_s = silent.as_secs(),
                "API server unreachable; announcing on from the last known view"
            );
            self.needs_resync = true;
        }
        // Hearing no other speaker: alone after having heard some, or never having heard any
        // while other Nodes exist.
        let nodes = self.stores.nodes.state();
        let me_name = self.cfg.node_name.as_str();
        let others_exist = nodes.iter().any(|n| {
            n.metadata
                .name
                .as_deref()
                .is_some_and(|name| name != me_name)
        });
        let alone = match self.alive(&nodes).1 {
            AliveSource::Membership => false,
            AliveSource::Alone => true,
            // Not formed: while starting, peers are normally heard within a second.
            AliveSource::NodeReady => others_exist && !self.joining,
        };
        if alone && !self.isolated {
            // Whatever happened while this speaker heard nobody, its caches may not show it
            // (a watch on a connection that died unseen): read everything again.
            self.isolated = true;
            self.needs_resync = true;
        }
        // A re-read started while the API server was unreachable may sit in a long backoff:
        // start it afresh as soon as the server answers again.
        if reachable && !self.api_was_reachable {
            self.resyncing = None;
        }
        self.api_was_reachable = reachable;
        if self.needs_resync && reachable && self.resyncing.is_none() {
            tracing::info!("re-reading every watched kind before trusting the view");
            let stores = Stores::start(&self.client, &self.notify, &self.api);
            let ready = stores.ready();
            self.resync_generation += 1;
            let generation = self.resync_generation;
            let done = self.resync_done.clone();
            tokio::spawn(async move {
                if ready.await.is_ok() {
                    let _ = done.send(generation);
                }
            });
            self.resyncing = Some((generation, stores));
        }
        let fresh = self.view_fresh();
        let mut reassert = false;
        if fresh && !self.api_was_fresh {
            tracing::info!("view of the cluster fresh again; re-announcing what this node owns");
            reassert = true;
        }
        self.api_was_fresh = fresh;
        if fresh && !alone {
            self.isolated = false;
        }
        let hears_peer = self.view.alive.iter().any(|n| *n != me);
        if fresh && (hears_peer || !self.joining) {
            self.link_returned_at = None;
        }

        let fresh_peer = self.view.alive.iter().any(|n| {
            *n != me
                && self
                    .states
                    .get(n)
                    .is_some_and(|s| s.api_fresh && s.electable)
        });
        self.fresh_peer_since = match (fresh_peer, self.fresh_peer_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        let next = withdrawal(WithdrawalInput {
            api_silent_for: self.api.silent_for(),
            api_loss_timeout: self.cfg.api_loss_timeout,
            fresh_peer_for: self.fresh_peer_since.map(|t| t.elapsed()),
            keyring_failing: self.keyring_failing(),
            alone,
            view_fresh: fresh,
            isolated: self.isolated,
            link_returned: self.link_returned_at.is_some(),
        });
        if matches!(next, Some(Withdrawal::ApiLost { .. })) {
            // Its view is stale: once the API server answers again, it stays out until it has
            // re-read everything (the same rule as after an isolation).
            self.isolated = true;
        }
        let kind = |w: &Option<Withdrawal>| w.as_ref().map(std::mem::discriminant);
        let changed = kind(&next) != kind(&self.withdrawal);
        match &next {
            Some(reason) => {
                if changed {
                    self.back_since = None;
                    tracing::warn!(%reason, "withdrawing from the election: this node stops announcing until it recovers");
                    self.metrics.in_election.set(0);
                    self.writes.clear();
                    self.sent.clear();
                }
                self.health
                    .set_not_ready(&format!("out of the election: {reason}"));
            }
            None if changed => {
                tracing::info!(
                    hold_ms = REENTRY_HOLD.as_millis(),
                    "back in the election; announcing once the others have heard it"
                );
                self.metrics.in_election.set(1);
                self.health.set_ready();
                self.back_since = Some(tokio::time::Instant::now());
            }
            None => {}
        }
        self.withdrawal = next;
        let state = SpeakerState {
            electable: self.withdrawal.is_none(),
            api_fresh: fresh,
        };
        if self.told != Some(state) {
            self.membership.set_state(state);
            self.told = Some(state);
        }
        (changed, reassert)
    }

    /// The hot path: recompute and hand the result to the announcer first.
    fn recompute(&mut self) {
        let started = Instant::now();
        let nodes = self.stores.nodes.state();
        let (alive, source) = self.alive(&nodes);
        // Pools gone while their addresses are served (the CRD deleted) keep them announced.
        let served: BTreeSet<IpAddr> = self
            .plan
            .services
            .values()
            .filter(|sp| sp.owner.is_ok())
            .flat_map(|sp| sp.addresses.iter().copied())
            .collect();
        let (pools, held) = self.pool_hold.pools(self.stores.pools.state(), &served);
        for pool in &held.started {
            tracing::warn!(%pool, "IPAddressPool gone while Services hold its addresses (deleted without releasing them, or the IPAddressPool CRD deleted): announcing them on until a pool containing them exists again");
        }
        for pool in &held.released {
            tracing::info!(%pool, "no longer holding the addresses of a vanished IPAddressPool: a present pool contains them, or no Service holds them");
        }
        let input = PlanInput {
            node_name: self.cfg.node_name.clone(),
            services: self.stores.services.state(),
            endpoint_slices: self.stores.slices.state(),
            nodes: nodes.clone(),
            pools,
            advertisements: self.stores.adverts.state(),
            alive: alive.clone(),
            class: self.cfg.class.clone(),
        };
        let ready = plan::ready_endpoints(&input.endpoint_slices);
        let next = plan::plan_with(&input, &ready);
        // The names first, so the announcer's log lines about a new address (probing it,
        // announcing it) name its Service.
        let by_address = next.services_by_address();
        if by_address != self.by_address {
            self.announcer.set_services(by_address.clone());
            self.by_address = by_address;
        }
        if next.owned != self.plan.owned {
            let probe = new_to_cluster(&self.cfg.node_name, &self.plan, &self.owners, &next);
            self.announcer.set_owned_probing(next.owned.clone(), &probe);
        }
        self.bgp.update(&input, &ready, self.withdrawal.as_ref());

        // Everything below is bookkeeping; the announcer already acts on the new plan.
        if self.alive_source != Some(source) {
            match source {
                AliveSource::Membership => {
                    tracing::info!(members = alive.len(), "liveness from membership (formed)")
                }
                AliveSource::NodeReady => tracing::warn!(
                    ready_nodes = alive.len(),
                    "membership not formed: liveness falls back on the Node Ready condition (slow failover)"
                ),
                AliveSource::Alone => tracing::warn!(
                    ready_nodes = alive.len(),
                    "no other speaker heard: keeping only this node's own addresses; another node's are taken over only once the API server shows it gone"
                ),
            }
            if source == AliveSource::Alone
                && self.alive_source == Some(AliveSource::Membership)
                && self.had_peers
            {
                // Whatever this speaker concluded about the others while it heard nobody
                // must not be gossiped once it hears them again. The renewed membership
                // starts afresh, and so does the joining grace: the first peer heard back is
                // not proof that the others are gone.
                self.renewed_to = self.membership.renew();
                self.had_peers = false;
                self.seen.clear();
                self.joining = true;
                self.joining_until = tokio::time::Instant::now() + JOINING_GRACE;
            }
            self.alive_source = Some(source);
        }
        self.metrics
            .membership_formed
            .set(i64::from(source != AliveSource::NodeReady));
        self.metrics
            .membership_members
            .set(i64::try_from(self.view.alive.len()).unwrap_or(i64::MAX));

        let owners = address_owners(&next);
        let old: BTreeSet<&IpAddr> = self.plan.owned.keys().collect();
        let new: BTreeSet<&IpAddr> = next.owned.keys().collect();
        let changed: BTreeSet<IpAddr> = old.symmetric_difference(&new).map(|ip| **ip).collect();
        self.metrics
            .ownership_changes
            .inc_by(u64::try_from(changed.len()).unwrap_or(u64::MAX));
        let failed_over = failovers(&self.cfg.node_name, &self.owners, &owners, &alive);
        if !changed.is_empty() || !failed_over.is_empty() {
            // One pass over the Services names every address that changed hands.
            let mut names: BTreeMap<IpAddr, BTreeSet<&ServiceKey>> = BTreeMap::new();
            for (key, sp) in next.services.iter().chain(self.plan.services.iter()) {
                for ip in sp.addresses.iter().filter(|ip| changed.contains(ip)) {
                    names.entry(*ip).or_default().insert(key);
                }
            }
            let services_with = |ip: &IpAddr| -> String {
                plan::service_names(names.get(ip).into_iter().flatten().copied())
            };
            for (ip, from) in &failed_over {
                self.metrics.failover_detections.inc();
                tracing::info!(service = %services_with(ip), %ip, from = %from, "taking over: the previous owner's speaker is down");
            }
            for ip in new.difference(&old) {
                tracing::info!(service = %services_with(ip), %ip, "this node now owns the address");
            }
            for ip in old.difference(&new) {
                tracing::info!(service = %services_with(ip), %ip, "this node no longer owns the address");
            }
        }
        let now = Instant::now();
        for (key, sp) in &next.services {
            match &sp.owner {
                Err(reason) => {
                    if self.plan.services.get(key).map(|p| &p.owner) != Some(&sp.owner) {
                        tracing::info!(service = %key, %reason, "not announced");
                    }
                    self.no_owner_since.entry(key.clone()).or_insert(now);
                }
                Ok(_) => {
                    self.no_owner_since.remove(key);
                }
            }
        }
        if self.no_owner_since.len() > next.services.len() {
            self.no_owner_since
                .retain(|k, _| next.services.contains_key(k));
        }

        self.services_of
            .retain(|ip, _| self.announced.contains_key(ip));
        for (key, sp) in &next.services {
            for ip in sp.addresses.iter().filter(|ip| next.owned.contains_key(ip)) {
                self.services_of.entry(*ip).or_default().insert(key.clone());
            }
        }
        let seeds = seeds(&nodes, &self.cfg.node_name, self.cfg.membership_port);
        if seeds != self.seeds {
            tracing::debug!(?seeds, "membership seeds changed");
            self.membership.set_seeds(seeds.clone());
            self.seeds = seeds;
        }
        self.owners = owners;
        self.plan = next;
        self.report_unanswerable();
        self.write_conditions(&alive);
        self.last_recompute = started.elapsed();
    }

    /// Says, once per change, that this node owns addresses it answers for nowhere because it
    /// has none of the interfaces their L2Advertisements name: a log line and a Warning Event
    /// on each Service, naming the node and the interfaces.
    fn report_unanswerable(&mut self) {
        let links = self.announcer.links().borrow().clone();
        let now = plan::unanswerable(&self.plan.owned, links.iter().map(|l| l.name.as_str()));
        if now == self.unanswerable {
            return;
        }
        let me = self.cfg.node_name.clone();
        for (ip, names) in &now {
            if self.unanswerable.get(ip) == Some(names) {
                continue;
            }
            let names = names.join(", ");
            for key in self
                .plan
                .services
                .iter()
                .filter(|(_, sp)| sp.addresses.contains(ip))
            {
                tracing::warn!(service = %key.0, %ip, interfaces = %names, "owning the address but none of the interfaces its L2Advertisements name exists on this node: nothing answers for it");
            }
            let note = format!(
                "{me} owns {ip} but has none of the interfaces its L2Advertisements name ({names}): nothing answers for it"
            );
            self.event_on_owners(*ip, EventType::Warning, "AnnounceFailed", note);
        }
        self.unanswerable = now;
    }

    /// [`Shell::event_on_services`] for the Services the plan has behind `ip` (an address that
    /// is owned but not announced has no [`Shell::services_of`] entry yet).
    fn event_on_owners(&self, ip: IpAddr, type_: EventType, reason: &str, note: String) {
        let keys = self
            .plan
            .services
            .iter()
            .filter(|(_, sp)| sp.addresses.contains(&ip))
            .map(|(key, _)| key);
        self.event_on_keys(keys, type_, reason, &note);
    }

    /// One Event on each of the Services named by `keys` that are still in the cache.
    fn event_on_keys<'k>(
        &self,
        keys: impl Iterator<Item = &'k ServiceKey>,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        for key in keys {
            let Some(svc) = self.service(key) else {
                continue;
            };
            let _ = self.events.send(EventReport {
                reference: Box::new(service_reference(&svc)),
                event: Event {
                    type_,
                    reason: reason.to_owned(),
                    note: Some(note.to_owned()),
                    action: "Announce".into(),
                    secondary: None,
                },
            });
        }
    }

    /// Brings the Services' conditions in line with the plan: one pass over every Service,
    /// writing only where the condition this speaker should write differs from the one the
    /// Service carries (see the module docs).
    fn write_conditions(&mut self, alive: &BTreeSet<String>) {
        if self.withdrawal.is_some() || !self.view_fresh() {
            // A stale view writes nothing; what is queued is dropped, and re-derived once
            // the view is fresh again.
            self.writes.clear();
            return;
        }
        let me = self.cfg.node_name.clone();
        let now = Instant::now();
        let mut settle_at: Option<Instant> = None;
        let in_use = self.announcer.in_use();
        for (key, sp) in &self.plan.services {
            let refused = in_use_condition(&me, sp, &in_use);
            let desired = match refused.map_or_else(
                || desired_condition(&me, key, sp, &self.announced, alive),
                Some,
            ) {
                Some(d) if d.is_observed(&sp.observed) => None,
                Some(d) if d.reason == REASON_ADDRESS_IN_USE => Some(d),
                Some(d) if !d.status => {
                    // "Not announced" waits for this speaker's view to settle.
                    let since = self.no_owner_since.get(key).copied().unwrap_or(now);
                    let mut due = since + FALSE_SETTLE;
                    if self.joining {
                        due = due.max(self.joining_until.into_std());
                    }
                    if now < due {
                        settle_at = Some(settle_at.map_or(due, |a| a.min(due)));
                        None
                    } else {
                        Some(d)
                    }
                }
                other => other,
            };
            let Some(desired) = desired else {
                self.writes.drop_key(key);
                self.sent.remove(key);
                continue;
            };
            let mut overwritten = 0;
            if let Some(s) = self.sent.get(key)
                && s.desired == desired
            {
                match &s.result {
                    // In flight, or written and the cache has not caught up yet.
                    None => continue,
                    Some(_) if s.against == sp.observed.resource_version => continue,
                    // The cache moved on past our write and still differs: someone else
                    // wrote. Write again, but slower each time it happens.
                    Some(_) => {
                        overwritten = s.overwritten + 1;
                        let due = s.at + rewrite_backoff(s.overwritten);
                        if now < due {
                            settle_at = Some(settle_at.map_or(due, |a| a.min(due)));
                            continue;
                        }
                    }
                }
            }
            let last_transition = conditions::transition_time(
                sp.observed.status.zip(sp.observed.last_transition.as_ref()),
                desired.status,
                &Time(Timestamp::now()),
            );
            self.write_id = self.write_id.wrapping_add(1);
            self.sent.insert(
                key.clone(),
                Sent {
                    id: self.write_id,
                    desired: desired.clone(),
                    against: sp.observed.resource_version.clone(),
                    result: None,
                    at: now,
                    overwritten,
                },
            );
            self.writes.put(
                key.clone(),
                Write {
                    id: self.write_id,
                    desired,
                    last_transition,
                    resource_version: sp.observed.resource_version.clone(),
                },
            );
        }
        if self.sent.len() > self.plan.services.len() {
            let services = &self.plan.services;
            self.sent.retain(|k, _| services.contains_key(k));
        }
        if let Some(at) = settle_at {
            self.retry_soon(tokio::time::Instant::from_std(at));
        }
    }

    fn retry_soon(&mut self, at: tokio::time::Instant) {
        self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
    }

    fn on_write_result(&mut self, key: ServiceKey, id: u64, outcome: Outcome) {
        let ours = self.sent.get(&key).is_some_and(|s| s.id == id);
        match outcome {
            Outcome::Written(rv) => {
                self.metrics.condition_write("written");
                tracing::debug!(service = %key, "condition written");
                if ours && let Some(s) = self.sent.get_mut(&key) {
                    s.result = Some(rv);
                }
            }
            Outcome::Conflict => {
                self.metrics.condition_write("conflict");
                tracing::debug!(service = %key, "condition not written: the Service changed since; deciding again from the newer version");
                if ours {
                    self.sent.remove(&key);
                }
                self.retry_soon(tokio::time::Instant::now() + CONDITION_RETRY);
            }
            Outcome::Gone => {
                if ours {
                    self.sent.remove(&key);
                }
            }
            Outcome::Failed(error) => {
                self.metrics.condition_write("failed");
                if ours {
                    self.sent.remove(&key);
                }
                let (count, last) = &mut self.write_failures;
                *count += 1;
                if last.is_none_or(|t| t.elapsed() >= WRITE_FAILURE_LOG_EVERY) {
                    tracing::warn!(service = %key, %error, failed = *count, "writing the Announced condition failed; will retry");
                    *count = 0;
                    *last = Some(Instant::now());
                }
                self.retry_soon(tokio::time::Instant::now() + CONDITION_RETRY);
            }
        }
    }

    fn service(&self, key: &ServiceKey) -> Option<Arc<Service>> {
        self.stores
            .services
            .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
    }

    fn event_on_services(&self, ip: IpAddr, type_: EventType, reason: &str, note: String) {
        let keys = self.services_of.get(&ip).into_iter().flatten();
        self.event_on_keys(keys, type_, reason, &note);
    }

    /// Brings `announced` in line with the announcer's own state and reports the differences.
    ///
    /// The announcer's events are only triggers: its channel is bounded and drops under a
    /// burst (a thousand addresses at once), so the truth is read from
    /// [`Announcer::announced_on`].
    fn sync_announced(&mut self) {
        let me = self.cfg.node_name.clone();
        let now = self.announcer.announced_on();
        for (ip, interfaces) in &now {
            if self.announced.get(ip) == Some(interfaces) {
                continue;
            }
            let ifaces = interfaces.join(", ");
            for key in self.services_of.get(ip).into_iter().flatten() {
                tracing::info!(service = %key, %ip, interfaces = %ifaces, "announcing");
            }
            if !self.announced.contains_key(ip) {
                let note = format!("announcing {ip} from {me} on {ifaces}");
                self.event_on_services(*ip, EventType::Normal, "AnnouncementStarted", note);
            }
        }
        for ip in self.announced.keys().filter(|ip| !now.contains_key(*ip)) {
            for key in self.services_of.get(ip).into_iter().flatten() {
                tracing::info!(service = %key, %ip, "stopped announcing");
            }
            let note = format!("stopped announcing {ip} from {me}");
            self.event_on_services(*ip, EventType::Normal, "AnnouncementStopped", note);
        }
        self.announced = now;
        self.metrics
            .addresses_announced
            .set(i64::try_from(self.announced.len()).unwrap_or(i64::MAX));
        let nodes = self.stores.nodes.state();
        let (alive, _) = self.alive(&nodes);
        self.write_conditions(&alive);
    }

    /// Handles one announcer event; returns whether the announced state may have changed.
    fn on_announcer_event(&mut self, event: AnnouncerEvent) -> bool {
        let me = self.cfg.node_name.clone();
        match event {
            AnnouncerEvent::Announcing { .. } | AnnouncerEvent::Stopped { .. } => true,
            // One report per series of claims, already rate-limited by the announcer.
            AnnouncerEvent::Conflict(report) => {
                self.metrics
                    .address_conflicts
                    .inc_by(report.since_last_report);
                let note = crate::announcer::conflicts::conflict_note(&report, &me);
                for key in self.services_of.get(&report.ip).into_iter().flatten() {
                    tracing::warn!(service = %key, ip = %report.ip, mac = %report.mac, interface = %report.interface, count = report.count, note = %lodestone_crds::events::log_text(&note), "address conflict");
                }
                self.event_on_services(report.ip, EventType::Warning, "AddressConflict", note);
                false
            }
            AnnouncerEvent::AddressInUse {
                ip,
                mac,
                interface,
                attempt,
                retry_in,
            } => {
                self.metrics.addresses_in_use.inc();
                // The first refusal, then ever more rarely (1, 2, 4, 8... rounds).
                if attempt.is_power_of_two() {
                    let note = format!(
                        "{ip} not announced from {me}: {mac} answered its probes on {interface}, so another machine uses it; probed again in {} s (round {attempt})",
                        retry_in.as_secs()
                    );
                    for key in self.services_of.get(&ip).into_iter().flatten() {
                        tracing::warn!(service = %key, %ip, %mac, %interface, attempt, "address in use by another machine; not announced");
                    }
                    self.event_on_services(ip, EventType::Warning, REASON_ADDRESS_IN_USE, note);
                }
                true
            }
            AnnouncerEvent::InterfaceError { interface, error } => {
                tracing::warn!(%interface, %error, "interface error");
                false
            }
        }
    }

    /// When the next recomputation for watched changes may run: at once after an idle
    /// period, else a few times the last one's duration after it (see the module docs).
    fn next_recompute(&self, last_end: tokio::time::Instant) -> tokio::time::Instant {
        let gap = (self.last_recompute * RECOMPUTE_GAP_FACTOR).min(MAX_RECOMPUTE_GAP);
        (last_end + gap).max(tokio::time::Instant::now())
    }
}

/// Runs the speaker until `shutdown` completes, then stops answering, leaves the membership
/// (so the others take over at once) and returns.
pub async fn run(
    client: Client,
    cfg: SpeakerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let notify = Arc::new(Notify::new());
    let api = Arc::new(ApiHealth::new());
    let stores = Stores::start(&client, &notify, &api);
    let prober = tokio::spawn(probe_api(client.clone(), Arc::clone(&api)));
    let bgp = crate::bgp::Bgp::start(
        &client,
        &notify,
        &api,
        &cfg.node_name,
        &cfg.namespace,
        metrics.bgp.clone(),
    );

    // The announcer is needed by the metrics refresh; start it before serving.
    let (announcer, mut events) = Announcer::start_dedicated(cfg.announcer.clone()).await?;
    let refresh: metrics::Refresh = {
        let announcer = announcer.clone();
        Arc::new(move |m: &Metrics| m.set_frames(&announcer.counters()))
    };
    let bound = metrics::serve(
        cfg.health_addr,
        metrics::router(Arc::clone(&metrics), Arc::clone(&health), refresh),
    )
    .await
    .map_err(|source| RunError::Health {
        addr: cfg.health_addr,
        source,
    })?;
    tracing::info!(node = %cfg.node_name, health = %bound, "speaker starting; waiting for the first listing of every watched kind");

    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        r = stores.wait_until_ready() => r?,
        () = &mut shutdown => {
            announcer.shutdown().await;
            prober.abort();
            return Ok(());
        }
    }

    let nodes = stores.nodes.state();
    let own_ip = cfg.membership_advertise.or_else(|| {
        nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()))
            .and_then(|n| plan::internal_ip(n))
    });
    let Some(own_ip) = own_ip else {
        return Err(RunError::NoAdvertiseAddress(cfg.node_name.clone()));
    };
    let bind_ip = cfg.membership_bind.unwrap_or(match own_ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    });
    let mut mcfg = MembershipConfig::new(
        cfg.node_name.clone(),
        SocketAddr::new(bind_ip, cfg.membership_port),
        SocketAddr::new(own_ip, cfg.membership_port),
        Vec::new(),
    );
    mcfg.keys = cfg.keys.clone();
    mcfg.key_file = cfg.key_file.clone();
    let initial_seeds = seeds(&nodes, &cfg.node_name, cfg.membership_port);
    mcfg.seeds = initial_seeds.clone();
    let (membership, mut view_rx) = Membership::start(mcfg).await?;
    let mut states_rx = membership.states();
    metrics.attach_membership(membership.stats_reader());
    tracing::info!(advertise = %SocketAddr::new(own_ip, cfg.membership_port), seeds = initial_seeds.len(), "membership started");

    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let reporter_task = tokio::spawn(event_reporter(
        client.clone(),
        cfg.node_name.clone(),
        event_rx,
    ));
    let writes = Arc::new(PendingWrites::default());
    let (result_tx, mut result_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(condition_writer(
        client.clone(),
        Arc::clone(&writes),
        result_tx,
    ));

    let (resync_tx, mut resync_rx) = mpsc::unbounded_channel();
    let mut shell = Shell {
        cfg,
        stores,
        announcer,
        membership,
        metrics,
        health: Arc::clone(&health),
        api,
        events: event_tx,
        writes,
        bgp,
        plan: Plan::default(),
        owners: BTreeMap::new(),
        alive_source: None,
        seeds: initial_seeds,
        announced: BTreeMap::new(),
        by_address: BTreeMap::new(),
        services_of: BTreeMap::new(),
        sent: BTreeMap::new(),
        write_id: 0,
        no_owner_since: HashMap::new(),
        unanswerable: BTreeMap::new(),
        view: view_rx.borrow_and_update().clone(),
        states: states_rx.borrow_and_update().clone(),
        seen: BTreeSet::new(),
        joining: true,
        joining_until: tokio::time::Instant::now() + JOINING_GRACE,
        withdrawal: None,
        told: None,
        fresh_peer_since: None,
        api_was_fresh: true,
        had_peers: false,
        write_failures: (0, None),
        retry_at: None,
        last_recompute: Duration::ZERO,
        client: client.clone(),
        notify: Arc::clone(&notify),
        needs_resync: false,
        resyncing: None,
        resync_generation: 0,
        resync_done: resync_tx,
        isolated: false,
        api_was_reachable: true,
        link_returned_at: None,
        back_since: None,
        renewed_to: 0,
        own_ip,
        own_link_down_since: None,
        alive_at_link_down: BTreeSet::new(),
        link_settle_until: None,
        pool_hold: crate::hold::PoolHold::default(),
    };

    let initial = shell.view.clone();
    shell.set_view(initial);
    health.set_ready();
    shell.metrics.in_election.set(1);
    shell.judge();
    shell.recompute();
    let mut views_open = true;
    let mut states_open = true;
    let mut release_at = Some(tokio::time::Instant::now() + RELEASE_MEMORY_AFTER);
    let mut recompute_at: Option<tokio::time::Instant> = None;
    let mut last_recompute_end = tokio::time::Instant::now();
    let mut links_rx = shell.announcer.links();
    let mut links_open = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);

    loop {
        let mut worked = true;
        let mut recomputed = false;
        tokio::select! {
            // Biased. The own link first: every other branch may confirm this node's addresses
            // to the announcer, which frees a link held after an outage (see
            // `LINK_DOWN_ISOLATES`); that must not happen before the shell has seen the link
            // come back and stepped aside. Then the membership: it is the failover path.
            biased;
            changed = links_rx.changed(), if links_open => {
                if changed.is_err() {
                    links_open = false;
                    continue;
                }
                let links = links_rx.borrow_and_update().clone();
                if shell.on_links(&links) {
                    shell.judge();
                    shell.recompute();
                    recomputed = true;
                } else {
                    // A named interface may have appeared or gone.
                    shell.report_unanswerable();
                }
            }
            changed = view_rx.changed(), if views_open => {
                if changed.is_err() {
                    // The membership task ended (cannot happen before leave): keep the last view.
                    views_open = false;
                    continue;
                }
                let view = view_rx.borrow_and_update().clone();
                let joined = shell.set_view(view);
                // Judged first: a speaker back from isolation with a stale view must step
                // aside before it recomputes with its peers.
                shell.judge();
                shell.recompute();
                recomputed = true;
                if joined {
                    // A peer came (back): clients may have been pointed elsewhere meanwhile.
                    shell.announcer.reassert();
                }
            }
            changed = states_rx.changed(), if states_open => {
                if changed.is_err() {
                    states_open = false;
                    continue;
                }
                shell.states = states_rx.borrow_and_update().clone();
                let (_, reassert) = shell.judge();
                shell.recompute();
                recomputed = true;
                if reassert {
                    shell.announcer.reassert();
                }
            }
            () = notify.notified() => {
                // Batched: see the module docs.
                if recompute_at.is_none() {
                    recompute_at = Some(shell.next_recompute(last_recompute_end));
                }
                worked = false;
            }
            () = tokio::time::sleep_until(recompute_at.unwrap_or_else(far)), if recompute_at.is_some() => {
                recompute_at = None;
                shell.recompute();
                recomputed = true;
            }
            Some(event) = events.recv() => {
                // Drain what is already queued, then look at the announcer's state once.
                let mut changed = shell.on_announcer_event(event);
                while let Ok(event) = events.try_recv() {
                    changed |= shell.on_announcer_event(event);
                }
                if changed {
                    shell.sync_announced();
                }
            }
            Some(generation) = resync_rx.recv() => {
                shell.finish_resync(generation);
                let (_, reassert) = shell.judge();
                shell.recompute();
                recomputed = true;
                if reassert {
                    shell.announcer.reassert();
                }
            }
            Some((key, id, outcome)) = result_rx.recv() => {
                shell.on_write_result(key, id, outcome);
            }
            () = tokio::time::sleep_until(shell.retry_at.unwrap_or_else(far)), if shell.retry_at.is_some() => {
                shell.retry_at = None;
                let (alive, _) = shell.alive(&shell.stores.nodes.state());
                shell.write_conditions(&alive);
            }
            _ = tick.tick() => {
                let (changed, reassert) = shell.judge();
                if changed {
                    shell.recompute();
                    recomputed = true;
                }
                if reassert {
                    shell.announcer.reassert();
                }
                worked = changed || reassert;
            }
            () = tokio::time::sleep_until(shell.back_since.map_or_else(far, |t| t + REENTRY_HOLD)), if shell.back_since.is_some() => {
                shell.back_since = None;
                tracing::info!("announcing again");
                shell.recompute();
                recomputed = true;
                // Clients may have been pointed elsewhere while this node was out.
                shell.announcer.reassert();
            }
            () = tokio::time::sleep_until(shell.link_settle_until.unwrap_or_else(far)), if shell.link_settle_until.is_some() => {
                shell.link_settle_until = None;
                tracing::debug!("own link settled: liveness from the membership alone again");
                shell.recompute();
                recomputed = true;
            }
            () = tokio::time::sleep_until(shell.joining_until), if shell.joining => {
                shell.joining = false;
                tracing::debug!("joining grace over: liveness from the membership alone");
                shell.recompute();
                recomputed = true;
            }
            () = tokio::time::sleep_until(release_at.unwrap_or_else(far)), if release_at.is_some() => {
                release_at = None;
                worked = false;
                lodestone_heap::release_free_memory();
            }
            () = &mut shutdown => break,
        }
        if recomputed {
            last_recompute_end = tokio::time::Instant::now();
        }
        if worked {
            release_at = Some(tokio::time::Instant::now() + RELEASE_MEMORY_AFTER);
        }
    }

    tracing::info!("shutting down: stop answering, then leave the membership");
    health.set_not_ready("shutting down");
    // Told first, so that even a peer that hears nobody else knows these addresses are free.
    shell.membership.set_state(SpeakerState {
        electable: false,
        api_fresh: shell.view_fresh(),
    });
    shell.bgp.shutdown().await;
    shell.announcer.clone().shutdown().await;
    shell.membership.leave(LEAVE_TIMEOUT).await;
    reporter_task.abort();
    writer_task.abort();
    prober.abort();
    tracing::info!("speaker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ServicePlan;
    use proptest::prelude::*;

    /// The link-flap interleaving, reduced to two speakers' elections. node-a owned the
    /// address (the Service's condition names it); it was out of the election, so another node
    /// (the interim) served the address. node-a comes back at t = 0 and says so; the interim
    /// hears it at t = `heard`. Who announces at `t`, as (node-a, interim), with or without
    /// the re-entry hold.
    fn announcers(t: Duration, heard: Duration, hold: bool) -> (bool, bool) {
        let ip = "192.0.2.100";
        let interim = crate::election::owner(ip, ["node-b", "node-c"]).unwrap();
        let a_stands = stands(false, hold.then_some(t), false);
        let a_view: Vec<&str> = ["node-a", "node-b", "node-c"]
            .into_iter()
            .filter(|n| *n != "node-a" || a_stands)
            .collect();
        // The interim's view; while it has not heard, node-a is still out for it.
        let b_view: Vec<&str> = ["node-a", "node-b", "node-c"]
            .into_iter()
            .filter(|n| *n != "node-a" || t >= heard)
            .collect();
        let a = crate::plan::sticky_owner(Some("node-a"), ip, a_view) == Some("node-a");
        let b = crate::plan::sticky_owner(Some("node-a"), ip, b_view) == Some(interim);
        (a, b)
    }

    #[test]
    fn a_returning_node_announcing_at_once_makes_two_owners() {
        let heard = Duration::from_millis(200);
        assert_eq!(
            announcers(Duration::from_millis(100), heard, false),
            (true, true)
        );
        // With the hold, the interim keeps serving until it has heard.
        assert_eq!(
            announcers(Duration::from_millis(100), heard, true),
            (false, true)
        );
    }

    fn ready_node(name: &str) -> Arc<Node> {
        use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The link-flap double answer: node-a's own link was down briefly; its membership
    /// declared node-c down (it heard nobody), so node-a took node-c's address while node-c,
    /// alive all along, kept it. Peers alive before the outage stay alive over it.
    #[test]
    fn a_peer_declared_down_over_the_own_outage_keeps_its_address() {
        let nodes = vec![
            ready_node("node-a"),
            ready_node("node-b"),
            ready_node("node-c"),
        ];
        let ip = (0..=255)
            .map(|i| format!("192.0.2.{i}"))
            .find(|ip| {
                crate::election::owner(ip, ["node-a", "node-b", "node-c"]) == Some("node-c")
                    && crate::election::owner(ip, ["node-a", "node-b"]) == Some("node-a")
            })
            .expect("some address node-a inherits from node-c");
        let before: BTreeSet<String> = ["node-a", "node-b", "node-c"].map(String::from).into();
        // node-a's view after its outage: node-c declared down.
        let mut alive: BTreeSet<String> = ["node-a", "node-b"].map(String::from).into();
        let owner = |alive: &BTreeSet<String>| {
            crate::plan::sticky_owner(Some("node-c"), &ip, alive.iter().map(String::as_str))
                .map(str::to_owned)
        };
        assert_eq!(
            owner(&alive).as_deref(),
            Some("node-a"),
            "the bug: node-a takes it"
        );
        keep_alive_over_own_outage(&mut alive, &before, "node-a", &nodes);
        assert_eq!(owner(&alive).as_deref(), Some("node-c"));
        // A peer whose Node is gone is not brought back; node-a itself is not added.
        let mut alive: BTreeSet<String> = ["node-b"].map(String::from).into();
        keep_alive_over_own_outage(&mut alive, &before, "node-a", &nodes[..2]);
        assert_eq!(alive, ["node-b"].map(String::from).into());
    }

    fn view(alive: &[&str], generation: u64) -> MembershipView {
        MembershipView {
            alive: alive.iter().map(|n| (*n).to_owned()).collect(),
            formed: true,
            authenticated_peers: alive.len().saturating_sub(1),
            keyring_failing: false,
            changed_at: Instant::now(),
            generation,
        }
    }

    /// The other link-flap interleaving: node-a's link came back and it renewed its
    /// membership, which has heard node-c but not yet node-b. A view made before the renewal
    /// (still showing node-b) marks node-b "seen"; the joining grace then no longer counts it
    /// alive, and node-a wins node-b's address while node-b still answers for it.
    #[test]
    fn a_view_from_before_the_renewal_would_hide_an_unheard_peer() {
        let nodes: Vec<Arc<Node>> = ["node-a", "node-b", "node-c"]
            .into_iter()
            .map(ready_node)
            .collect();
        let stale = view(&["node-a", "node-b", "node-c"], 0);
        let renewed = 1;
        let fresh = view(&["node-a", "node-c"], renewed);
        let alive_after = |views: &[&MembershipView]| {
            let mut seen = BTreeSet::new();
            let mut last = None;
            for v in views.iter().filter(|v| view_is_current(v, renewed)) {
                seen.extend(v.alive.iter().cloned());
                last = Some(*v);
            }
            let last = last.expect("a current view");
            let withdrawn = BTreeSet::new();
            plan::alive_set(
                "node-a",
                Some(plan::MembershipInput {
                    alive: &last.alive,
                    formed: true,
                    seen: &seen,
                    joining: true,
                    withdrawn: &withdrawn,
                }),
                &nodes,
            )
            .0
        };
        // Skipped, the stale view changes nothing: node-b counts alive until heard.
        assert!(alive_after(&[&stale, &fresh]).contains("node-b"));
        // Taken as current (as before), it hid node-b.
        let mut seen: BTreeSet<String> = stale.alive.clone();
        seen.extend(fresh.alive.iter().cloned());
        let withdrawn = BTreeSet::new();
        let (hidden, _) = plan::alive_set(
            "node-a",
            Some(plan::MembershipInput {
                alive: &fresh.alive,
                formed: true,
                seen: &seen,
                joining: true,
                withdrawn: &withdrawn,
            }),
            &nodes,
        );
        assert!(!hidden.contains("node-b"));
        assert!(view_is_current(&view(&["node-a"], 2), renewed));
    }

    proptest! {
        /// With the hold, however late (within the hold) node-b hears that node-a is back, the
        /// two never announce the address at once, and node-a announces it once both agree.
        #[test]
        fn the_reentry_hold_never_makes_two_owners(heard_ms in 0u64..1000, t_ms in 0u64..3000) {
            let heard = Duration::from_millis(heard_ms);
            prop_assume!(heard < REENTRY_HOLD);
            let (a, b) = announcers(Duration::from_millis(t_ms), heard, true);
            prop_assert!(!(a && b));
            if Duration::from_millis(t_ms) >= REENTRY_HOLD {
                prop_assert!(a && !b);
            }
        }
    }

    fn sp(addresses: &[&str], owner: Result<&str, NoOwner>) -> ServicePlan {
        ServicePlan {
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            owner: owner.map(str::to_owned),
            observed: Observed::default(),
        }
    }

    fn desired(status: bool, reason: &'static str, message: &str) -> Option<Desired> {
        Some(Desired {
            status,
            reason,
            message: message.to_owned(),
        })
    }

    #[test]
    fn failover_only_when_previous_owner_is_down() {
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let before = BTreeMap::from([(ip, "a".to_owned())]);
        let after = BTreeMap::from([(ip, "b".to_owned())]);
        let alive_without_a = BTreeSet::from(["b".to_owned()]);
        let alive_with_a = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            failovers("b", &before, &after, &alive_without_a),
            vec![(ip, "a".to_owned())]
        );
        // a is alive: a move for another reason (endpoints, selectors), not a failover.
        assert!(failovers("b", &before, &after, &alive_with_a).is_empty());
        // Only the node taking over counts it.
        assert!(failovers("c", &before, &after, &alive_without_a).is_empty());
        // First ownership (no previous owner) is not a failover.
        assert!(failovers("b", &BTreeMap::new(), &after, &alive_without_a).is_empty());
    }

    #[test]
    fn only_the_owner_writes_true_and_one_node_writes_false() {
        let web = ServiceKey::new("ns", "web");
        let alive: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let owned = sp(&["198.51.100.1"], Ok("b"));
        let announced = BTreeMap::from([(ip, vec!["eth0".to_owned()])]);
        assert_eq!(
            desired_condition("b", &web, &owned, &announced, &alive),
            desired(true, "Announced", "announced from b on eth0")
        );
        assert_eq!(
            desired_condition("a", &web, &owned, &announced, &alive),
            None
        );
        // The owner says nothing until its announcer reports an interface.
        assert_eq!(
            desired_condition("b", &web, &owned, &BTreeMap::new(), &alive),
            None
        );
        let none = sp(&["198.51.100.1"], Err(NoOwner::NoReadyEndpoints));
        let writers: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|me| desired_condition(me, &web, &none, &announced, &alive).is_some())
            .collect();
        assert_eq!(writers.len(), 1);
        assert_eq!(
            Some(writers[0]),
            election::owner("ns/web", ["a", "b", "c"]),
            "the writer is elected by the key's text, as before the key was typed"
        );
        let d = desired_condition(writers[0], &web, &none, &announced, &alive).unwrap();
        assert!(!d.status);
        assert_eq!(d.reason, "NoReadyEndpoints");
        assert_eq!(d.message, "not announced: no ready endpoint");

        // The previous owner, still alive, retracts its own claim; nobody else writes.
        let mut retract = none.clone();
        retract.observed = Observed {
            status: Some(true),
            reason: "Announced".into(),
            message: "announced from c on eth0".into(),
            owner: Some("c".into()),
            ..Observed::default()
        };
        let writers: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|me| desired_condition(me, &web, &retract, &announced, &alive).is_some())
            .collect();
        assert_eq!(writers, ["c"]);
        // Gone: the election among the alive decides, as before.
        let without_c: BTreeSet<String> = ["a", "b"].iter().map(|s| (*s).to_owned()).collect();
        let writers: Vec<&str> = ["a", "b"]
            .into_iter()
            .filter(|me| desired_condition(me, &web, &retract, &announced, &without_c).is_some())
            .collect();
        assert_eq!(writers.len(), 1);
        // Already said: every speaker sees it as observed, and nobody needs to write it.
        let mut said = none.clone();
        said.observed = Observed {
            status: Some(false),
            reason: "NoReadyEndpoints".into(),
            message: "not announced: no ready endpoint".into(),
            ..Observed::default()
        };
        for me in ["a", "b", "c"] {
            let d = desired_condition(me, &web, &said, &announced, &alive);
            assert!(d.is_some_and(|d| d.is_observed(&said.observed)));
        }
        let unassigned = sp(&[], Err(NoOwner::NoAddress));
        for me in ["a", "b", "c"] {
            assert_eq!(
                desired_condition(me, &web, &unassigned, &announced, &alive),
                None
            );
        }
    }

    #[test]
    fn withdraw_only_when_a_peer_keeps_a_fresh_view() {
        let lost = |silent: u64, peer: Option<u64>, keyring: bool| {
            withdrawal(WithdrawalInput {
                api_silent_for: Duration::from_secs(silent),
                api_loss_timeout: Duration::from_secs(30),
                fresh_peer_for: peer.map(Duration::from_secs),
                keyring_failing: keyring,
                alone: false,
                view_fresh: silent < 6,
                isolated: false,
                link_returned: false,
            })
        };
        // The API server is gone for everybody: nobody withdraws, however long.
        assert_eq!(lost(3600, None, false), None);
        // Gone for this speaker only, but not for long enough.
        assert_eq!(lost(29, Some(100), false), None);
        // A peer only just reports a fresh view: it may be the API server coming back for all.
        assert_eq!(lost(60, Some(1), false), None);
        assert_eq!(
            lost(60, Some(FRESH_PEER_SETTLE.as_secs()), false),
            Some(Withdrawal::ApiLost {
                silent: Duration::from_secs(60)
            })
        );
        assert_eq!(lost(0, None, true), Some(Withdrawal::KeyringMismatch));
        let text = lost(61, Some(60), false).unwrap().to_string();
        assert!(text.contains("unreachable for 61 s"), "{text}");
        // Back from an isolation with a stale view: steps aside as soon as it hears a peer
        // with a fresh one, not before (alone, it keeps its own addresses).
        let cut = |alone: bool, fresh: bool, peer: Option<u64>| {
            withdrawal(WithdrawalInput {
                api_silent_for: Duration::from_secs(1),
                api_loss_timeout: Duration::from_secs(30),
                fresh_peer_for: peer.map(Duration::from_secs),
                keyring_failing: false,
                alone,
                view_fresh: fresh,
                isolated: true,
                link_returned: false,
            })
        };
        // Alone with a fresh view: it knows what it owns (the conditions say so), it stays.
        assert_eq!(cut(true, true, None), None);
        // Alone and blind: cut off.
        assert_eq!(cut(true, false, None), Some(Withdrawal::CutOff));
        // Back among peers, still re-reading: steps aside if one of them knows better...
        assert_eq!(
            cut(false, false, Some(0)),
            Some(Withdrawal::StaleAfterIsolation)
        );
        // ...and not if nobody does (the API server is gone for everybody).
        assert_eq!(cut(false, false, None), None);
        assert_eq!(cut(false, true, Some(0)), None);
    }

    #[test]
    fn seeds_are_the_other_nodes() {
        use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
        let node = |name: &str, ip: &str| {
            Arc::new(Node {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                status: Some(NodeStatus {
                    addresses: Some(vec![
                        NodeAddress {
                            type_: "Hostname".into(),
                            address: name.into(),
                        },
                        NodeAddress {
                            type_: "InternalIP".into(),
                            address: ip.into(),
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let nodes = vec![
            node("a", "192.0.2.1"),
            node("b", "192.0.2.2"),
            node("c", "2001:db8::3"),
            node("d", "not-an-ip"),
        ];
        assert_eq!(
            seeds(&nodes, "a", 7946),
            vec![
                "192.0.2.2:7946".parse::<SocketAddr>().unwrap(),
                "[2001:db8::3]:7946".parse().unwrap()
            ]
        );
    }

    #[test]
    fn events_name_the_service_and_this_node() {
        let reference = ObjectReference {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "AddressConflict".into(),
            note: Some("198.51.100.1 is also claimed".into()),
            action: "Announce".into(),
            secondary: None,
        };
        let e = k8s_event(&event, reference.clone(), "node-a", Timestamp::UNIX_EPOCH);
        assert_eq!(e.metadata.name.as_deref(), Some("web.0"));
        assert_eq!(e.metadata.generate_name, None);
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("AddressConflict"));
        assert_eq!(e.action.as_deref(), Some("Announce"));
        assert_eq!(e.note, event.note);
        assert_eq!(e.regarding, Some(reference));
        assert_eq!(e.reporting_controller.as_deref(), Some(FIELD_MANAGER));
        assert_eq!(e.reporting_instance.as_deref(), Some("node-a"));
        assert!(e.event_time.is_some() && e.series.is_none());
    }

    #[test]
    fn only_addresses_new_to_the_cluster_are_probed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let plan_of = |services: Vec<(&str, ServicePlan)>| {
            let mut p = Plan::default();
            for (k, s) in services {
                if s.owner.as_deref() == Ok("b") {
                    for a in &s.addresses {
                        p.owned.insert(*a, None);
                    }
                }
                p.services.insert(ServiceKey::parse(k).unwrap(), s);
            }
            p
        };
        let empty = Plan::default();
        // A brand-new Service: probed.
        let fresh = plan_of(vec![("ns/new", sp(&["198.51.100.1"], Ok("b")))]);
        assert_eq!(
            new_to_cluster("b", &empty, &BTreeMap::new(), &fresh),
            BTreeSet::from([ip("198.51.100.1")])
        );
        // A failover: another node owned it in the previous plan. Not probed.
        let before = BTreeMap::from([(ip("198.51.100.1"), "a".to_owned())]);
        assert!(new_to_cluster("b", &empty, &before, &fresh).is_empty());
        // A restart: the Service says some node announces it. Not probed.
        let mut served = sp(&["198.51.100.1"], Ok("b"));
        served.observed.status = Some(true);
        let restarted = plan_of(vec![("ns/new", served)]);
        assert!(new_to_cluster("b", &empty, &BTreeMap::new(), &restarted).is_empty());
        // Already owned: nothing new.
        assert!(new_to_cluster("b", &fresh, &BTreeMap::new(), &fresh).is_empty());
    }

    #[test]
    fn an_address_in_use_is_reported_by_its_owner_only() {
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let mac = crate::frames::MacAddr::new(2, 0, 0, 0, 0, 0x66);
        let in_use = BTreeMap::from([(ip, mac)]);
        let owned = sp(&["198.51.100.1"], Ok("b"));
        let d = in_use_condition("b", &owned, &in_use).unwrap();
        assert!(!d.status);
        assert_eq!(d.reason, REASON_ADDRESS_IN_USE);
        assert!(d.message.contains("02:00:00:00:00:66"), "{}", d.message);
        assert_eq!(in_use_condition("a", &owned, &in_use), None);
        assert_eq!(in_use_condition("b", &owned, &BTreeMap::new()), None);
    }

    /// Issue 14 item 5/6: whatever the length of the text the speaker writes, the condition
    /// message and the Event note fit the API's limits.
    #[test]
    fn huge_texts_fit_the_api() {
        let huge = "x".repeat(200 * 1024);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let alive = BTreeSet::from([huge.clone()]);
        let owned = sp(&["198.51.100.1"], Ok(huge.as_str()));
        let announced = BTreeMap::from([(ip, vec![huge.clone(), huge.clone()])]);
        let web = ServiceKey::new("ns", "web");
        let d = desired_condition(&huge, &web, &owned, &announced, &alive).unwrap();
        assert!(d.message.len() <= lodestone_crds::events::CONDITION_MESSAGE_MAX);
        assert!(
            d.message.contains("truncated"),
            "{}",
            &d.message[d.message.len() - 80..]
        );
        let mac = crate::frames::MacAddr::new(2, 0, 0, 0, 0, 0x66);
        let d = in_use_condition(&huge, &owned, &BTreeMap::from([(ip, mac)])).unwrap();
        assert!(d.message.len() <= lodestone_crds::events::CONDITION_MESSAGE_MAX);
        let event = Event {
            type_: EventType::Warning,
            reason: "AddressConflict".into(),
            note: Some(huge.clone()),
            action: "Announce".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        };
        let e = k8s_event(&event, reference, &huge, Timestamp::UNIX_EPOCH);
        let note = e.note.unwrap();
        assert!(
            note.len() <= lodestone_crds::events::EVENT_NOTE_MAX,
            "{}",
            note.len()
        );
        let report = crate::announcer::conflicts::ConflictReport {
            ip,
            mac,
            interface: huge.clone(),
            count: 1,
            since_last_report: 1,
            first_seen: std::time::SystemTime::UNIX_EPOCH,
            last_seen: std::time::SystemTime::UNIX_EPOCH,
            forgotten: 0,
        };
        let note = crate::announcer::conflicts::conflict_note(&report, &huge);
        assert!(
            lodestone_crds::events::event_note(&note).len()
                <= lodestone_crds::events::EVENT_NOTE_MAX
        );
        assert!(
            lodestone_crds::events::log_text(&note).len() <= lodestone_crds::events::LOG_TEXT_MAX
        );
    }

    #[test]
    fn address_owner_first_service_wins() {
        let mut p = Plan::default();
        p.services
            .insert(ServiceKey::new("a", "x"), sp(&["198.51.100.1"], Ok("n1")));
        p.services.insert(
            ServiceKey::new("b", "y"),
            sp(&["198.51.100.1", "2001:db8::1"], Ok("n2")),
        );
        let owners = address_owners(&p);
        assert_eq!(owners[&"198.51.100.1".parse::<IpAddr>().unwrap()], "n1");
        assert_eq!(owners[&"2001:db8::1".parse::<IpAddr>().unwrap()], "n2");
    }
}
