//! The controller's I/O shell: watches feed the pure IPAM, a small writer applies the results.
//!
//! One task owns all decisions, so the IPAM needs no lock and its order is deterministic. The
//! decision state (`State`) does no I/O: it returns `Effect`s (status applies, pool status,
//! finalizers, Events), which the `Writer` executes concurrently behind a semaphore through one
//! write helper (`Writer::send`) that checks leadership right before each request (a replica
//! that has lost the Lease stops writing at once) and counts every answer the same way.
//!
//! State is rebuilt, not remembered: on start and on every gain of leadership a fresh IPAM is
//! built from the pools, every Service's current `status.loadBalancer.ingress` is reserved, and
//! only then is anything new assigned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use lodestone_crds::addresses::IpFamily;
use lodestone_crds::events::{self, error_chain, log_text};
use lodestone_crds::{IPAddressPool, POOL_FINALIZER};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use crate::ipam::{AllocError, Assignment, Ipam, PoolConfig, ServiceKey};
use crate::metrics::Metrics;
use crate::nodes::NodeAddresses;
use crate::pools::{self, PoolEval};
use crate::service::{self, ClassFilter};
use crate::status::{self, AssignedCondition, DesiredStatus, FIELD_MANAGER};
use crate::trim;

/// Event reasons on Services.
pub mod reasons {
    pub const IP_ALLOCATED: &str = "IPAllocated";
    pub const IP_RELEASED: &str = "IPReleased";
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
    /// A Service keeps an address nobody would be given today (a Node's, in a refused entry, or
    /// of a pool that vanished without releasing it).
    pub const IP_KEPT: &str = "IPKept";
}

/// How the shell behaves.
#[derive(Debug, Clone)]
pub struct Config {
    pub class: ClassFilter,
    /// Writes in flight at once.
    pub write_concurrency: usize,
    /// Name of this replica in Events (`reportingInstance`).
    pub instance: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            class: ClassFilter::default(),
            write_concurrency: 32,
            instance: "lodestone-controller".into(),
        }
    }
}

/// What a decision asks of the API server. [`State`] collects them; [`Writer::execute`] runs
/// them. Plain data, so the decisions are tested by looking at these.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    /// Apply our part of the Service's status (ingress and the AddressAssigned condition).
    ServiceStatus {
        service: Arc<Service>,
        desired: DesiredStatus,
    },
    /// Give up our part of the Service's status (it is no longer ours).
    ReleaseStatus { service: Arc<Service> },
    /// Write the pool's status (coalesced per pool, see [`PoolWrites`]).
    PoolStatus {
        pool: String,
        status: lodestone_crds::IPAddressPoolStatus,
    },
    /// The pool already shows what is wanted: a queued status write is stale.
    PoolStatusCurrent { pool: String },
    /// Own (`true`) or give up our finalizer on the pool.
    PoolFinalizer { pool: String, present: bool },
    /// Publish an Event about the Service.
    Event {
        service: Arc<Service>,
        type_: EventType,
        reason: &'static str,
        note: String,
    },
    /// Ask now and then whether IPAddressPools are served again.
    ProbePoolKind,
}

#[derive(Debug)]
enum Signal {
    Service(ServiceKey),
    AllServices,
    Pools,
    /// The API server answers 404 for IPAddressPools: the CRD is not installed (any more).
    PoolKindMissing,
    Nodes,
}

struct Stores {
    services: Store<Service>,
    pools: Store<IPAddressPool>,
    namespaces: Store<Namespace>,
    nodes: watch::Receiver<Option<Arc<NodeAddresses>>>,
}

/// Start the watches that feed `tx` and keep the caches warm, whether or not we lead.
fn start_watches(client: &Client, tx: mpsc::UnboundedSender<Signal>) -> Stores {
    let (services, svc_writer) = reflector::store::<Service>();
    let (pools, pool_writer) = reflector::store::<IPAddressPool>();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    spawn_watch(
        client,
        svc_writer,
        trim::service,
        tx.clone(),
        |ev| match ev {
            watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
                Some(Signal::Service(service::key_of(s)))
            }
            watcher::Event::InitDone => Some(Signal::AllServices),
            _ => None,
        },
    );
    spawn_watch(client, pool_writer, trim::pool, tx.clone(), |ev| match ev {
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone => {
            Some(Signal::Pools)
        }
        _ => None,
    });
    // Namespace labels feed namespace selectors: re-evaluate every Service. Services that
    // already hold a valid address keep it, so this is cheap and moves nothing.
    spawn_watch(
        client,
        ns_writer,
        trim::namespace,
        tx.clone(),
        |ev| match ev {
            watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone => {
                Some(Signal::AllServices)
            }
            _ => None,
        },
    );
    let nodes = crate::nodes::spawn_watch(client);
    let mut changed = nodes.clone();
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            if tx.send(Signal::Nodes).is_err() {
                return;
            }
        }
    });
    Stores {
        services,
        pools,
        namespaces,
        nodes,
    }
}

/// Say clearly when a kind is not served at all (its CRD is not installed): the decision task
/// then holds still instead of taking an empty cache for "no pools".
fn watch_failed<K: Resource<DynamicType = ()>>(
    e: &watcher::Error,
    tx: &mpsc::UnboundedSender<Signal>,
) {
    let kind = K::kind(&());
    let not_found = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    };
    if not_found {
        warn!(%kind, error = %error_chain(e), "the API server does not serve this kind (is its CRD installed?); holding every address as it is until it is back");
        if kind == IPAddressPool::kind(&()) {
            let _ = tx.send(Signal::PoolKindMissing);
        }
    } else {
        warn!(%kind, error = %error_chain(e), "watch failed; retrying");
    }
}

/// Watch every `K` into `writer`'s cache and turn each event into a signal for the decision
/// task. Cached objects keep only what the controller reads ([`trim`]).
fn spawn_watch<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    tx: mpsc::UnboundedSender<Signal>,
    signal: fn(&watcher::Event<K>) -> Option<Signal>,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if let Some(sig) = signal(&ev)
                        && tx.send(sig).is_err()
                    {
                        return;
                    }
                }
                Err(e) => watch_failed::<K>(&e, &tx),
            }
        }
    });
}

/// Run the controller until the process is stopped. `leader` says whether this replica holds the
/// Lease (always true without leader election).
pub async fn run(
    client: Client,
    config: Config,
    mut leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stores = start_watches(&client, tx.clone());
    info!("waiting for the Service, IPAddressPool, Namespace and Node caches");
    stores.services.wait_until_ready().await?;
    stores.pools.wait_until_ready().await?;
    metrics.set_pool_kind_served(true);
    stores.namespaces.wait_until_ready().await?;
    stores.nodes.clone().wait_for(Option::is_some).await?;
    info!("caches synced");
    // The initial lists were decoded whole and trimmed; a standby replica keeps only the caches.
    lodestone_crds::heap::release_free_memory();

    let leadership = Leadership::default();
    let writer = Writer {
        client: client.clone(),
        instance: config.instance.clone(),
        permits: Arc::new(Semaphore::new(config.write_concurrency.max(1))),
        metrics: metrics.clone(),
        leadership: leadership.clone(),
        retry: tx.clone(),
        pools: stores.pools.clone(),
        pool_writes: Arc::default(),
    };
    // The flag the writes check, and the gauge that shows it.
    let lead = |on: bool| {
        leadership.set(on);
        metrics.set_leader(on);
    };

    loop {
        lead(false);
        // A standby replica is ready: it serves probes and waits.
        metrics.set_ready(true);
        while !*leader.borrow_and_update() {
            info!("standing by: another replica holds the lease");
            leader.changed().await?;
        }
        metrics.set_ready(false);
        lead(true);
        info!("leading: rebuilding state from the cluster");

        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut state = State::rebuild(&stores, &config, metrics.clone());
        let started = std::time::Instant::now();
        state.full_pass();
        writer.execute(state.take_effects(), &done_tx);
        metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.set_ready(true);
        info!(
            assigned = state.ipam.assignments().count(),
            "ready: existing addresses reserved, new ones assigned"
        );

        // The first pass decoded and trimmed every Service: hand the peak back once idle.
        let mut worked = true;
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELEASE_MEMORY_AFTER), if worked => {
                    worked = false;
                    lodestone_crds::heap::release_free_memory();
                }
                changed = leader.changed() => {
                    changed?;
                    if !*leader.borrow_and_update() {
                        // Stop writing before anything else: writes check this flag when sent.
                        lead(false);
                        warn!("lost the lease: no more writes from this replica");
                        break;
                    }
                }
                Some(sig) = rx.recv() => {
                    let mut batch = vec![sig];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let started = std::time::Instant::now();
                    state.process(batch);
                    metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
                    writer.execute(state.take_effects(), &done_tx);
                    worked = true;
                }
                Some(done) = done_rx.recv() => state.write_done(done),
            }
        }
    }
}

/// The outcome of one write, fed back to the decision task.
#[derive(Debug)]
enum WriteDone {
    Service { key: ServiceKey },
}

struct State {
    class: ClassFilter,
    ipam: Ipam,
    stores_services: Store<Service>,
    stores_pools: Store<IPAddressPool>,
    stores_namespaces: Store<Namespace>,
    /// Labels of the namespaces seen since the last pass over every Service.
    ns_labels: HashMap<String, Arc<BTreeMap<String, String>>>,
    evals: BTreeMap<String, PoolEval>,
    /// Pools gone from the API while Services still hold addresses from them (their finalizer
    /// was bypassed), kept as they were, shrunk to what is held: see [`pools::vanished`].
    vanished: BTreeMap<String, PoolConfig>,
    /// The IPAddressPool kind is not served (404): no decisions until it is back.
    pool_kind_missing: bool,
    nodes: watch::Receiver<Option<Arc<NodeAddresses>>>,
    /// The last warning announced per Service about an address it keeps, see [`reasons::IP_KEPT`].
    last_warning: HashMap<ServiceKey, String>,
    /// Desired status being written, so a burst of events does not write the same thing twice.
    inflight: HashMap<ServiceKey, DesiredStatus>,
    /// The last failure announced per Service, so an Event is sent when it changes, not per pass.
    last_failure: HashMap<ServiceKey, String>,
    /// Why a Service's held address was taken away (pool edited, invalid on restart), for its next Event.
    moved_because: HashMap<ServiceKey, String>,
    pools_dirty: bool,
    /// Addresses were freed in this batch: Services still waiting for one get another try.
    released: bool,
    /// Pools reported in the metrics, so deleted ones can be removed from them.
    reported_pools: BTreeSet<String>,
    metrics: Arc<Metrics>,
    /// What the decisions so far ask of the API server, taken by [`State::take_effects`].
    effects: Vec<Effect>,
}

/// Why a Service has no (new) address.
enum Failure {
    Request(service::RequestError),
    Alloc(crate::ipam::AllocError),
}

impl Failure {
    /// The condition reason: one CamelCase word per kind of failure (docs/addresses.md lists them).
    fn reason(&self) -> &'static str {
        match self {
            Failure::Request(e) => e.reason(),
            Failure::Alloc(e) => e.reason(),
        }
    }
    fn message(&self) -> String {
        match self {
            Failure::Request(e) => e.to_string(),
            Failure::Alloc(e) => e.to_string(),
        }
    }
}

fn key_ref(key: &ServiceKey) -> ObjectRef<Service> {
    ObjectRef::new(&key.name).within(&key.namespace)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn ips_text(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl State {
    fn rebuild(stores: &Stores, config: &Config, metrics: Arc<Metrics>) -> State {
        let mut state = State {
            class: config.class.clone(),
            ipam: Ipam::new(),
            stores_services: stores.services.clone(),
            stores_pools: stores.pools.clone(),
            stores_namespaces: stores.namespaces.clone(),
            ns_labels: HashMap::new(),
            evals: BTreeMap::new(),
            vanished: BTreeMap::new(),
            pool_kind_missing: false,
            nodes: stores.nodes.clone(),
            last_warning: HashMap::new(),
            inflight: HashMap::new(),
            last_failure: HashMap::new(),
            moved_because: HashMap::new(),
            pools_dirty: true,
            released: false,
            reported_pools: BTreeSet::new(),
            metrics,
            effects: Vec::new(),
        };
        state.load_node_addresses();
        state.load_pools();
        // Reserve every address already in a Service's status before assigning anything.
        let mut services = state.stores_services.state();
        services.sort_by_key(|s| service::key_of(s));
        let mut reserved = 0usize;
        let class = state.class.clone();
        let mut orphans: Vec<(Arc<Service>, Vec<IpAddr>, String)> = Vec::new();
        for svc in services.iter().filter(|s| class.is_ours(s)) {
            let held = status::ingress_ips(svc);
            if held.is_empty() {
                continue;
            }
            let key = service::key_of(svc);
            let ns_labels = state.namespace_labels(&key.namespace);
            let req = service::hold_request(svc, &ns_labels, &held);
            match state.ipam.reserve(&req, &held) {
                Ok(_) => reserved += 1,
                // Its pool is gone (or no pool exists at all, which cannot be told from the
                // kind being gone): hold on to the address rather than hand out another.
                Err(AllocError::AddressInNoPool { .. } | AllocError::UnknownPool { .. })
                    if state.evals.is_empty()
                        || status::pool_of(svc).is_some_and(|p| !state.evals.contains_key(&p)) =>
                {
                    let pool = status::pool_of(svc).unwrap_or_else(|| "(unknown)".to_string());
                    orphans.push((svc.clone(), held, pool));
                }
                Err(e) => {
                    warn!(service = %key, held = %ips_text(&held), error = %log_text(&e.to_string()), "cannot keep the address in the Service's status");
                    state.moved_because.insert(
                        key,
                        format!(
                            "its previous address {} could not be kept: {e}",
                            ips_text(&held)
                        ),
                    );
                }
            }
        }
        if !orphans.is_empty() {
            let mut held: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
            for (_, ips, pool) in &orphans {
                held.entry(pool.clone())
                    .or_default()
                    .extend(ips.iter().copied());
            }
            for (name, ips) in &held {
                if let Some(p) = pools::vanished_pool(name, ips, None) {
                    warn!(pool = %name, addresses = %ips.len(), "Services hold addresses of a pool that does not exist; keeping them until a pool containing them exists again");
                    state.vanished.insert(name.clone(), p);
                }
            }
            state.apply_pools();
            for (svc, ips, _) in orphans {
                let key = service::key_of(&svc);
                let ns_labels = state.namespace_labels(&key.namespace);
                let req = service::hold_request(&svc, &ns_labels, &ips);
                if let Err(e) = state.ipam.reserve(&req, &ips) {
                    warn!(service = %key, held = %ips_text(&ips), error = %log_text(&e.to_string()), "cannot keep the address in the Service's status");
                } else {
                    reserved += 1;
                }
            }
        }
        info!(reserved, "reserved addresses found in Service status");
        state
    }

    /// The effects decided since the last call, in the order they were decided.
    fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn event(&mut self, svc: &Arc<Service>, type_: EventType, reason: &'static str, note: String) {
        self.effects.push(Effect::Event {
            service: svc.clone(),
            type_,
            reason,
            note,
        });
    }

    fn load_node_addresses(&mut self) {
        let nodes = self.nodes.borrow_and_update().clone().unwrap_or_default();
        self.ipam.set_node_addresses((*nodes).clone());
    }

    /// Give the IPAM the pools: the real ones and the vanished ones.
    fn apply_pools(&mut self) -> Vec<(ServiceKey, Vec<IpAddr>)> {
        let configs = self
            .evals
            .values()
            .filter_map(|e| e.config.clone())
            .chain(self.vanished.values().cloned())
            .collect();
        self.ipam.set_pools(configs)
    }

    /// Forget vanished pools nobody holds an address from any more (their Services let go, or
    /// moved, address unchanged, to a pool that contains it). True if any went.
    fn prune_vanished(&mut self) -> bool {
        let empty: Vec<String> = self
            .vanished
            .keys()
            .filter(|name| !self.ipam.pool_in_use(name))
            .cloned()
            .collect();
        for name in &empty {
            info!(pool = %name, "no Service holds an address of the vanished pool any more; forgetting it");
            self.vanished.remove(name);
        }
        if !empty.is_empty() {
            // Nobody holds an address from these, so this displaces nobody.
            self.apply_pools();
        }
        !empty.is_empty()
    }

    /// Why `a` is kept although nobody would be given it today, if it is.
    fn hold_warning(&self, a: &Assignment) -> Option<String> {
        let refused = self
            .evals
            .get(&a.pool)
            .map(|e| e.refused.as_slice())
            .unwrap_or(&[]);
        pools::hold_warning(
            a,
            self.vanished.contains_key(&a.pool),
            |ip| self.ipam.node_of(ip),
            refused,
        )
    }

    /// A namespace's labels, one shared map per namespace for every request made in it (the
    /// IPAM keeps each holder's request). Emptied whenever namespaces may have changed.
    fn namespace_labels(&mut self, ns: &str) -> Arc<BTreeMap<String, String>> {
        if let Some(labels) = self.ns_labels.get(ns) {
            return labels.clone();
        }
        let labels: Arc<BTreeMap<String, String>> = Arc::new(
            self.stores_namespaces
                .get(&ObjectRef::new(ns))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default(),
        );
        self.ns_labels.insert(ns.to_string(), labels.clone());
        labels
    }

    /// Re-read every pool into the IPAM. `None` when no pool changed in a way that matters to
    /// allocation (our own status writes come back as pool events and must not trigger a pass
    /// over every Service); otherwise the Services whose addresses left every usable pool.
    fn load_pools(&mut self) -> Option<Vec<(ServiceKey, Vec<IpAddr>)>> {
        let objects = self.stores_pools.state();
        let evals: BTreeMap<String, PoolEval> = objects
            .iter()
            .map(|p| {
                let e = pools::evaluate(p);
                (e.name.clone(), e)
            })
            .collect();
        if evals == self.evals {
            return None;
        }
        self.evals = evals;
        for e in self.evals.values().filter(|e| !e.problems.is_empty()) {
            warn!(pool = %e.name, problems = %log_text(&e.problems.join("; ")), "IPAddressPool is invalid");
        }
        let present: BTreeSet<String> = self.evals.keys().cloned().collect();
        let vanished = pools::vanished(
            self.ipam.pools(),
            &present,
            self.ipam.assignments().map(|(_, a)| a),
        );
        let vanished: BTreeMap<String, PoolConfig> =
            vanished.into_iter().map(|p| (p.name.clone(), p)).collect();
        for (name, p) in &vanished {
            if !self.vanished.contains_key(name) {
                warn!(pool = %name, addresses = %p.addresses.len(IpFamily::V4).saturating_add(p.addresses.len(IpFamily::V6)), "the pool is gone but Services still hold its addresses (its finalizer was removed or the IPAddressPool CRD deleted); keeping them until a pool containing them exists again");
            }
        }
        self.vanished = vanished;
        let displaced = self.apply_pools();
        self.prune_vanished();
        Some(displaced)
    }

    fn full_pass(&mut self) {
        // Namespace changes come as a pass over every Service: read their labels afresh.
        self.ns_labels.clear();
        let mut keys: BTreeSet<ServiceKey> = self
            .stores_services
            .state()
            .iter()
            .map(|s| service::key_of(s))
            .collect();
        keys.extend(self.ipam.assignments().map(|(k, _)| k.clone()));
        for key in keys {
            self.reconcile_service(&key);
        }
        self.retry_waiting();
        self.sync_pools();
    }

    fn process(&mut self, batch: Vec<Signal>) {
        let mut services = BTreeSet::new();
        let mut all = false;
        let mut pools = false;
        for sig in batch {
            match sig {
                Signal::Service(k) => {
                    services.insert(k);
                }
                Signal::AllServices => all = true,
                Signal::Pools => {
                    pools = true;
                    if std::mem::take(&mut self.pool_kind_missing) {
                        info!("IPAddressPools are served again; deciding again");
                        self.metrics.set_pool_kind_served(true);
                        self.metrics.set_ready(true);
                        all = true;
                    }
                }
                Signal::PoolKindMissing => {
                    if !self.pool_kind_missing {
                        warn!(
                            "IPAddressPools are not served (404: the CRD is not installed); holding every Service's address and deciding nothing until they are back"
                        );
                        self.pool_kind_missing = true;
                        self.metrics.set_pool_kind_served(false);
                        self.metrics.set_ready(false);
                        self.effects.push(Effect::ProbePoolKind);
                    }
                }
                Signal::Nodes => {
                    self.load_node_addresses();
                    all = true;
                }
            }
        }
        if self.pool_kind_missing {
            // The pool cache is stale or empty for a reason that is not the user's: change
            // nothing. Everything is decided afresh once the kind is served again.
            return;
        }
        if pools {
            // Finalizers and status may need attention even when allocation does not.
            self.pools_dirty = true;
            if let Some(displaced) = self.load_pools() {
                // A pool that appeared or grew may satisfy Services that are waiting.
                all = true;
                for (key, ips) in displaced {
                    info!(service = %key, addresses = %ips_text(&ips), "address no longer in a pool the Service may use");
                    self.moved_because.insert(
                        key.clone(),
                        format!(
                            "its address {} is no longer in a pool it may use",
                            ips_text(&ips)
                        ),
                    );
                    services.insert(key);
                }
            }
        }
        if all {
            self.full_pass();
            return;
        }
        for key in services {
            self.reconcile_service(&key);
        }
        self.retry_waiting();
        self.sync_pools();
    }

    /// Give Services that are waiting for an address another try after addresses were freed,
    /// in key order so the outcome does not depend on event timing.
    fn retry_waiting(&mut self) {
        while std::mem::take(&mut self.released) {
            let mut waiting: Vec<ServiceKey> = self.last_failure.keys().cloned().collect();
            waiting.sort();
            for key in waiting {
                self.reconcile_service(&key);
            }
        }
    }

    fn reconcile_service(&mut self, key: &ServiceKey) {
        let Some(svc) = self.stores_services.get(&key_ref(key)) else {
            if let Some(a) = self.ipam.release(key) {
                debug!(service = %key, addresses = %ips_text(&a.addresses), "Service deleted; address released");
                self.pools_dirty = true;
                self.released = true;
            }
            self.forget(key);
            return;
        };
        if !self.class.is_ours(&svc) {
            if let Some(a) = self.ipam.release(key) {
                info!(service = %key, addresses = %ips_text(&a.addresses), "Service is no longer ours; address released");
                self.pools_dirty = true;
                self.released = true;
                self.event(
                    &svc,
                    EventType::Normal,
                    reasons::IP_RELEASED,
                    format!(
                        "released {}: the Service is no longer a LoadBalancer of class {}",
                        ips_text(&a.addresses),
                        self.class.class
                    ),
                );
            }
            self.forget(key);
            if status::has_our_status(&svc) {
                self.effects.push(Effect::ReleaseStatus {
                    service: svc.clone(),
                });
            }
            return;
        }

        let prev = self.ipam.assignment(key).cloned();
        let ns_labels = self.namespace_labels(&key.namespace);
        // What others' sharing is judged against: when it changes, a Service refused for a
        // sharing conflict with this one gets another try.
        let terms_before = (!self.last_failure.is_empty())
            .then(|| self.ipam.request(key).cloned())
            .flatten();
        let mut held_why = None;
        let result = service::request_for(&svc, &ns_labels)
            .map_err(Failure::Request)
            .and_then(|req| {
                held_why = self.ipam.holding_error(&req);
                self.ipam.assign(&req).map_err(Failure::Alloc)
            });
        if terms_before.is_some() && self.ipam.request(key) != terms_before.as_ref() {
            self.released = true;
        }
        let desired = match result {
            Ok(a) => {
                self.last_failure.remove(key);
                let warning = self.hold_warning(&a);
                match &warning {
                    Some(w) if self.last_warning.get(key) != Some(w) => {
                        warn!(service = %key, "{}", log_text(w));
                        self.event(&svc, EventType::Warning, reasons::IP_KEPT, w.clone());
                        self.last_warning.insert(key.clone(), w.clone());
                    }
                    Some(_) => {}
                    None => {
                        self.last_warning.remove(key);
                    }
                }
                if prev.as_ref() != Some(&a) {
                    self.pools_dirty = true;
                    // A Service that moved (new request) freed its old addresses.
                    if prev
                        .as_ref()
                        .is_some_and(|p| p.addresses.iter().any(|ip| !a.addresses.contains(ip)))
                    {
                        self.released = true;
                    }
                    let mut note =
                        format!("assigned {} from pool {}", ips_text(&a.addresses), a.pool);
                    let moved = prev
                        .as_ref()
                        .is_some_and(|p| p.addresses.iter().any(|ip| !a.addresses.contains(ip)));
                    let why = self
                        .moved_because
                        .remove(key)
                        .or_else(|| held_why.filter(|_| moved).map(|e| e.to_string()));
                    if let Some(why) = why {
                        note.push_str(&format!(" because {why}"));
                    }
                    info!(service = %key, "{}", log_text(&note));
                    self.event(&svc, EventType::Normal, reasons::IP_ALLOCATED, note);
                }
                assigned_status(&a, warning.as_deref())
            }
            Err(f) => {
                // A refused wish must not cost the Service what it already holds: the IPAM let
                // go of it when the new request failed, so take it back under a request that
                // asks for nothing new.
                let kept = prev.as_ref().and_then(|p| {
                    let hold = service::hold_request(&svc, &ns_labels, &p.addresses);
                    self.ipam.reserve(&hold, &p.addresses).ok()
                });
                if kept.is_none() && prev.is_some() {
                    self.pools_dirty = true;
                    self.released = true;
                }
                let message = match &kept {
                    Some(p) => format!("{}; keeping {}", f.message(), ips_text(&p.addresses)),
                    None => f.message(),
                };
                if self.last_failure.get(key) != Some(&message) {
                    warn!(service = %key, reason = f.reason(), "{}", log_text(&message));
                    self.metrics.allocation_failed(f.reason());
                    self.event(
                        &svc,
                        EventType::Warning,
                        reasons::ALLOCATION_FAILED,
                        message.clone(),
                    );
                    self.last_failure.insert(key.clone(), message.clone());
                }
                DesiredStatus {
                    ips: kept.map(|p| p.addresses).unwrap_or_default(),
                    condition: AssignedCondition {
                        assigned: false,
                        reason: f.reason().to_string(),
                        message,
                    },
                }
            }
        };
        if status::is_current(&svc, &desired) || self.inflight.get(key) == Some(&desired) {
            return;
        }
        self.inflight.insert(key.clone(), desired.clone());
        self.effects.push(Effect::ServiceStatus {
            service: svc,
            desired,
        });
    }

    fn forget(&mut self, key: &ServiceKey) {
        self.inflight.remove(key);
        self.last_warning.remove(key);
        self.last_failure.remove(key);
        self.moved_because.remove(key);
    }

    fn write_done(&mut self, done: WriteDone) {
        match done {
            WriteDone::Service { key } => {
                self.inflight.remove(&key);
            }
        }
    }

    /// Bring every pool's status and finalizer in line with the IPAM.
    fn sync_pools(&mut self) {
        if !self.pools_dirty {
            return;
        }
        self.pools_dirty = false;
        self.prune_vanished();
        let metrics = self.metrics.clone();
        metrics
            .services_assigned
            .set(i64::try_from(self.ipam.assigned_services()).unwrap_or(i64::MAX));
        let held_without_pool = self
            .ipam
            .assignments()
            .filter(|(_, a)| self.vanished.contains_key(&a.pool))
            .count();
        metrics
            .services_held_without_pool
            .set(i64::try_from(held_without_pool).unwrap_or(i64::MAX));
        let mut reported = BTreeSet::new();
        let mut overlaps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let real = |n: &String| self.evals.contains_key(n);
        for (a, b) in self
            .ipam
            .overlaps()
            .into_iter()
            .filter(|(a, b)| real(a) && real(b))
        {
            overlaps.entry(a.clone()).or_default().push(b.clone());
            overlaps.entry(b).or_default().push(a);
        }
        for pool in self.stores_pools.state() {
            let name = pool.name_any();
            let Some(eval) = self.evals.get(&name) else {
                continue;
            };
            let stats = self.ipam.pool_stats(&name);
            if let Some(st) = &stats {
                for family in [IpFamily::V4, IpFamily::V6] {
                    metrics.set_pool(&name, family, st.assigned(family), st.available(family));
                }
                reported.insert(name.clone());
            }
            let holders = if eval.terminating {
                self.ipam.pool_holders(&name)
            } else {
                Vec::new()
            };
            let desired = pools::desired_status(
                eval,
                stats.as_ref(),
                &holders,
                overlaps.get(&name).map(Vec::as_slice).unwrap_or(&[]),
                pool.status.as_ref(),
                &now(),
            );
            if pools::status_is_current(pool.status.as_ref(), &desired) {
                self.effects
                    .push(Effect::PoolStatusCurrent { pool: name.clone() });
            } else {
                self.effects.push(Effect::PoolStatus {
                    pool: name.clone(),
                    status: desired,
                });
            }
            let has_finalizer = pool.finalizers().iter().any(|f| f == POOL_FINALIZER);
            // Only this pool's own assignments: a Service holding an address it shares with an
            // overlapping pool, assigned from that one, does not keep it from going.
            let in_use = self.ipam.pool_in_use(&name);
            if !eval.terminating && !has_finalizer {
                self.effects.push(Effect::PoolFinalizer {
                    pool: name.clone(),
                    present: true,
                });
            } else if eval.terminating && has_finalizer && !in_use {
                info!(pool = %name, "no Service holds an address of the deleted pool; letting it go");
                self.effects.push(Effect::PoolFinalizer {
                    pool: name.clone(),
                    present: false,
                });
            }
        }
        for gone in self.reported_pools.difference(&reported) {
            metrics.remove_pool(gone);
        }
        self.reported_pools = reported;
    }
}

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn word(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

fn assigned_status(a: &Assignment, warning: Option<&str>) -> DesiredStatus {
    let message = lodestone_crds::conditions::AssignedFrom {
        addresses: a.addresses.clone(),
        pool: a.pool.to_string(),
        warning: warning.map(str::to_owned),
    }
    .to_string();
    DesiredStatus {
        ips: a.addresses.clone(),
        condition: AssignedCondition {
            assigned: true,
            reason: lodestone_crds::conditions::assigned_reasons::ASSIGNED.into(),
            message,
        },
    }
}

/// Whether this replica holds the Lease: checked right before every write. Not a metric (the
/// `leader` gauge only shows it).
#[derive(Clone, Debug, Default)]
struct Leadership(Arc<AtomicBool>);

impl Leadership {
    fn set(&self, leading: bool) {
        self.0.store(leading, Ordering::SeqCst);
    }

    fn is_leading(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Applies decisions to the API server. Cheap to clone; every write runs as its own task.
#[derive(Clone)]
struct Writer {
    client: Client,
    /// `reportingInstance` of our Events.
    instance: String,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    retry: mpsc::UnboundedSender<Signal>,
    /// The pool cache, to tell a pool that is gone from a write that failed.
    pools: Store<IPAddressPool>,
    /// Pool status writes in flight or cooling down ([`PoolWrites`]).
    pool_writes: Arc<Mutex<PoolWrites<lodestone_crds::IPAddressPoolStatus>>>,
}

/// Which pool statuses to write, and when. Usage counts change with every assignment: at most
/// one status write per pool is in flight or cooling down ([`POOL_STATUS_INTERVAL`]), and the
/// statuses wanted meanwhile replace each other, so a burst of 10,000 assignments costs a few
/// writes per pool instead of one per decision (those writes took as much of etcd's time as the
/// Services themselves). Pure bookkeeping; [`Writer::pool_status`] does the writing.
#[derive(Debug)]
struct PoolWrites<S> {
    /// Pools with a write in flight or cooling down, with the status queued after it.
    busy: HashMap<String, Option<S>>,
}

impl<S> Default for PoolWrites<S> {
    fn default() -> Self {
        PoolWrites {
            busy: HashMap::new(),
        }
    }
}

impl<S> PoolWrites<S> {
    /// `status` is wanted: `Some` to write it now, `None` when it waits for the write before it
    /// (replacing any status queued earlier).
    fn want(&mut self, pool: &str, status: S) -> Option<S> {
        match self.busy.get_mut(pool) {
            Some(queued) => {
                *queued = Some(status);
                None
            }
            None => {
                self.busy.insert(pool.to_string(), None);
                Some(status)
            }
        }
    }

    /// The write in flight and its interval are over: the status to write next, if one was
    /// queued; otherwise the pool is idle again.
    fn finished(&mut self, pool: &str) -> Option<S> {
        let next = self.busy.get_mut(pool).and_then(Option::take);
        if next.is_none() {
            self.busy.remove(pool);
        }
        next
    }

    /// The pool already shows what is wanted: a status still queued is stale.
    fn current(&mut self, pool: &str) {
        if let Some(queued) = self.busy.get_mut(pool) {
            *queued = None;
        }
    }
}

const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Freed memory goes back to the system once the decision loop has been idle this long.
const RELEASE_MEMORY_AFTER: Duration = Duration::from_secs(5);
/// Least time between two status writes of one pool.
const POOL_STATUS_INTERVAL: Duration = Duration::from_millis(500);

impl Writer {
    /// Run what one batch of decisions asks for; every write is its own task.
    fn execute(&self, effects: Vec<Effect>, done: &mpsc::UnboundedSender<WriteDone>) {
        for effect in effects {
            match effect {
                Effect::ServiceStatus { service, desired } => {
                    self.service_status(&service, &desired, done.clone());
                }
                Effect::ReleaseStatus { service } => self.release_status(&service),
                Effect::PoolStatus { pool, status } => self.pool_status(&pool, &status),
                Effect::PoolStatusCurrent { pool } => self.pool_status_current(&pool),
                Effect::PoolFinalizer { pool, present } => self.pool_finalizer(&pool, present),
                Effect::Event {
                    service,
                    type_,
                    reason,
                    note,
                } => self.event(&service, type_, reason, note),
                Effect::ProbePoolKind => self.probe_pool_kind(),
            }
        }
    }

    /// The one way the controller writes: wait for a write permit, check leadership right
    /// before the request goes out, send it, and count its answer in
    /// `lodestone_controller_status_writes_total{result}` (every write counts the same:
    /// Service status and its release, pool status, pool finalizer, Event). `None` when
    /// nothing was sent (not leading, or shutting down).
    async fn send<T>(
        &self,
        request: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Option<kube::Result<T>> {
        let Ok(_permit) = self.permits.acquire().await else {
            return None;
        };
        if !self.leadership.is_leading() {
            return None;
        }
        let result = request.await;
        self.metrics.write(result.is_ok());
        Some(result)
    }

    /// Whether the pool cache shows `name` deleted, waiting up to a second for the watch to
    /// deliver a deletion the API server has already made.
    async fn pool_gone(&self, name: &str) -> bool {
        let key = ObjectRef::<IPAddressPool>::new(name);
        for _ in 0..20 {
            if self.pools.get(&key).is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn service_status(
        &self,
        svc: &Service,
        desired: &DesiredStatus,
        done: mpsc::UnboundedSender<WriteDone>,
    ) {
        let key = service::key_of(svc);
        let body = status::apply_body(svc, desired, &now());
        let this = self.clone();
        tokio::spawn(async move {
            let api: Api<Service> = Api::namespaced(this.client.clone(), &key.namespace);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let Some(result) = this
                .send(api.patch_status(&key.name, &params, &Patch::Apply(&body)))
                .await
            else {
                return;
            };
            let _ = done.send(WriteDone::Service { key: key.clone() });
            if let Err(e) = result {
                warn!(service = %key, error = %log_text(&error_chain(&e)), "writing Service status failed; will retry");
                this.retry_later(Signal::Service(key));
            }
        });
    }

    fn release_status(&self, svc: &Service) {
        let key = service::key_of(svc);
        let body = status::release_body(svc);
        let this = self.clone();
        tokio::spawn(async move {
            let api: Api<Service> = Api::namespaced(this.client.clone(), &key.namespace);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            if let Some(Err(e)) = this
                .send(api.patch_status(&key.name, &params, &Patch::Apply(&body)))
                .await
            {
                warn!(service = %key, error = %log_text(&error_chain(&e)), "removing our status from the Service failed; will retry");
                this.retry_later(Signal::Service(key));
            }
        });
    }

    fn pool_writes(
        &self,
    ) -> std::sync::MutexGuard<'_, PoolWrites<lodestone_crds::IPAddressPoolStatus>> {
        self.pool_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Write a pool's status now, or once the write in flight and its interval are over (only
    /// the newest status wanted by then is written).
    fn pool_status(&self, name: &str, status: &lodestone_crds::IPAddressPoolStatus) {
        let Some(mut status) = self.pool_writes().want(name, status.clone()) else {
            return;
        };
        let name = name.to_string();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.write_pool_status(&name, &status).await;
                tokio::time::sleep(POOL_STATUS_INTERVAL).await;
                match this.pool_writes().finished(&name) {
                    Some(next) => status = next,
                    None => return,
                }
            }
        });
    }

    /// The pool already shows what is wanted: a status queued behind a write in flight is stale.
    fn pool_status_current(&self, name: &str) {
        self.pool_writes().current(name);
    }

    async fn write_pool_status(&self, name: &str, status: &lodestone_crds::IPAddressPoolStatus) {
        let body = json!({
            "apiVersion": "lodestone.dev/v1alpha1",
            "kind": "IPAddressPool",
            "metadata": {"name": name},
            "status": status,
        });
        let api: Api<IPAddressPool> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Some(Err(e)) = self
            .send(api.patch_status(name, &params, &Patch::Apply(&body)))
            .await
        {
            warn!(pool = %name, error = %log_text(&error_chain(&e)), "writing pool status failed; will retry");
            self.retry_later(Signal::Pools);
        }
    }

    /// Own (or give up) our finalizer with server-side apply: finalizers are a set, so other
    /// finalizers on the pool are never touched.
    fn pool_finalizer(&self, name: &str, present: bool) {
        let finalizers: Vec<&str> = if present {
            vec![POOL_FINALIZER]
        } else {
            vec![]
        };
        let body = json!({
            "apiVersion": "lodestone.dev/v1alpha1",
            "kind": "IPAddressPool",
            "metadata": {"name": name, "finalizers": finalizers},
        });
        let name = name.to_string();
        let this = self.clone();
        tokio::spawn(async move {
            let api: Api<IPAddressPool> = Api::all(this.client.clone());
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let Some(result) = this
                .send(api.patch(&name, &params, &Patch::Apply(&body)))
                .await
            else {
                return;
            };
            match result {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                // The pool went away between the decision and this write: apply then tries to
                // create it, which the schema refuses (no spec). Nothing is left to do once our
                // cache sees the deletion too (no `get`: RBAC grants only what the code needs).
                Err(kube::Error::Api(e)) if e.code == 422 && this.pool_gone(&name).await => {
                    debug!(pool = %name, "the pool is already gone; no finalizer to update");
                }
                Err(e) => {
                    warn!(pool = %name, error = %log_text(&error_chain(&e)), "updating the pool finalizer failed; will retry");
                    this.retry_later(Signal::Pools);
                }
            }
        });
    }

    /// Publish an events.k8s.io/v1 Event about a Service.
    ///
    /// Not kube-rs's `Recorder`: it folds Events with the same reason into a series that keeps the
    /// *first* note, so "moved because its pool shrank" would show an old "assigned" text. The
    /// decision task already sends an Event only when what it says changes.
    fn event(&self, svc: &Service, type_: EventType, reason: &'static str, note: String) {
        let reference = svc.object_ref(&());
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let this = self.clone();
        tokio::spawn(async move {
            let now = k8s_openapi::jiff::Timestamp::now();
            let event = k8s_openapi::api::events::v1::Event {
                metadata: kube::api::ObjectMeta {
                    name: Some(lodestone_crds::events::event_name(
                        &name,
                        now.as_nanosecond(),
                    )),
                    namespace: Some(namespace.clone()),
                    ..Default::default()
                },
                event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    now,
                )),
                action: Some(
                    if reason == reasons::IP_RELEASED {
                        "Release"
                    } else {
                        "Allocate"
                    }
                    .into(),
                ),
                reason: Some(reason.into()),
                note: Some(events::event_note(&note).into_owned()),
                type_: Some(type_.word().into()),
                regarding: Some(reference),
                reporting_controller: Some(FIELD_MANAGER.into()),
                reporting_instance: Some(this.instance.clone()),
                ..Default::default()
            };
            let api: Api<k8s_openapi::api::events::v1::Event> =
                Api::namespaced(this.client.clone(), &namespace);
            if let Some(Err(e)) = this.send(api.create(&Default::default(), &event)).await {
                warn!(service = %format!("{namespace}/{name}"), %reason, error = %log_text(&error_chain(&e)), "publishing an Event failed");
            }
        });
    }

    /// While IPAddressPools are not served, ask now and then whether they are again. The watch
    /// would say so only with the next pool event: it resumes where it was when the CRD went
    /// and a re-created, empty kind sends nothing.
    fn probe_pool_kind(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let api: Api<IPAddressPool> = Api::all(this.client.clone());
            loop {
                tokio::time::sleep(RETRY_AFTER).await;
                match api.list(&kube::api::ListParams::default().limit(1)).await {
                    Ok(_) => {
                        let _ = this.retry.send(Signal::Pools);
                        return;
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        debug!(error = %log_text(&error_chain(&e)), "asking whether IPAddressPools are served failed");
                    }
                }
            }
        });
    }

    fn retry_later(&self, sig: Signal) {
        let tx = self.retry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_AFTER).await;
            let _ = tx.send(sig);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_writes_one_at_a_time_newest_wins() {
        let mut w = PoolWrites::default();
        assert_eq!(
            w.want("blue", 1),
            Some(1),
            "an idle pool is written at once"
        );
        assert_eq!(w.want("blue", 2), None, "queued behind the write in flight");
        assert_eq!(w.want("blue", 3), None);
        assert_eq!(
            w.want("red", 9),
            Some(9),
            "pools do not wait for each other"
        );
        assert_eq!(
            w.finished("blue"),
            Some(3),
            "only the newest queued status is written"
        );
        assert_eq!(w.want("blue", 4), None, "still busy with 3");
        w.current("blue");
        assert_eq!(
            w.finished("blue"),
            None,
            "a status the pool already shows is dropped"
        );
        assert_eq!(w.want("blue", 5), Some(5), "idle again");
        assert_eq!(w.finished("blue"), None);
        assert_eq!(w.finished("red"), None);
        assert!(w.busy.is_empty());
        w.current("gone");
        assert_eq!(w.finished("gone"), None);
        assert!(w.busy.is_empty());
    }
}

/// The decision state without I/O, in the manner of linkerd2's `policy-controller/k8s/status`
/// tests: caches filled by hand, one pass, and the effects it returns compared with what the
/// API server should be asked for.
#[cfg(test)]
mod state_tests {
    use super::*;
    use serde_json::Value;

    fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
        serde_json::from_value(json!({
            "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": name, "generation": 1},
            "spec": {"addresses": addresses},
        }))
        .unwrap()
    }

    fn service(name: &str, spec: Value) -> Service {
        let mut s = json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]});
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "generation": 1},
            "spec": s,
        }))
        .unwrap()
    }

    fn stores(services: &[Service], pools: &[IPAddressPool]) -> Stores {
        fn fill<K>(objects: &[K]) -> Store<K>
        where
            K: kube::Resource<DynamicType = ()> + Clone + 'static,
        {
            let (store, mut writer) = reflector::store::<K>();
            for o in objects {
                writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
            }
            store
        }
        let (_tx, nodes) = watch::channel(Some(Arc::new(NodeAddresses::new())));
        Stores {
            services: fill(services),
            pools: fill(pools),
            namespaces: fill::<Namespace>(&[]),
            nodes,
        }
    }

    /// One full pass over `services` and `pools`, as on gaining the Lease.
    fn decide(services: &[Service], pools: &[IPAddressPool]) -> Vec<Effect> {
        let mut state = State::rebuild(
            &stores(services, pools),
            &Config::default(),
            Arc::new(Metrics::new()),
        );
        state.full_pass();
        state.take_effects()
    }

    fn statuses(effects: &[Effect]) -> Vec<(String, DesiredStatus)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::ServiceStatus { service, desired } => {
                    Some((service.name_any(), desired.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn events(effects: &[Effect]) -> Vec<(String, EventType, &'static str, String)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Event {
                    service,
                    type_,
                    reason,
                    note,
                } => Some((service.name_any(), *type_, *reason, note.clone())),
                _ => None,
            })
            .collect()
    }

    /// The Service as the API server shows it once `desired` is written.
    fn written(mut svc: Service, desired: &DesiredStatus) -> Service {
        let body = status::apply_body(&svc, desired, &now());
        svc.status = Some(serde_json::from_value(body["status"].clone()).unwrap());
        svc
    }

    #[test]
    fn a_new_service_gets_an_address_an_event_and_the_pool_its_finalizer() {
        let effects = decide(
            &[service("web", json!({}))],
            &[pool("blue", &["192.0.2.8/30"])],
        );
        let st = statuses(&effects);
        assert_eq!(st.len(), 1, "{effects:#?}");
        let (name, desired) = &st[0];
        assert_eq!(name, "web");
        assert!(desired.condition.assigned);
        assert_eq!(desired.ips.len(), 1);
        let first: IpAddr = "192.0.2.8".parse().unwrap();
        let last: IpAddr = "192.0.2.11".parse().unwrap();
        assert!((first..=last).contains(&desired.ips[0]), "{desired:?}");
        assert_eq!(
            desired.condition.message,
            format!("{} from pool blue", desired.ips[0])
        );
        assert_eq!(
            events(&effects),
            [(
                "web".to_string(),
                EventType::Normal,
                reasons::IP_ALLOCATED,
                format!("assigned {} from pool blue", desired.ips[0])
            )]
        );
        assert!(effects.contains(&Effect::PoolFinalizer {
            pool: "blue".into(),
            present: true
        }));
        let pool_status = effects.iter().find_map(|e| match e {
            Effect::PoolStatus { pool, status } if pool == "blue" => Some(status),
            _ => None,
        });
        assert_eq!(pool_status.map(|s| s.assigned), Some(1), "{effects:#?}");
    }

    /// State is rebuilt, not remembered: a replica that takes over a cluster where everything
    /// is written asks for nothing but "the pool is current".
    #[test]
    fn a_new_leader_over_a_settled_cluster_writes_nothing() {
        let svc = service("web", json!({}));
        let blue = pool("blue", &["192.0.2.8/30"]);
        let first = decide(std::slice::from_ref(&svc), std::slice::from_ref(&blue));
        let (_, desired) = statuses(&first).remove(0);
        let settled = written(svc, &desired);
        let mut blue = blue;
        blue.metadata.finalizers = Some(vec![POOL_FINALIZER.into()]);
        blue.status = first.iter().find_map(|e| match e {
            Effect::PoolStatus { status, .. } => Some(status.clone()),
            _ => None,
        });
        let again = decide(&[settled], &[blue]);
        assert_eq!(
            again,
            [Effect::PoolStatusCurrent {
                pool: "blue".into()
            }],
            "the same address, nothing to write"
        );
    }

    #[test]
    fn a_full_pool_refuses_with_a_warning_and_keeps_the_first() {
        let effects = decide(
            &[service("a", json!({})), service("b", json!({}))],
            &[pool("one", &["192.0.2.9/32"])],
        );
        let st: BTreeMap<String, DesiredStatus> = statuses(&effects).into_iter().collect();
        assert_eq!(st["a"].ips, ["192.0.2.9".parse::<IpAddr>().unwrap()]);
        assert!(st["a"].condition.assigned);
        assert!(st["b"].ips.is_empty());
        assert!(!st["b"].condition.assigned);
        assert_eq!(st["b"].condition.reason, "PoolExhausted", "{:?}", st["b"]);
        let ev = events(&effects);
        assert!(
            ev.iter().any(|(n, t, r, _)| n == "b"
                && *t == EventType::Warning
                && *r == reasons::ALLOCATION_FAILED),
            "{ev:#?}"
        );
    }

    /// A Service handed to another class loses our status, and nothing else is written for it.
    #[test]
    fn a_service_of_another_class_gets_our_status_removed() {
        let svc = service("web", json!({}));
        let blue = pool("blue", &["192.0.2.8/30"]);
        let first = decide(std::slice::from_ref(&svc), std::slice::from_ref(&blue));
        let (_, desired) = statuses(&first).remove(0);
        let mut moved = written(svc, &desired);
        moved.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        let effects = decide(std::slice::from_ref(&moved), &[blue]);
        assert!(statuses(&effects).is_empty(), "{effects:#?}");
        assert!(
            effects.contains(&Effect::ReleaseStatus {
                service: Arc::new(moved)
            }),
            "{effects:#?}"
        );
    }
}
