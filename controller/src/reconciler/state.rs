//! The decision state, without I/O: it keeps the IPAM and turns each Signal into the Effects
//! (status writes, pool status, finalizers, Events) the Writer executes.

use super::*;

/// The outcome of one write, fed back to the decision task.
#[derive(Debug)]
pub(super) enum WriteDone {
    Service { key: ServiceKey },
}

pub(super) struct State {
    pub(super) class: ClassFilter,
    pub(super) ipam: Ipam,
    pub(super) stores_services: Store<Service>,
    pub(super) stores_pools: Store<IPAddressPool>,
    pub(super) stores_namespaces: Store<Namespace>,
    /// Labels of the namespaces seen since the last pass over every Service.
    pub(super) ns_labels: HashMap<String, Arc<BTreeMap<String, String>>>,
    pub(super) evals: BTreeMap<String, PoolEval>,
    /// Pools gone from the API while Services still hold addresses from them (their finalizer
    /// was bypassed), kept as they were, shrunk to what is held: see [`pools::vanished`].
    pub(super) vanished: BTreeMap<String, PoolConfig>,
    /// The IPAddressPool kind is not served (404): no decisions until it is back.
    pub(super) pool_kind_missing: bool,
    pub(super) nodes: watch::Receiver<Option<Arc<NodeAddresses>>>,
    /// The last warning announced per Service about an address it keeps, see [`reasons::IP_KEPT`].
    pub(super) last_warning: HashMap<ServiceKey, String>,
    /// Desired status being written, so a burst of events does not write the same thing twice.
    pub(super) inflight: HashMap<ServiceKey, DesiredStatus>,
    /// The last failure announced per Service, so an Event is sent when it changes, not per pass.
    pub(super) last_failure: HashMap<ServiceKey, String>,
    /// Why a Service's held address was taken away (pool edited, invalid on restart), for its next Event.
    pub(super) moved_because: HashMap<ServiceKey, String>,
    pub(super) pools_dirty: bool,
    /// Addresses were freed in this batch: Services still waiting for one get another try.
    pub(super) released: bool,
    /// Pools reported in the metrics, so deleted ones can be removed from them.
    pub(super) reported_pools: BTreeSet<String>,
    pub(super) metrics: Arc<Metrics>,
    /// What the decisions so far ask of the API server, taken by [`State::take_effects`].
    pub(super) effects: Vec<Effect>,
}

/// Why a Service has no (new) address.
pub(super) enum Failure {
    Request(service::RequestError),
    Alloc(crate::ipam::AllocError),
}

impl Failure {
    /// The condition reason: one CamelCase word per kind of failure (docs/addresses.md lists them).
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Failure::Request(e) => e.reason(),
            Failure::Alloc(e) => e.reason(),
        }
    }
    pub(super) fn message(&self) -> String {
        match self {
            Failure::Request(e) => e.to_string(),
            Failure::Alloc(e) => e.to_string(),
        }
    }
}

pub(super) fn key_ref(key: &ServiceKey) -> ObjectRef<Service> {
    ObjectRef::new(&key.name).within(&key.namespace)
}

pub(super) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

pub(super) fn ips_text(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl State {
    pub(super) fn rebuild(stores: &Stores, config: &Config, metrics: Arc<Metrics>) -> State {
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
    pub(super) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub(super) fn event(
        &mut self,
        svc: &Arc<Service>,
        type_: EventType,
        reason: &'static str,
        note: String,
    ) {
        self.effects.push(Effect::Event {
            service: svc.clone(),
            type_,
            reason,
            note,
        });
    }

    pub(super) fn load_node_addresses(&mut self) {
        let nodes = self.nodes.borrow_and_update().clone().unwrap_or_default();
        self.ipam.set_node_addresses((*nodes).clone());
    }

    /// Give the IPAM the pools: the real ones and the vanished ones.
    pub(super) fn apply_pools(&mut self) -> Vec<(ServiceKey, Vec<IpAddr>)> {
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
    pub(super) fn prune_vanished(&mut self) -> bool {
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
    pub(super) fn hold_warning(&self, a: &Assignment) -> Option<String> {
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
    pub(super) fn namespace_labels(&mut self, ns: &str) -> Arc<BTreeMap<String, String>> {
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
    pub(super) fn load_pools(&mut self) -> Option<Vec<(ServiceKey, Vec<IpAddr>)>> {
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

    pub(super) fn full_pass(&mut self) {
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

    pub(super) fn process(&mut self, batch: Vec<Signal>) {
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
    pub(super) fn retry_waiting(&mut self) {
        while std::mem::take(&mut self.released) {
            let mut waiting: Vec<ServiceKey> = self.last_failure.keys().cloned().collect();
            waiting.sort();
            for key in waiting {
                self.reconcile_service(&key);
            }
        }
    }

    pub(super) fn reconcile_service(&mut self, key: &ServiceKey) {
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

    pub(super) fn forget(&mut self, key: &ServiceKey) {
        self.inflight.remove(key);
        self.last_warning.remove(key);
        self.last_failure.remove(key);
        self.moved_because.remove(key);
    }

    pub(super) fn write_done(&mut self, done: WriteDone) {
        match done {
            WriteDone::Service { key } => {
                self.inflight.remove(&key);
            }
        }
    }

    /// Bring every pool's status and finalizer in line with the IPAM.
    pub(super) fn sync_pools(&mut self) {
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
pub(super) enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub(super) fn word(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

pub(super) fn assigned_status(a: &Assignment, warning: Option<&str>) -> DesiredStatus {
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
