//! The controller's I/O shell: watches feed the pure IPAM, a small writer applies the results.
//!
//! One task owns all decisions, so the IPAM needs no lock and its order is deterministic. Writes
//! (status applies, pool status, finalizers, Events) run concurrently behind a semaphore, and
//! every one of them checks leadership right before it is sent: a replica that has lost the
//! Lease stops writing at once.
//!
//! State is rebuilt, not remembered: on start and on every gain of leadership a fresh IPAM is
//! built from the pools, every Service's current `status.loadBalancer.ingress` is reserved, and
//! only then is anything new assigned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use lodestone_crds::addresses::IpFamily;
use lodestone_crds::{IPAddressPool, POOL_FINALIZER};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use crate::ipam::{Assignment, Ipam, ServiceKey};
use crate::metrics::Metrics;
use crate::pools::{self, PoolEval};
use crate::service::{self, ClassFilter};
use crate::status::{self, AssignedCondition, DesiredStatus, FIELD_MANAGER};

/// Event reasons on Services.
pub mod reasons {
    pub const IP_ALLOCATED: &str = "IPAllocated";
    pub const IP_RELEASED: &str = "IPReleased";
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
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

#[derive(Debug)]
enum Signal {
    Service(ServiceKey),
    AllServices,
    Pools,
}

struct Stores {
    services: Store<Service>,
    pools: Store<IPAddressPool>,
    namespaces: Store<Namespace>,
}

/// Start the watches that feed `tx` and keep the caches warm, whether or not we lead.
fn start_watches(client: &Client, tx: mpsc::UnboundedSender<Signal>) -> Stores {
    let (services, svc_writer) = reflector::store::<Service>();
    let (pools, pool_writer) = reflector::store::<IPAddressPool>();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    spawn_watch(client, svc_writer, tx.clone(), |ev| match ev {
        watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
            Some(Signal::Service(service::key_of(s)))
        }
        watcher::Event::InitDone => Some(Signal::AllServices),
        _ => None,
    });
    spawn_watch(client, pool_writer, tx.clone(), |ev| match ev {
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone => {
            Some(Signal::Pools)
        }
        _ => None,
    });
    // Namespace labels feed namespace selectors: re-evaluate every Service. Services that
    // already hold a valid address keep it, so this is cheap and moves nothing.
    spawn_watch(client, ns_writer, tx, |ev| match ev {
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone => {
            Some(Signal::AllServices)
        }
        _ => None,
    });
    Stores {
        services,
        pools,
        namespaces,
    }
}

/// Watch every `K` into `writer`'s cache and turn each event into a signal for the decision
/// task. Cached objects drop `managedFields`, which nothing here reads and which are most of
/// their size.
fn spawn_watch<K>(
    client: &Client,
    writer: reflector::store::Writer<K>,
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
        .modify(|o| o.managed_fields_mut().clear())
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
                Err(e) => warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
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
    info!("waiting for the Service, IPAddressPool and Namespace caches");
    stores.services.wait_until_ready().await?;
    stores.pools.wait_until_ready().await?;
    stores.namespaces.wait_until_ready().await?;
    info!("caches synced");

    let writer = Writer {
        client: client.clone(),
        instance: config.instance.clone(),
        permits: Arc::new(Semaphore::new(config.write_concurrency.max(1))),
        metrics: metrics.clone(),
        retry: tx.clone(),
        pools: stores.pools.clone(),
    };

    loop {
        metrics.set_leader(false);
        // A standby replica is ready: it serves probes and waits.
        metrics.set_ready(true);
        while !*leader.borrow_and_update() {
            info!("standing by: another replica holds the lease");
            leader.changed().await?;
        }
        metrics.set_ready(false);
        metrics.set_leader(true);
        info!("leading: rebuilding state from the cluster");

        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut state = State::rebuild(&stores, &config, writer.clone(), done_tx);
        let started = std::time::Instant::now();
        state.full_pass();
        metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.set_ready(true);
        info!(
            assigned = state.ipam.assignments().count(),
            "ready: existing addresses reserved, new ones assigned"
        );

        loop {
            tokio::select! {
                changed = leader.changed() => {
                    changed?;
                    if !*leader.borrow_and_update() {
                        // Stop writing before anything else: writes check this flag when sent.
                        metrics.set_leader(false);
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
    evals: BTreeMap<String, PoolEval>,
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
    writer: Writer,
    done: mpsc::UnboundedSender<WriteDone>,
}

/// Why a Service has no (new) address.
enum Failure {
    Request(service::RequestError),
    Alloc(crate::ipam::AllocError),
}

impl Failure {
    /// The condition reason: one CamelCase word per kind of failure (docs/addresses.md lists them).
    fn reason(&self) -> &'static str {
        use crate::ipam::AllocError as E;
        match self {
            Failure::Request(_) => "InvalidRequest",
            Failure::Alloc(e) => match e {
                E::PoolExhausted { .. } => "PoolExhausted",
                E::NoPoolMatches { .. } => "NoPoolMatches",
                E::AddressInUse { .. } => "AddressInUse",
                E::AddressInNoPool { .. } | E::AddressNotInPool { .. } => "AddressInNoPool",
                E::AvoidedAddress { .. } => "AvoidedAddress",
                E::UnknownPool { .. } => "UnknownPool",
                E::PoolNotEligible { .. } => "PoolNotEligible",
                E::FamilyUnavailable { .. } => "FamilyUnavailable",
                E::SharingConflict { .. } => "SharingConflict",
                E::InvalidRequest(_) => "InvalidRequest",
            },
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
    fn rebuild(
        stores: &Stores,
        config: &Config,
        writer: Writer,
        done: mpsc::UnboundedSender<WriteDone>,
    ) -> State {
        let mut state = State {
            class: config.class.clone(),
            ipam: Ipam::new(),
            stores_services: stores.services.clone(),
            stores_pools: stores.pools.clone(),
            stores_namespaces: stores.namespaces.clone(),
            evals: BTreeMap::new(),
            inflight: HashMap::new(),
            last_failure: HashMap::new(),
            moved_because: HashMap::new(),
            pools_dirty: true,
            released: false,
            reported_pools: BTreeSet::new(),
            writer,
            done,
        };
        state.load_pools();
        // Reserve every address already in a Service's status before assigning anything.
        let mut services = state.stores_services.state();
        services.sort_by_key(|s| service::key_of(s));
        let mut reserved = 0usize;
        for svc in services.iter().filter(|s| state.class.is_ours(s)) {
            let held = status::ingress_ips(svc);
            if held.is_empty() {
                continue;
            }
            let key = service::key_of(svc);
            let ns_labels = state.namespace_labels(&key.namespace);
            let req = service::hold_request(svc, &ns_labels, &held);
            match state.ipam.reserve(&req, &held) {
                Ok(_) => reserved += 1,
                Err(e) => {
                    warn!(service = %key, held = %ips_text(&held), error = %e, "cannot keep the address in the Service's status");
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
        info!(reserved, "reserved addresses found in Service status");
        state
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.stores_namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
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
            warn!(pool = %e.name, problems = %e.problems.join("; "), "IPAddressPool is invalid");
        }
        let configs = self
            .evals
            .values()
            .filter_map(|e| e.config.clone())
            .collect();
        Some(self.ipam.set_pools(configs))
    }

    fn full_pass(&mut self) {
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
                Signal::Pools => pools = true,
            }
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
                self.writer.event(
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
                self.writer.release_status(&svc);
            }
            return;
        }

        let prev = self.ipam.assignment(key).cloned();
        let ns_labels = self.namespace_labels(&key.namespace);
        let result = service::request_for(&svc, &ns_labels)
            .map_err(Failure::Request)
            .and_then(|req| self.ipam.assign(&req).map_err(Failure::Alloc));
        let desired = match result {
            Ok(a) => {
                self.last_failure.remove(key);
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
                    if let Some(why) = self.moved_because.remove(key) {
                        note.push_str(&format!(" because {why}"));
                    }
                    info!(service = %key, "{note}");
                    self.writer
                        .event(&svc, EventType::Normal, reasons::IP_ALLOCATED, note);
                }
                assigned_status(&a)
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
                    warn!(service = %key, reason = f.reason(), "{message}");
                    self.writer.metrics.allocation_failed(f.reason());
                    self.writer.event(
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
        self.writer
            .service_status(&svc, &desired, self.done.clone());
    }

    fn forget(&mut self, key: &ServiceKey) {
        self.inflight.remove(key);
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
        let metrics = self.writer.metrics.clone();
        metrics
            .services_assigned
            .set(i64::try_from(self.ipam.assignments().count()).unwrap_or(i64::MAX));
        let mut reported = BTreeSet::new();
        let mut overlaps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (a, b) in self.ipam.overlaps() {
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
            let desired = pools::desired_status(
                eval,
                stats.as_ref(),
                overlaps.get(&name).map(Vec::as_slice).unwrap_or(&[]),
                pool.status.as_ref(),
                &now(),
            );
            if !pools::status_is_current(pool.status.as_ref(), &desired) {
                self.writer.pool_status(&name, &desired);
            }
            let has_finalizer = pool.finalizers().iter().any(|f| f == POOL_FINALIZER);
            let in_use = stats.as_ref().is_some_and(|s| s.holders().next().is_some());
            if !eval.terminating && !has_finalizer {
                self.writer.pool_finalizer(&name, true);
            } else if eval.terminating && has_finalizer && !in_use {
                info!(pool = %name, "no Service holds an address of the deleted pool; letting it go");
                self.writer.pool_finalizer(&name, false);
            }
        }
        for gone in self.reported_pools.difference(&reported) {
            metrics.remove_pool(gone);
        }
        self.reported_pools = reported;
    }
}

/// Severity of an Event.
#[derive(Debug, Clone, Copy)]
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

/// The API server refuses Event notes over 1 kB.
fn truncate_note(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut cut = MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

fn assigned_status(a: &Assignment) -> DesiredStatus {
    DesiredStatus {
        ips: a.addresses.clone(),
        condition: AssignedCondition {
            assigned: true,
            reason: "Assigned".into(),
            message: format!("{} from pool {}", ips_text(&a.addresses), a.pool),
        },
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
    retry: mpsc::UnboundedSender<Signal>,
    /// The pool cache, to tell a pool that is gone from a write that failed.
    pools: Store<IPAddressPool>,
}

const RETRY_AFTER: Duration = Duration::from_secs(2);

impl Writer {
    fn leading(&self) -> bool {
        self.metrics.is_leader()
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
            let Ok(_permit) = this.permits.acquire().await else {
                return;
            };
            if !this.leading() {
                return;
            }
            let api: Api<Service> = Api::namespaced(this.client.clone(), &key.namespace);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let result = api
                .patch_status(&key.name, &params, &Patch::Apply(&body))
                .await;
            let _ = done.send(WriteDone::Service { key: key.clone() });
            this.metrics.write(result.is_ok());
            if let Err(e) = result {
                warn!(service = %key, error = %e, "writing Service status failed; will retry");
                this.retry_later(Signal::Service(key));
            }
        });
    }

    fn release_status(&self, svc: &Service) {
        let key = service::key_of(svc);
        let body = status::release_body(svc);
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.permits.acquire().await else {
                return;
            };
            if !this.leading() {
                return;
            }
            let api: Api<Service> = Api::namespaced(this.client.clone(), &key.namespace);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            if let Err(e) = api
                .patch_status(&key.name, &params, &Patch::Apply(&body))
                .await
            {
                warn!(service = %key, error = %e, "removing our status from the Service failed; will retry");
                this.retry_later(Signal::Service(key));
            }
        });
    }

    fn pool_status(&self, name: &str, status: &lodestone_crds::IPAddressPoolStatus) {
        let body = json!({
            "apiVersion": "lodestone.dev/v1alpha1",
            "kind": "IPAddressPool",
            "metadata": {"name": name},
            "status": status,
        });
        let name = name.to_string();
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.permits.acquire().await else {
                return;
            };
            if !this.leading() {
                return;
            }
            let api: Api<IPAddressPool> = Api::all(this.client.clone());
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let result = api.patch_status(&name, &params, &Patch::Apply(&body)).await;
            this.metrics.write(result.is_ok());
            if let Err(e) = result {
                warn!(pool = %name, error = %e, "writing pool status failed; will retry");
                this.retry_later(Signal::Pools);
            }
        });
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
            let Ok(_permit) = this.permits.acquire().await else {
                return;
            };
            if !this.leading() {
                return;
            }
            let api: Api<IPAddressPool> = Api::all(this.client.clone());
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch(&name, &params, &Patch::Apply(&body)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                // The pool went away between the decision and this write: apply then tries to
                // create it, which the schema refuses (no spec). Nothing is left to do once our
                // cache sees the deletion too (no `get`: RBAC grants only what the code needs).
                Err(kube::Error::Api(e)) if e.code == 422 && this.pool_gone(&name).await => {
                    debug!(pool = %name, "the pool is already gone; no finalizer to update");
                }
                Err(e) => {
                    warn!(pool = %name, error = %e, "updating the pool finalizer failed; will retry");
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
            if !this.leading() {
                return;
            }
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
                note: Some(truncate_note(note)),
                type_: Some(type_.word().into()),
                regarding: Some(reference),
                reporting_controller: Some(FIELD_MANAGER.into()),
                reporting_instance: Some(this.instance.clone()),
                ..Default::default()
            };
            let api: Api<k8s_openapi::api::events::v1::Event> =
                Api::namespaced(this.client.clone(), &namespace);
            if let Err(e) = api.create(&Default::default(), &event).await {
                warn!(service = %format!("{namespace}/{name}"), %reason, error = %e, "publishing an Event failed");
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
