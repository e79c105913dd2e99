//! The watches: reflector caches for each kind, each change turned into a Signal for the
//! decision task; a failing watch says which kind and why.

use super::*;

pub(super) struct Stores {
    pub(super) services: Store<Service>,
    pub(super) pools: Store<IPAddressPool>,
    pub(super) namespaces: Store<Namespace>,
    pub(super) nodes: watch::Receiver<Option<Arc<NodeAddresses>>>,
}

/// Start the watches that feed `tx` and keep the caches warm, whether or not we lead.
pub(super) fn start_watches(client: &Client, tx: mpsc::UnboundedSender<Signal>) -> Stores {
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
pub(super) fn watch_failed<K: Resource<DynamicType = ()>>(
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
pub(super) fn spawn_watch<K>(
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
