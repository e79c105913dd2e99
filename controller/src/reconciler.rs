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

mod state;
mod watches;
mod writer;
use state::*;
use watches::*;
use writer::*;

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
    lodestone_heap::release_free_memory();

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
                    lodestone_heap::release_free_memory();
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

    /// A running decision state whose Service cache the test changes, as watch events would.
    struct Live {
        services: reflector::store::Writer<Service>,
        pools: reflector::store::Writer<IPAddressPool>,
        state: State,
    }

    impl Live {
        fn start(services: &[Service], pools: &[IPAddressPool]) -> (Live, Vec<Effect>) {
            let (services_store, mut services_w) = reflector::store::<Service>();
            for o in services {
                services_w.apply_watcher_event(&watcher::Event::Apply(o.clone()));
            }
            let (pools_store, mut pools_w) = reflector::store::<IPAddressPool>();
            for o in pools {
                pools_w.apply_watcher_event(&watcher::Event::Apply(o.clone()));
            }
            let mut st = stores(&[], &[]);
            st.services = services_store;
            st.pools = pools_store;
            let mut state = State::rebuild(&st, &Config::default(), Arc::new(Metrics::new()));
            state.full_pass();
            let effects = state.take_effects();
            let live = Live {
                services: services_w,
                pools: pools_w,
                state,
            };
            (live, effects)
        }

        /// The Service changed (its status as the last effects wrote it is the caller's to set).
        fn service_changed(&mut self, svc: Service) -> Vec<Effect> {
            let key = service::key_of(&svc);
            self.services
                .apply_watcher_event(&watcher::Event::Apply(svc));
            self.state.process(vec![Signal::Service(key)]);
            self.state.take_effects()
        }

        fn pool_changed(&mut self, pool: IPAddressPool) -> Vec<Effect> {
            self.pools.apply_watcher_event(&watcher::Event::Apply(pool));
            self.state.process(vec![Signal::Pools]);
            self.state.take_effects()
        }
    }

    fn shared(name: &str, key: &str, port: u16) -> Service {
        let mut s = service(name, json!({"ports": [{"port": port, "protocol": "TCP"}]}));
        s.metadata.annotations = Some(
            [("lodestone.dev/allow-shared-ip".to_string(), key.to_string())]
                .into_iter()
                .collect(),
        );
        s
    }

    /// Issue 13, semantics 5: refused because the only address is held under the Service's own
    /// sharing key by a Service it cannot share with (`Local` and other pods), the Service is
    /// told who holds it (`SharingConflict`, not `PoolExhausted`), and it is tried again as soon
    /// as the holder's terms change, without any change to itself.
    #[test]
    fn a_sharing_conflict_names_the_holder_and_is_retried_when_the_holder_changes() {
        let with = |name: &str, port: u16, policy: &str| {
            let mut s = shared(name, "k", port);
            let spec = s.spec.as_mut().unwrap();
            spec.selector = Some([("app".to_string(), name.to_string())].into());
            spec.external_traffic_policy = Some(policy.into());
            s
        };
        let a = with("a", 80, "Local");
        let b = with("b", 443, "Cluster");
        let (mut live, first) =
            Live::start(&[a.clone(), b.clone()], &[pool("one", &["192.0.2.9/32"])]);
        let st: BTreeMap<String, DesiredStatus> = statuses(&first).into_iter().collect();
        assert_eq!(st["a"].ips, ["192.0.2.9".parse::<IpAddr>().unwrap()]);
        assert!(!st["b"].condition.assigned, "{:?}", st["b"]);
        assert_eq!(st["b"].condition.reason, "SharingConflict", "{:?}", st["b"]);
        assert!(
            st["b"].condition.message.contains("default/a")
                && st["b"]
                    .condition
                    .message
                    .contains("externalTrafficPolicy is Local"),
            "the holder and the rule are named: {}",
            st["b"].condition.message
        );
        let a_written = written(a, &st["a"]);
        assert!(live.service_changed(a_written.clone()).is_empty());

        // The holder goes back to Cluster: b gets the address it was refused.
        let mut a_cluster = a_written;
        a_cluster.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        let effects = live.service_changed(a_cluster);
        let st: BTreeMap<String, DesiredStatus> = statuses(&effects).into_iter().collect();
        assert!(
            st.get("b").is_some_and(|d| d.condition.assigned),
            "{effects:#?}"
        );
        assert_eq!(st["b"].ips, ["192.0.2.9".parse::<IpAddr>().unwrap()]);
    }

    /// Issue 13, semantics 6: a Service that has to leave its address says why in its
    /// IPAllocated Event, whether its own ports now clash with a sharer's or its pool shrank.
    #[test]
    fn a_move_says_why() {
        let a = shared("a", "k", 80);
        let b = shared("b", "k", 443);
        let one = pool("one", &["192.0.2.8/31"]);
        let (mut live, first) = Live::start(&[a.clone(), b.clone()], std::slice::from_ref(&one));
        let st: BTreeMap<String, DesiredStatus> = statuses(&first).into_iter().collect();
        assert_eq!(
            st["a"].ips, st["b"].ips,
            "the two share one address: {st:?}"
        );
        let held = st["b"].ips[0];
        for (svc, name) in [(a.clone(), "a"), (b.clone(), "b")] {
            let _ = live.service_changed(written(svc, &st[name]));
        }

        // b's port now clashes with a's on the shared address: it moves, and says so.
        let mut b80 = written(b, &st["b"]);
        b80.spec.as_mut().unwrap().ports = shared("b", "k", 80).spec.unwrap().ports;
        let effects = live.service_changed(b80);
        let moved = statuses(&effects);
        assert_eq!(moved.len(), 1, "{effects:#?}");
        assert_ne!(moved[0].1.ips, [held], "b moved");
        let ev = events(&effects);
        assert_eq!(ev.len(), 1, "{ev:#?}");
        let (name, _, reason, note) = &ev[0];
        assert_eq!((name.as_str(), *reason), ("b", reasons::IP_ALLOCATED));
        assert!(note.contains(" because "), "the move says why: {note}");
        assert!(note.contains("80"), "the port is named: {note}");
        let b_written = written(shared("b", "k", 80), &moved[0].1);
        let _ = live.service_changed(b_written);

        // The pool loses a's address: a moves and the Event names the shrink.
        let a_ip = st["a"].ips[0];
        let left = if a_ip == held {
            "192.0.2.10/32"
        } else {
            "192.0.2.8/32"
        };
        let effects = live.pool_changed(pool("one", &[left, "192.0.2.9/32"]));
        let ev = events(&effects);
        let a_ev = ev
            .iter()
            .find(|(n, ..)| n == "a")
            .unwrap_or_else(|| panic!("{effects:#?}"));
        assert!(
            a_ev.3.contains(&format!(
                "because its address {a_ip} is no longer in a pool it may use"
            )),
            "{}",
            a_ev.3
        );
    }
}
