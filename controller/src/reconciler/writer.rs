//! The Writer: executes Effects concurrently behind a semaphore through one write helper that
//! checks leadership right before each request and counts every answer the same way.

use super::*;

/// Whether this replica holds the Lease: checked right before every write. Not a metric (the
/// `leader` gauge only shows it).
#[derive(Clone, Debug, Default)]
pub(super) struct Leadership(pub(super) Arc<AtomicBool>);

impl Leadership {
    pub(super) fn set(&self, leading: bool) {
        self.0.store(leading, Ordering::SeqCst);
    }

    pub(super) fn is_leading(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Applies decisions to the API server. Cheap to clone; every write runs as its own task.
#[derive(Clone)]
pub(super) struct Writer {
    pub(super) client: Client,
    /// `reportingInstance` of our Events.
    pub(super) instance: String,
    pub(super) permits: Arc<Semaphore>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) leadership: Leadership,
    pub(super) retry: mpsc::UnboundedSender<Signal>,
    /// The pool cache, to tell a pool that is gone from a write that failed.
    pub(super) pools: Store<IPAddressPool>,
    /// Pool status writes in flight or cooling down ([`PoolWrites`]).
    pub(super) pool_writes: Arc<Mutex<PoolWrites<lodestone_crds::IPAddressPoolStatus>>>,
}

/// Which pool statuses to write, and when. Usage counts change with every assignment: at most
/// one status write per pool is in flight or cooling down ([`POOL_STATUS_INTERVAL`]), and the
/// statuses wanted meanwhile replace each other, so a burst of 10,000 assignments costs a few
/// writes per pool instead of one per decision (those writes took as much of etcd's time as the
/// Services themselves). Pure bookkeeping; [`Writer::pool_status`] does the writing.
#[derive(Debug)]
pub(super) struct PoolWrites<S> {
    /// Pools with a write in flight or cooling down, with the status queued after it.
    pub(super) busy: HashMap<String, Option<S>>,
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
    pub(super) fn want(&mut self, pool: &str, status: S) -> Option<S> {
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
    pub(super) fn finished(&mut self, pool: &str) -> Option<S> {
        let next = self.busy.get_mut(pool).and_then(Option::take);
        if next.is_none() {
            self.busy.remove(pool);
        }
        next
    }

    /// The pool already shows what is wanted: a status still queued is stale.
    pub(super) fn current(&mut self, pool: &str) {
        if let Some(queued) = self.busy.get_mut(pool) {
            *queued = None;
        }
    }
}

pub(super) const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Freed memory goes back to the system once the decision loop has been idle this long.
pub(super) const RELEASE_MEMORY_AFTER: Duration = Duration::from_secs(5);
/// Least time between two status writes of one pool.
pub(super) const POOL_STATUS_INTERVAL: Duration = Duration::from_millis(500);

impl Writer {
    /// Run what one batch of decisions asks for; every write is its own task.
    pub(super) fn execute(&self, effects: Vec<Effect>, done: &mpsc::UnboundedSender<WriteDone>) {
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
    pub(super) async fn send<T>(
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
    pub(super) async fn pool_gone(&self, name: &str) -> bool {
        let key = ObjectRef::<IPAddressPool>::new(name);
        for _ in 0..20 {
            if self.pools.get(&key).is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub(super) fn service_status(
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

    pub(super) fn release_status(&self, svc: &Service) {
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

    pub(super) fn pool_writes(
        &self,
    ) -> std::sync::MutexGuard<'_, PoolWrites<lodestone_crds::IPAddressPoolStatus>> {
        self.pool_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Write a pool's status now, or once the write in flight and its interval are over (only
    /// the newest status wanted by then is written).
    pub(super) fn pool_status(&self, name: &str, status: &lodestone_crds::IPAddressPoolStatus) {
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
    pub(super) fn pool_status_current(&self, name: &str) {
        self.pool_writes().current(name);
    }

    pub(super) async fn write_pool_status(
        &self,
        name: &str,
        status: &lodestone_crds::IPAddressPoolStatus,
    ) {
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
    pub(super) fn pool_finalizer(&self, name: &str, present: bool) {
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
    pub(super) fn event(
        &self,
        svc: &Service,
        type_: EventType,
        reason: &'static str,
        note: String,
    ) {
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
    pub(super) fn probe_pool_kind(&self) {
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

    pub(super) fn retry_later(&self, sig: Signal) {
        let tx = self.retry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_AFTER).await;
            let _ = tx.send(sig);
        });
    }
}
