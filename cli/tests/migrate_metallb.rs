//! Runs the real `lodestonectl migrate-metallb` on MetalLB manifests under `tests/fixtures/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lodestone_crds::{BGPAdvertisement, BGPPeer, IPAddressPool, L2Advertisement};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lodestonectl"))
        .args(args)
        .output()
        .expect("run lodestonectl")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Every document parses into its Lodestone type and passes the CRD's CEL rules.
fn check_lodestone(docs: &[Value]) -> (Vec<IPAddressPool>, Vec<L2Advertisement>) {
    let (mut pools, mut advs) = (Vec::new(), Vec::new());
    for doc in docs {
        assert_eq!(doc["apiVersion"], "lodestone.dev/v1alpha1", "{doc}");
        match doc["kind"].as_str() {
            Some("IPAddressPool") => {
                let p: IPAddressPool = serde_json::from_value(doc.clone()).unwrap();
                p.validate_cel().unwrap();
                assert_eq!(p.metadata.namespace, None);
                pools.push(p);
            }
            Some("L2Advertisement") => {
                let a: L2Advertisement = serde_json::from_value(doc.clone()).unwrap();
                a.validate_cel().unwrap();
                assert_eq!(a.metadata.namespace, None);
                advs.push(a);
            }
            Some("BGPPeer") => {
                let p: BGPPeer = serde_json::from_value(doc.clone()).unwrap();
                p.validate_cel().unwrap();
                assert_eq!(p.metadata.namespace, None);
            }
            Some("BGPAdvertisement") => {
                let a: BGPAdvertisement = serde_json::from_value(doc.clone()).unwrap();
                a.validate_cel().unwrap();
                assert_eq!(a.metadata.namespace, None);
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    (pools, advs)
}

fn name<K: kube::Resource>(o: &K) -> &str {
    o.meta().name.as_deref().unwrap()
}

#[test]
fn layer2_and_bgp_setup_converts() {
    let out = run(&[
        "migrate-metallb",
        fixture("metallb-layer2.yaml").to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let (pools, advs) = check_lodestone(&docs);

    assert_eq!(
        pools.iter().map(name).collect::<Vec<_>>(),
        ["public", "cheap"]
    );
    assert_eq!(
        advs.iter().map(name).collect::<Vec<_>>(),
        ["public-edge", "cheap-everywhere"]
    );
    let public = &pools[0];
    assert_eq!(
        public.spec.addresses,
        ["203.0.113.0/28", "2001:db8:100::/124"]
    );
    assert!(!public.spec.auto_assign && public.spec.avoid_buggy_ips);
    assert_eq!(
        public.metadata.labels.as_ref().unwrap()["exposure"],
        "public",
        "labels feed ipAddressPoolSelectors"
    );
    let alloc = public.spec.service_allocation.as_ref().unwrap();
    assert_eq!(
        (alloc.priority, alloc.namespaces.as_slice()),
        (Some(10), &["shop".to_owned()][..])
    );
    assert_eq!(
        pools[1].spec.service_allocation,
        Some(Default::default()),
        "MetalLB's priority 0 = none; the empty serviceAllocation stays, which keeps the pool \
         before pools without one, as in MetalLB"
    );
    assert_eq!(advs[0].spec.interfaces, ["bond0", "eth1"]);
    assert_eq!(advs[1].spec.ip_address_pools, ["cheap"]);

    // BGP: the peer with its BFD profile folded in, the advertisement as it was.
    let peer: BGPPeer = docs
        .iter()
        .find(|d| d["kind"] == "BGPPeer")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .expect("the BGPPeer is converted");
    assert_eq!(
        (
            peer.spec.my_asn,
            peer.spec.peer_asn,
            peer.spec.peer_address.as_str()
        ),
        (64500, 64501, "192.0.2.1")
    );
    assert_eq!(peer.spec.bfd.map(|b| b.receive_interval), Some(300));
    let bgp_adv: BGPAdvertisement = docs
        .iter()
        .find(|d| d["kind"] == "BGPAdvertisement")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .expect("the BGPAdvertisement is converted");
    assert_eq!(bgp_adv.spec.ip_address_pools, ["public"]);
    for line in [
        "warning: BFDProfile metallb-system/fast: folded into the spec.bfd",
        "warning: Community metallb-system/communities: its aliases are replaced",
    ] {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }
    assert!(
        err.contains("IPAddressPool metallb-system/cheap: spec.serviceAllocation.priority 0"),
        "{err}"
    );
    assert!(
        err.contains("migrated 6 object(s) with 3 warning(s)"),
        "{err}"
    );
}

#[test]
fn kubectl_list_export_drops_server_fields_silently() {
    let out = run(&[
        "migrate-metallb",
        "-o",
        "json",
        fixture("kubectl-get-list.yaml").to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    let (pools, advs) = check_lodestone(items);
    assert_eq!((pools.len(), advs.len()), (1, 1));
    let meta = &pools[0].metadata;
    assert_eq!(
        (
            meta.uid.as_ref(),
            meta.resource_version.as_ref(),
            meta.creation_timestamp.as_ref()
        ),
        (None, None, None)
    );
    let ann = meta.annotations.as_ref().unwrap();
    assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    assert_eq!(
        ann["lodestone.dev/migrated-from"],
        "metallb.io/v1beta1 IPAddressPool metallb-system/default"
    );
    assert!(err.contains("with 0 warning(s)"), "{err}");
}

#[test]
fn collisions_and_unknown_fields_are_warned() {
    let out = run(&[
        "migrate-metallb",
        fixture("collisions.yaml").to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let (pools, advs) = check_lodestone(&docs);
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].spec.addresses, ["192.0.2.0/28"]);
    assert_eq!(advs.len(), 1);
    assert!(
        err.contains(
            "warning: IPAddressPool metallb-old/blue: Lodestone's IPAddressPools are cluster-scoped"
        ),
        "{err}"
    );
    assert!(
        err.contains("warning: L2Advertisement metallb-system/blue: spec.interfaceSelector:"),
        "{err}"
    );
}

#[test]
fn several_files_and_stdin_are_one_input() {
    let layer2 = std::fs::read(fixture("metallb-layer2.yaml")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lodestonectl"))
        .args([
            "migrate-metallb",
            "-",
            fixture("collisions.yaml").to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&layer2).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let (pools, advs) = check_lodestone(&docs);
    assert_eq!(
        pools.iter().map(name).collect::<Vec<_>>(),
        ["public", "cheap", "blue"]
    );
    assert_eq!(advs.len(), 3);
}

#[test]
fn unreadable_input_fails_without_output() {
    let out = run(&["migrate-metallb", "/nonexistent/metallb.yaml"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("reading /nonexistent/metallb.yaml"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: [unclosed\n").unwrap();
    let out = run(&["migrate-metallb", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("is not valid YAML"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_files_is_a_usage_error() {
    let out = run(&["migrate-metallb"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
}

/// docs/lodestonectl.md's transcript: the warnings are what the command prints on stderr, and
/// the YAML shown after it is the end of what it writes.
#[test]
fn the_documented_run_prints_what_the_page_shows() {
    use lodestone_harness::docs;
    let page = "docs/lodestonectl.md";
    let c = docs::command(page, "metallb-layer2.yaml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/");
    let script = c
        .text
        .replace("cli/tests/fixtures/", &fixtures.display().to_string());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_lodestonectl"))
        .parent()
        .unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{c}: {}", stderr(&out));
    let sample = c.output.as_deref().unwrap();
    assert_eq!(
        stderr(&out).trim_end(),
        sample.trim_end(),
        "{c}: the page shows other warnings"
    );
    // The page's YAML block after the transcript is the tail of the written file.
    let text = std::fs::read_to_string(docs::repo_root().join(page)).unwrap();
    let after = &text[text.find("and the end of stdout").unwrap()..];
    let block = after
        .split("```yaml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let written = std::fs::read_to_string(dir.path().join("lodestone.yaml")).unwrap();
    assert!(
        written.ends_with(block),
        "{c}: the file does not end with the page's YAML:\n{written}"
    );
}
