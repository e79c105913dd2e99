//! The real kubectl (/usr/bin/kubectl, or $KUBECTL) against the embedded server: CRDs from the
//! generated YAML, printer columns, client-side apply (strategic merge patch), server-side
//! apply, `get -o yaml`, `get -w`, server-side validation errors, and every YAML example of the
//! documentation applied as written.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use lodestone_crds::IPAddressPool;
use lodestone_harness::cluster::TestCluster;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn new(kubeconfig: &Path) -> Self {
        Kubectl {
            kubeconfig: kubeconfig.to_path_buf(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into());
        let mut c = Command::new(bin);
        // A private discovery cache: ports are reused across runs with different resources.
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path());
        c.args(args);
        c.kill_on_drop(true);
        c
    }

    /// Run to completion; returns (success, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("kubectl finished within 60s")
            .expect("kubectl runs (is /usr/bin/kubectl installed?)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }
}

/// The CRD YAML exactly as `lodestone-crdgen` writes it to deploy/crds/.
fn crd_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for crd in lodestone_crds::all_crds() {
        let path = dir.path().join(lodestone_crds::crd_file_name(&crd));
        std::fs::write(path, lodestone_crds::crd_yaml(&crd).unwrap()).unwrap();
    }
    dir
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const POOL: &str = "apiVersion: lodestone.dev/v1alpha1
kind: IPAddressPool
metadata:
  name: pool-a
spec:
  addresses: [\"192.0.2.0/28\", \"198.51.100.10-198.51.100.20\"]
";

const SVC: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

async fn setup() -> (TestCluster, Kubectl, tempfile::TempDir) {
    let c = TestCluster::start().await.unwrap();
    let k = Kubectl::new(c.kubeconfig_path());
    let crds = crd_dir();
    let out = k.ok(&["apply", "-f", crds.path().to_str().unwrap()]).await;
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/ipaddresspools.lodestone.dev created"
        ),
        "{out}"
    );
    (c, k, crds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_crds_and_shows_printer_columns() {
    let (_c, k, dir) = setup().await;
    let pool = write(dir.path(), "pool.yaml", POOL);
    let out = k.ok(&["apply", "-f", pool.to_str().unwrap()]).await;
    assert_eq!(out.trim(), "ipaddresspool.lodestone.dev/pool-a created");
    let out = k.ok(&["get", "ipaddresspools"]).await;
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in [
        "NAME",
        "ADDRESSES",
        "AUTO ASSIGN",
        "ASSIGNED",
        "AVAILABLE",
        "AGE",
    ] {
        assert!(header.contains(col), "missing column {col}: {out}");
    }
    let row = lines.next().unwrap();
    assert!(row.starts_with("pool-a"), "{out}");
    assert!(
        row.contains(r#"["192.0.2.0/28","198.51.100.10-198.51.100.20"]"#),
        "{out}"
    );
    assert!(row.contains("true"), "{out}");
    // Short name and category from the CRD work too.
    assert!(k.ok(&["get", "ippool"]).await.contains("pool-a"));
    // Client-side apply of a change (merge patch for a custom resource).
    let changed = POOL.replace("192.0.2.0/28", "192.0.2.0/27");
    let pool = write(dir.path(), "pool.yaml", &changed);
    let out = k.ok(&["apply", "-f", pool.to_str().unwrap()]).await;
    assert_eq!(out.trim(), "ipaddresspool.lodestone.dev/pool-a configured");
    let out = k.ok(&["apply", "-f", pool.to_str().unwrap()]).await;
    assert_eq!(out.trim(), "ipaddresspool.lodestone.dev/pool-a unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_client_and_server_side_apply() {
    let (c, k, dir) = setup().await;
    let svc = write(dir.path(), "svc.yaml", SVC);
    let svc_path = svc.to_str().unwrap();
    assert_eq!(
        k.ok(&["apply", "-f", svc_path]).await.trim(),
        "service/web created"
    );
    // A changed port goes through a strategic merge patch.
    write(dir.path(), "svc.yaml", &SVC.replace("port: 80", "port: 81"));
    assert_eq!(
        k.ok(&["apply", "-f", svc_path]).await.trim(),
        "service/web configured"
    );
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let live = api.get("web").await.unwrap();
    let ports = live.spec.unwrap().ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, 81);
    assert!(
        ports[0].node_port.is_some(),
        "node port kept across the patch"
    );

    let pool = write(dir.path(), "pool.yaml", POOL);
    let out = k
        .ok(&["apply", "--server-side", "-f", pool.to_str().unwrap()])
        .await;
    assert_eq!(
        out.trim(),
        "ipaddresspool.lodestone.dev/pool-a serverside-applied"
    );
    let pools: Api<IPAddressPool> = Api::all(c.client());
    let p = pools.get("pool-a").await.unwrap();
    let mf = p.metadata.managed_fields.unwrap();
    assert!(
        mf.iter()
            .any(|e| e.manager.as_deref() == Some("kubectl")
                && e.operation.as_deref() == Some("Apply")),
        "{mf:?}"
    );
    // Another manager owning the same field: kubectl reports the conflict.
    let other = POOL.replace("192.0.2.0/28", "203.0.113.0/24");
    let other_path = write(dir.path(), "other.yaml", &other);
    let (ok, _, err) = k
        .run(&[
            "apply",
            "--server-side",
            "--field-manager",
            "someone-else",
            "-f",
            other_path.to_str().unwrap(),
        ])
        .await;
    assert!(!ok);
    assert!(err.contains("conflict"), "{err}");
    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "someone-else",
            "-f",
            other_path.to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(
        pools.get("pool-a").await.unwrap().spec.addresses[0],
        "203.0.113.0/24"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_yaml_and_validation_errors() {
    let (_c, k, dir) = setup().await;
    let svc = write(dir.path(), "svc.yaml", SVC);
    k.ok(&["create", "-f", svc.to_str().unwrap()]).await;
    let out = k.ok(&["get", "svc", "web", "-o", "yaml"]).await;
    let v: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(v["kind"], "Service");
    assert!(v["spec"]["clusterIP"].as_str().unwrap().starts_with("10."));
    assert_eq!(v["spec"]["ports"][0]["protocol"], "TCP");
    assert!(v["spec"]["ports"][0]["nodePort"].as_u64().is_some());
    let table = k.ok(&["get", "svc"]).await;
    let header = table.lines().next().unwrap();
    for col in [
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ] {
        assert!(header.contains(col), "{table}");
    }
    assert!(table.contains("<pending>"), "{table}");

    let bad = write(
        dir.path(),
        "bad.yaml",
        &POOL.replace("192.0.2.0/28", "not-an-address"),
    );
    let (ok, _, err) = k.run(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(
        err.contains("The IPAddressPool \"pool-a\" is invalid: spec.addresses"),
        "{err}"
    );
    let unknown = write(dir.path(), "unknown.yaml", &format!("{POOL}  bogus: 1\n"));
    let (ok, _, err) = k.run(&["apply", "-f", unknown.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");
    // Built-in kinds are decoded strictly too, as kube-apiserver decodes into Go structs.
    let typo = write(
        dir.path(),
        "typo.yaml",
        &SVC.replace(
            "  type: LoadBalancer\n",
            "  type: LoadBalancer\n  tpye: x\n",
        ),
    );
    let (ok, _, err) = k.run(&["apply", "-f", typo.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(err.contains("unknown field \"spec.tpye\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_streams_changes() {
    let (_c, k, dir) = setup().await;
    let mut child = k
        .command(&["get", "svc", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let svc = write(dir.path(), "svc.yaml", SVC);
    k.ok(&["create", "-f", svc.to_str().unwrap()]).await;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("web ") && line.contains("LoadBalancer") {
                return line;
            }
        }
        panic!("kubectl get -w ended without showing the Service");
    })
    .await
    .expect("kubectl get -w printed the new Service within 30s");
    assert!(found.contains("<pending>"), "{found}");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_dry_run_and_diff() {
    let (c, k, dir) = setup().await;
    let svc = write(dir.path(), "svc.yaml", SVC);
    let svc_path = svc.to_str().unwrap();
    let out = k.ok(&["apply", "--dry-run=server", "-f", svc_path]).await;
    assert_eq!(out.trim(), "service/web created (server dry run)");
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    assert!(
        api.get_opt("web").await.unwrap().is_none(),
        "dry run must not persist"
    );
    k.ok(&["apply", "-f", svc_path]).await;
    let before = api.get("web").await.unwrap();
    let changed = write(
        dir.path(),
        "changed.yaml",
        &SVC.replace("port: 80", "port: 82"),
    );
    let (ok, diff, err) = k.run(&["diff", "-f", changed.to_str().unwrap()]).await;
    assert!(
        !ok,
        "kubectl diff exits 1 when there are differences: {err}"
    );
    assert!(
        diff.contains("-    port: 80") && diff.contains("+    port: 82"),
        "{diff}"
    );
    let changed_lines: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('-') || l.starts_with('+'))
                && !l.starts_with("---")
                && !l.starts_with("+++")
        })
        .collect();
    assert!(
        !changed_lines.iter().any(|l| l.contains("resourceVersion")),
        "a dry run must not advance the resourceVersion:\n{diff}"
    );
    assert!(
        !changed_lines.iter().any(|l| l.contains("nodePort")),
        "the node port is carried over by port name:\n{diff}"
    );
    let after = api.get("web").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    // kubectl puts a delete's dry run into the DeleteOptions body.
    let out = k.ok(&["delete", "--dry-run=server", "svc", "web"]).await;
    assert_eq!(out.trim(), "service \"web\" deleted (server dry run)");
    assert!(
        api.get_opt("web").await.unwrap().is_some(),
        "dry-run delete must not delete"
    );
}

/// kubectl's `create <kind>` generators write protobuf bodies (client-go typed clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_generators_send_protobuf() {
    let c = TestCluster::start().await.unwrap();
    let k = Kubectl::new(c.kubeconfig_path());
    assert_eq!(
        k.ok(&["create", "namespace", "t1"]).await.trim(),
        "namespace/t1 created"
    );
    k.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "t1",
        "--from-literal=a=b",
    ])
    .await;
    k.ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "-n",
        "t1",
        "--from-literal=k=v",
    ])
    .await;
    k.ok(&["create", "serviceaccount", "bot", "-n", "t1"]).await;
    k.ok(&[
        "create",
        "service",
        "loadbalancer",
        "web",
        "-n",
        "t1",
        "--tcp=80:8080",
    ])
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.client(), "t1");
    assert_eq!(cms.get("cfg").await.unwrap().data.unwrap()["a"], "b");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.client(), "t1");
    let sec = secrets.get("sec").await.unwrap();
    assert_eq!(sec.data.unwrap()["k"].0, b"v".to_vec());
    assert_eq!(sec.type_.as_deref(), Some("Opaque"));
    let svcs: Api<Service> = Api::namespaced(c.client(), "t1");
    let web = svcs.get("web").await.unwrap();
    let spec = web.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.port, port.name.as_deref()), (80, Some("80-8080")));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_reports_full_access() {
    let c = TestCluster::start().await.unwrap();
    let k = Kubectl::new(c.kubeconfig_path());
    assert_eq!(
        k.ok(&["auth", "can-i", "patch", "services/status"])
            .await
            .trim(),
        "yes"
    );
    let who = k.ok(&["auth", "whoami"]).await;
    assert!(who.contains("lodestone-admin"), "{who}");
}

/// What a controller records through events.k8s.io is where the user looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_events_show_in_kubectl_get_events_and_describe() {
    use kube::Resource;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (c, k, dir) = setup().await;
    let svc = write(dir.path(), "svc.yaml", SVC);
    k.ok(&["apply", "-f", svc.to_str().unwrap()]).await;
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let live = api.get("web").await.unwrap();
    let recorder = Recorder::new(
        c.client(),
        Reporter {
            controller: "lodestone-controller".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "NoPool".into(),
        note: Some("no IPAddressPool serves this Service".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder.publish(&ev, &live.object_ref(&())).await.unwrap();
    let events = k.ok(&["get", "events"]).await;
    assert!(
        events.lines().next().unwrap().contains("REASON"),
        "{events}"
    );
    assert!(
        events.contains("NoPool") && events.contains("service/web"),
        "{events}"
    );
    let described = k.ok(&["describe", "svc", "web"]).await;
    assert!(
        described.contains("no IPAddressPool serves this Service"),
        "{described}"
    );
}

/// The top-level keys of a `# deploy/kustomization.yaml` fragment in the docs, written over a
/// copy of `deploy/` (with a membership key, as docs/install.md says), rendered with
/// `kubectl kustomize`.
async fn render_with_fragment(k: &Kubectl, fragment: &serde_json::Value) -> String {
    let deploy = lodestone_harness::docs::repo_root().join("deploy");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("crds")).unwrap();
    for sub in ["", "crds"] {
        for entry in std::fs::read_dir(deploy.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                std::fs::copy(&path, dir.path().join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    std::fs::write(
        dir.path().join("memberlist.key"),
        "a-test-key-of-enough-bytes\n",
    )
    .unwrap();
    let path = dir.path().join("kustomization.yaml");
    let mut kustomization: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value) in fragment.as_object().unwrap() {
        kustomization[key] = value.clone();
    }
    std::fs::write(&path, kustomization.to_string()).unwrap();
    k.ok(&["kustomize", dir.path().to_str().unwrap()]).await
}

/// Every YAML example in the documentation is accepted as written: each block is applied with
/// `kubectl apply -f` after the CRDs (and deleted again, so examples do not meet), and a
/// fragment of `deploy/kustomization.yaml` renders with the images it names. A new block that is
/// neither fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_yaml_example_in_the_docs_is_accepted() {
    let (_c, k, dir) = setup().await;
    let blocks = lodestone_harness::docs::all_yaml_blocks().unwrap();
    let mut objects = 0;
    let mut fragments = 0;
    for (i, block) in blocks.iter().enumerate() {
        if block.text.starts_with("# deploy/kustomization.yaml\n") {
            let fragment: serde_json::Value =
                serde_saphyr::from_str(&block.text).unwrap_or_else(|e| panic!("{block}: {e}"));
            let out = render_with_fragment(&k, &fragment).await;
            for image in fragment["images"].as_array().unwrap() {
                let want = format!(
                    "image: {}:{}",
                    image["newName"].as_str().unwrap(),
                    image["newTag"].as_str().unwrap()
                );
                assert!(out.contains(&want), "{block}: no {want:?} in the rendering");
            }
            fragments += 1;
            continue;
        }
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&block.text)
            .unwrap_or_else(|e| panic!("{block}: not YAML: {e}"));
        for doc in &docs {
            assert!(
                doc.get("apiVersion").is_some() && doc.get("kind").is_some(),
                "{block}: a YAML example that is neither an object nor a known fragment:\n{}",
                block.text
            );
        }
        let file = write(dir.path(), &format!("example-{i}.yaml"), &block.text);
        let file = file.to_str().unwrap();
        let (ok, out, err) = k.run(&["apply", "-f", file]).await;
        assert!(ok, "{block} is refused:\n{err}\n{out}\n{}", block.text);
        k.ok(&["delete", "-f", file]).await;
        objects += docs.len();
    }
    // install.md's pool and advertisement, addresses.md's pool, lodestonectl.md's output.
    assert!(objects >= 4, "only {objects} objects found in {blocks:?}");
    assert_eq!(fragments, 1, "install.md's image override");
}

/// `lodestone-apiserver` with its log in a file (not a terminal) writes no colour escape codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lodestone_apiserver_logs_plain_text_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let log_path = dir.path().join("apiserver.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lodestone-apiserver"))
        .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
        .env("LODESTONE_APISERVER_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let k = Kubectl::new(&kubeconfig);
    k.ok(&["get", "namespaces"]).await;
    child.kill().await.unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!text.trim().is_empty(), "nothing logged");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in the log: {text:?}"
    );
}
