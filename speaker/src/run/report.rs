//! Reporting on Services: the condition writer (one write at a time, with the Service's
//! `resourceVersion` as precondition) and the Event reporter.

use super::*;

/// A condition write, as the writer task sends it.
#[derive(Clone, Debug)]
pub(super) struct Write {
    pub(super) id: u64,
    pub(super) desired: Desired,
    pub(super) last_transition: Time,
    /// Precondition: the write fails if the Service changed since.
    pub(super) resource_version: Option<String>,
}

/// How a write went.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Written; the Service's new `resourceVersion`.
    Written(Option<String>),
    /// The Service changed since the version the write was made for: a newer view decides.
    Conflict,
    /// The Service is gone.
    Gone,
    /// Anything else (unreachable, timeout, ...).
    Failed(String),
}

/// The latest write wanted per Service, taken one at a time by the writer task.
/// The loop replaces or removes entries on every pass, so a write the plan no longer wants is
/// never sent, however long the API server kept the writer waiting.
#[derive(Default)]
pub(super) struct PendingWrites {
    pub(super) queue: Mutex<BTreeMap<ServiceKey, Write>>,
    pub(super) notify: Notify,
}

impl PendingWrites {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceKey, Write>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn put(&self, key: ServiceKey, write: Write) {
        self.lock().insert(key, write);
        self.notify.notify_one();
    }

    pub(super) fn drop_key(&self, key: &ServiceKey) {
        self.lock().remove(key);
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

pub(super) async fn condition_writer(
    client: Client,
    pending: Arc<PendingWrites>,
    results: mpsc::UnboundedSender<(ServiceKey, u64, Outcome)>,
) {
    loop {
        let next = pending.lock().pop_first();
        let Some((key, write)) = next else {
            pending.notify.notified().await;
            continue;
        };
        let outcome =
            match tokio::time::timeout(WRITE_TIMEOUT, write_condition(&client, &key, &write)).await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    Outcome::Failed(format!("no answer within {} s", WRITE_TIMEOUT.as_secs()))
                }
            };
        if results.send((key, write.id, outcome)).is_err() {
            return;
        }
    }
}

pub(super) async fn write_condition(client: &Client, key: &ServiceKey, w: &Write) -> Outcome {
    let api: Api<Service> = Api::namespaced(client.clone(), &key.namespace);
    let mut metadata = serde_json::json!({ "name": key.name, "namespace": key.namespace });
    if let Some(rv) = &w.resource_version {
        metadata["resourceVersion"] = rv.clone().into();
    }
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "status": { "conditions": [{
            "type": CONDITION_TYPE,
            "status": if w.desired.status { "True" } else { "False" },
            "reason": w.desired.reason,
            "message": w.desired.message,
            "lastTransitionTime": w.last_transition,
        }]},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(&key.name, &params, &Patch::Apply(&body))
        .await
    {
        Ok(svc) => Outcome::Written(svc.metadata.resource_version),
        Err(kube::Error::Api(e)) if e.code == 409 => Outcome::Conflict,
        Err(kube::Error::Api(e)) if e.code == 404 => Outcome::Gone,
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

/// A write this speaker made and is waiting to see in its cache.
#[derive(Clone, Debug)]
pub(super) struct Sent {
    pub(super) id: u64,
    pub(super) desired: Desired,
    /// The `resourceVersion` it was made against.
    pub(super) against: Option<String>,
    /// `None` while in flight; then the version it produced.
    pub(super) result: Option<Option<String>>,
    /// When it was queued.
    pub(super) at: Instant,
    /// How many times in a row a write of the same condition was overwritten by someone
    /// else: two speakers whose views disagree must not rewrite each other's condition at
    /// the API server's pace.
    pub(super) overwritten: u32,
}

/// How long to wait before writing a condition again that someone else overwrote `n` times
/// in a row.
pub(super) fn rewrite_backoff(n: u32) -> Duration {
    (CONDITION_RETRY * 2u32.saturating_pow(n.min(5))).min(Duration::from_secs(30))
}

/// Events go out in order, off the hot path.
pub(super) struct EventReport {
    pub(super) reference: Box<ObjectReference>,
    pub(super) event: Event,
}

pub(super) async fn event_reporter(
    client: Client,
    node: String,
    mut rx: mpsc::UnboundedReceiver<EventReport>,
) {
    while let Some(EventReport { reference, event }) = rx.recv().await {
        let namespace = reference.namespace.clone().unwrap_or_default();
        let body = k8s_event(&event, *reference, &node, Timestamp::now());
        let api: Api<K8sEvent> = Api::namespaced(client.clone(), &namespace);
        if let Err(error) = api.create(&PostParams::default(), &body).await {
            let service = ServiceKey::new(
                namespace,
                body.regarding
                    .as_ref()
                    .and_then(|r| r.name.as_deref())
                    .unwrap_or_default(),
            );
            tracing::warn!(%service, reason = %event.reason, %error, "publishing an Event failed");
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
pub(super) fn k8s_event(
    event: &Event,
    regarding: ObjectReference,
    node: &str,
    now: Timestamp,
) -> K8sEvent {
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
        note: event
            .note
            .as_deref()
            .map(|n| lodestone_crds::events::event_note(n).into_owned()),
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

pub(super) fn service_reference(svc: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        uid: svc.metadata.uid.clone(),
        ..Default::default()
    }
}
