//! The shell's view of the API server: how recently it answered, and the reflector caches.

use super::*;

/// When this speaker last heard from the API server.
#[derive(Debug)]
pub(crate) struct ApiHealth {
    pub(super) last_ok: Mutex<Instant>,
}

impl ApiHealth {
    pub(super) fn new() -> Self {
        ApiHealth {
            last_ok: Mutex::new(Instant::now()),
        }
    }

    pub(super) fn ok(&self) {
        *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long since the API server last answered.
    pub(super) fn silent_for(&self) -> Duration {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// Starts a reflector for `K`; every change wakes `notify`. Errors are logged and retried with
/// backoff while the store keeps its content. `trim` drops what the speaker never reads before
/// an object enters the store (see [`crate::trim`]).
pub(crate) fn watch_kind<K>(
    client: &Client,
    kind: &'static str,
    notify: Arc<Notify>,
    health: Arc<ApiHealth>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
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
        watcher(api, watcher::Config::default().timeout(WATCH_TIMEOUT_SECS))
            .default_backoff()
            .modify(trim),
    );
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                // A re-list announces itself before its request: not a recovery yet.
                Ok(watcher::Event::Init) => {}
                Ok(_) => {
                    health.ok();
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
    }));
    reader
}

/// Asks the API server for its version every [`API_PROBE_PERIOD`]: a watch on a connection
/// that died silently reports nothing for minutes, an answer here says the server is reachable.
pub(super) async fn probe_api(client: Client, health: Arc<ApiHealth>) {
    let mut tick = tokio::time::interval(API_PROBE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(API_PROBE_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => health.ok(),
            Ok(Err(error)) => tracing::debug!(%error, "API server probe failed"),
            Err(_) => tracing::debug!("API server probe timed out"),
        }
    }
}

/// The caches of every watched kind, and the tasks filling them (stopped when dropped).
pub(super) struct Stores {
    pub(super) services: Store<Service>,
    pub(super) slices: Store<EndpointSlice>,
    pub(super) nodes: Store<Node>,
    pub(super) pools: Store<IPAddressPool>,
    pub(super) adverts: Store<L2Advertisement>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Stores {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Stores {
    pub(super) fn start(client: &Client, notify: &Arc<Notify>, health: &Arc<ApiHealth>) -> Stores {
        let mut tasks = Vec::new();
        let n = || Arc::clone(notify);
        let h = || Arc::clone(health);
        let services = watch_kind(client, "Service", n(), h(), &mut tasks, trim::service);
        let slices = watch_kind(
            client,
            "EndpointSlice",
            n(),
            h(),
            &mut tasks,
            trim::endpoint_slice,
        );
        let nodes = watch_kind(client, "Node", n(), h(), &mut tasks, trim::node);
        let pools = watch_kind(
            client,
            "IPAddressPool",
            n(),
            h(),
            &mut tasks,
            trim::metadata,
        );
        let adverts = watch_kind(
            client,
            "L2Advertisement",
            n(),
            h(),
            &mut tasks,
            trim::metadata,
        );
        Stores {
            services,
            slices,
            nodes,
            pools,
            adverts,
            tasks,
        }
    }

    /// A future that completes once every cache has been filled by its first listing (`Err`
    /// if the stores were dropped first).
    pub(super) fn ready(&self) -> impl Future<Output = Result<(), ()>> + Send + 'static {
        let (services, slices, nodes, pools, adverts) = (
            self.services.clone(),
            self.slices.clone(),
            self.nodes.clone(),
            self.pools.clone(),
            self.adverts.clone(),
        );
        async move {
            // Err: the writer is gone (the stores were dropped, a newer re-read replaced them).
            services.wait_until_ready().await.map_err(drop)?;
            slices.wait_until_ready().await.map_err(drop)?;
            nodes.wait_until_ready().await.map_err(drop)?;
            pools.wait_until_ready().await.map_err(drop)?;
            adverts.wait_until_ready().await.map_err(drop)
        }
    }

    pub(super) async fn wait_until_ready(&self) -> Result<(), RunError> {
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
