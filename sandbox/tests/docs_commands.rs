//! Every command the documentation shows is run by a test, or says here why it cannot run on a
//! machine without a cluster. The commands are read from the Markdown (`lodestone_harness::docs`),
//! not copied, so a changed page changes what runs.
//!
//! - `every_documented_command_has_a_plan` fails when a page gains a command nobody runs (or
//!   this plan names one that is gone).
//! - `sandbox_commands_run`: the sandbox with `--keep`, as docs/sandbox.md tells, then the
//!   troubleshooting commands of docs/announcing.md and the transcript of docs/sandbox.md
//!   against it: kubectl against its API server, arping / ip neigh / ndisc6 / curl from its
//!   client namespace.
//! - `install_commands_run`: README's `lodestone-apiserver`, then docs/install.md from key to
//!   uninstall, in a copy of the checkout.
//! - `migration_commands_run`: docs/migrating-from-metallb.md from export to switch-over, against
//!   an API server holding MetalLB's objects.
//!
//! lodestonectl's transcripts are compared with the real output in cli/tests (the scenario they
//! show lives there). Needs root (namespaces), kubectl, arping, ndisc6 and curl.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lodestone_harness::docs::{self, DocCommand};

#[allow(dead_code)]
mod common;
use common::{checkout, doc, eventually, sh};
use regex::Regex;

/// How a documented command is proven.
#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    /// Run by `sandbox_commands_run` against a running sandbox.
    Sandbox,
    /// A run of the sandbox itself, by `sandbox_runs_as_documented` (or, for `--keep`, by
    /// `sandbox_commands_run`).
    SandboxRun,
    /// Run by `install_commands_run`.
    Install,
    /// Run by `migration_commands_run`.
    Migration,
    /// Run by the named test file, which takes it from the docs with `docs::command`.
    Test(&'static str),
    /// Run by `.ci/run` (which must contain it).
    Ci,
    /// Shows a command's shape with a placeholder, or is not runnable here; the reason says why.
    NotRun(&'static str),
}

/// Every documented command, matched by the page and a substring of its text.
const PLAN: &[(&str, &str, How)] = &[
    // README.md
    (
        "README.md",
        "cargo run --release -p lodestone-sandbox",
        How::SandboxRun,
    ),
    (
        "README.md",
        "TEST_ASSET_KUBE_APISERVER=/path/to/kube-apiserver",
        How::NotRun(
            "placeholder paths; .ci/run runs the same switch with the kit's kube-apiserver and etcd 3.5 over the binaries that use TestCluster, and harness/src/cluster.rs tests it with stand-in processes",
        ),
    ),
    ("README.md", "cargo nextest run --workspace", How::Ci),
    ("README.md", "cargo install --locked cargo-nextest", How::Ci),
    ("README.md", "--bin lodestone-apiserver", How::Install),
    ("README.md", "apply -f deploy/crds/", How::Install),
    ("README.md", "kubectl apply -k deploy/", How::Install),
    ("README.md", "ip neigh\n", How::Sandbox),
    // docs/addresses.md
    (
        "docs/addresses.md",
        "kubectl get ipaddresspools",
        How::Sandbox,
    ),
    (
        "docs/addresses.md",
        "kubectl describe service NAME",
        How::Sandbox,
    ),
    (
        "docs/addresses.md",
        "involvedObject.name=NAME",
        How::Sandbox,
    ),
    (
        "docs/addresses.md",
        "lodestonectl migrate-metallb\n",
        How::NotRun(
            "names the command in prose; cli/src/migrate.rs entries_lodestone_refuses_are_warned_about checks the warning",
        ),
    ),
    // docs/announcing.md
    (
        "docs/announcing.md",
        "cargo bench",
        How::NotRun(
            "a benchmark: minutes of a quiet machine; `cargo clippy --all-targets` in CI builds it and its figures are in docs/performance.md",
        ),
    ),
    (
        "docs/announcing.md",
        "kubectl describe service web",
        How::Sandbox,
    ),
    ("docs/announcing.md", "jsonpath=", How::Sandbox),
    (
        "docs/announcing.md",
        "involvedObject.name=web",
        How::Sandbox,
    ),
    ("docs/announcing.md", "arping -c 3", How::Sandbox),
    ("docs/announcing.md", "ip neigh show", How::Sandbox),
    ("docs/announcing.md", "ndisc6", How::Sandbox),
    ("docs/announcing.md", "ip -6 neigh show", How::Sandbox),
    ("docs/announcing.md", "ip link show eth0", How::Sandbox),
    (
        "docs/announcing.md",
        "logs ds/lodestone-speaker",
        How::Sandbox,
    ),
    ("docs/announcing.md", "/metrics", How::Sandbox),
    (
        "docs/announcing.md",
        "kubectl patch service web --subresource=status",
        How::Test("speaker/tests/e2e_ownership.rs"),
    ),
    // docs/bgp.md
    (
        "docs/bgp.md",
        "kubectl get bgppeers",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/bgp.md",
        "kubectl get bgppeer router -o yaml",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/bgp.md",
        "lodestonectl status",
        How::Test("cli/tests/status_why.rs"),
    ),
    // docs/testing.md: the real cluster
    (
        "docs/testing.md",
        "--test real_cluster",
        How::NotRun(
            "a placeholder path; CI runs the same test binary with LODESTONE_K8S_BIN set, through the README's `cargo nextest run --workspace`",
        ),
    ),
    (
        "docs/testing.md",
        "--bin lodestone-clusterlab",
        How::Test("sandbox/tests/real_cluster.rs"),
    ),
    // docs/install.md
    (
        "docs/install.md",
        "base64 > deploy/memberlist.key",
        How::Install,
    ),
    ("docs/install.md", "kubectl apply -k deploy/", How::Install),
    ("docs/install.md", "kubectl kustomize deploy/", How::Install),
    (
        "docs/install.md",
        "kubectl apply -k\n",
        How::NotRun("names the command in prose; `kubectl apply -k deploy/` on the same page runs"),
    ),
    // The key rotation: the key file edits and the metrics check, step by step against real
    // speakers whose Secret volume is updated as the kubelet does.
    (
        "docs/install.md",
        "cp deploy/memberlist.key deploy/memberlist.old",
        How::Test("speaker/tests/e2e_membership.rs"),
    ),
    (
        "docs/install.md",
        "base64 > deploy/memberlist.new",
        How::Test("speaker/tests/e2e_membership.rs"),
    ),
    (
        "docs/install.md",
        "cat deploy/memberlist.old deploy/memberlist.new",
        How::Test("speaker/tests/e2e_membership.rs"),
    ),
    (
        "docs/install.md",
        "membership_(keys|keyring_failing)",
        How::Test("speaker/tests/e2e_membership.rs"),
    ),
    (
        "docs/install.md",
        "cat deploy/memberlist.new deploy/memberlist.old",
        How::Test("speaker/tests/e2e_membership.rs"),
    ),
    (
        "docs/install.md",
        "cp deploy/memberlist.new deploy/memberlist.key",
        How::Test("speaker/tests/e2e_membership.rs"),
    ),
    (
        "docs/install.md",
        "rm deploy/memberlist.old",
        How::Test("speaker/tests/e2e_membership.rs"),
    ),
    ("docs/install.md", "get deploy,ds,pods", How::Install),
    (
        "docs/install.md",
        "logs deploy/lodestone-controller",
        How::NotRun(
            "no kubelet runs pods here, so there are no container logs; the same log is read from the controller's file in the sandbox tests",
        ),
    ),
    ("docs/install.md", "kubectl get svc", How::Sandbox),
    (
        "docs/install.md",
        "delete daemonset/lodestone-speaker",
        How::Install,
    ),
    ("docs/install.md", "finalizers", How::Install),
    ("docs/install.md", "kubectl delete -k deploy/", How::Install),
    // docs/lodestonectl.md
    (
        "docs/lodestonectl.md",
        "cargo build -p lodestone-cli",
        How::NotRun(
            "a build: CI builds the whole workspace, this crate included (clippy, nextest, the release build)",
        ),
    ),
    (
        "docs/lodestonectl.md",
        "mkdir -p ~/.local/bin",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "ln -s",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "kubectl lodestone status",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "kubectl lodestone why shop/web",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "lodestonectl status",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "lodestonectl why shop/web",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "lodestonectl why -n shop stray",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "lodestonectl why shop/local -o json",
        How::Test("cli/tests/status_why.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "metallb-layer2.yaml",
        How::Test("cli/tests/migrate_metallb.rs"),
    ),
    (
        "docs/lodestonectl.md",
        "kubectl lodestone\n",
        How::NotRun("names the plugin in prose; the commands above it run"),
    ),
    (
        "docs/lodestonectl.md",
        "lodestonectl why SERVICE",
        How::NotRun("usage with a placeholder; `lodestonectl why shop/web` runs"),
    ),
    (
        "docs/lodestonectl.md",
        "lodestonectl migrate-metallb FILE",
        How::NotRun("usage with a placeholder; the transcript below it runs"),
    ),
    // docs/migrating-from-metallb.md
    (
        "docs/migrating-from-metallb.md",
        "lodestonectl migrate-metallb\n",
        How::NotRun("names the command in prose"),
    ),
    ("docs/migrating-from-metallb.md", "bgppeers", How::Migration),
    (
        "docs/migrating-from-metallb.md",
        "migrate-metallb metallb.yaml",
        How::Migration,
    ),
    (
        "docs/migrating-from-metallb.md",
        "deployment/controller daemonset/speaker",
        How::Migration,
    ),
    (
        "docs/migrating-from-metallb.md",
        "kubectl apply -k deploy/",
        How::Migration,
    ),
    (
        "docs/migrating-from-metallb.md",
        "kubectl apply -f lodestone.yaml",
        How::Migration,
    ),
    (
        "docs/migrating-from-metallb.md",
        "kubectl get svc -A",
        How::Migration,
    ),
    (
        "docs/migrating-from-metallb.md",
        "ipaddresspools.lodestone.dev",
        How::Migration,
    ),
    (
        "docs/migrating-from-metallb.md",
        "reason=AllocationFailed",
        How::Migration,
    ),
    // docs/performance.md, docs/testing.md: the benchmarks and the suite
    (
        "docs/performance.md",
        "cargo bench",
        How::NotRun(
            "a benchmark: minutes of a quiet machine; `cargo clippy --all-targets` in CI builds it and its figures are in docs/performance.md",
        ),
    ),
    (
        "docs/performance.md",
        "cargo run --release -p lodestone-sandbox",
        How::SandboxRun,
    ),
    (
        "docs/performance.md",
        "--target x86_64-unknown-linux-musl",
        How::Ci,
    ),
    (
        "docs/performance.md",
        "--test e2e_ownership --no-capture",
        How::NotRun(
            "the test binary CI runs through the README's `cargo nextest run --workspace`; `--no-capture` only shows the figures it prints",
        ),
    ),
    (
        "docs/testing.md",
        "cargo bench",
        How::NotRun(
            "a benchmark: minutes of a quiet machine; `cargo clippy --all-targets` in CI builds it and its figures are in docs/performance.md",
        ),
    ),
    ("docs/testing.md", "cargo nextest run --workspace", How::Ci),
    (
        "docs/testing.md",
        "--run-ignored all",
        How::NotRun("the opt-in slow tests (minutes); CI runs the default set"),
    ),
    ("docs/testing.md", "cargo deny", How::Ci),
    ("docs/testing.md", "--test fuzz_decoders", How::Ci),
    ("docs/testing.md", "mdbook build", How::Ci),
    ("docs/testing.md", "--bin lodestone-apiserver", How::Install),
    (
        "docs/testing.md",
        "kubectl --kubeconfig /tmp/k\n",
        How::NotRun(
            "names the flag in prose; README's `kubectl --kubeconfig … apply -f deploy/crds/` runs",
        ),
    ),
    // docs/reference.md
    (
        "docs/reference.md",
        "--example crdref",
        How::NotRun(
            "rewrites docs/reference.md; crds/tests/generated_reference.rs renders the same text in-process and fails on any difference",
        ),
    ),
    (
        "docs/reference.md",
        "kubectl get\n",
        How::NotRun("names the command in prose (the columns it prints)"),
    ),
    // docs/sandbox.md
    (
        "docs/sandbox.md",
        "cargo bench",
        How::NotRun(
            "a benchmark: minutes of a quiet machine; `cargo clippy --all-targets` in CI builds it and its figures are in docs/performance.md",
        ),
    ),
    ("docs/sandbox.md", "-p lodestone-sandbox\n", How::SandboxRun),
    ("docs/sandbox.md", "--json --quiet", How::SandboxRun),
    ("docs/sandbox.md", "-- --keep", How::SandboxRun),
    (
        "docs/sandbox.md",
        "kubectl get svc -n default hello -o wide",
        How::Sandbox,
    ),
    (
        "docs/sandbox.md",
        "kubectl get ipaddresspools,l2advertisements,nodes",
        How::Sandbox,
    ),
    (
        "docs/sandbox.md",
        "kubectl describe svc -n default hello",
        How::Sandbox,
    ),
    ("docs/sandbox.md", "arping -c 2", How::Sandbox),
];

/// Which plan entries a command matches. The sandbox page's bare `cargo run` has no trailing
/// text, so its needle carries a newline matched against `text + "\n"`.
fn matches(c: &DocCommand) -> Vec<(usize, How)> {
    let text = format!("{}\n", c.text);
    let mut hits: Vec<(usize, How)> = PLAN
        .iter()
        .enumerate()
        .filter(|(_, (file, needle, _))| *file == c.file && text.contains(needle))
        .map(|(i, (_, _, how))| (i, *how))
        .collect();
    // A longer needle is a more precise claim: `kubectl apply -k deploy/` over `kubectl apply -k`.
    if hits.len() > 1 {
        let longest = hits
            .iter()
            .map(|(i, _)| PLAN[*i].1.len())
            .max()
            .unwrap_or(0);
        hits.retain(|(i, _)| PLAN[*i].1.len() == longest);
    }
    hits
}

/// The plan entries of one kind, resolved to the documented commands they name.
fn planned(kind: How) -> Vec<DocCommand> {
    let all = docs::all_commands().expect("docs are readable");
    all.into_iter()
        .filter(|c| matches(c).iter().any(|(_, h)| *h == kind))
        .collect()
}

#[test]
fn every_documented_command_has_a_plan() {
    let all = docs::all_commands().expect("docs are readable");
    assert!(
        all.len() > 40,
        "the parser found too few commands: {all:#?}"
    );
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for c in &all {
        match matches(c).as_slice() {
            [] => problems.push(format!(
                "{c}\n    is run by no test: run it in sandbox/tests/docs_commands.rs (or say in its PLAN why it cannot run here)"
            )),
            [(i, _)] => {
                used.insert(*i);
            }
            many => problems.push(format!("{c}\n    matches several plan entries: {many:?}")),
        }
    }
    for (i, (file, needle, _)) in PLAN.iter().enumerate() {
        if !used.contains(&i) {
            problems.push(format!(
                "plan entry {file} {needle:?} matches no documented command any more"
            ));
        }
    }
    let root = docs::repo_root();
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    for c in &all {
        for (i, how) in matches(c) {
            match how {
                How::Ci => {
                    let needle = PLAN[i].1;
                    if !ci.contains(needle) {
                        problems.push(format!(
                            "{c}\n    is said to run in .ci/run, which does not contain {needle:?}"
                        ));
                    }
                }
                How::Test(path) => {
                    let src = std::fs::read_to_string(root.join(path)).unwrap_or_default();
                    // The test must take the command from the docs, by this page.
                    if !src.contains("docs::") || !src.contains(&format!("\"{}\"", c.file)) {
                        problems.push(format!(
                            "{c}\n    is said to run in {path}, which does not read it from {}",
                            c.file
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Shared plumbing

/// `target/<profile>`, with the four programs the docs use built into it if needed.
fn bin_dir() -> PathBuf {
    const BINS: [(&str, &str); 4] = [
        ("lodestone-controller", "lodestone-controller"),
        ("lodestone-speaker", "lodestone-speaker"),
        ("lodestone-apiserver", "lodestone-harness"),
        ("lodestonectl", "lodestone-cli"),
    ];
    let exe = std::env::current_exe().expect("test binary path");
    // `target/debug/deps/docs_commands-…` → `target/debug`.
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_owned();
    let missing: Vec<&str> = BINS
        .iter()
        .filter(|(bin, _)| !dir.join(bin).is_file())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build");
        for p in &missing {
            cmd.args(["-p", p]);
        }
        assert!(
            cmd.status().expect("cargo runs").success(),
            "building {missing:?} failed"
        );
    }
    dir
}

/// The words of a line, for comparing a transcript's header with real output.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

// ---------------------------------------------------------------------------------------------
// The sandbox

/// A running `lodestone-sandbox --keep`, stopped with SIGINT on drop.
struct KeptSandbox {
    child: Child,
    hints: Vec<String>,
}

impl KeptSandbox {
    fn start(args: &[&str], bin_dir: &Path) -> KeptSandbox {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lodestone-sandbox"))
            .args(args)
            .arg("--bin-dir")
            .arg(bin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sandbox runs");
        // The story goes to stdout, or to stderr with --json: read both.
        let (tx, rx) = mpsc::channel();
        let out: Box<dyn std::io::Read + Send> =
            Box::new(child.stdout.take().expect("piped stdout"));
        let err: Box<dyn std::io::Read + Send> =
            Box::new(child.stderr.take().expect("piped stderr"));
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("sandbox: {line}");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the readers hold senders now: when the sandbox exits, both streams end and the
        // loop below stops at once instead of waiting out its deadline.
        drop(tx);
        let mut kept = KeptSandbox {
            child,
            hints: Vec::new(),
        };
        let mut hinting = false;
        // A deadline only to turn a hang into a failure.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(180)) {
            // The story's lines carry a `[ 0.5s]` stamp; the hints are printed bare.
            let bare = line
                .trim_start_matches(|c: char| c != ']')
                .trim_start_matches("] ");
            let bare = if line.starts_with('[') {
                bare
            } else {
                line.as_str()
            };
            if bare.starts_with("still running") {
                hinting = true;
            }
            if hinting {
                kept.hints.push(bare.to_owned());
                if bare.trim_start().starts_with("logs:") {
                    return kept;
                }
            }
        }
        let mut exited = None;
        for _ in 0..50 {
            exited = kept.child.try_wait().ok().flatten();
            if exited.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the sandbox never printed its hints (exit: {exited:?}; its output is above); hints so far: {:?}",
            kept.hints
        );
    }

    fn hint(&self, needle: &str) -> &str {
        self.hints
            .iter()
            .find(|h| h.contains(needle))
            .unwrap_or_else(|| panic!("no hint with {needle:?} in {:?}", self.hints))
    }

    fn kubeconfig(&self) -> PathBuf {
        let line = self.hint("export KUBECONFIG=");
        PathBuf::from(line.trim().trim_start_matches("export KUBECONFIG="))
    }

    /// The namespace of the line ending `# label` (`client`'s line ends `# from the client…`).
    fn netns(&self, label: &str) -> String {
        let re = Regex::new(r"ip netns exec (\S+)").expect("regex");
        let line = self.hint(label);
        re.captures(line)
            .map(|c| c[1].to_owned())
            .unwrap_or_else(|| panic!("no namespace in {line:?}"))
    }

    /// `(controller log dir, speakers' log dir)`.
    fn log_dirs(&self) -> (PathBuf, PathBuf) {
        let re = Regex::new(r"logs: (\S+) \(controller\), (\S+) \(speakers\)").expect("regex");
        let line = self.hint("logs:");
        let c = re.captures(line).unwrap_or_else(|| panic!("{line:?}"));
        (PathBuf::from(&c[1]), PathBuf::from(&c[2]))
    }
}

impl Drop for KeptSandbox {
    fn drop(&mut self) {
        // Our own unreaped child; gone already is fine.
        let _ = lodestone_harness::signal::send(self.child.id(), libc::SIGINT);
        let _ = self.child.wait();
    }
}

/// Replaces the names a page uses for its example with the sandbox's.
fn translate(c: &DocCommand, client_ns: &str, speaker_logs: &Path) -> String {
    let mut text = c.text.clone();
    // We are root; the page says `sudo` for readers who are not.
    if let Some(rest) = text.strip_prefix("sudo ") {
        text = rest.to_owned();
    }
    // Container logs need a kubelet; the speakers' log files hold the same lines.
    text = text.replace(
        "kubectl -n lodestone-system logs ds/lodestone-speaker",
        &format!("cat {}/*.log", speaker_logs.display()),
    );
    let word = |t: &str, from: &str, to: &str| {
        Regex::new(&format!(r"\b{from}\b"))
            .expect("regex")
            .replace_all(t, to)
            .into_owned()
    };
    // The pages' example Service is `web` (or NAME); the sandbox's is `hello`.
    text = word(&text, "web", "hello");
    text = word(&text, "NAME", "hello");
    // node-a's address on the sandbox's LAN.
    text = text.replace("NODE_IP", "192.0.2.11");
    // The transcript's namespace names were those of the run that made it.
    text = Regex::new(r"ldcl-\d+-\d+")
        .expect("regex")
        .replace_all(&text, client_ns)
        .into_owned();
    // What a person runs on a machine on the LAN runs in the client's namespace.
    let program = text.split_whitespace().next().unwrap_or("");
    let on_lan = matches!(program, "arping" | "ndisc6" | "curl")
        || (program == "ip" && !text.starts_with("ip netns"));
    if on_lan {
        text = format!(
            "ip netns exec {client_ns} sh -c '{}'",
            text.replace('\'', r"'\''")
        );
    }
    text
}

/// Each documented command in the sandbox's world, with what its output must show.
#[test]
fn sandbox_commands_run() {
    let bins = bin_dir();
    let keep = doc("docs/sandbox.md", "-- --keep");
    let args: Vec<&str> = keep
        .text
        .split(" -- ")
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(args, ["--keep"], "{keep}");
    let sandbox = KeptSandbox::start(&args, &bins);
    let kubeconfig = sandbox.kubeconfig();
    let client = sandbox.netns("from the client");
    let (controller_logs, speaker_logs) = sandbox.log_dirs();
    assert!(
        controller_logs.is_dir() && speaker_logs.is_dir(),
        "{:?}",
        sandbox.hints
    );
    let cwd = tempfile::tempdir().expect("temp dir");

    // The hints the page shows are the ones the sandbox prints, but for the run's names.
    let printed = sandbox.hints.join("\n");
    let shown = docs_block_after(&keep);
    let norm = |t: &str| {
        let t = Regex::new(r"ld(cl|nd)-\d+-(\d+)")
            .unwrap()
            .replace_all(t, "ld$1-N-$2");
        Regex::new(r"/tmp/lodestone-([a-z]+)-[A-Za-z0-9]+(\.yaml)?")
            .unwrap()
            .replace_all(&t, "/tmp/lodestone-$1-X$2")
            .into_owned()
    };
    assert_eq!(
        norm(&shown).trim(),
        norm(&printed).trim(),
        "docs/sandbox.md's --keep block is not what the sandbox prints"
    );
    // ...and each of them runs.
    for hint in &sandbox.hints[2..sandbox.hints.len() - 1] {
        let script = hint.split("   #").next().unwrap_or(hint).trim();
        sh(script, cwd.path(), &bins, &kubeconfig).expect_ok(script);
    }

    // An IPv6 address as well, for the NDP commands: the pool gains 2001:db8::100 and a second
    // Service asks for IPv6, with a ready endpoint on node-a.
    add_ipv6_service(cwd.path(), &bins, &kubeconfig);

    let run = |c: &DocCommand| {
        let script = translate(c, &client, &speaker_logs);
        (script.clone(), sh(&script, cwd.path(), &bins, &kubeconfig))
    };
    // The node that announces hello, for the commands a page runs "on the owner node".
    let owner = sh(
        r#"kubectl get service hello -o jsonpath='{.status.conditions[?(@.type=="lodestone.dev/Announced")].message}'"#,
        cwd.path(),
        &bins,
        &kubeconfig,
    )
    .expect_ok("the Announced condition");
    let owner = owner
        .split_whitespace()
        .find(|w| w.starts_with("node-"))
        .unwrap_or_else(|| panic!("no node in {owner:?}"))
        .to_owned();
    let owner_ns = sandbox.netns(&format!("# {owner}"));
    let mac_re = Regex::new(r"(?i)\b([0-9a-f]{2}(:[0-9a-f]{2}){5})\b").expect("regex");
    let mut problems = Vec::new();
    for c in planned(How::Sandbox) {
        if c.text.starts_with("ip -6 neigh") {
            // "After it has sent traffic there", as the page says: the client's kernel resolves
            // the address when something is sent to it (no answer is needed).
            let ping = format!("ip netns exec {client} ping -6 -c 1 -W 1 2001:db8::100");
            let _ = sh(&ping, cwd.path(), &bins, &kubeconfig);
        }
        let (script, ran) = if c.text == "ip link show eth0" {
            let script = format!("ip netns exec {owner_ns} ip link show eth0");
            (script.clone(), sh(&script, cwd.path(), &bins, &kubeconfig))
        } else {
            run(&c)
        };
        if !ran.ok {
            problems.push(format!(
                "{c}\n  as {script} failed:\n{}{}",
                ran.stdout, ran.stderr
            ));
            continue;
        }
        let out = ran.stdout;
        let t = c.text.as_str();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("{c}\n  as {script}: {what}; output:\n{out}"));
            }
        };
        if t.contains("jsonpath=") {
            check(
                out.contains("announced from node-") && out.contains(" on eth0"),
                "the Announced message names node and interface",
            );
        } else if t.contains("involvedObject.name") {
            check(
                out.contains("AnnouncementStarted") || out.contains("IPAllocated"),
                "the Service's Events",
            );
        } else if t.starts_with("kubectl describe") {
            check(
                out.contains("Events:") && out.contains("lodestone-speaker"),
                "the speaker's Events",
            );
        } else if t.contains("arping") {
            let macs: BTreeSet<String> = mac_re
                .captures_iter(&out)
                .map(|m| m[1].to_lowercase())
                .collect();
            check(macs.len() == 1, "exactly one MAC answers");
        } else if t.starts_with("ndisc6") {
            check(
                out.contains("Target link-layer address"),
                "a Neighbor Advertisement came back",
            );
        } else if t.contains("neigh show") {
            check(
                out.contains("lladdr"),
                "the client's kernel resolved the address",
            );
        } else if t.contains("/metrics") {
            check(
                out.contains("lodestone_speaker_addresses_announced"),
                "the speaker's metrics",
            );
        } else if t.contains("logs ds/") {
            check(
                out.lines().all(|l| l.contains("default/hello")),
                "every line names the object",
            );
        } else if t.starts_with("kubectl get svc") && !t.contains("hello") {
            check(out.contains("192.0.2.100"), "the external address");
        } else if t.starts_with("kubectl get ipaddresspools") && !t.contains(',') {
            check(out.contains("sandbox"), "the pool");
        } else if t == "ip link show eth0" {
            let arp = sh(
                &format!("ip netns exec {client} arping -c 1 -I eth0 192.0.2.100"),
                cwd.path(),
                &bins,
                &kubeconfig,
            );
            let mac = mac_re
                .captures(&arp.stdout)
                .map(|m| m[1].to_lowercase())
                .unwrap_or_default();
            check(
                !mac.is_empty() && out.to_lowercase().contains(&mac),
                &format!("the owner {owner}'s link carries the MAC arping saw ({mac})"),
            );
        }
        // A transcript's first output line (a table header, `Events:`, `ARPING …`) starts the
        // same for real.
        if let Some(sample) = &c.output {
            let (want, got) = (
                sample.lines().next().unwrap_or(""),
                out.lines().next().unwrap_or(""),
            );
            let n = words(want).len().min(2);
            check(
                words(got).get(..n) == words(want).get(..n),
                &format!("output starts like the page's {want:?}"),
            );
        }
    }
    drop(sandbox);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The plain block that follows `c`'s block in its page (what the page says it prints).
fn docs_block_after(c: &DocCommand) -> String {
    let text = std::fs::read_to_string(docs::repo_root().join(&c.file)).expect("page");
    let lines: Vec<&str> = text.lines().collect();
    let mut fences = lines
        .iter()
        .enumerate()
        .skip(c.line)
        .filter(|(_, l)| l.trim_start().starts_with("```"))
        .map(|(i, _)| i);
    let _close = fences.next();
    let open = fences.next().expect("a block after the command");
    let close = fences.next().expect("its end");
    lines[open + 1..close].join("\n")
}

fn add_ipv6_service(cwd: &Path, bins: &Path, kubeconfig: &Path) {
    let manifest = r#"
apiVersion: v1
kind: Service
metadata: {name: hello6, namespace: default}
spec:
  type: LoadBalancer
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  ports: [{port: 7000, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello6-e2e
  namespace: default
  labels: {kubernetes.io/service-name: hello6}
addressType: IPv6
endpoints:
  - addresses: ["2001:db8:1::1"]
    conditions: {ready: true}
    nodeName: node-a
ports: [{port: 7000, protocol: UDP}]
"#;
    let file = cwd.join("hello6.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    sh(
        r#"kubectl patch ipaddresspool sandbox --type=json -p '[{"op":"add","path":"/spec/addresses/-","value":"2001:db8::100/128"}]'"#,
        cwd,
        bins,
        kubeconfig,
    )
    .expect_ok("adding 2001:db8::100 to the pool");
    sh("kubectl apply -f hello6.yaml", cwd, bins, kubeconfig).expect_ok("the IPv6 Service");
    eventually("hello6 announced", || {
        let ran = sh(
            r#"kubectl get svc hello6 -o jsonpath='{.status.loadBalancer.ingress[0].ip} {.status.conditions[?(@.type=="lodestone.dev/Announced")].status}'"#,
            cwd,
            bins,
            kubeconfig,
        );
        (ran.ok && ran.stdout.trim() == "2001:db8::100 True").then_some(())
    });
}

/// The sandbox's plain runs, as README and docs/sandbox.md show them (`cargo run` builds; the
/// test runs what it built).
#[test]
fn sandbox_runs_as_documented() {
    let bins = bin_dir();
    let mut seen = BTreeSet::new();
    for c in planned(How::SandboxRun) {
        let args: Vec<String> = c
            .text
            .split(" -- ")
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert!(
            c.text
                .starts_with("cargo run --release -p lodestone-sandbox"),
            "{c}"
        );
        // `--keep` waits for Ctrl-C: `sandbox_commands_run` drives it.
        if args.iter().any(|a| a == "--keep") || !seen.insert(args.clone()) {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_lodestone-sandbox"))
            .args(&args)
            .arg("--bin-dir")
            .arg(&bins)
            .stdin(Stdio::null())
            .output()
            .expect("the sandbox runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{c}:\n{stdout}\n{stderr}");
        if args.iter().any(|a| a == "--json") {
            let v: serde_json::Value = serde_json::from_str(stdout.trim())
                .unwrap_or_else(|e| panic!("{c}: stdout is not JSON ({e}): {stdout}"));
            assert_eq!(v["ok"], true, "{c}: {v}");
        }
        // The story goes to stdout, or to stderr when stdout carries the JSON.
        let story = format!("{stdout}{stderr}");
        if args.iter().any(|a| a == "--quiet") {
            assert!(
                !story.contains("failover:"),
                "{c}: --quiet still tells the story:\n{story}"
            );
        } else {
            assert!(
                story.contains("failover: client traffic reached"),
                "{c}:\n{story}"
            );
        }
    }
    assert!(seen.len() >= 2, "the bare run and --json --quiet: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// An API server of our own: install, uninstall, migrate

/// `lodestone-apiserver` started as README says, with the kubeconfig path it names moved into
/// a temp dir; killed on drop.
struct ApiServer {
    child: Child,
    kubeconfig: PathBuf,
}

impl ApiServer {
    fn start(page: &str, bins: &Path, dir: &Path) -> ApiServer {
        let c = doc(page, "--bin lodestone-apiserver");
        let args: Vec<&str> = c
            .text
            .split(" -- ")
            .nth(1)
            .expect("arguments")
            .split_whitespace()
            .collect();
        let kubeconfig = dir.join("kubeconfig");
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("/tmp/") {
                    kubeconfig.display().to_string()
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        let child = Command::new(bins.join("lodestone-apiserver"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lodestone-apiserver runs");
        let server = ApiServer { child, kubeconfig };
        eventually("the API server's kubeconfig", || {
            let ran = sh("kubectl get ns default", dir, bins, &server.kubeconfig);
            ran.ok.then_some(())
        });
        server
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user's checkout: `deploy/` (with `deploy/crds/`) copied into a temp dir.
#[test]
fn install_commands_run() {
    let bins = bin_dir();
    let repo = checkout();
    let cwd = repo.path();
    let server = ApiServer::start("README.md", &bins, cwd);
    let kc = server.kubeconfig.clone();
    let run = |c: &DocCommand| {
        let script = c
            .text
            .replace("/tmp/lodestone.kubeconfig", &kc.display().to_string());
        sh(&script, cwd, &bins, &kc).expect_ok(&c.to_string())
    };
    // README: the CRDs alone, as the testing section shows; the other page's twin as well.
    run(&doc("README.md", "apply -f deploy/crds/"));
    let twin = doc("docs/testing.md", "--bin lodestone-apiserver");
    assert_eq!(
        twin.text.split(" -- ").next(),
        doc("README.md", "--bin lodestone-apiserver")
            .text
            .split(" -- ")
            .next(),
        "{twin}"
    );

    // docs/install.md, top to bottom.
    let page = "docs/install.md";
    let install = docs::commands_of(page).expect("install.md");
    let key = install
        .iter()
        .find(|c| c.text.contains("base64 > deploy/memberlist.key"))
        .expect("the key command");
    run(key);
    let key_bytes = std::fs::read(cwd.join("deploy/memberlist.key")).expect("the key file");
    assert!(key_bytes.len() >= 16, "the speaker wants at least 16 bytes");
    let rendered = run(&doc(page, "kubectl kustomize deploy/"));
    assert!(
        rendered.contains("kind: DaemonSet") && rendered.contains("lodestone-memberlist"),
        "{rendered}"
    );
    run(&doc(page, "kubectl apply -k deploy/"));
    run(&doc("README.md", "kubectl apply -k deploy/"));
    let got = run(&doc(page, "get deploy,ds,pods"));
    assert!(
        got.contains("deployment.apps/lodestone-controller")
            && got.contains("daemonset.apps/lodestone-speaker"),
        "{got}"
    );
    // A pool as the page's example makes one, so the uninstall has a finalizer to release.
    let pool = "apiVersion: lodestone.dev/v1alpha1\nkind: IPAddressPool\nmetadata:\n  name: default\n  finalizers: [lodestone.dev/pool-in-use]\nspec:\n  addresses: [192.0.2.240/28]\n";
    std::fs::write(cwd.join("pool.yaml"), pool).expect("write pool");
    sh("kubectl apply -f pool.yaml", cwd, &bins, &kc).expect_ok("a pool");
    // Uninstall, in the page's order.
    run(&doc(page, "delete daemonset/lodestone-speaker"));
    run(&doc(page, "finalizers"));
    run(&doc(page, "kubectl delete -k deploy/"));
    let left = sh(
        "kubectl get crd,clusterrole,clusterrolebinding -o name",
        cwd,
        &bins,
        &kc,
    )
    .expect_ok("listing");
    assert!(!left.contains("lodestone"), "left behind:\n{left}");
    eventually("no pools left", || {
        let ran = sh("kubectl get ipaddresspools -o name", cwd, &bins, &kc);
        // Once the CRD is gone the type is unknown: also nothing left.
        (!ran.ok || ran.stdout.trim().is_empty()).then_some(())
    });
    drop(server);
}

#[test]
fn migration_commands_run() {
    let bins = bin_dir();
    let repo = checkout();
    let cwd = repo.path();
    let server = ApiServer::start("README.md", &bins, cwd);
    let kc = server.kubeconfig.clone();
    let sh_ok = |script: &str| sh(script, cwd, &bins, &kc).expect_ok(script);

    // MetalLB as it was: its CRDs (schemaless here), its objects from the test fixture, its
    // controller and speaker.
    std::fs::write(cwd.join("metallb-crds.yaml"), metallb_crds()).expect("write");
    sh_ok("kubectl apply -f metallb-crds.yaml");
    sh_ok("kubectl create namespace metallb-system");
    let fixture = docs::repo_root().join("cli/tests/fixtures/metallb-layer2.yaml");
    eventually("MetalLB's CRDs served", || {
        sh(
            &format!("kubectl apply -f {}", fixture.display()),
            cwd,
            &bins,
            &kc,
        )
        .ok
        .then_some(())
    });
    std::fs::write(cwd.join("metallb-workloads.yaml"), METALLB_WORKLOADS).expect("write");
    sh_ok("kubectl apply -f metallb-workloads.yaml");

    // Services as MetalLB left them: `web` holds an address of the cheap pool; `legacy` names
    // a pool that never existed, so Lodestone refuses it with an AllocationFailed Event.
    std::fs::write(cwd.join("services.yaml"), LEFT_BY_METALLB).expect("write");
    sh_ok("kubectl apply -f services.yaml");
    sh_ok(
        r#"kubectl -n shop patch service web --subresource=status --type=merge -p '{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.42"}]}}}'"#,
    );
    // The controller is what `kubectl apply -k deploy/` starts on a cluster; here it runs from
    // the build once the resources are in (no kubelet runs the Deployment).
    let mut controller = None;

    let page = "docs/migrating-from-metallb.md";
    for c in docs::commands_of(page).expect("page") {
        if matches(&c).iter().all(|(_, h)| *h != How::Migration) {
            continue;
        }
        let script = c.text.clone();
        if script.contains("kubectl apply -k deploy/") {
            // install.md's key first, as that page says.
            sh_ok(&doc("docs/install.md", "base64 > deploy/memberlist.key").text);
        }
        if script.contains("kubectl get svc -A") && controller.is_none() {
            controller = Some(
                lodestone_harness::e2e::controller::ControllerProcess::spawn(
                    &bins.join("lodestone-controller"),
                    &kc,
                    &[],
                    &cwd.join("controller.log"),
                )
                .expect("the controller starts"),
            );
            eventually(
                "the controller keeps web's address and refuses legacy",
                || {
                    let web = sh(
                        r#"kubectl -n shop get svc web -o jsonpath='{.status.conditions[?(@.type=="lodestone.dev/AddressAssigned")].status}'"#,
                        cwd,
                        &bins,
                        &kc,
                    );
                    let legacy = sh(
                        r#"kubectl -n shop get svc legacy -o jsonpath='{.status.conditions[?(@.type=="lodestone.dev/AddressAssigned")].status}'"#,
                        cwd,
                        &bins,
                        &kc,
                    );
                    (web.stdout.trim() == "True" && legacy.stdout.trim() == "False").then_some(())
                },
            );
        }
        let out = sh(&script, cwd, &bins, &kc);
        let text = out.expect_ok(&c.to_string());
        if c.text.contains("bgppeers") {
            let exported = std::fs::read_to_string(cwd.join("metallb.yaml")).expect("metallb.yaml");
            assert!(
                exported.contains("kind: List") && exported.contains("metallb.io/v1beta1"),
                "{exported}"
            );
        }
        if c.text.contains("migrate-metallb") {
            let converted =
                std::fs::read_to_string(cwd.join("lodestone.yaml")).expect("lodestone.yaml");
            assert!(
                converted.contains("lodestone.dev/v1alpha1")
                    && converted.contains("kind: IPAddressPool"),
                "{converted}"
            );
        }
        if c.text.contains("get svc -A") {
            // The same external address as under MetalLB.
            let web = text
                .lines()
                .find(|l| l.contains(" web "))
                .unwrap_or_default();
            assert!(web.contains("198.51.100.42"), "{text}");
        }
        if c.text.contains("ipaddresspools.lodestone.dev") {
            assert!(
                text.contains("ipaddresspool.lodestone.dev/cheap")
                    && text.contains("l2advertisement.lodestone.dev/"),
                "{text}"
            );
        }
        if c.text.contains("reason=AllocationFailed") {
            assert!(
                text.contains("legacy") && text.contains("AllocationFailed"),
                "{text}"
            );
        }
    }
    drop(controller);
    let left = sh_ok("kubectl -n metallb-system get deploy,ds -o name");
    assert!(
        left.trim().is_empty(),
        "MetalLB's controller and speaker are gone: {left}"
    );
    drop(server);
}

const LEFT_BY_METALLB: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata:
  name: legacy
  namespace: shop
  annotations: {lodestone.dev/address-pool: retired}
spec:
  type: LoadBalancer
  selector: {app: legacy}
  ports: [{port: 80, protocol: TCP}]
"#;

const METALLB_WORKLOADS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: controller, namespace: metallb-system}
spec:
  selector: {matchLabels: {app: metallb, component: controller}}
  template:
    metadata: {labels: {app: metallb, component: controller}}
    spec:
      containers: [{name: controller, image: "quay.io/metallb/controller:v0.14.9"}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: speaker, namespace: metallb-system}
spec:
  selector: {matchLabels: {app: metallb, component: speaker}}
  template:
    metadata: {labels: {app: metallb, component: speaker}}
    spec:
      containers: [{name: speaker, image: "quay.io/metallb/speaker:v0.14.9"}]
"#;

/// Schemaless CRDs for the MetalLB kinds in the fixture: enough to store and list them.
fn metallb_crds() -> String {
    let kinds = [
        ("IPAddressPool", "ipaddresspools", "v1beta1"),
        ("L2Advertisement", "l2advertisements", "v1beta1"),
        ("BGPAdvertisement", "bgpadvertisements", "v1beta1"),
        ("BGPPeer", "bgppeers", "v1beta2"),
        ("BFDProfile", "bfdprofiles", "v1beta1"),
        ("Community", "communities", "v1beta1"),
    ];
    kinds
        .iter()
        .map(|(kind, plural, version)| {
            format!(
                r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.metallb.io}}
spec:
  group: metallb.io
  scope: Namespaced
  names: {{kind: {kind}, plural: {plural}, singular: {singular}, listKind: {kind}List}}
  versions:
    - name: {version}
      served: true
      storage: true
      schema:
        openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
---
"#,
                singular = kind.to_lowercase()
            )
        })
        .collect()
}
