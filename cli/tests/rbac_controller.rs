//! `deploy/rbac.yaml` against the calls the real controller makes.
//!
//! The real `lodestone-controller` runs against the embedded API server with a token that
//! authenticates as its ServiceAccount, after `deploy/rbac.yaml` is applied in
//! `lodestone-system` (what `kubectl kustomize deploy/` renders). A scenario drives every call
//! the controller can make (leader election Lease, pool finalizer and status, Service
//! assignment, a refused Service and its Event, release, pool deletion), and the server's audit
//! log then says what the controller called. The test fails when
//! - a call was denied (code calls something RBAC does not allow), or
//! - a (verb, apiGroup, resource) the controller's roles grant was never called (RBAC allows what
//!   no code calls).
//!
//! Only the embedded server keeps an audit log; under the envtest switch this test is skipped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use lodestone_crds::IPAddressPool;
use lodestone_harness::apiserver::rbac::AuditEntry;
use lodestone_harness::cluster::TestCluster;
use serde_json::{Value, json};

mod rbac_common;

use rbac_common::{NS, add_sa_token, apply_rbac, binary, check, rbac_docs};

const SA: &str = "lodestone-controller";
const DEADLINE: Duration = Duration::from_secs(60);

struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for<T>(what: &str, ctl: &Controller, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never happened; controller log:\n{}", ctl.log());
}

fn service(name: &str, annotations: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
    }))
    .unwrap()
}

fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_rbac_is_exactly_what_the_controller_calls() {
    let cluster = TestCluster::start().await.unwrap();
    let Some(server) = cluster.server() else {
        eprintln!("skipped: a real kube-apiserver keeps no audit log this test can read");
        return;
    };
    cluster
        .apply_crds(&lodestone_crds::all_crds())
        .await
        .unwrap();
    let admin = cluster.client();
    let docs = rbac_docs();
    apply_rbac(&admin, &docs).await;

    let token = format!("controller-token-{}", std::process::id());
    add_sa_token(server, &token, SA);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig_yaml_with_token(&token)).unwrap();

    let log = dir.path().join("controller.log");
    let health = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let ctl = Controller {
        child: Command::new(binary("lodestone-controller"))
            .args([
                "--leader-elect=true",
                "--lease-namespace",
                NS,
                "--health-addr",
            ])
            .arg(health.to_string())
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,lodestone_controller=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };

    // A pool; the controller publishes its usage and conditions.
    let pools: Api<IPAddressPool> = Api::all(admin.clone());
    let pool: IPAddressPool = serde_json::from_value(json!({
        "apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
        "metadata": {"name": "blue"}, "spec": {"addresses": ["192.0.2.0/30"]},
    }))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let svcs: Api<Service> = Api::namespaced(admin.clone(), "default");

    // An assignment: status patch, the pool-in-use finalizer, an Event.
    svcs.create(&PostParams::default(), &service("web", json!({})))
        .await
        .unwrap();
    wait_for("web's address", &ctl, async || {
        svcs.get("web")
            .await
            .ok()
            .filter(|s| !ingress(s).is_empty())
    })
    .await;
    wait_for("the pool-in-use finalizer", &ctl, async || {
        let p = pools.get("blue").await.ok()?;
        (!p.metadata.finalizers.unwrap_or_default().is_empty()).then_some(())
    })
    .await;

    // A refusal: an address outside every pool, reported by a Warning Event.
    svcs.create(
        &PostParams::default(),
        &service(
            "stray",
            json!({"lodestone.dev/loadBalancerIPs": "203.0.113.7"}),
        ),
    )
    .await
    .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(admin.clone(), "default");
    wait_for("the refusal Event", &ctl, async || {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning"))
            .then_some(())
    })
    .await;

    // Deleting the pool waits for its Service; deleting the Service releases the address, the
    // finalizer goes and the pool with it.
    pools
        .delete("blue", &DeleteParams::default())
        .await
        .unwrap();
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("the pool's removal", &ctl, async || {
        pools.get_opt("blue").await.ok()?.is_none().then_some(())
    })
    .await;

    // Let the lease be renewed at least once more after all of the above.
    let renewals = |a: &[AuditEntry]| a.iter().filter(|e| e.resource == "leases").count();
    let before = renewals(&server.audit());
    wait_for("a lease renewal", &ctl, async || {
        (renewals(&server.audit()) > before).then_some(())
    })
    .await;

    let audit = server.audit();
    let log_text = ctl.log();
    drop(ctl);
    check(&docs, SA, &audit, &log_text);
}
