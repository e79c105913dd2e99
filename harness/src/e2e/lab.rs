//! A whole layer-2 lab: the API server, a bridge, node namespaces (each reaching the API server
//! through a [`Forwarder`] and running a [`Responder`]), a client namespace, and speakers.
//!
//! Addresses: node `i` is `192.0.2.(11+i)/24` and `2001:db8::(11+i)/64`, the client
//! `192.0.2.2/24` and `2001:db8::2/64`; service addresses come from [`POOL_V4`] / [`POOL_V6`]
//! (same subnets, so the client reaches them on-link, as on a real LAN).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipnet::IpNet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::forward::{Forwarder, forward_into, kubeconfig_via};
use super::objects;
use super::process::SpeakerProcess;
use super::traffic::Responder;
use crate::cluster::TestCluster;
use crate::netns::{Host, Topology};

/// IPv4 pool range of the lab.
pub const POOL_V4: &str = "192.0.2.100-192.0.2.150";
/// IPv6 pool range of the lab.
pub const POOL_V6: &str = "2001:db8::100-2001:db8::150";
/// UDP port the responders answer on.
pub const PROBE_PORT: u16 = 7000;
/// The membership key every lab speaker uses (at least 16 bytes).
pub const LAB_KEY: &str = "lodestone-e2e-membership-key-0123456789";

/// One node of the lab.
#[derive(Debug)]
pub struct LabNode {
    /// Node name (also the Node object's name).
    pub name: String,
    /// IPv4 InternalIP.
    pub ip4: IpAddr,
    /// IPv6 address on eth0.
    pub ip6: IpAddr,
    /// Its speaker, when running. Declared first so it stops before the namespace goes.
    pub speaker: Option<SpeakerProcess>,
    responder: Option<Responder>,
    forwarder: Option<Forwarder>,
    api_port: u16,
    kubeconfig: PathBuf,
    /// The node's namespace and link.
    pub host: Host,
}

/// The lab; dropping it stops everything and removes every namespace.
pub struct Lab {
    /// The nodes, in creation order.
    pub nodes: Vec<LabNode>,
    /// The client namespace.
    pub client: Host,
    /// The bridge.
    pub topology: Topology,
    /// The API server.
    pub cluster: TestCluster,
    speaker_bin: PathBuf,
    api_target: SocketAddr,
    dir: tempfile::TempDir,
}

/// The API server's port on 127.0.0.1: the embedded server and a real kube-apiserver both
/// listen there, so either can be forwarded into the nodes.
fn server_port(cluster: &TestCluster) -> anyhow::Result<u16> {
    let url = cluster.url();
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in {url}"))?;
    Ok(port)
}

impl Lab {
    /// Starts the API server (with Lodestone's CRDs), the bridge, the client and one namespace
    /// per `(name, labels)` with a registered Node, a forwarder and a responder for `vips`.
    /// Speakers are not started: see [`Lab::start_speaker`].
    /// `crds` are applied first (pass `lodestone_crds::all_crds()`).
    pub async fn start(
        crds: &[CustomResourceDefinition],
        nodes: &[(&str, &[(&str, &str)])],
        vips: &[IpAddr],
        speaker_bin: &Path,
    ) -> anyhow::Result<Lab> {
        let cluster = TestCluster::start().await?;
        cluster
            .apply_crds(crds)
            .await
            .context("applying Lodestone's CRDs")?;
        let target = SocketAddr::from(([127, 0, 0, 1], server_port(&cluster)?));
        let kubeconfig_yaml = cluster.kubeconfig_yaml();
        let topology = Topology::new()?;
        let dir = tempfile::Builder::new()
            .prefix("lodestone-lab-")
            .tempdir()?;
        let client = topology.add_host(
            "ldcl",
            Some("192.0.2.2/24".parse::<IpNet>()?),
            Some("2001:db8::2/64".parse::<IpNet>()?),
        )?;
        let mut lab_nodes = Vec::new();
        for (i, (name, labels)) in nodes.iter().enumerate() {
            let ip4: IpAddr = format!("192.0.2.{}", 11 + i).parse()?;
            let ip6: IpAddr = format!("2001:db8::{}", 11 + i).parse()?;
            let host = topology.add_host(
                "ldnd",
                Some(IpNet::new(ip4, 24)?),
                Some(IpNet::new(ip6, 64)?),
            )?;
            let forwarder = forward_into(host.ns(), 0, target)?;
            let api_port = forwarder.port();
            let kubeconfig = dir.path().join(format!("{name}.kubeconfig"));
            std::fs::write(&kubeconfig, kubeconfig_via(&kubeconfig_yaml, api_port))?;
            let responder = Responder::start(host.ns(), name, vips, PROBE_PORT)?;
            objects::register_node(&cluster.client(), name, ip4, labels).await?;
            lab_nodes.push(LabNode {
                name: (*name).to_owned(),
                ip4,
                ip6,
                speaker: None,
                responder: Some(responder),
                forwarder: Some(forwarder),
                api_port,
                kubeconfig,
                host,
            });
        }
        Ok(Lab {
            api_target: target,
            nodes: lab_nodes,
            client,
            topology,
            cluster,
            speaker_bin: speaker_bin.to_owned(),
            dir,
        })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no lab node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> anyhow::Result<&mut LabNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .with_context(|| format!("no lab node {name}"))
    }

    /// Starts (or restarts) the speaker of `name` with `extra` arguments.
    pub fn start_speaker(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        let bin = self.speaker_bin.clone();
        let log = self.dir.path().join(format!("{name}.log"));
        let node = self.node_mut(name)?;
        node.speaker = None;
        let kubeconfig = node.kubeconfig.to_string_lossy().into_owned();
        let rust_log = std::env::var("LODESTONE_E2E_LOG")
            .unwrap_or_else(|_| "info,lodestone_speaker=debug".into());
        let mut args = vec!["--node-name", name];
        args.extend_from_slice(extra);
        node.speaker = Some(SpeakerProcess::spawn(
            node.host.ns(),
            &bin,
            &args,
            &[
                ("KUBECONFIG", kubeconfig.as_str()),
                ("LODESTONE_MEMBERLIST_KEY", LAB_KEY),
                ("RUST_LOG", rust_log.as_str()),
            ],
            &log,
        )?);
        Ok(())
    }

    /// Starts every node's speaker.
    pub fn start_all_speakers(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            self.start_speaker(&n, extra)?;
        }
        Ok(())
    }

    /// Sends `signal` to the speaker of `name`.
    pub fn signal_speaker(&self, name: &str, signal: i32) -> anyhow::Result<()> {
        let node = self.node(name)?;
        let sp = node
            .speaker
            .as_ref()
            .with_context(|| format!("speaker of {name} is not running"))?;
        sp.kill(signal)?;
        Ok(())
    }

    /// Waits for the speaker of `name` to exit.
    pub fn wait_speaker_exit(&mut self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let node = self.node_mut(name)?;
        let sp = node
            .speaker
            .as_mut()
            .with_context(|| format!("speaker of {name} is not running"))?;
        while sp.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("speaker of {name} did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Every speaker's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            if let Some(sp) = &n.speaker {
                let log = sp.log();
                // The tail is what explains a failure.
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                out.push_str(&format!(
                    "==== {} (last {} lines) ====\n",
                    n.name,
                    tail.len()
                ));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The node whose `eth0` has MAC `mac`.
    pub fn node_by_mac(&self, mac: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.host.mac().is_ok_and(|m| m.eq_ignore_ascii_case(mac)))
            .map(|n| n.name.as_str())
    }

    /// Stops the responder of `name` (e.g. to check nothing else answers).
    pub fn stop_responder(&mut self, name: &str) -> anyhow::Result<()> {
        self.node_mut(name)?.responder = None;
        Ok(())
    }

    /// Cuts the relayed API connections of every node (the listener stays, so the speakers
    /// reconnect at once).
    pub fn cut_api_connections(&self) {
        for n in &self.nodes {
            if let Some(f) = &n.forwarder {
                f.cut_connections();
            }
        }
    }

    /// An API server outage as the nodes see it: every forwarder closed, connections cut,
    /// new ones refused. The server itself keeps running for the test.
    pub fn api_down(&mut self) {
        for n in &mut self.nodes {
            n.forwarder = None;
        }
    }

    /// Ends [`Lab::api_down`]: the forwarders listen again on the same ports.
    pub fn api_up(&mut self) -> anyhow::Result<()> {
        let target = self.api_target;
        for n in &mut self.nodes {
            if n.forwarder.is_none() {
                n.forwarder = Some(forward_into(n.host.ns(), n.api_port, target)?);
            }
        }
        Ok(())
    }
}

impl Lab {
    /// The lab's temporary directory (kubeconfigs and speaker logs); removed on drop.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// MACs that answered `arping -c count` for `ip` from `host` (Habets arping output).
pub fn arping_macs(host: &Host, ip: IpAddr, count: u32) -> anyhow::Result<Vec<String>> {
    let count = count.to_string();
    let ip = ip.to_string();
    let out = host.ns().exec(
        "arping",
        &["-c", &count, "-w", "1000000", "-I", "eth0", &ip],
    )?;
    Ok(parse_macs(&String::from_utf8_lossy(&out.stdout)))
}

/// Every distinct MAC address in `text` (lower case, first-seen order).
pub fn parse_macs(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',') {
        let parts: Vec<&str> = word.split(':').collect();
        let is_mac = parts.len() == 6
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
        if is_mac {
            let mac = word.to_ascii_lowercase();
            if !out.contains(&mac) {
                out.push(mac);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_parsed_from_arping_output() {
        let text = "ARPING 192.0.2.100\n60 bytes from 02:aa:bb:cc:dd:ee (192.0.2.100): index=0 time=1.2 msec\n\
                    60 bytes from 02:AA:BB:CC:DD:EE (192.0.2.100): index=1 time=1.1 msec\n\
                    60 bytes from 02:11:22:33:44:55 (192.0.2.100): index=2 time=1.0 msec\n\
                    --- 192.0.2.100 statistics ---\n";
        assert_eq!(parse_macs(text), ["02:aa:bb:cc:dd:ee", "02:11:22:33:44:55"]);
        assert!(parse_macs("no reply, 2001:db8::1 is not a mac").is_empty());
    }
}
