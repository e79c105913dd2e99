//! Shared pieces of the controller's end-to-end tests: a cluster (embedded API server, or a real
//! one through the envtest switch), the real `lodestone-controller` binary, and polling helpers.
//!
//! Waiting uses generous deadlines only to turn a hang into a failure; no test asserts how fast
//! anything happened.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use lodestone_crds::IPAddressPool;
use lodestone_harness::cluster::TestCluster;
use serde_json::{Value, json};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Env {
    pub cluster: TestCluster,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

pub async fn env() -> Env {
    let cluster = TestCluster::start().await.expect("test cluster starts");
    cluster
        .apply_crds(&lodestone_crds::all_crds())
        .await
        .expect("CRDs are served");
    let client = cluster.client();
    Env {
        cluster,
        client,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

impl Env {
    pub fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn pools(&self) -> Api<IPAddressPool> {
        Api::all(self.client.clone())
    }

    pub async fn namespace(&self, name: &str, labels: Value) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels}
        }))
        .unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
    }

    pub async fn pool(&self, name: &str, spec: Value) -> IPAddressPool {
        let pool: IPAddressPool = serde_json::from_value(json!({
            "apiVersion": "lodestone.dev/v1alpha1",
            "kind": "IPAddressPool",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("pool object");
        self.pools()
            .create(&PostParams::default(), &pool)
            .await
            .expect("pool created")
    }

    pub async fn service(&self, ns: &str, name: &str, annotations: Value, spec: Value) -> Service {
        let svc = lb_service(ns, name, annotations, spec);
        self.services(ns)
            .create(&PostParams::default(), &svc)
            .await
            .expect("service created")
    }

    pub async fn delete_service(&self, ns: &str, name: &str) {
        self.services(ns)
            .delete(name, &DeleteParams::default())
            .await
            .expect("service deleted");
    }

    pub fn controller(&self, args: &[&str]) -> Controller {
        Controller::start(self.cluster.kubeconfig_path(), self.dir.path(), args)
    }

    /// Wait until the Service's ingress satisfies `pred`, returning the addresses.
    pub async fn wait_ingress(
        &self,
        ns: &str,
        name: &str,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let api = self.services(ns);
        let mut last = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < deadline {
            if let Ok(svc) = api.get(name).await {
                last = ingress(&svc);
                if pred(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{ns}/{name}: ingress never satisfied the condition; last seen {last:?}");
    }

    /// Wait until the Service's `lodestone.dev/AddressAssigned` condition satisfies `pred`.
    pub async fn wait_condition(
        &self,
        ns: &str,
        name: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let api = self.services(ns);
        let mut last = Value::Null;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < deadline {
            if let Ok(svc) = api.get(name).await {
                last = serde_json::to_value(&svc).unwrap()["status"]["conditions"]
                    .as_array()
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c["type"] == "lodestone.dev/AddressAssigned")
                            .cloned()
                    })
                    .unwrap_or(Value::Null);
                if pred(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{ns}/{name}: condition never satisfied; last seen {last}");
    }

    /// Events about an object, newest last (events.k8s.io `note`, or core `message`).
    pub async fn events_for(&self, ns: &str, name: &str) -> Vec<(String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), ns);
        let mut out = Vec::new();
        if let Ok(list) = api.list(&ListParams::default()).await {
            for ev in list.items {
                let regarding = ev.regarding.as_ref().and_then(|r| r.name.clone());
                if regarding.as_deref() == Some(name) {
                    out.push((
                        ev.reason.clone().unwrap_or_default(),
                        ev.note.clone().unwrap_or_default(),
                    ));
                }
            }
        }
        out
    }

    /// Wait for an Event with `reason` whose note contains `needle`.
    pub async fn wait_event(&self, ns: &str, name: &str, reason: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while tokio::time::Instant::now() < deadline {
            seen = self.events_for(ns, name).await;
            if let Some((_, note)) = seen.iter().find(|(r, n)| r == reason && n.contains(needle)) {
                return note.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{ns}/{name}: no {reason} Event containing {needle:?}; saw {seen:?}");
    }

    /// Wait until the pool's status satisfies `pred`.
    pub async fn wait_pool(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < deadline {
            match self.pools().get_opt(name).await {
                Ok(Some(p)) => {
                    last = serde_json::to_value(&p).unwrap();
                    if pred(&last) {
                        return last;
                    }
                }
                Ok(None) => {
                    last = Value::Null;
                    if pred(&last) {
                        return last;
                    }
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pool {name}: never satisfied the condition; last seen {last}");
    }
}

pub fn lb_service(ns: &str, name: &str, annotations: Value, spec: Value) -> Service {
    let mut s = json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": name}});
    if let (Some(base), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": s,
    }))
    .expect("service object")
}

pub fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|e| e.ip.clone()).collect())
        .unwrap_or_default()
}

/// Every LoadBalancer Service's addresses, by `namespace/name` (not the API server's own
/// `default/kubernetes`, or any other Service the controller leaves alone).
pub async fn all_ingress(client: &Client) -> BTreeMap<String, Vec<String>> {
    let api: Api<Service> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .expect("list services");
    list.items
        .iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .is_some_and(|spec| spec.type_.as_deref() == Some("LoadBalancer"))
        })
        .map(|s| {
            (
                format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()),
                ingress(s),
            )
        })
        .collect()
}

/// The real controller binary, killed on drop. Its log is printed when a test fails.
pub struct Controller {
    child: Option<std::process::Child>,
    log: PathBuf,
    /// Port of `/metrics`, `/healthz` and `/readyz` on 127.0.0.1.
    pub health_port: u16,
}

impl Controller {
    pub fn start(kubeconfig: &Path, dir: &Path, args: &[&str]) -> Controller {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = dir.join(format!("controller-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let health_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lodestone-controller"))
            .arg("--health-addr")
            .arg(format!("127.0.0.1:{health_port}"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,lodestone_controller=debug")
            // The log lines go to stdout; panics and the final error to stderr.
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("controller starts");
        Controller {
            child: Some(child),
            log,
            health_port,
        }
    }

    /// GET a path of the health endpoint; (status code, body). None while it is not listening.
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.health_port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// Wait until a metric line starting with `prefix` has `value`.
    pub async fn wait_metric(&self, prefix: &str, value: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Some((200, body)) = self.http_get("/metrics").await {
                if body
                    .lines()
                    .any(|l| l.starts_with(prefix) && l.rsplit(' ').next() == Some(value))
                {
                    return;
                }
                last = body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("metric {prefix} never reached {value}; last scrape:\n{last}");
    }

    /// `kill -9`: no chance to clean up, as when a node dies.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- controller log {} ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}
