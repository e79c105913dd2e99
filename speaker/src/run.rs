//! The speaker's I/O shell: watch the cluster, feed [`crate::plan::plan`], drive the announcer,
//! report on the Services.
//!
//! One loop owns all state and reacts to three things: a change in any watched kind, a new
//! membership view, an announcer event. A membership change is the failover path: the loop
//! recomputes the plan and calls [`Announcer::set_owned`] before doing anything else, with no
//! sleep or debounce — queued wake-ups are coalesced by [`Notify`] and the watch channel, so
//! a burst of changes costs one recomputation. Writes to the API server (status condition,
//! Events) go to a separate task, so a slow or unreachable API server never delays an answer.
//!
//! Losing the API server withdraws nothing: the reflector stores keep their last content
//! (watchers retry with backoff), and the plan keeps being computed from them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use lodestone_crds::{IPAddressPool, L2Advertisement};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};

use crate::announcer::{Announcer, AnnouncerConfig, AnnouncerError, AnnouncerEvent};
use crate::election;
use crate::membership::{Membership, MembershipConfig, MembershipError, MembershipView};
use crate::metrics::{self, FrameCounts, Health, Metrics};
use crate::plan::{self, AliveSource, ClassFilter, NoOwner, Plan, PlanInput};
use crate::trim;

/// The status condition type the speaker writes on Services.
pub const CONDITION_TYPE: &str = "lodestone.dev/Announced";
/// Field manager of every write the speaker makes.
pub const FIELD_MANAGER: &str = "lodestone-speaker";
/// How long the departure notice may take on SIGTERM.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);
/// The same conflict (address, MAC) is reported at most this often.
const CONFLICT_REPORT_EVERY: Duration = Duration::from_secs(60);
/// After start, Ready nodes the membership has not shown yet still count as alive for this
/// long (see [`plan::alive_set`]): peers are normally heard within one seed announce (1 s).
const JOINING_GRACE: Duration = Duration::from_secs(5);
/// Freed memory goes back to the system once the loop has been idle this long (see
/// [`crate::heap`]): after the start, and after each later burst of changes.
const RELEASE_MEMORY_AFTER: Duration = Duration::from_secs(5);
/// A failed condition write is tried again after this long.
const CONDITION_RETRY: Duration = Duration::from_secs(1);

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
    /// Shared membership key.
    pub key: Vec<u8>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub health_addr: SocketAddr,
    /// Announcer settings.
    pub announcer: AnnouncerConfig,
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

/// Starts a reflector for `K`; every change wakes `notify`. Errors are logged and retried with
/// backoff while the store keeps its content. `trim` drops what the speaker never reads before
/// an object enters the store (see [`crate::trim`]).
pub(crate) fn watch_kind<K>(
    client: &Client,
    kind: &'static str,
    notify: Arc<Notify>,
    trim: fn(&mut K),
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let api: Api<K> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(trim),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                // A re-list announces itself before its request: not a recovery yet.
                Ok(watcher::Event::Init) => {}
                Ok(_) => {
                    if failing {
                        tracing::info!(kind, "watch recovered");
                        failing = false;
                    }
                    notify.notify_one();
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(
                            kind,
                            %error,
                            "watch failed; keeping the last known objects and announcing on"
                        );
                    }
                    failing = true;
                }
            }
        }
    });
    reader
}

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    pools: Store<IPAddressPool>,
    adverts: Store<L2Advertisement>,
}

impl Stores {
    fn start(client: &Client, notify: &Arc<Notify>) -> Stores {
        Stores {
            services: watch_kind(client, "Service", Arc::clone(notify), trim::service),
            slices: watch_kind(
                client,
                "EndpointSlice",
                Arc::clone(notify),
                trim::endpoint_slice,
            ),
            nodes: watch_kind(client, "Node", Arc::clone(notify), trim::node),
            pools: watch_kind(client, "IPAddressPool", Arc::clone(notify), trim::metadata),
            adverts: watch_kind(
                client,
                "L2Advertisement",
                Arc::clone(notify),
                trim::metadata,
            ),
        }
    }

    async fn wait_until_ready(&self) -> Result<(), RunError> {
        macro_rules! ready {
            ($store:expr, $kind:literal) => {
                $store
                    .wait_until_ready()
                    .await
                    .map_err(|_| RunError::StoreNeverReady($kind))?
            };
        }
        ready!(self.services, "Service");
        ready!(self.slices, "EndpointSlice");
        ready!(self.nodes, "Node");
        ready!(self.pools, "IPAddressPool");
        ready!(self.adverts, "L2Advertisement");
        Ok(())
    }
}

/// Membership seeds: every other Node's InternalIP with the membership port.
pub fn seeds(nodes: &[Arc<Node>], me: &str, port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| plan::internal_ip(n))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Address → owner, as the plan decided (the first Service by key wins, as in the plan).
pub fn address_owners(p: &Plan) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for sp in p.services.values() {
        if let Ok(owner) = &sp.owner {
            for ip in &sp.addresses {
                out.entry(*ip).or_insert_with(|| owner.clone());
            }
        }
    }
    out
}

/// Addresses newly owned by `me` whose previous owner is another node that is no longer
/// alive: takeovers caused by a failure (what `failover_detections_total` counts).
pub fn failovers(
    me: &str,
    before: &BTreeMap<IpAddr, String>,
    after: &BTreeMap<IpAddr, String>,
    alive: &BTreeSet<String>,
) -> Vec<(IpAddr, String)> {
    after
        .iter()
        .filter(|(_, o)| o.as_str() == me)
        .filter_map(|(ip, _)| {
            let prev = before.get(ip)?;
            (prev != me && !alive.contains(prev)).then(|| (*ip, prev.clone()))
        })
        .collect()
}

/// The condition this node should write on a Service, if it is the one to write it.
///
/// The owner writes `True` once its announcer reports the first address on some interface.
/// A Service nobody owns gets `False` with the reason, written by one node all speakers agree
/// on (the election winner among the alive speakers), so that exactly one speaker writes.
pub fn desired_condition(
    me: &str,
    key: &str,
    sp: &plan::ServicePlan,
    announced: &BTreeMap<IpAddr, Vec<String>>,
    alive: &BTreeSet<String>,
) -> Option<(bool, &'static str, String)> {
    match &sp.owner {
        Ok(owner) if owner == me => {
            let first = sp.addresses.first()?;
            let ifaces = announced.get(first).filter(|i| !i.is_empty())?;
            Some((
                true,
                "Announced",
                format!("announced from {me} on {}", ifaces.join(", ")),
            ))
        }
        Ok(_) => None,
        Err(NoOwner::NoAddress) => None,
        Err(reason) => {
            let writer = election::owner(key, alive.iter().map(String::as_str))?;
            (writer == me).then(|| {
                (
                    false,
                    reason_name(reason),
                    format!("not announced: {reason}"),
                )
            })
        }
    }
}

fn reason_name(r: &NoOwner) -> &'static str {
    match r {
        NoOwner::NoAddress => "NoAddress",
        NoOwner::NotInPool => "NotInPool",
        NoOwner::NotAdvertised => "NotAdvertised",
        NoOwner::NoReadyEndpoints => "NoReadyEndpoints",
        NoOwner::NoEligibleNode => "NoEligibleNode",
    }
}

/// Writes to the API server, in order, off the hot path.
enum Report {
    Condition {
        namespace: String,
        name: String,
        status: bool,
        reason: &'static str,
        message: String,
    },
    Event {
        reference: Box<ObjectReference>,
        event: Event,
    },
}

/// Reports that failed (by Service key), so the loop writes them again later.
type Failed = mpsc::UnboundedSender<String>;

async fn reporter(
    client: Client,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Report>,
    failed: Failed,
) {
    while let Some(report) = rx.recv().await {
        match report {
            Report::Condition {
                namespace,
                name,
                status,
                reason,
                message,
            } => {
                let api: Api<Service> = Api::namespaced(client.clone(), &namespace);
                let body = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": { "name": name, "namespace": namespace },
                    "status": { "conditions": [{
                        "type": CONDITION_TYPE,
                        "status": if status { "True" } else { "False" },
                        "reason": reason,
                        "message": message,
                        "lastTransitionTime": chrono::Utc::now()
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    }]},
                });
                let params = PatchParams::apply(FIELD_MANAGER).force();
                match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
                    Ok(_) => {
                        tracing::debug!(service = %format!("{namespace}/{name}"), condition = %message, "condition written")
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(error) => {
                        tracing::warn!(service = %format!("{namespace}/{name}"), %error, "writing the Announced condition failed; will retry");
                        let _ = failed.send(format!("{namespace}/{name}"));
                    }
                }
            }
            Report::Event { reference, event } => {
                let namespace = reference.namespace.clone().unwrap_or_default();
                let body = k8s_event(&event, *reference, &node, Timestamp::now());
                let api: Api<K8sEvent> = Api::namespaced(client.clone(), &namespace);
                if let Err(error) = api.create(&PostParams::default(), &body).await {
                    let service = format!(
                        "{namespace}/{}",
                        body.regarding
                            .as_ref()
                            .and_then(|r| r.name.as_deref())
                            .unwrap_or_default()
                    );
                    tracing::warn!(%service, reason = %event.reason, %error, "publishing an Event failed");
                }
            }
        }
    }
}

/// The events.k8s.io/v1 Event for `event` about `regarding`, reported by this node's speaker.
///
/// Not kube's `Recorder`: it remembers every Event it sent for six minutes to fold repeats into
/// a series (about 3 kB each: 3 MB after a start with 1,000 addresses, kept by the map's
/// capacity for good), and a series keeps the *first* note. The loop already reports only
/// changes, and conflicts at most once a minute, so each Event is created on its own, as the
/// controller does.
fn k8s_event(event: &Event, regarding: ObjectReference, node: &str, now: Timestamp) -> K8sEvent {
    let name = regarding
        .name
        .clone()
        .unwrap_or_else(|| FIELD_MANAGER.into());
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(lodestone_crds::events::event_name(
                &name,
                now.as_nanosecond(),
            )),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        regarding: Some(regarding),
        related: event.secondary.clone(),
        reporting_controller: Some(FIELD_MANAGER.into()),
        reporting_instance: Some(node.to_owned()),
        ..K8sEvent::default()
    }
}

fn service_reference(svc: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        uid: svc.metadata.uid.clone(),
        ..Default::default()
    }
}

fn frame_counts(a: &Announcer) -> FrameCounts {
    let c = a.counters();
    FrameCounts {
        arp_seen: c.arp_requests_seen,
        arp_answered: c.arp_requests_answered,
        ndp_seen: c.ns_seen,
        ndp_answered: c.ns_answered,
        garp_sent: c.gratuitous_arp_sent,
        unsolicited_na_sent: c.unsolicited_na_sent,
        ndp_group_join_failures: c.ndp_group_join_failures,
    }
}

/// Everything the loop remembers between iterations.
struct Shell {
    cfg: SpeakerConfig,
    stores: Stores,
    announcer: Announcer,
    membership: Membership,
    metrics: Arc<Metrics>,
    reports: mpsc::UnboundedSender<Report>,
    bgp: crate::bgp::Bgp,
    plan: Plan,
    owners: BTreeMap<IpAddr, String>,
    alive_source: Option<AliveSource>,
    seeds: Vec<SocketAddr>,
    /// What the announcer reports as announced (from its events).
    announced: BTreeMap<IpAddr, Vec<String>>,
    /// Services (by key) per address, kept for addresses still announced after the Service
    /// vanished, so that "stopped" can be reported on it.
    services_of: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Conditions written (key → (status, message)), to write only changes.
    written: BTreeMap<String, (bool, String)>,
    conflicts_reported: BTreeMap<(IpAddr, String), Instant>,
    /// The latest membership view.
    view: MembershipView,
    /// Every node the membership has shown alive since start.
    seen: BTreeSet<String>,
    /// Still in the joining grace period.
    joining: bool,
}

impl Shell {
    fn set_view(&mut self, view: MembershipView) {
        self.seen.extend(view.alive.iter().cloned());
        self.view = view;
    }

    fn alive(&self, nodes: &[Arc<Node>]) -> (BTreeSet<String>, AliveSource) {
        let m = plan::MembershipInput {
            alive: &self.view.alive,
            formed: self.view.formed,
            seen: &self.seen,
            joining: self.joining,
        };
        plan::alive_set(Some(m), nodes)
    }

    /// The hot path: recompute and hand the result to the announcer first.
    fn recompute(&mut self) {
        let nodes = self.stores.nodes.state();
        let (alive, source) = self.alive(&nodes);
        let input = PlanInput {
            node_name: self.cfg.node_name.clone(),
            services: self.stores.services.state(),
            endpoint_slices: self.stores.slices.state(),
            nodes: nodes.clone(),
            pools: self.stores.pools.state(),
            advertisements: self.stores.adverts.state(),
            alive: alive.clone(),
            class: self.cfg.class.clone(),
        };
        let next = plan::plan(&input);
        if next.owned != self.plan.owned {
            self.announcer.set_owned(next.owned.clone());
        }
        if next.owned != self.plan.owned || next.services != self.plan.services {
            self.announcer.set_services(next.services_by_address());
        }
        self.bgp.update(&input);

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
            }
            self.alive_source = Some(source);
        }
        self.metrics
            .membership_formed
            .set(i64::from(source == AliveSource::Membership));
        self.metrics
            .membership_members
            .set(i64::try_from(self.view.alive.len()).unwrap_or(i64::MAX));

        let owners = address_owners(&next);
        let old: BTreeSet<&IpAddr> = self.plan.owned.keys().collect();
        let new: BTreeSet<&IpAddr> = next.owned.keys().collect();
        let changes = old.symmetric_difference(&new).count();
        self.metrics
            .ownership_changes
            .inc_by(u64::try_from(changes).unwrap_or(u64::MAX));
        let services_with = |ip: &IpAddr| -> String {
            let keys: Vec<&str> = next
                .services
                .iter()
                .chain(self.plan.services.iter())
                .filter(|(_, s)| s.addresses.contains(ip))
                .map(|(k, _)| k.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            keys.join(",")
        };
        for (ip, from) in failovers(&self.cfg.node_name, &self.owners, &owners, &alive) {
            self.metrics.failover_detections.inc();
            tracing::info!(service = %services_with(&ip), %ip, from = %from, "taking over: the previous owner's speaker is down");
        }
        for ip in new.difference(&old) {
            tracing::info!(service = %services_with(ip), %ip, "this node now owns the address");
        }
        for ip in old.difference(&new) {
            tracing::info!(service = %services_with(ip), %ip, "this node no longer owns the address");
        }
        for (key, sp) in &next.services {
            if let Err(reason) = &sp.owner
                && self.plan.services.get(key).map(|p| &p.owner) != Some(&sp.owner)
            {
                tracing::info!(service = %key, %reason, "not announced");
            }
        }

        self.services_of
            .retain(|ip, _| self.announced.contains_key(ip));
        for (key, sp) in &next.services {
            for ip in &sp.addresses {
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
        self.write_conditions(&alive);
    }

    fn write_conditions(&mut self, alive: &BTreeSet<String>) {
        let me = self.cfg.node_name.clone();
        let mut keep = BTreeSet::new();
        for (key, sp) in &self.plan.services {
            let Some((status, reason, message)) =
                desired_condition(&me, key, sp, &self.announced, alive)
            else {
                continue;
            };
            keep.insert(key.clone());
            if self.written.get(key) == Some(&(status, message.clone())) {
                continue;
            }
            let Some((namespace, name)) = key.split_once('/') else {
                continue;
            };
            self.written.insert(key.clone(), (status, message.clone()));
            let _ = self.reports.send(Report::Condition {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                status,
                reason,
                message,
            });
        }
        // Forget what we no longer write, so that becoming the writer again writes anew.
        self.written.retain(|k, _| keep.contains(k));
    }

    fn service(&self, key: &str) -> Option<Arc<Service>> {
        let (namespace, name) = key.split_once('/')?;
        self.stores
            .services
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    fn event_on_services(&self, ip: IpAddr, type_: EventType, reason: &str, note: String) {
        for key in self.services_of.get(&ip).into_iter().flatten() {
            let Some(svc) = self.service(key) else {
                continue;
            };
            let _ = self.reports.send(Report::Event {
                reference: Box::new(service_reference(&svc)),
                event: Event {
                    type_,
                    reason: reason.to_owned(),
                    note: Some(note.clone()),
                    action: "Announce".into(),
                    secondary: None,
                },
            });
        }
    }

    /// Brings `announced` in line with the announcer's own state and reports the differences.
    ///
    /// The announcer's events are only triggers: its channel is bounded and drops under a
    /// burst (a thousand addresses at once), so the truth is read from
    /// [`Announcer::announced_on`].
    fn sync_announced(&mut self, alive: &BTreeSet<String>) {
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
        self.write_conditions(alive);
    }

    /// Handles one announcer event; returns whether the announced state may have changed.
    fn on_announcer_event(&mut self, event: AnnouncerEvent) -> bool {
        let me = self.cfg.node_name.clone();
        match event {
            AnnouncerEvent::Announcing { .. } | AnnouncerEvent::Stopped { .. } => true,
            AnnouncerEvent::Conflict { ip, mac, interface } => {
                self.metrics.address_conflicts.inc();
                let mac = mac.to_string();
                let now = Instant::now();
                let due = self
                    .conflicts_reported
                    .get(&(ip, mac.clone()))
                    .is_none_or(|t| now.duration_since(*t) >= CONFLICT_REPORT_EVERY);
                if due {
                    self.conflicts_reported.insert((ip, mac.clone()), now);
                    let note = format!(
                        "{ip} is also claimed by {mac} on {interface} of {me}: another machine uses this address"
                    );
                    for key in self.services_of.get(&ip).into_iter().flatten() {
                        tracing::warn!(service = %key, %ip, %mac, %interface, "address conflict");
                    }
                    self.event_on_services(ip, EventType::Warning, "AddressConflict", note);
                }
                false
            }
            AnnouncerEvent::InterfaceError { interface, error } => {
                tracing::warn!(%interface, %error, "interface error");
                false
            }
        }
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
    let stores = Stores::start(&client, &notify);
    let bgp = crate::bgp::Bgp::start(
        &client,
        &notify,
        &cfg.node_name,
        &cfg.namespace,
        metrics.bgp.clone(),
    );

    // The announcer is needed by the metrics refresh; start it before serving.
    let (announcer, mut events) = Announcer::start(cfg.announcer.clone()).await?;
    let refresh: metrics::Refresh = {
        let announcer = announcer.clone();
        Arc::new(move |m: &Metrics| m.set_frames(frame_counts(&announcer)))
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
        cfg.key.clone(),
    );
    let initial_seeds = seeds(&nodes, &cfg.node_name, cfg.membership_port);
    mcfg.seeds = initial_seeds.clone();
    let (membership, mut view_rx) = Membership::start(mcfg).await?;
    tracing::info!(advertise = %SocketAddr::new(own_ip, cfg.membership_port), seeds = initial_seeds.len(), "membership started");

    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel();
    let reporter_task = tokio::spawn(reporter(
        client.clone(),
        cfg.node_name.clone(),
        report_rx,
        failed_tx,
    ));

    let mut shell = Shell {
        cfg,
        stores,
        announcer,
        membership,
        metrics,
        reports: report_tx,
        bgp,
        plan: Plan::default(),
        owners: BTreeMap::new(),
        alive_source: None,
        seeds: initial_seeds,
        announced: BTreeMap::new(),
        services_of: BTreeMap::new(),
        written: BTreeMap::new(),
        conflicts_reported: BTreeMap::new(),
        view: view_rx.borrow_and_update().clone(),
        seen: BTreeSet::new(),
        joining: true,
    };
    let initial = shell.view.clone();
    shell.set_view(initial);
    shell.recompute();
    let joining_until = tokio::time::Instant::now() + JOINING_GRACE;
    let mut retry_at: Option<tokio::time::Instant> = None;
    health
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut views_open = true;
    let mut release_at = Some(tokio::time::Instant::now() + RELEASE_MEMORY_AFTER);

    loop {
        let mut worked = true;
        tokio::select! {
            // Biased: membership first, it is the failover path.
            biased;
            changed = view_rx.changed(), if views_open => {
                if changed.is_err() {
                    // The membership task ended (cannot happen before leave): keep the last view.
                    views_open = false;
                    continue;
                }
                let view = view_rx.borrow_and_update().clone();
                shell.set_view(view);
                shell.recompute();
            }
            () = notify.notified() => shell.recompute(),
            Some(event) = events.recv() => {
                // Drain what is already queued, then look at the announcer's state once.
                let mut changed = shell.on_announcer_event(event);
                while let Ok(event) = events.try_recv() {
                    changed |= shell.on_announcer_event(event);
                }
                if changed {
                    let (alive, _) = shell.alive(&shell.stores.nodes.state());
                    shell.sync_announced(&alive);
                }
            }
            Some(key) = failed_rx.recv() => {
                // Forgotten as written, and written again shortly (the API server may be
                // back before any watched object changes).
                shell.written.remove(&key);
                retry_at.get_or_insert_with(|| tokio::time::Instant::now() + CONDITION_RETRY);
            }
            () = tokio::time::sleep_until(retry_at.unwrap_or(joining_until)), if retry_at.is_some() => {
                retry_at = None;
                let (alive, _) = shell.alive(&shell.stores.nodes.state());
                shell.write_conditions(&alive);
            }
            () = tokio::time::sleep_until(joining_until), if shell.joining => {
                shell.joining = false;
                tracing::debug!("joining grace over: liveness from the membership alone");
                shell.recompute();
            }
            () = tokio::time::sleep_until(release_at.unwrap_or(joining_until)), if release_at.is_some() => {
                release_at = None;
                worked = false;
                crate::heap::release_free_memory();
            }
            () = &mut shutdown => break,
        }
        if worked {
            release_at = Some(tokio::time::Instant::now() + RELEASE_MEMORY_AFTER);
        }
    }

    tracing::info!("shutting down: stop answering, then leave the membership");
    health
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    shell.bgp.shutdown().await;
    shell.announcer.clone().shutdown().await;
    shell.membership.leave(LEAVE_TIMEOUT).await;
    reporter_task.abort();
    tracing::info!("speaker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ServicePlan;

    fn sp(addresses: &[&str], owner: Result<&str, NoOwner>) -> ServicePlan {
        ServicePlan {
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            owner: owner.map(str::to_owned),
        }
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
        let alive: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let owned = sp(&["198.51.100.1"], Ok("b"));
        let announced = BTreeMap::from([(ip, vec!["eth0".to_owned()])]);
        assert_eq!(
            desired_condition("b", "ns/web", &owned, &announced, &alive),
            Some((true, "Announced", "announced from b on eth0".to_owned()))
        );
        assert_eq!(
            desired_condition("a", "ns/web", &owned, &announced, &alive),
            None
        );
        // The owner says nothing until its announcer reports an interface.
        assert_eq!(
            desired_condition("b", "ns/web", &owned, &BTreeMap::new(), &alive),
            None
        );
        let none = sp(&["198.51.100.1"], Err(NoOwner::NoReadyEndpoints));
        let writers: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|me| desired_condition(me, "ns/web", &none, &announced, &alive).is_some())
            .collect();
        assert_eq!(writers.len(), 1);
        let (status, reason, message) =
            desired_condition(writers[0], "ns/web", &none, &announced, &alive).unwrap();
        assert!(!status);
        assert_eq!(reason, "NoReadyEndpoints");
        assert_eq!(message, "not announced: no ready endpoint");
        let unassigned = sp(&[], Err(NoOwner::NoAddress));
        for me in ["a", "b", "c"] {
            assert_eq!(
                desired_condition(me, "ns/web", &unassigned, &announced, &alive),
                None
            );
        }
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
    fn address_owner_first_service_wins() {
        let mut p = Plan::default();
        p.services
            .insert("a/x".into(), sp(&["198.51.100.1"], Ok("n1")));
        p.services
            .insert("b/y".into(), sp(&["198.51.100.1", "2001:db8::1"], Ok("n2")));
        let owners = address_owners(&p);
        assert_eq!(owners[&"198.51.100.1".parse::<IpAddr>().unwrap()], "n1");
        assert_eq!(owners[&"2001:db8::1".parse::<IpAddr>().unwrap()], "n2");
    }
}
