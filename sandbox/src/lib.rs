//! The sandbox: Lodestone's whole job on one machine, told as a short story.
//!
//! The topology and the processes come from [`lodestone_harness::e2e`] (the same lab the
//! speaker's end-to-end tests use); this crate holds the story's steps, each a function a test
//! can drive, and the pure decisions they rest on (which binaries, which address, which node
//! announces, which node the `Local` policy moves to), which have unit and property tests.
//!
//! Everything the sandbox creates is owned by [`Sandbox`] and removed when it is dropped: on
//! success, on a failed step, on a panic and on SIGINT/SIGTERM (see [`run`]).
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use lodestone_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use lodestone_harness::e2e::lab::{Lab, PROBE_PORT};
use lodestone_harness::e2e::{Answer, ControllerProcess, Prober, metrics, objects};
use serde::Serialize;

/// The sandbox's nodes, in creation order.
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// Namespace of the sandbox's Service.
pub const NAMESPACE: &str = "default";
/// Name of the sandbox's Service.
pub const SERVICE: &str = "hello";
/// Name of the `IPAddressPool` and the `L2Advertisement`.
pub const POOL: &str = "sandbox";
/// First address of the pool; the pool holds [`POOL_SIZE`] addresses from here, all inside the
/// lab's 192.0.2.0/24 so the client reaches them on-link.
pub const POOL_FIRST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// Addresses in the pool. Small, because every node runs a responder on each of them (the
/// controller picks the address, so the responders must be ready for any).
pub const POOL_SIZE: u8 = 5;
/// Client request interval: the resolution of the failover measurement.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Deadline of each wait: turns a hang into a failed step, never a timing claim.
const WAIT: Duration = Duration::from_secs(30);
/// The speaker's gauge of live speakers, itself included.
const MEMBERS_GAUGE: &str = "lodestone_speaker_membership_members";
/// How often waits poll.
const POLL: Duration = Duration::from_millis(5);

/// Command-line choices that shape a run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Directory holding `lodestone-controller` and `lodestone-speaker`; `None` looks next to
    /// the sandbox's executable and builds them when they are not there.
    pub bin_dir: Option<PathBuf>,
    /// Keep everything running after the story until SIGINT/SIGTERM.
    pub keep: bool,
    /// Node that gets the only ready endpoint under `externalTrafficPolicy: Local`; `None`
    /// picks the surviving node that does not own the address, so the move is visible.
    pub local_node: Option<String>,
}

/// The facts of a run, printed as one JSON object by `--json`. Fields stay `None` when the
/// run failed before establishing them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Whether every step succeeded.
    pub ok: bool,
    /// The failed step and why, when `ok` is false.
    pub error: Option<String>,
    /// The address the controller assigned.
    pub address: Option<String>,
    /// The pool it came from.
    pub pool: Option<String>,
    /// The node whose speaker wrote `lodestone.dev/Announced=True`.
    pub announced_by: Option<String>,
    /// The node that answered the client's first request (the owner).
    pub owner: Option<String>,
    /// Whether the client got an answer through the address.
    pub client_ok: bool,
    /// From killing the owner (speaker SIGKILL and link cut) to the client's first answer from
    /// another node, measured on the client.
    pub failover_ms: Option<f64>,
    /// The node that answered after the failover.
    pub new_owner: Option<String>,
    /// The node holding the only ready endpoint under `externalTrafficPolicy: Local`.
    pub local_policy_node: Option<String>,
    /// The node that answered the client once the policy was `Local`.
    pub local_policy_owner: Option<String>,
    /// From the policy switch to the client's first answer from that node, on the client.
    pub local_policy_ms: Option<f64>,
    /// The binaries that ran.
    pub controller_bin: Option<PathBuf>,
    /// The speaker binary.
    pub speaker_bin: Option<PathBuf>,
    /// Kubeconfig for the root namespace (removed on exit).
    pub kubeconfig: Option<PathBuf>,
    /// Every network namespace the run created (all removed on exit).
    pub namespaces: Vec<String>,
    /// Pids of the controller and speakers the run started (all stopped on exit).
    pub pids: Vec<u32>,
    /// Temporary files and directories the run created (all removed on exit).
    pub temp_paths: Vec<PathBuf>,
}

/// Prints the story with the time since the start, on stdout, or stderr when stdout carries
/// JSON, or nowhere.
#[derive(Debug, Clone, Copy)]
pub struct Story {
    start: Instant,
    sink: Sink,
}

/// Where a [`Story`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Nowhere.
    Silent,
}

impl Story {
    /// A story whose clock starts now.
    pub fn new(sink: Sink) -> Story {
        Story {
            start: Instant::now(),
            sink,
        }
    }

    /// One line, stamped with the seconds since the start.
    pub fn say(&self, line: impl AsRef<str>) {
        self.raw(&stamp(self.start.elapsed(), line.as_ref()));
    }

    /// One line without a stamp (headings, hints).
    pub fn raw(&self, line: &str) {
        match self.sink {
            Sink::Stdout => println!("{line}"),
            Sink::Stderr => eprintln!("{line}"),
            Sink::Silent => {}
        }
    }
}

/// `[ 2.1s] text`.
pub fn stamp(elapsed: Duration, text: &str) -> String {
    format!("[{:>4.1}s] {text}", elapsed.as_secs_f64())
}

/// The two binaries the sandbox runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `lodestone-controller`.
    pub controller: PathBuf,
    /// `lodestone-speaker`.
    pub speaker: PathBuf,
}

/// Both binaries in `dir`, if both are files there.
pub fn binaries_in(dir: &Path) -> Option<Binaries> {
    let controller = dir.join("lodestone-controller");
    let speaker = dir.join("lodestone-speaker");
    (controller.is_file() && speaker.is_file()).then_some(Binaries {
        controller,
        speaker,
    })
}

/// The executables named in cargo's `--message-format=json` output (one JSON message a line).
pub fn binaries_from_cargo_messages(text: &str) -> Option<Binaries> {
    let mut controller = None;
    let mut speaker = None;
    for line in text.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        match name {
            "lodestone-controller" => controller = Some(PathBuf::from(exe)),
            "lodestone-speaker" => speaker = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    Some(Binaries {
        controller: controller?,
        speaker: speaker?,
    })
}

/// Step 1a: the binaries: from `--bin-dir`, else next to `self_exe`, else built with
/// `$CARGO build --release` (cargo cannot depend on another package's binaries).
pub fn locate_binaries(
    bin_dir: Option<&Path>,
    self_exe: &Path,
    story: &Story,
) -> anyhow::Result<Binaries> {
    if let Some(dir) = bin_dir {
        return binaries_in(dir).with_context(|| {
            format!(
                "--bin-dir {} lacks lodestone-controller or lodestone-speaker",
                dir.display()
            )
        });
    }
    // Under `cargo run`, binaries lying next to ours may predate the sources: always ask cargo,
    // which does nothing when they are current. Run on its own, use what sits beside us.
    let cargo = std::env::var_os("CARGO");
    if cargo.is_none()
        && let Some(found) = self_exe.parent().and_then(binaries_in)
    {
        return Ok(found);
    }
    let cargo = cargo.unwrap_or_else(|| "cargo".into());
    // Build in the profile we were built in, so `cargo run` without --release stays quick.
    let release = self_exe
        .parent()
        .and_then(Path::file_name)
        .is_none_or(|d| d != "debug");
    let mut args = vec!["build"];
    if release {
        args.push("--release");
    }
    args.extend([
        "-p",
        "lodestone-controller",
        "-p",
        "lodestone-speaker",
        "--message-format=json-render-diagnostics",
    ]);
    story.say(format!(
        "building lodestone-controller and lodestone-speaker (cargo {})",
        args[..args.len() - 5].join(" ")
    ));
    // Diagnostics go to our stderr; stdout carries the artifact messages we read the paths from.
    let out = Command::new(&cargo)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", PathBuf::from(&cargo).display()))?;
    if !out.status.success() {
        bail!("cargo build failed ({})", out.status);
    }
    binaries_from_cargo_messages(&String::from_utf8_lossy(&out.stdout))
        .context("cargo built no lodestone-controller or lodestone-speaker executable")
}

/// The pool's addresses, in order.
pub fn pool_addresses() -> Vec<IpAddr> {
    let first = u32::from(POOL_FIRST);
    (0..u32::from(POOL_SIZE))
        .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
        .collect()
}

/// The pool as the `IPAddressPool` spells it: `first-last`.
pub fn pool_range() -> String {
    let all = pool_addresses();
    match (all.first(), all.last()) {
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => String::new(),
    }
}

/// The first IP of `status.loadBalancer.ingress`, read as every Lodestone program reads it.
pub fn first_ingress_ip(svc: &Service) -> Option<IpAddr> {
    lodestone_crds::service::ingress_ips(svc).first().copied()
}

/// The node in an `Announced=True` message (`announced from node-b on eth0`), parsed by the
/// same code the speakers write it with.
pub fn announcer_from_message(message: &str) -> Option<String> {
    lodestone_crds::announced::AnnouncedBy::parse(message).map(|by| by.node)
}

/// Why no node could be chosen for the `Local` policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalNodeError {
    /// `--local-node` names no sandbox node.
    #[error("--local-node {name} is not one of {known}")]
    Unknown {
        /// The requested name.
        name: String,
        /// The nodes there are.
        known: String,
    },
    /// `--local-node` names the node the sandbox killed.
    #[error("--local-node {0}: that node was killed")]
    Killed(String),
    /// Every node is dead.
    #[error("no live node left")]
    NoneAlive,
}

/// The node that gets the only ready endpoint under the `Local` policy: `requested` if it is
/// a live node, otherwise the first live node that is not the current owner (so the
/// announcement visibly moves).
pub fn choose_local_node<'a>(
    nodes: &[&'a str],
    dead: &str,
    current_owner: &str,
    requested: Option<&str>,
) -> Result<&'a str, LocalNodeError> {
    match requested {
        Some(r) => match nodes.iter().find(|n| **n == r) {
            None => Err(LocalNodeError::Unknown {
                name: r.to_owned(),
                known: nodes.join(", "),
            }),
            Some(_) if r == dead => Err(LocalNodeError::Killed(r.to_owned())),
            Some(n) => Ok(n),
        },
        None => nodes
            .iter()
            .find(|n| **n != dead && **n != current_owner)
            .or_else(|| nodes.iter().find(|n| **n != dead))
            .copied()
            .ok_or(LocalNodeError::NoneAlive),
    }
}

/// Checks `--local-node` before anything is built, so a typo costs nothing.
pub fn validate_local_node(requested: Option<&str>) -> anyhow::Result<()> {
    if let Some(r) = requested
        && !NODES.contains(&r)
    {
        return Err(LocalNodeError::Unknown {
            name: r.to_owned(),
            known: NODES.join(", "),
        }
        .into());
    }
    Ok(())
}

/// Milliseconds from `event` to an answer's arrival.
pub fn ms_since(event: Instant, answer: &Answer) -> f64 {
    answer
        .received
        .saturating_duration_since(event)
        .as_secs_f64()
        * 1000.0
}

/// Polls `f` every few milliseconds until it yields, or fails with `what` after [`WAIT`].
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            // API errors are retried: the wait's deadline decides, and reports the last one.
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("{what}: not within {WAIT:?}")),
                None => anyhow::anyhow!("{what}: not within {WAIT:?}"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Everything a run created. Fields drop in order: the prober, then the controller, then the
/// lab (speakers, responders, forwarders, namespaces, API server), then the temp directory.
pub struct Sandbox {
    prober: Option<Prober>,
    controller: Option<ControllerProcess>,
    /// The lab: API server, bridge, nodes, client, speakers.
    pub lab: Lab,
    dir: tempfile::TempDir,
    bins: Binaries,
    story: Story,
}

impl Sandbox {
    /// Step 1b–2: the API server with the CRDs, the bridge, the three node namespaces (each
    /// with a registered Node, a forwarder to the API server and a responder on every pool
    /// address) and the client namespace.
    pub async fn start(bins: Binaries, story: Story, report: &mut Report) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lodestone-sandbox-")
            .tempdir()
            .context("creating a temporary directory")?;
        report.temp_paths.push(dir.path().to_owned());
        report.controller_bin = Some(bins.controller.clone());
        report.speaker_bin = Some(bins.speaker.clone());
        let nodes: Vec<(&str, &[(&str, &str)])> = NODES.iter().map(|n| (*n, &[][..])).collect();
        let lab = Lab::start(
            &lodestone_crds::all_crds(),
            &nodes,
            &pool_addresses(),
            &bins.speaker,
        )
        .await?;
        let sandbox = Sandbox {
            prober: None,
            controller: None,
            lab,
            dir,
            bins,
            story,
        };
        report.kubeconfig = Some(sandbox.lab.cluster.kubeconfig_path().to_owned());
        report
            .temp_paths
            .push(sandbox.lab.cluster.kubeconfig_path().to_owned());
        report.temp_paths.push(sandbox.lab.work_dir().to_owned());
        report.namespaces = sandbox.namespaces();
        let url = sandbox.lab.cluster.url();
        story.say(format!("API server up at {url}, Lodestone's CRDs applied"));
        story.say(format!(
            "network: bridge in {}, client 192.0.2.2 in {}",
            sandbox.lab.topology.switch().name(),
            sandbox.lab.client.ns().name()
        ));
        for n in &sandbox.lab.nodes {
            story.say(format!(
                "node {} {} in {}: Node registered, UDP server on :{PROBE_PORT} of every pool address",
                n.name,
                n.ip4,
                n.host.ns().name()
            ));
        }
        Ok(sandbox)
    }

    /// Every namespace the lab made (switch, client, nodes).
    pub fn namespaces(&self) -> Vec<String> {
        let mut out = vec![
            self.lab.topology.switch().name().to_owned(),
            self.lab.client.ns().name().to_owned(),
        ];
        out.extend(self.lab.nodes.iter().map(|n| n.host.ns().name().to_owned()));
        out
    }

    /// Step 3: the real controller in the root namespace and a real speaker in each node.
    pub fn start_binaries(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let log = self.dir.path().join("controller.log");
        let controller = ControllerProcess::spawn(
            &self.bins.controller,
            self.lab.cluster.kubeconfig_path(),
            &[],
            &log,
        )
        .context("starting lodestone-controller")?;
        report.pids.push(controller.pid());
        self.story.say(format!(
            "lodestone-controller running (pid {}), log {}",
            controller.pid(),
            log.display()
        ));
        self.controller = Some(controller);
        self.lab
            .start_all_speakers(&[])
            .context("starting lodestone-speaker")?;
        for n in &self.lab.nodes {
            if let Some(sp) = &n.speaker {
                report.pids.push(sp.pid());
                self.story.say(format!(
                    "lodestone-speaker running on {} (pid {})",
                    n.name,
                    sp.pid()
                ));
            }
        }
        Ok(())
    }

    /// Step 4: the pool, the advertisement, the Service (no address: the controller assigns
    /// it) and its EndpointSlice with a ready endpoint on every node.
    pub async fn create_objects(&self, report: &mut Report) -> anyhow::Result<()> {
        let client = self.lab.cluster.client();
        let pools: Api<IPAddressPool> = Api::all(client.clone());
        let spec = IPAddressPoolSpec {
            addresses: vec![pool_range()],
            auto_assign: true,
            avoid_buggy_ips: false,
            allow_link_local: false,
            service_allocation: None,
        };
        pools
            .create(&PostParams::default(), &IPAddressPool::new(POOL, spec))
            .await
            .context("creating the IPAddressPool")?;
        self.story
            .say(format!("IPAddressPool {POOL} created: {}", pool_range()));
        let adverts: Api<L2Advertisement> = Api::all(client.clone());
        adverts
            .create(
                &PostParams::default(),
                &L2Advertisement::new(POOL, L2AdvertisementSpec::default()),
            )
            .await
            .context("creating the L2Advertisement")?;
        self.story
            .say(format!("L2Advertisement {POOL} created (every node)"));
        let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
        services
            .create(&PostParams::default(), &lb_service())
            .await
            .context("creating the Service")?;
        let all: Vec<(&str, bool)> = NODES.iter().map(|n| (*n, true)).collect();
        objects::set_endpoints(&client, NAMESPACE, SERVICE, &all)
            .await
            .context("writing the EndpointSlice")?;
        self.story.say(format!(
            "Service {NAMESPACE}/{SERVICE} created (type LoadBalancer, UDP {PROBE_PORT}), ready endpoints on {}",
            NODES.join(", ")
        ));
        report.pool = Some(POOL.into());
        Ok(())
    }

    /// Step 5a: waits for the controller's address.
    pub async fn wait_assigned(&mut self, report: &mut Report) -> anyhow::Result<IpAddr> {
        let services: Api<Service> = Api::namespaced(self.lab.cluster.client(), NAMESPACE);
        let controller = &mut self.controller;
        let ip = wait_for("the controller assigning an address", || {
            let services = services.clone();
            let exited = controller.as_mut().map(|c| c.try_wait());
            async move {
                if let Some(Ok(Some(status))) = exited {
                    bail!("lodestone-controller exited ({status})");
                }
                Ok(first_ingress_ip(&services.get(SERVICE).await?))
            }
        })
        .await
        .with_context(|| self.controller_log_tail())?;
        self.story.say(format!(
            "controller assigned {ip} to {NAMESPACE}/{SERVICE} (pool {POOL})"
        ));
        report.address = Some(ip.to_string());
        Ok(ip)
    }

    /// Waits until the Service's `lodestone.dev/Announced` condition is `True` and names a
    /// node (`expect`, when given); returns that node.
    pub async fn wait_announced(&self, expect: Option<&str>) -> anyhow::Result<String> {
        let client = self.lab.cluster.client();
        let node = wait_for("the speaker's Announced condition", || {
            let client = client.clone();
            async move {
                let cond = objects::announced_condition(&client, NAMESPACE, SERVICE).await?;
                Ok(cond.and_then(|(status, message)| {
                    let node = announcer_from_message(&message)?;
                    (status == "True" && expect.is_none_or(|e| e == node)).then_some(node)
                }))
            }
        })
        .await
        .with_context(|| self.lab.logs())?;
        self.story.say(format!(
            "speaker on {node}: lodestone.dev/Announced=True (\"announced from {node} on eth0\")"
        ));
        Ok(node)
    }

    /// Step 5b: the client sends a request every 5 ms through the address; returns the node
    /// that answered first.
    pub async fn client_fetch(
        &mut self,
        ip: IpAddr,
        report: &mut Report,
    ) -> anyhow::Result<String> {
        let prober = Prober::start(self.lab.client.ns(), ip, PROBE_PORT, PROBE_INTERVAL)
            .context("starting the client's prober")?;
        let prober = self.prober.insert(prober);
        let since = Instant::now();
        let answer = wait_for("an answer through the address", || {
            let got = prober.answers().into_iter().find(|a| a.sent >= since);
            async move { Ok(got) }
        })
        .await
        .with_context(|| self.lab.logs())?;
        self.story
            .say(format!("client → {ip}: answered by {}", answer.node));
        report.client_ok = true;
        report.owner = Some(answer.node.clone());
        Ok(answer.node)
    }

    /// Waits until every speaker counts all three as alive, so the failover that follows is
    /// the membership's steady-state detection, not a start-up effect.
    pub async fn wait_membership(&self) -> anyhow::Result<()> {
        let want = self.lab.nodes.len() as f64;
        wait_for("the speakers' membership forming", || {
            let mut all = true;
            for n in &self.lab.nodes {
                let members = metrics::speaker_gauge(n.host.ns(), MEMBERS_GAUGE);
                all &= matches!(members, Ok(Some(m)) if m == want);
            }
            async move { Ok(all.then_some(())) }
        })
        .await
        .with_context(|| self.lab.logs())?;
        self.story.say(format!(
            "membership formed: every speaker sees {want} live speakers"
        ));
        Ok(())
    }

    /// Step 6a: kills the owner (its speaker with SIGKILL, then its link) and returns the node
    /// the client's traffic moved to and the time it took, measured on the client.
    pub async fn fail_owner(
        &mut self,
        ip: IpAddr,
        owner: &str,
        report: &mut Report,
    ) -> anyhow::Result<(String, f64)> {
        let prober = self
            .prober
            .as_ref()
            .context("the client is not probing yet")?;
        let event = Instant::now();
        self.lab
            .signal_speaker(owner, libc::SIGKILL)
            .context("killing the owner's speaker")?;
        self.lab
            .node(owner)?
            .host
            .link_down()
            .context("cutting the owner's link")?;
        self.story.say(format!(
            "{owner} killed: speaker SIGKILLed, link cut (client keeps sending every {} ms)",
            PROBE_INTERVAL.as_millis()
        ));
        let answer = wait_for("traffic moving to another node", || {
            let got = prober.first_not_from_since(owner, event);
            async move { Ok(got) }
        })
        .await
        .with_context(|| self.lab.logs())?;
        let ms = ms_since(event, &answer);
        self.story
            .say(format!("client → {ip}: answered by {}", answer.node));
        self.story.say(format!(
            "failover: client traffic reached {} {ms:.0} ms after {owner}'s speaker was killed",
            answer.node
        ));
        report.failover_ms = Some(ms);
        report.new_owner = Some(answer.node.clone());
        Ok((answer.node, ms))
    }

    /// Step 6b: switches the Service to `externalTrafficPolicy: Local` with the only ready
    /// endpoint on `node`, and waits for the announcement and the client's traffic to follow.
    pub async fn local_policy(
        &mut self,
        ip: IpAddr,
        node: &str,
        report: &mut Report,
    ) -> anyhow::Result<String> {
        report.local_policy_node = Some(node.to_owned());
        let client = self.lab.cluster.client();
        let event = Instant::now();
        let endpoints: Vec<(&str, bool)> = NODES.iter().map(|n| (*n, *n == node)).collect();
        objects::set_endpoints(&client, NAMESPACE, SERVICE, &endpoints)
            .await
            .context("moving the ready endpoint")?;
        let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
        let body = serde_json::json!({"spec": {"externalTrafficPolicy": "Local"}});
        services
            .patch(SERVICE, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .context("setting externalTrafficPolicy: Local")?;
        self.story.say(format!(
            "Service switched to externalTrafficPolicy: Local, only ready endpoint on {node}"
        ));
        self.wait_announced(Some(node)).await?;
        let prober = self
            .prober
            .as_ref()
            .context("the client is not probing yet")?;
        let answer = wait_for("traffic following the Local endpoint", || {
            let got = prober.first_from_since(node, event);
            async move { Ok(got) }
        })
        .await
        .with_context(|| self.lab.logs())?;
        let ms = ms_since(event, &answer);
        self.story.say(format!(
            "client → {ip}: answered by {} ({ms:.0} ms after the switch)",
            answer.node
        ));
        report.local_policy_owner = Some(answer.node.clone());
        report.local_policy_ms = Some(ms);
        Ok(answer.node)
    }

    /// What `--keep` prints: how to look around.
    pub fn exploring_hints(&self, address: &str) -> Vec<String> {
        let kubeconfig = self.lab.cluster.kubeconfig_path().display().to_string();
        let mut out = vec![
            "still running; Ctrl-C stops and removes everything.".to_owned(),
            format!("  export KUBECONFIG={kubeconfig}"),
            format!("  kubectl get svc -n {NAMESPACE} {SERVICE} -o wide"),
            format!("  kubectl describe svc -n {NAMESPACE} {SERVICE}"),
            "  kubectl get ipaddresspools,l2advertisements,nodes".to_owned(),
            format!(
                "  ip netns exec {} arping -c 3 -I eth0 {address}   # from the client: who answers",
                self.lab.client.ns().name()
            ),
        ];
        for n in &self.lab.nodes {
            out.push(format!(
                "  ip netns exec {} ip addr   # {}",
                n.host.ns().name(),
                n.name
            ));
        }
        out.push(format!(
            "  logs: {} (controller), {} (speakers)",
            self.dir.path().display(),
            self.lab.work_dir().display()
        ));
        out
    }

    fn controller_log_tail(&self) -> String {
        let log = self
            .controller
            .as_ref()
            .map(ControllerProcess::log)
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("controller log (tail):\n{}", tail.join("\n"))
    }
}

/// The sandbox's Service: `type: LoadBalancer`, UDP 7000, `externalTrafficPolicy: Cluster`.
pub fn lb_service() -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(SERVICE.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            external_traffic_policy: Some("Cluster".into()),
            ports: Some(vec![ServicePort {
                name: Some("hello".into()),
                port: i32::from(PROBE_PORT),
                protocol: Some("UDP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The whole story, step by step; each step's failure names the step. `report` collects the
/// facts as they are established, so a failed run still reports what it saw.
pub async fn tell(sb: &mut Sandbox, opts: &Options, report: &mut Report) -> anyhow::Result<()> {
    sb.start_binaries(report)
        .context("step 3 (start controller and speakers)")?;
    sb.create_objects(report)
        .await
        .context("step 4 (create pool, advertisement, Service)")?;
    let ip = sb
        .wait_assigned(report)
        .await
        .context("step 5 (controller assigns an address)")?;
    let announcer = sb
        .wait_announced(None)
        .await
        .context("step 5 (a speaker announces the address)")?;
    report.announced_by = Some(announcer.clone());
    let owner = sb
        .client_fetch(ip, report)
        .await
        .context("step 5 (client reaches the address)")?;
    if owner != announcer {
        bail!("step 5: {announcer} announces {ip} but {owner} answered the client");
    }
    sb.wait_membership()
        .await
        .context("step 6 (speakers' membership forms)")?;
    let (new_owner, _) = sb
        .fail_owner(ip, &owner, report)
        .await
        .context("step 6 (failover after killing the owner)")?;
    sb.wait_announced(Some(&new_owner))
        .await
        .context("step 6 (the new owner's Announced condition)")?;
    let node = choose_local_node(&NODES, &owner, &new_owner, opts.local_node.as_deref())
        .context("step 6 (choose the Local node)")?;
    sb.local_policy(ip, node, report)
        .await
        .context("step 6 (externalTrafficPolicy: Local)")?;
    Ok(())
}

/// SIGINT and SIGTERM, caught from the moment this is created (until then they would end the
/// process without running any guard).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; needs a running tokio runtime.
    pub fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM with the signal's name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// A run from start to clean-up. A signal ends whatever step is running: its future is dropped,
/// and with it the [`Sandbox`], whose guards stop every process and remove every namespace and
/// file before this returns.
pub async fn run(opts: &Options, story: Story, report: &mut Report) -> anyhow::Result<()> {
    validate_local_node(opts.local_node.as_deref())?;
    // Installed first: from here SIGINT/SIGTERM no longer kill the process outright, they
    // unwind through the guards.
    let mut signals = Signals::install()?;
    let interrupted = |name: &str| anyhow::anyhow!("interrupted by {name}");
    let self_exe = std::env::current_exe().context("locating the sandbox executable")?;
    let bins = locate_binaries(opts.bin_dir.as_deref(), &self_exe, &story)
        .context("step 1 (find or build the binaries)")?;
    story.say(format!(
        "binaries: {} and {}",
        bins.controller.display(),
        bins.speaker.display()
    ));
    // `biased`: a pending signal wins over a step that failed because of it (a terminal's
    // Ctrl-C also reaches the speakers and the controller).
    let mut sb = tokio::select! {
        biased;
        s = signals.recv() => return Err(interrupted(s)),
        r = Sandbox::start(bins, story, report) => r.context("steps 1-2 (API server, network namespaces)")?,
    };
    tokio::select! {
        biased;
        s = signals.recv() => return Err(interrupted(s)),
        r = tell(&mut sb, opts, report) => r?,
    }
    if opts.keep {
        let address = report.address.clone().unwrap_or_default();
        for line in sb.exploring_hints(&address) {
            story.raw(&line);
        }
        let s = signals.recv().await;
        story.say(format!("{s}: cleaning up"));
    }
    drop(sb);
    story.say("cleaned up: processes stopped, namespaces and files removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    use proptest::prelude::*;

    #[test]
    fn pool_is_the_documented_range() {
        assert_eq!(pool_range(), "192.0.2.100-192.0.2.104");
        assert_eq!(pool_addresses().len(), usize::from(POOL_SIZE));
    }

    #[test]
    fn announcer_is_read_from_the_condition_message() {
        assert_eq!(
            announcer_from_message("announced from node-b on eth0").as_deref(),
            Some("node-b")
        );
        assert_eq!(
            announcer_from_message("announced from node-c on eth0, eth1").as_deref(),
            Some("node-c")
        );
        assert_eq!(
            announcer_from_message("not announced: no ready endpoint"),
            None
        );
        assert_eq!(announcer_from_message("announced from  on eth0"), None);
    }

    proptest! {
        #[test]
        fn announcer_round_trips(node in "[a-z0-9][a-z0-9.-]{0,30}", ifs in "[a-z0-9]{1,8}(, [a-z0-9]{1,8}){0,2}") {
            let message = format!("announced from {node} on {ifs}");
            prop_assert_eq!(announcer_from_message(&message), Some(node));
        }

        #[test]
        fn local_node_is_alive_and_moves_when_it_can(dead in 0usize..3, owner in 0usize..3) {
            prop_assume!(dead != owner);
            let got = choose_local_node(&NODES, NODES[dead], NODES[owner], None).unwrap();
            prop_assert_ne!(got, NODES[dead]);
            prop_assert_ne!(got, NODES[owner]);
        }
    }

    #[test]
    fn requested_local_node_is_checked() {
        assert_eq!(
            choose_local_node(&NODES, "node-b", "node-c", Some("node-c")),
            Ok("node-c")
        );
        assert_eq!(
            choose_local_node(&NODES, "node-b", "node-c", Some("node-b")),
            Err(LocalNodeError::Killed("node-b".into()))
        );
        assert!(matches!(
            choose_local_node(&NODES, "node-b", "node-c", Some("node-z")),
            Err(LocalNodeError::Unknown { .. })
        ));
        // Only the owner left alive: it keeps the address.
        assert_eq!(
            choose_local_node(&["node-a", "node-b"], "node-b", "node-a", None),
            Ok("node-a")
        );
        assert_eq!(
            choose_local_node(&["node-b"], "node-b", "node-a", None),
            Err(LocalNodeError::NoneAlive)
        );
        assert!(validate_local_node(Some("node-z")).is_err());
        assert!(validate_local_node(Some("node-a")).is_ok());
        assert!(validate_local_node(None).is_ok());
    }

    #[test]
    fn first_ingress_ip_skips_hostnames() {
        let mut svc = lb_service();
        assert_eq!(first_ingress_ip(&svc), None);
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        hostname: Some("lb.example".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        ip: Some("192.0.2.101".into()),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        });
        assert_eq!(first_ingress_ip(&svc), "192.0.2.101".parse().ok());
    }

    #[test]
    fn cargo_messages_name_the_executables() {
        let text = r#"{"reason":"compiler-artifact","target":{"name":"lodestone-crds"},"executable":null}
not json
{"reason":"compiler-artifact","target":{"name":"lodestone-speaker"},"executable":"/t/release/lodestone-speaker"}
{"reason":"compiler-artifact","target":{"name":"lodestone-controller"},"executable":"/t/release/lodestone-controller"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            binaries_from_cargo_messages(text),
            Some(Binaries {
                controller: "/t/release/lodestone-controller".into(),
                speaker: "/t/release/lodestone-speaker".into(),
            })
        );
        let only_one = r#"{"reason":"compiler-artifact","target":{"name":"lodestone-speaker"},"executable":"/s"}"#;
        assert_eq!(binaries_from_cargo_messages(only_one), None);
    }

    #[test]
    fn binaries_need_both_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(binaries_in(dir.path()), None);
        std::fs::write(dir.path().join("lodestone-speaker"), "").unwrap();
        assert_eq!(binaries_in(dir.path()), None);
        std::fs::write(dir.path().join("lodestone-controller"), "").unwrap();
        assert!(binaries_in(dir.path()).is_some());
        let story = Story::new(Sink::Silent);
        let err = locate_binaries(Some(&dir.path().join("nope")), dir.path(), &story).unwrap_err();
        assert!(err.to_string().contains("--bin-dir"), "{err}");
    }

    #[test]
    fn stamps_read_as_seconds() {
        assert_eq!(
            stamp(Duration::from_millis(2140), "client → x"),
            "[ 2.1s] client → x"
        );
        assert_eq!(stamp(Duration::from_secs(12), "y"), "[12.0s] y");
    }

    #[test]
    fn report_has_the_promised_keys() {
        let v = serde_json::to_value(Report::default()).unwrap();
        for key in [
            "address",
            "owner",
            "client_ok",
            "failover_ms",
            "new_owner",
            "local_policy_owner",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }
}
