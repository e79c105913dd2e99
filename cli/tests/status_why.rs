//! The real `lodestonectl status` and `why` against the embedded API server, with pools,
//! L2Advertisements, Services (status written by the test, as the controller and speaker
//! would), Events, EndpointSlices and Nodes made by hand. Also run as `kubectl-lodestone`.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use lodestone_crds::{IPAddressPool, L2Advertisement};
use lodestone_harness::cluster::TestCluster;
use serde_json::{Value, json};

fn run(bin: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .expect("lodestonectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(bin: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = run(bin, kubeconfig, args);
    assert!(success, "lodestonectl {args:?} failed: {stderr}");
    eprintln!("$ lodestonectl {}\n{stdout}", args.join(" "));
    stdout
}

async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap()
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-22T00:00:00Z"})
}

async fn set_status<K>(api: &Api<K>, name: &str, status: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_why_against_a_cluster() {
    let cluster = TestCluster::start().await.unwrap();
    cluster
        .apply_crds(&lodestone_crds::all_crds())
        .await
        .unwrap();
    let c = cluster.client();
    let kubeconfig = cluster.kubeconfig_path().to_owned();
    let bin = Path::new(env!("CARGO_BIN_EXE_lodestonectl"));

    create(
        &Api::<Namespace>::all(c.clone()),
        json!({"metadata": {"name": "shop", "labels": {"env": "dev"}}}),
    )
    .await;
    for (name, zone) in [("node-a", "a"), ("node-b", "b")] {
        create(
            &Api::<Node>::all(c.clone()),
            json!({"metadata": {"name": name, "labels": {"zone": zone}}}),
        )
        .await;
    }
    let pools: Api<IPAddressPool> = Api::all(c.clone());
    create(
        &pools,
        json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
               "metadata": {"name": "blue"}, "spec": {"addresses": ["192.0.2.0/30", "2001:db8::/126"]}}),
    )
    .await;
    set_status(
        &pools,
        "blue",
        json!({"assigned": 1, "available": 7, "assignedIPv4": 1, "availableIPv4": 3,
               "assignedIPv6": 0, "availableIPv6": 4,
               "conditions": [cond("Ready", "True", "Ready", "8 addresses"),
                              cond("Invalid", "False", "Valid", ""),
                              cond("Overlapping", "False", "NoOverlap", "")]}),
    )
    .await;
    // Serves only namespaces labelled env=prod: "shop" (env=dev) gets nothing from it.
    create(
        &pools,
        json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
               "metadata": {"name": "prod"}, "spec": {"addresses": ["198.51.100.0/31"],
               "serviceAllocation": {"namespaceSelectors": [{"matchLabels": {"env": "prod"}}]}}}),
    )
    .await;
    set_status(
        &pools,
        "prod",
        json!({"assigned": 0, "available": 2, "assignedIPv4": 0, "availableIPv4": 2,
               "conditions": [cond("Ready", "True", "Ready", "2 addresses")]}),
    )
    .await;
    create(
        &Api::<L2Advertisement>::all(c.clone()),
        json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "L2Advertisement",
               "metadata": {"name": "zone-a"}, "spec": {"ipAddressPools": ["blue"],
               "nodeSelectors": [{"matchLabels": {"zone": "a"}}]}}),
    )
    .await;

    let svcs: Api<Service> = Api::namespaced(c.clone(), "shop");
    let lb = |name: &str, extra: Value| {
        let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}],
                              "selector": {"app": name}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"metadata": {"name": name, "namespace": "shop"}, "spec": spec})
    };
    // web: assigned and announced, with a ready endpoint.
    create(&svcs, lb("web", json!({}))).await;
    set_status(
        &svcs,
        "web",
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}, "conditions": [
            cond("lodestone.dev/AddressAssigned", "True", "Assigned", "192.0.2.1 from pool blue"),
            cond("lodestone.dev/Announced", "True", "Announced", "announced from node-a on eth0")]}),
    )
    .await;
    // stray: asks for the prod pool from a dev namespace; refused, with a Warning Event.
    let mut stray = lb("stray", json!({}));
    stray["metadata"]["annotations"] = json!({"lodestone.dev/address-pool": "prod"});
    let stray = create(&svcs, stray).await;
    set_status(
        &svcs,
        "stray",
        json!({"conditions": [cond("lodestone.dev/AddressAssigned", "False", "AllocationFailed",
            "pool prod does not serve shop/stray")]}),
    )
    .await;
    let events: Api<Event> = Api::namespaced(c.clone(), "shop");
    // The second Event is about an earlier Service of the same name (another uid): not shown.
    for (n, uid, note) in [
        (
            1,
            stray.metadata.uid.clone().unwrap(),
            "pool prod does not serve shop/stray",
        ),
        (
            2,
            "an-earlier-uid".to_string(),
            "stale event of a deleted namesake",
        ),
    ] {
        create(
            &events,
            json!({"metadata": {"name": format!("stray.{n}"), "namespace": "shop"},
                   "eventTime": "2026-11-22T00:00:00.000000Z", "type": "Warning",
                   "reason": "AllocationFailed", "note": note,
                   "action": "Allocate", "reportingController": "lodestone-controller",
                   "reportingInstance": "lodestone-controller-0",
                   "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "shop",
                                 "name": "stray", "uid": uid}}),
        )
        .await;
    }
    // local: externalTrafficPolicy Local with its only ready endpoint on node-b, while the
    // L2Advertisement lets only node-a announce.
    create(
        &svcs,
        lb("local", json!({"externalTrafficPolicy": "Local"})),
    )
    .await;
    set_status(
        &svcs,
        "local",
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}, "conditions": [
            cond("lodestone.dev/AddressAssigned", "True", "Assigned", "192.0.2.2 from pool blue"),
            cond("lodestone.dev/Announced", "False", "NoEligibleNode",
                 "not announced: no eligible node with a live speaker")]}),
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "shop");
    for (svc, node, ip) in [
        ("web", "node-a", "10.1.0.1"),
        ("local", "node-b", "10.1.0.2"),
    ] {
        create(
            &slices,
            json!({"metadata": {"name": format!("{svc}-x"), "namespace": "shop",
                                "labels": {"kubernetes.io/service-name": svc}},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}],
                   "ports": [{"port": 80, "protocol": "TCP"}]}),
        )
        .await;
    }
    // status: table and JSON.
    let table = ok(bin, &kubeconfig, &["status"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("POOL"), "{table}");
    let blue = lines.iter().find(|l| l.starts_with("blue")).unwrap();
    assert!(
        blue.contains("1/4") && blue.contains("0/4") && blue.contains("Ready"),
        "{blue}"
    );
    let web = lines
        .iter()
        .find(|l| l.starts_with("shop") && l.contains(" web "))
        .unwrap();
    assert!(
        web.contains("192.0.2.1") && web.contains("blue") && web.contains("node-a"),
        "{web}"
    );
    let local = lines.iter().find(|l| l.contains(" local ")).unwrap();
    assert!(local.contains("NoEligibleNode"), "{local}");

    let json: Value =
        serde_json::from_str(&ok(bin, &kubeconfig, &["status", "-o", "json"])).unwrap();
    let services = json["services"].as_array().unwrap();
    assert_eq!(services.len(), 3);
    let web = services.iter().find(|s| s["name"] == "web").unwrap();
    assert_eq!(web["pool"], "blue");
    assert_eq!(web["node"], "node-a");
    assert_eq!(web["addresses"], json!(["192.0.2.1"]));
    let yaml = ok(bin, &kubeconfig, &["status", "-o", "yaml"]);
    assert!(yaml.contains("availableIPv6: 4"), "{yaml}");

    // why: a healthy Service, a refused one, a Local one nobody can announce.
    let healthy = ok(bin, &kubeconfig, &["why", "shop/web"]);
    assert!(
        healthy.starts_with("Service shop/web: no problem found"),
        "{healthy}"
    );
    let refused = ok(bin, &kubeconfig, &["why", "-n", "shop", "stray"]);
    assert!(
        refused.contains("AllocationFailed: pool prod does not serve shop/stray"),
        "{refused}"
    );
    assert!(
        refused.contains("namespace shop is matched by none of its namespaceSelectors"),
        "{refused}"
    );
    assert!(
        refused.contains("no pool serves namespace shop"),
        "{refused}"
    );
    assert!(!refused.contains("stale event"), "{refused}");
    let local = ok(bin, &kubeconfig, &["why", "shop/local", "-o", "json"]);
    let local: Value = serde_json::from_str(&local).unwrap();
    let messages: Vec<&str> = local["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "Problem")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains(
            "endpoints that can serve are on node-b but the L2Advertisements only allow node-a"
        )),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("NoEligibleNode")),
        "{messages:#?}"
    );

    // A Service that does not exist is an error, not an empty report.
    let (success, _, stderr) = run(bin, &kubeconfig, &["why", "shop/nope"]);
    assert!(!success);
    assert!(stderr.contains("shop/nope"), "{stderr}");

    // As a kubectl plugin: same output, usage under kubectl's name.
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-lodestone");
    std::os::unix::fs::symlink(bin, &plugin).unwrap();
    assert_eq!(ok(&plugin, &kubeconfig, &["status"]), table);
    let help = Command::new(&plugin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Usage: kubectl lodestone"), "{help}");

    documented_commands_print_what_the_page_shows(bin, &kubeconfig);

    // Made after the documented transcripts, which do not show them.
    // A Service of another class is judged by the class given with --lb-class (or
    // LODESTONE_LB_CLASS), as the controller and speakers are.
    create(
        &svcs,
        lb("classy", json!({"loadBalancerClass": "example.com/lb"})),
    )
    .await;
    let other = ok(bin, &kubeconfig, &["why", "shop/classy"]);
    assert!(
        other.contains("loadBalancerClass is example.com/lb: another implementation"),
        "{other}"
    );
    let ours = ok(
        bin,
        &kubeconfig,
        &["why", "shop/classy", "--lb-class", "example.com/lb"],
    );
    assert!(!ours.contains("loadBalancerClass"), "{ours}");
    assert!(ours.contains("the controller has not written"), "{ours}");

    // A Service converted from MetalLB keeps its metallb.io/* annotations, which the controller
    // honours; its only endpoint is serving but not ready, which the speakers count: `why`
    // agrees with both (it used to look at every pool and report no ready endpoint).
    let mut migrated = lb("migrated", json!({}));
    migrated["metadata"]["annotations"] = json!({"metallb.io/address-pool": "prod"});
    create(&svcs, migrated).await;
    set_status(
        &svcs,
        "migrated",
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.3"}]}, "conditions": [
            cond("lodestone.dev/AddressAssigned", "True", "Assigned", "192.0.2.3 from pool blue"),
            cond("lodestone.dev/Announced", "True", "Announced", "announced from node-a on eth0")]}),
    )
    .await;
    create(
        &slices,
        json!({"metadata": {"name": "migrated-x", "namespace": "shop",
                            "labels": {"kubernetes.io/service-name": "migrated"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.1.0.3"], "nodeName": "node-a",
                              "conditions": {"ready": false, "serving": true, "terminating": false}}],
               "ports": [{"port": 80, "protocol": "TCP"}]}),
    )
    .await;
    let migrated = ok(bin, &kubeconfig, &["why", "shop/migrated"]);
    assert!(migrated.contains("1 endpoint(s) can serve"), "{migrated}");
    assert!(!migrated.contains("no endpoint can serve"), "{migrated}");
    assert!(
        migrated.contains("namespace shop is matched by none of its namespaceSelectors"),
        "the pool metallb.io/address-pool names is the one judged: {migrated}"
    );
    assert!(
        !migrated
            .lines()
            .any(|l| l.contains("IPAddressPool blue") && l.contains("serves this Service")),
        "{migrated}"
    );
    assert!(
        migrated.contains("may announce 192.0.2.3, on every suitable interface"),
        "{migrated}"
    );
}

/// docs/lodestonectl.md shows this very scenario: each transcript there is what the command
/// prints, byte for byte, and the plugin setup runs as written (with a scratch `HOME`).
fn documented_commands_print_what_the_page_shows(bin: &Path, kubeconfig: &Path) {
    use lodestone_harness::docs;
    let page = "docs/lodestonectl.md";
    let mut compared = 0;
    for c in docs::commands_of(page).unwrap() {
        let (Some(sample), Some(args)) = (&c.output, c.text.strip_prefix("lodestonectl ")) else {
            continue;
        };
        if args.starts_with("migrate-metallb") {
            continue; // cli/tests/migrate_metallb.rs
        }
        let args: Vec<&str> = args.split_whitespace().collect();
        let got = ok(bin, kubeconfig, &args);
        assert_eq!(
            got.trim_end(),
            sample.trim_end(),
            "{c}: the page shows other output"
        );
        compared += 1;
    }
    assert_eq!(compared, 5, "status, status -o json and three whys");

    let home = tempfile::tempdir().unwrap();
    let bin_dir = bin.parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        home.path().join(".local/bin").display(),
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut plugin_outputs = Vec::new();
    for needle in [
        "mkdir -p ~/.local/bin",
        "ln -s",
        "kubectl lodestone status",
        "kubectl lodestone why shop/web",
    ] {
        let c = docs::command(page, needle).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(&c.text)
            .env("HOME", home.path())
            .env("PATH", &path)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        plugin_outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert_eq!(plugin_outputs[2], ok(bin, kubeconfig, &["status"]));
    assert!(
        plugin_outputs[3].starts_with("Service shop/web: no problem found"),
        "{}",
        plugin_outputs[3]
    );
}

/// A connection that fails says why: the TLS or socket error kube keeps several causes down
/// (it used to print only `client error (Connect)`), the server, and a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connection_names_its_cause() {
    let cluster = TestCluster::start().await.unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_lodestonectl"));
    let dir = tempfile::tempdir().unwrap();
    let stranger = lodestone_harness::tls::serving_cert("someone-else", "elsewhere").unwrap();
    let wrong_ca = dir.path().join("wrong-ca");
    std::fs::write(
        &wrong_ca,
        lodestone_harness::cluster::kubeconfig_yaml(&cluster.url(), &stranger.ca_pem, "t"),
    )
    .unwrap();
    let (success, _, stderr) = run(bin, &wrong_ca, &["status"]);
    assert!(!success);
    eprintln!("{stderr}");
    assert!(
        stderr.starts_with(
            "error: listing IPAddressPools: cannot talk to the API server at https://127.0.0.1:"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    assert!(stderr.contains("certificate-authority"), "{stderr}");
    assert_eq!(
        stderr.matches("client error (Connect)").count(),
        1,
        "{stderr}"
    );

    // Nothing listening: the refused connection is named.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let closed = dir.path().join("closed");
    std::fs::write(
        &closed,
        lodestone_harness::cluster::kubeconfig_yaml(
            &format!("https://127.0.0.1:{port}"),
            &stranger.ca_pem,
            "t",
        ),
    )
    .unwrap();
    let (success, _, stderr) = run(bin, &closed, &["why", "web"]);
    assert!(!success);
    eprintln!("{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("certificate-authority"), "{stderr}");
}

/// docs/bgp.md's status commands against a BGPPeer carrying two nodes' sessions, as the
/// speakers write them: `kubectl get` shows the summary in its SESSIONS column,
/// `lodestonectl status` one line per session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_sessions_show_in_kubectl_and_status() {
    use lodestone_crds::BGPPeer;
    use lodestone_harness::docs;
    let cluster = TestCluster::start().await.unwrap();
    cluster
        .apply_crds(&lodestone_crds::all_crds())
        .await
        .unwrap();
    let kubeconfig = cluster.kubeconfig_path().to_owned();
    let peers: Api<BGPPeer> = Api::all(cluster.client());
    create(
        &peers,
        json!({"metadata": {"name": "router"},
               "spec": {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1"}}),
    )
    .await;
    for (node, state, prefixes, error) in [
        ("node-a", "Established", 2, None),
        (
            "node-b",
            "Active",
            0,
            Some("connecting to 192.0.2.1:179: Connection refused"),
        ),
    ] {
        // node-a writes the summary too, as the designated writer would.
        let mut status = json!({"sessions": [{"node": node, "state": state,
            "advertisedPrefixes": prefixes, "lastError": error}]});
        if node == "node-a" {
            status["summary"] = "1/2 Established".into();
        }
        peers
            .patch_status(
                "router",
                &PatchParams::apply(&format!("lodestone-speaker/{node}")).force(),
                &Patch::Apply(json!({
                    "apiVersion": "lodestone.dev/v1alpha1", "kind": "BGPPeer",
                    "metadata": {"name": "router"},
                    "status": status,
                })),
            )
            .await
            .unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_lodestonectl"));
    let page = "docs/bgp.md";
    let shell = |needle: &str| {
        let c = docs::command(page, needle).unwrap();
        let path = format!(
            "{}:{}",
            bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&c.text)
            .env("KUBECONFIG", &kubeconfig)
            .env("PATH", path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("$ {}\n{stdout}", c.text);
        stdout
    };
    let table = shell("kubectl get bgppeers");
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .contains("SESSIONS"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(row.contains("1/2 Established"), "{table}");
    let yaml = shell("kubectl get bgppeer router -o yaml");
    assert!(yaml.contains("state: Established"), "{yaml}");
    let status = shell("lodestonectl status");
    let lines: Vec<&str> = status.lines().filter(|l| l.starts_with("router")).collect();
    assert_eq!(lines.len(), 2, "{status}");
    assert!(
        lines[0].contains("node-a") && lines[0].contains("Established"),
        "{status}"
    );
    assert!(lines[1].contains("Connection refused"), "{status}");
}
