//! Runs the real sandbox binary end to end (root needed: it makes network namespaces) and
//! checks the facts it reports and that it leaves nothing behind. No timing is asserted: the
//! failover time only has to be a measured, positive number.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The target dir of this test build (`target/debug`), with the controller and speaker built
/// into it if the workspace build has not done so already.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let found = exe.ancestors().skip(1).find(|d| {
        d.join("lodestone-controller").is_file() && d.join("lodestone-speaker").is_file()
    });
    if let Some(dir) = found {
        return dir.to_owned();
    }
    // `target/debug/deps/sandbox_run-…` → `target/debug`.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "lodestone-controller",
            "-p",
            "lodestone-speaker",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the binaries failed");
    assert!(
        profile_dir.join("lodestone-controller").is_file(),
        "no controller in {}",
        profile_dir.display()
    );
    profile_dir
}

fn sandbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lodestone-sandbox"))
        .args(args)
        .output()
        .expect("the sandbox runs")
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_whole_story_runs_and_leaves_nothing_behind() {
    let dir = bin_dir();
    let out = sandbox(&["--json", "--bin-dir", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sandbox failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));

    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["client_ok"], true, "{r}");
    let address = r["address"].as_str().unwrap();
    assert!(address.starts_with("192.0.2."), "{address}");
    let owner = r["owner"].as_str().unwrap();
    let new_owner = r["new_owner"].as_str().unwrap();
    assert!(NODES.contains(&owner), "owner {owner}");
    assert!(NODES.contains(&new_owner), "new owner {new_owner}");
    assert_ne!(owner, new_owner);
    assert_eq!(r["announced_by"], r["owner"]);
    let failover = r["failover_ms"].as_f64().unwrap();
    assert!(failover > 0.0, "failover_ms {failover}");
    // By default the only Local endpoint goes to the node that neither failed nor took over,
    // so the announcement visibly moves, and the client's traffic follows it there.
    let local = r["local_policy_node"].as_str().unwrap();
    assert!(
        NODES.contains(&local) && local != owner && local != new_owner,
        "{r}"
    );
    assert_eq!(r["local_policy_owner"], local, "{r}");
    // The story told the same facts on stderr.
    assert!(stderr.contains(&format!("answered by {owner}")), "{stderr}");
    assert!(
        stderr.contains("failover: client traffic reached"),
        "{stderr}"
    );

    assert_nothing_left(&r);
}

/// No namespace, process or temporary file the run reported is still there.
fn assert_nothing_left(r: &Value) {
    let namespaces = strs(&r["namespaces"]);
    assert_eq!(namespaces.len(), 5, "switch, client and three nodes: {r}");
    let list = netns_list();
    for ns in &namespaces {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "namespace {ns} left behind:\n{list}"
        );
    }
    let pids: Vec<u64> = r["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 4, "controller and three speakers: {r}");
    for pid in pids {
        // The children were reaped by the sandbox; a pid still present must be another program.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !cmdline.contains("lodestone-"),
            "pid {pid} still runs: {cmdline}"
        );
    }
    let temps = strs(&r["temp_paths"]);
    assert!(!temps.is_empty());
    for t in temps {
        assert!(!Path::new(&t).exists(), "{t} left behind");
    }
}

#[test]
fn a_failed_step_is_named_and_nothing_is_created() {
    let missing = std::env::temp_dir().join(format!("lodestone-no-bins-{}", std::process::id()));
    let out = sandbox(&["--json", "--bin-dir", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step 1"), "{stderr}");
    let r: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("--bin-dir"), "{r}");
    assert_eq!(r["namespaces"].as_array().map(Vec::len), Some(0));
}

#[test]
fn an_unknown_local_node_is_refused_before_anything_runs() {
    let out = sandbox(&["--json", "--local-node", "node-z"]);
    assert!(!out.status.success());
    let r: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert!(r["error"].as_str().unwrap().contains("node-z"), "{r}");
    assert_eq!(r["pids"].as_array().map(Vec::len), Some(0));
}

/// Starts the sandbox with stderr (the story) streamed line by line.
fn spawn_sandbox(args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lodestone-sandbox"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sandbox runs");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads story lines until one contains `needle`; returns everything read.
fn read_until(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let mut seen = String::new();
    // A deadline only to turn a hang into a failure.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("never saw {needle:?}; story so far:\n{seen}");
}

fn signal(child: &std::process::Child, sig: i32) {
    // Our own unreaped child: the pid cannot have been recycled.
    lodestone_harness::signal::send(child.id(), sig).expect("kill(2)");
}

fn finish(mut child: std::process::Child) -> (std::process::ExitStatus, Value) {
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    let r = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));
    (status, r)
}

#[test]
fn keep_runs_until_sigint_then_cleans_up() {
    let dir = bin_dir();
    let (child, rx) = spawn_sandbox(&["--json", "--keep", "--bin-dir", dir.to_str().unwrap()]);
    let story = read_until(&rx, "still running");
    let hints = read_until(&rx, "logs:");
    // The hints name the root kubeconfig and the namespaces to explore.
    assert!(hints.contains("export KUBECONFIG=/"), "{hints}");
    assert!(hints.contains("ip netns exec "), "{hints}");
    let kubeconfig = hints
        .lines()
        .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .unwrap()
        .to_owned();
    assert!(
        Path::new(&kubeconfig).is_file(),
        "{kubeconfig} while running"
    );
    signal(&child, libc::SIGINT);
    let (status, r) = finish(child);
    assert!(status.success(), "{story}{hints}{r}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["kubeconfig"], kubeconfig.as_str());
    assert_nothing_left(&r);
}

#[test]
fn sigterm_mid_story_unwinds_and_cleans_up() {
    let dir = bin_dir();
    let (child, rx) = spawn_sandbox(&["--json", "--bin-dir", dir.to_str().unwrap()]);
    read_until(&rx, "controller assigned");
    signal(&child, libc::SIGTERM);
    let (status, r) = finish(child);
    assert!(!status.success(), "{r}");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("interrupted by SIGTERM"),
        "{r}"
    );
    assert_nothing_left(&r);
}
