//! A real multi-node Kubernetes cluster on one machine, for the tests that let the real thing
//! judge Lodestone: kube-apiserver, kube-controller-manager, kube-scheduler and etcd in a "lab"
//! network namespace that holds the LAN's bridge, and per node a namespace with its own
//! containerd, kubelet and kube-proxy (iptables mode); plus a client namespace on the LAN.
//!
//! It starts from a directory of Kubernetes binaries named by `LODESTONE_K8S_BIN`
//! (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy: the official
//! release's `kubernetes/server/bin` works as is) and an etcd (`etcd` in that directory, else
//! `TEST_ASSET_ETCD`, else `etcd` on the PATH; kube-apiserver 1.32 needs etcd 3.5.13+ or
//! 3.4.31+ for watch-lists). containerd, runc, the CNI plugins, iptables, busybox-static and gcc
//! come from the distribution ([`ClusterLab::missing_tools`]).
//!
//! Everything it creates is written in a [`ledger::Ledger`] first and removed on drop, on
//! failure, on SIGINT/SIGTERM (a handler tears down every live lab of the process, then exits)
//! and, after a SIGKILL, by the next lab that starts on the machine. Nothing is written outside
//! its two directories (`/var/tmp/lodestone-clusterlab/ID`, `/run/lodestone-clusterlab/ID`), its
//! cgroups (`lodestone-ID-X` in each hierarchy) and kubelet's symlinks in `/var/log/containers`;
//! the machine-wide sysctls kubelet would write are bind-mounted away in its own mount
//! namespace. Names are unique per lab, so labs of parallel test processes do not collide.
//!
//! Addresses and every configuration file are pure functions in [`config`]; the images the
//! nodes import are built by [`images`]. The machine's pitfalls this works around are those of
//! the Kubernetes kit's README (`../shared/k8s/README.md` in the development environment).

pub mod config;
pub mod images;
pub mod ledger;
pub mod probe;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};

use crate::cluster::{client_from_kubeconfig, kubeconfig_yaml, token_auth_file, write_private};
use crate::e2e::forward::{Forwarder, forward_out_of};
use crate::e2e::metrics::http_get;
use crate::netns::{Host, Topology};
use config::{LabPaths, NodeNet};
use ledger::{Entry, Ledger, Stage};

/// The variable naming the directory of Kubernetes binaries.
pub const K8S_BIN_VAR: &str = "LODESTONE_K8S_BIN";
/// Where the labs' persistent state lives (one directory per lab).
pub const DATA_BASE: &str = "/var/tmp/lodestone-clusterlab";
/// Where the labs' sockets, runtime state and ledgers live (one directory per lab).
pub const RUN_BASE: &str = "/run/lodestone-clusterlab";
/// The image archive of the test web app imported on every node.
pub const WEB_IMAGE: &str = "lab.local/web:1.0";

/// The Kubernetes binaries a lab starts.
pub const K8S_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Directory holding [`K8S_BINARIES`].
    pub k8s_bin: PathBuf,
    /// The etcd binary.
    pub etcd: PathBuf,
    /// Number of nodes (1 to [`config::MAX_NODES`]).
    pub nodes: usize,
    /// IPv4 and IPv6 everywhere (Services, pods, nodes), IPv4 primary.
    pub dual_stack: bool,
    /// Write kube-apiserver's audit log (metadata of every request).
    pub audit: bool,
    /// More OCI archives to import into every node's containerd.
    pub images: Vec<PathBuf>,
}

impl LabOptions {
    /// From [`K8S_BIN_VAR`]: `Ok(None)` when unset (the caller skips, loudly), an error when
    /// set but unusable. Three nodes, dual-stack, audit log on.
    pub fn from_env() -> anyhow::Result<Option<LabOptions>> {
        let Some(dir) = std::env::var_os(K8S_BIN_VAR).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let k8s_bin = PathBuf::from(dir);
        for b in K8S_BINARIES {
            let p = k8s_bin.join(b);
            if !p.is_file() {
                bail!("{K8S_BIN_VAR}={}: {b} is missing", k8s_bin.display());
            }
        }
        let etcd = [
            Some(k8s_bin.join("etcd")),
            std::env::var_os("TEST_ASSET_ETCD").map(PathBuf::from),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| which("etcd"))
        .with_context(|| {
            format!("no etcd: put one in {K8S_BIN_VAR}, set TEST_ASSET_ETCD or install etcd-server")
        })?;
        Ok(Some(LabOptions {
            k8s_bin,
            etcd,
            nodes: 3,
            dual_stack: true,
            audit: true,
            images: Vec::new(),
        }))
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// One node of a running lab.
#[derive(Debug)]
pub struct LabNode {
    /// Addresses and name.
    pub net: NodeNet,
    /// Its namespace (the node's "host network", where hostNetwork pods run) and LAN link.
    pub host: Host,
}

/// Every lab of this process that has not been torn down, for the signal handler.
static LIVE: Mutex<Vec<Weak<Ledger>>> = Mutex::new(Vec::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn guard_signals(ledger: &Arc<Ledger>) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            eprintln!("lodestone clusterlab: interrupted; tearing every lab down");
            let live: Vec<Arc<Ledger>> = LIVE
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            for l in live {
                let left = l.teardown();
                if !left.is_empty() {
                    eprintln!("lodestone clusterlab: left behind: {left}");
                }
            }
            std::process::exit(130);
        });
        if let Err(e) = installed {
            eprintln!(
                "lodestone clusterlab: cannot handle SIGINT/SIGTERM ({e}); an interrupted lab is swept by the next one"
            );
        }
    });
    LIVE.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(ledger));
}

/// A running real cluster; dropping it removes everything it made.
pub struct ClusterLab {
    id: String,
    opts: LabOptions,
    paths: LabPaths,
    ledger: Arc<Ledger>,
    children: Mutex<Vec<Child>>,
    /// The nodes, in order (`node-a`, `node-b`, ...).
    pub nodes: Vec<LabNode>,
    /// The client: a plain machine on the LAN (192.0.2.2, 2001:db8::2).
    pub client: Host,
    /// The LAN's bridge; the control plane runs in its namespace.
    pub topology: Topology,
    forwarder: Option<Forwarder>,
    kube: kube::Client,
    tokens: BTreeMap<String, String>,
    ca_pem: String,
    bring_up: Duration,
}

impl std::fmt::Debug for ClusterLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLab")
            .field("id", &self.id)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// Runs a command, failing with its stderr when it exits non-zero.
fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn random_token() -> String {
    use rand::Rng;
    let mut b = [0u8; 24];
    rand::rng().fill(&mut b);
    hex::encode(b)
}

/// The last `n` lines of the file at `path`.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => crate::cluster::tail_lines(&String::from_utf8_lossy(&b), n),
        Err(e) => format!("(no {}: {e})", path.display()),
    }
}

impl ClusterLab {
    /// Commands and files a lab needs from the machine that are not there.
    pub fn missing_tools() -> Vec<String> {
        let mut missing: Vec<String> = [
            "nsenter",
            "unshare",
            "ip",
            "mount",
            "umount",
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
            "runc",
            "iptables",
            "ip6tables",
            "gcc",
            "kubectl",
        ]
        .iter()
        .filter(|c| which(c).is_none())
        .map(|c| (*c).to_owned())
        .collect();
        for f in [
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local",
            "/usr/lib/cni/portmap",
            images::BUSYBOX,
        ] {
            if !Path::new(f).exists() {
                missing.push(f.to_owned());
            }
        }
        missing
    }

    /// Brings the lab up and waits for every node to be Ready. Prints the bring-up time.
    pub async fn start(opts: LabOptions) -> anyhow::Result<ClusterLab> {
        let t0 = Instant::now();
        if !(1..=config::MAX_NODES).contains(&opts.nodes) {
            bail!(
                "a lab has 1 to {} nodes, not {}",
                config::MAX_NODES,
                opts.nodes
            );
        }
        let missing = ClusterLab::missing_tools();
        if !missing.is_empty() {
            bail!(
                "the real-cluster lab needs: {} (Debian: apt-get install containerd runc containernetworking-plugins iptables busybox-static gcc)",
                missing.join(", ")
            );
        }
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            bail!(
                "this machine has a pure cgroup v2 hierarchy; the lab is built for cgroup v1 (hybrid) and was not tried on v2"
            );
        }
        for (path, left) in ledger::sweep_stale(Path::new(RUN_BASE)) {
            if left.is_empty() {
                eprintln!(
                    "lodestone clusterlab: swept a lab left by a killed process ({})",
                    path.display()
                );
            } else {
                eprintln!(
                    "lodestone clusterlab: a lab left by a killed process ({}) could not be removed completely: {left}",
                    path.display()
                );
            }
        }
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let paths = LabPaths {
            data: Path::new(DATA_BASE).join(&id),
            run: Path::new(RUN_BASE).join(&id),
        };
        std::fs::create_dir_all(&paths.run)?;
        let ledger = Arc::new(Ledger::create(&paths.run.join("ledger.json"))?);
        guard_signals(&ledger);
        ledger.record(Entry::Dir {
            path: paths.run.clone(),
        })?;
        ledger.record(Entry::Dir {
            path: paths.data.clone(),
        })?;
        // From here on a failure tears down what was made, through `Partial`.
        let partial = Partial {
            ledger: Arc::clone(&ledger),
            children: Vec::new(),
            armed: true,
        };
        ClusterLab::build(id, opts, paths, partial, t0).await
    }

    async fn build(
        id: String,
        opts: LabOptions,
        paths: LabPaths,
        mut partial: Partial,
        t0: Instant,
    ) -> anyhow::Result<ClusterLab> {
        let ledger = Arc::clone(&partial.ledger);
        for d in [
            paths.pki(),
            paths.conf(),
            paths.logs(),
            paths.shared(),
            paths.pod_logs(),
            paths.images(),
        ] {
            std::fs::create_dir_all(&d)?;
        }
        let nets: Vec<NodeNet> = (0..opts.nodes)
            .map(|i| config::node_net(i, opts.dual_stack))
            .collect();

        // PKI and credentials.
        let ca = crate::tls::Authority::new(&format!("lodestone-clusterlab-{id}"))?;
        let mut ips: Vec<IpAddr> = vec![
            config::APISERVER_V4.parse()?,
            "203.0.113.1".parse()?,
            "127.0.0.1".parse()?,
        ];
        if opts.dual_stack {
            ips.push(config::GATEWAY_V6.parse()?);
            ips.push("2001:db8:2::1".parse()?);
        }
        let serving = ca.server(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &ips,
        )?;
        let kubelet_client = ca.client("kube-apiserver-kubelet-client", &["system:masters"])?;
        let sa = rcgen::KeyPair::generate()?;
        let pki = paths.pki();
        std::fs::write(pki.join("ca.crt"), &ca.ca_pem)?;
        write_private(&pki.join("ca.key"), &ca.key_pem)?;
        std::fs::write(pki.join("apiserver.crt"), &serving.cert_pem)?;
        write_private(&pki.join("apiserver.key"), &serving.key_pem)?;
        std::fs::write(pki.join("kubelet-client.crt"), &kubelet_client.cert_pem)?;
        write_private(&pki.join("kubelet-client.key"), &kubelet_client.key_pem)?;
        write_private(&pki.join("sa.key"), &sa.serialize_pem())?;
        std::fs::write(pki.join("sa.pub"), sa.public_key_pem())?;
        let mut tokens = BTreeMap::new();
        let mut token_file = String::new();
        for (user, uid, groups) in config::token_users(&nets) {
            let token = random_token();
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            token_file.push_str(&token_auth_file(&token, &user, &uid, &groups));
            tokens.insert(user, token);
        }
        write_private(&pki.join("tokens.csv"), &token_file)?;
        let inside_url = format!(
            "https://{}:{}",
            config::APISERVER_V4,
            config::APISERVER_PORT
        );
        let conf = paths.conf();
        let kc = |file: &str, user: &str| -> anyhow::Result<()> {
            let token = tokens.get(user).context("a token for every user")?;
            write_private(
                &conf.join(file),
                &kubeconfig_yaml(&inside_url, &ca.ca_pem, token),
            )?;
            Ok(())
        };
        kc(
            "controller-manager.kubeconfig",
            "system:kube-controller-manager",
        )?;
        kc("scheduler.kubeconfig", "system:kube-scheduler")?;
        kc("kube-proxy.kubeconfig", "system:kube-proxy")?;
        for n in &nets {
            kc(
                &format!("kubelet-{}.kubeconfig", n.short),
                &format!("system:node:{}", n.name),
            )?;
        }
        std::fs::write(
            conf.join("resolv.conf"),
            format!("nameserver {}\n", config::APISERVER_V4),
        )?;
        std::fs::write(conf.join("sysctl-1"), "1\n")?;
        std::fs::write(conf.join("sysctl-10"), "10\n")?;
        std::fs::write(conf.join("audit-policy.yaml"), config::audit_policy())?;

        // The LAN: a bridge in the lab's namespace, which also holds the control plane and is
        // the nodes' gateway.
        let topology = Topology::new()?;
        let lab_ns = topology.switch().name().to_owned();
        ledger.record(Entry::Netns {
            name: lab_ns.clone(),
        })?;
        let sw = topology.switch();
        sw.exec_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/{}", config::APISERVER_V4, config::LAN_V4_PREFIX),
                "dev",
                "br0",
            ],
        )?;
        if opts.dual_stack {
            sw.sysctl("net.ipv6.conf.br0.accept_dad", "0")?;
            sw.exec_ok(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/{}", config::GATEWAY_V6, config::LAN_V6_PREFIX),
                    "dev",
                    "br0",
                    "nodad",
                ],
            )?;
        }
        // Frames between the nodes must not pass through the lab's netfilter.
        for fam in ["iptables", "ip6tables", "arptables"] {
            sw.sysctl(&format!("net.bridge.bridge-nf-call-{fam}"), "0")?;
        }
        let v6net = |ip: IpAddr| IpNet::new(ip, config::LAN_V6_PREFIX);
        let mut nodes = Vec::new();
        for n in &nets {
            let host = topology.add_host(
                "lkn",
                Some(IpNet::new(n.v4, config::LAN_V4_PREFIX)?),
                n.v6.map(v6net).transpose()?,
            )?;
            ledger.record(Entry::Netns {
                name: host.ns().name().to_owned(),
            })?;
            let ns = host.ns();
            ns.exec_ok(
                "ip",
                &["route", "add", "default", "via", config::APISERVER_V4],
            )?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
            ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "1")?;
            if opts.dual_stack {
                ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
                ns.exec_ok(
                    "ip",
                    &["-6", "route", "add", "default", "via", config::GATEWAY_V6],
                )?;
            }
            nodes.push(LabNode {
                net: n.clone(),
                host,
            });
        }
        // Static pod routes: each node reaches the others' pods, and the lab (the API server)
        // reaches them all.
        for n in &nodes {
            for pods in n.net.pod_cidrs() {
                let via = if pods.contains(':') {
                    n.net.v6
                } else {
                    Some(n.net.v4)
                };
                let Some(via) = via else { continue };
                let via = via.to_string();
                sw.exec_ok("ip", &["route", "add", &pods, "via", &via])?;
                for m in &nodes {
                    if m.net.name != n.net.name {
                        m.host
                            .ns()
                            .exec_ok("ip", &["route", "add", &pods, "via", &via])?;
                    }
                }
            }
        }
        let client_v6: IpAddr = config::CLIENT_V6.parse()?;
        let client = topology.add_host(
            "lkc",
            Some(IpNet::new(
                config::CLIENT_V4.parse()?,
                config::LAN_V4_PREFIX,
            )?),
            opts.dual_stack.then(|| v6net(client_v6)).transpose()?,
        )?;
        ledger.record(Entry::Netns {
            name: client.ns().name().to_owned(),
        })?;

        // Kubelets run in their own mount namespace; a shared subtree lets the volumes they
        // mount (secrets, projected tokens) reach containerd and runc in ours.
        let shared = paths.shared().display().to_string();
        run("mount", &["--bind", &shared, &shared])?;
        run("mount", &["--make-shared", &shared])?;
        // cgroup v1: the kubelet's cgroupRoot must exist in every hierarchy (runc also uses
        // "unified" in hybrid mode).
        for n in &nets {
            let root = config::cgroup_root(&id, n);
            for c in [
                "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
                "systemd", "unified",
            ] {
                let base = Path::new("/sys/fs/cgroup").join(c);
                if !base.is_dir() {
                    continue;
                }
                let d = base.join(&root);
                ledger.record(Entry::Cgroup { path: d.clone() })?;
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                if c == "cpuset" {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        std::fs::write(d.join(f), std::fs::read(base.join(f))?)?;
                    }
                }
            }
        }
        ledger.record(Entry::Links {
            dir: PathBuf::from("/var/log/containers"),
            target: paths.pod_logs(),
        })?;

        // Images, built once for all nodes.
        let mut archives = vec![
            paths.images().join("pause.tar"),
            paths.images().join("web.tar"),
        ];
        images::pause_image(config::PAUSE_IMAGE, &paths.images())?.write_archive(&archives[0])?;
        images::web_image(WEB_IMAGE)?.write_archive(&archives[1])?;
        archives.extend(opts.images.iter().cloned());

        // Control plane.
        let logs = paths.logs();
        let ns_path = |ns: &str| format!("--net=/run/netns/{ns}");
        let etcd_args = config::etcd_args(&paths);
        let mut cmd = vec![ns_path(&lab_ns), opts.etcd.display().to_string()];
        cmd.extend(etcd_args);
        partial.spawn(
            "etcd",
            Stage::Store,
            "nsenter",
            &cmd,
            &logs.join("etcd.log"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(http_get(sw, 2379, "/health")?, Some((200, ref b)) if b.contains("true")) {
                break;
            }
            partial.check_alive(&logs)?;
            if Instant::now() > deadline {
                bail!(
                    "etcd not healthy in 60 s:\n{}",
                    tail(&logs.join("etcd.log"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let policy = conf.join("audit-policy.yaml");
        let mut cmd = vec![
            ns_path(&lab_ns),
            opts.k8s_bin.join("kube-apiserver").display().to_string(),
        ];
        cmd.extend(config::apiserver_args(
            &paths,
            opts.dual_stack,
            opts.audit.then_some(policy.as_path()),
        ));
        partial.spawn(
            "kube-apiserver",
            Stage::ControlPlane,
            "nsenter",
            &cmd,
            &logs.join("kube-apiserver.log"),
        )?;
        let forwarder = forward_out_of(
            &lab_ns,
            SocketAddr::new(config::APISERVER_V4.parse()?, config::APISERVER_PORT),
        )?;
        let admin_token = tokens.get("lab-admin").context("admin token")?;
        let outside_url = format!("https://127.0.0.1:{}", forwarder.port());
        write_private(
            &paths.admin_kubeconfig(),
            &kubeconfig_yaml(&outside_url, &ca.ca_pem, admin_token),
        )?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kube = client_from_kubeconfig(&paths.admin_kubeconfig()).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(5), kube.request_text(req)).await
            {
                break;
            }
            partial.check_alive(&logs)?;
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready in 120 s:\n{}",
                    tail(&logs.join("kube-apiserver.log"), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let api_nodes: Api<Node> = Api::all(kube.clone());
        for n in &nets {
            let node: Node = serde_json::from_value(config::node_object(n))?;
            api_nodes
                .create(&PostParams::default(), &node)
                .await
                .with_context(|| format!("creating Node {}", n.name))?;
        }
        let mut cmd = vec![
            ns_path(&lab_ns),
            opts.k8s_bin
                .join("kube-controller-manager")
                .display()
                .to_string(),
        ];
        cmd.extend(config::controller_manager_args(&paths, opts.dual_stack));
        partial.spawn(
            "kube-controller-manager",
            Stage::ControlPlane,
            "nsenter",
            &cmd,
            &logs.join("kube-controller-manager.log"),
        )?;
        let mut cmd = vec![
            ns_path(&lab_ns),
            opts.k8s_bin.join("kube-scheduler").display().to_string(),
        ];
        cmd.extend(config::scheduler_args(&paths));
        partial.spawn(
            "kube-scheduler",
            Stage::ControlPlane,
            "nsenter",
            &cmd,
            &logs.join("kube-scheduler.log"),
        )?;

        // Nodes: containerd first (all of them, then the image imports in parallel), then the
        // kubelets and kube-proxies.
        for n in &nodes {
            let s = n.net.short;
            let nconf = conf.join(s.to_string());
            std::fs::create_dir_all(nconf.join("net.d"))?;
            std::fs::create_dir_all(paths.run.join(s.to_string()))?;
            std::fs::create_dir_all(paths.pod_logs().join(s.to_string()))?;
            std::fs::write(
                nconf.join("containerd.toml"),
                config::containerd_toml(&paths, &n.net),
            )?;
            std::fs::write(
                nconf.join("net.d/10-lab.conflist"),
                config::cni_conflist(&paths, &n.net),
            )?;
            std::fs::write(
                nconf.join("kubelet.yaml"),
                config::kubelet_yaml(&paths, &id, &n.net),
            )?;
            std::fs::write(
                nconf.join("kube-proxy.yaml"),
                config::kube_proxy_yaml(&paths, &n.net, opts.dual_stack),
            )?;
            let sock = paths.containerd_socket(&n.net);
            ledger.record(Entry::Containerd {
                socket: sock.clone(),
            })?;
            let cmd = vec![
                ns_path(n.host.ns().name()),
                "containerd".to_owned(),
                "--config".to_owned(),
                nconf.join("containerd.toml").display().to_string(),
            ];
            partial.spawn(
                &format!("containerd-{s}"),
                Stage::Runtime,
                "nsenter",
                &cmd,
                &logs.join(format!("containerd-{s}.log")),
            )?;
        }
        for n in &nodes {
            let sock = paths.containerd_socket(&n.net).display().to_string();
            let deadline = Instant::now() + Duration::from_secs(30);
            while run("ctr", &["--address", &sock, "version"]).is_err() {
                partial.check_alive(&logs)?;
                if Instant::now() > deadline {
                    bail!(
                        "containerd of {} did not answer in 30 s:\n{}",
                        n.net.name,
                        tail(&logs.join(format!("containerd-{}.log", n.net.short)), 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let sockets: Vec<String> = nodes
            .iter()
            .map(|n| paths.containerd_socket(&n.net).display().to_string())
            .collect();
        import_images(&sockets, &archives)?;
        for n in &nodes {
            partial.spawn_node_agents(&opts, &paths, &n.net, n.host.ns().name())?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list = api_nodes.list(&Default::default()).await?;
            let ready = list.items.iter().filter(|n| node_ready(n)).count();
            if ready == nets.len() {
                break;
            }
            partial.check_alive(&logs)?;
            if Instant::now() > deadline {
                let mut logs_tail = String::new();
                for n in &nets {
                    logs_tail.push_str(&format!(
                        "--- kubelet {} ---\n{}\n",
                        n.name,
                        tail(&logs.join(format!("kubelet-{}.log", n.short)), 15)
                    ));
                }
                bail!(
                    "only {ready} of {} nodes Ready after 120 s\n{logs_tail}",
                    nets.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let bring_up = t0.elapsed();
        eprintln!(
            "lodestone clusterlab {id}: {} nodes Ready in {:.1} s (kubeconfig {})",
            nets.len(),
            bring_up.as_secs_f64(),
            paths.admin_kubeconfig().display()
        );
        let children = partial.disarm();
        Ok(ClusterLab {
            id,
            opts,
            paths,
            ledger,
            children: Mutex::new(children),
            nodes,
            client,
            topology,
            forwarder: Some(forwarder),
            kube,
            tokens,
            ca_pem: ca.ca_pem,
            bring_up,
        })
    }

    /// The lab's id (part of every name it made).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long [`ClusterLab::start`] took.
    pub fn bring_up_time(&self) -> Duration {
        self.bring_up
    }

    /// An admin client (through the relay on the root namespace's loopback).
    pub fn client(&self) -> kube::Client {
        self.kube.clone()
    }

    /// The admin kubeconfig: usable from the root namespace (`kubectl --kubeconfig ...`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.paths.admin_kubeconfig()
    }

    /// The lab's paths.
    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }

    /// What the lab was built with.
    pub fn options(&self) -> &LabOptions {
        &self.opts
    }

    /// The API server's CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The lab's namespace (bridge, control plane).
    pub fn lab_ns(&self) -> &crate::netns::Netns {
        self.topology.switch()
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.net.name == name)
            .with_context(|| format!("no lab node {name}"))
    }

    /// The node whose LAN link has MAC `mac`.
    pub fn node_by_mac(&self, mac: &str) -> Option<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.host.mac().is_ok_and(|m| m.eq_ignore_ascii_case(mac)))
    }

    /// `kubectl ARGS` from the root namespace with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("kubectl")
            .env("KUBECONFIG", self.kubeconfig_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl")
    }

    /// `kubectl ARGS`, failing with its stderr unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply_yaml(&self, yaml: &str) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", self.kubeconfig_path())
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl apply")?;
        child
            .stdin
            .take()
            .context("kubectl's stdin")?
            .write_all(yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A token for a static user of the lab (`lab-admin`, `system:node:node-a`, ...).
    pub fn token(&self, user: &str) -> Option<&str> {
        self.tokens.get(user).map(String::as_str)
    }

    /// Imports more OCI archives into every node's containerd (e.g. Lodestone's images, built
    /// after the lab came up).
    pub fn import_images(&self, archives: &[PathBuf]) -> anyhow::Result<()> {
        let sockets: Vec<String> = self
            .nodes
            .iter()
            .map(|n| self.paths.containerd_socket(&n.net).display().to_string())
            .collect();
        import_images(&sockets, archives)
    }

    /// The API server's audit log (JSON lines), when the lab was started with `audit`.
    pub fn audit_log(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(self.paths.audit_log()).context("reading the audit log")
    }

    /// The last `n` lines of every daemon log, for a failure message.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.paths.logs()) {
            let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "log"))
            {
                if f.file_name().is_some_and(|n| n == "audit.log") {
                    continue;
                }
                out.push_str(&format!("==== {} ====\n{}\n", f.display(), tail(f, n)));
            }
        }
        out
    }

    /// Stops the kubelet of `node` (SIGKILL, as a crash): its pods keep running, the API
    /// server stops hearing from it. [`ClusterLab::start_kubelet`] starts it again.
    pub fn kill_kubelet(&self, node: &str) -> anyhow::Result<()> {
        let n = self.node(node)?;
        for e in self.ledger.entries() {
            if let Entry::Process { name, pid, .. } = e
                && name == format!("kubelet-{}", n.net.short)
            {
                Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()?;
                self.ledger.forget_process(pid)?;
            }
        }
        self.reap();
        Ok(())
    }

    /// Starts the kubelet of `node` again after [`ClusterLab::kill_kubelet`].
    pub fn start_kubelet(&self, node: &str) -> anyhow::Result<()> {
        let n = self.node(node)?;
        let mut p = Partial {
            ledger: Arc::clone(&self.ledger),
            children: Vec::new(),
            armed: false,
        };
        let res = p.spawn_kubelet(&self.opts, &self.paths, &n.net, n.host.ns().name());
        let children = p.disarm();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(children);
        res
    }

    fn reap(&self) {
        let mut c = self.children.lock().unwrap_or_else(|p| p.into_inner());
        c.retain_mut(|ch| matches!(ch.try_wait(), Ok(None)));
    }
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Imports every archive into every containerd (one thread per node).
fn import_images(sockets: &[String], archives: &[PathBuf]) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .map(|sock| {
                s.spawn(move || -> anyhow::Result<()> {
                    for a in archives {
                        let path = a.display().to_string();
                        run(
                            "ctr",
                            &["-n", "k8s.io", "--address", sock, "images", "import", &path],
                        )
                        .with_context(|| format!("importing {path} into {sock}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("image import panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// The processes of a lab being built; tears the lab down if dropped before [`Partial::disarm`].
struct Partial {
    ledger: Arc<Ledger>,
    children: Vec<Child>,
    armed: bool,
}

impl Partial {
    /// Starts `program args` with output to `log`, in its own process group (a terminal's ^C
    /// reaches the test, whose handler tears down in order, not the daemons at random).
    fn spawn(
        &mut self,
        name: &str,
        stage: Stage,
        program: &str,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push(child);
        self.ledger
            .record_process(name, pid, stage)
            .with_context(|| format!("{name} exited at once:\n{}", tail(log, 20)))?;
        Ok(())
    }

    /// Fails with the log of any child that has exited.
    fn check_alive(&mut self, logs: &Path) -> anyhow::Result<()> {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                let pid = c.id();
                let name = self
                    .ledger
                    .entries()
                    .into_iter()
                    .find_map(|e| match e {
                        Entry::Process { name, pid: p, .. } if p == pid => Some(name),
                        _ => None,
                    })
                    .unwrap_or_else(|| format!("pid {pid}"));
                bail!(
                    "{name} exited ({status}):\n{}",
                    tail(&logs.join(format!("{name}.log")), 30)
                );
            }
        }
        Ok(())
    }

    fn spawn_kubelet(
        &mut self,
        opts: &LabOptions,
        paths: &LabPaths,
        n: &NodeNet,
        ns: &str,
    ) -> anyhow::Result<()> {
        let conf = paths.conf();
        // kubelet writes vm.overcommit_memory, kernel.panic and kernel.panic_on_oops for the
        // whole machine; in its own mount namespace those files are bind-mounted over.
        let script = format!(
            "mount --bind {one} /proc/sys/vm/overcommit_memory && mount --bind {ten} /proc/sys/kernel/panic && mount --bind {one} /proc/sys/kernel/panic_on_oops && exec \"$@\"",
            one = conf.join("sysctl-1").display(),
            ten = conf.join("sysctl-10").display(),
        );
        let mut cmd = vec![
            format!("--net=/run/netns/{ns}"),
            "unshare".to_owned(),
            "--mount".to_owned(),
            "--propagation".to_owned(),
            "unchanged".to_owned(),
            "--".to_owned(),
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            script,
            "kubelet".to_owned(),
        ];
        cmd.extend(config::kubelet_args(
            &opts.k8s_bin.join("kubelet"),
            paths,
            n,
        ));
        let name = format!("kubelet-{}", n.short);
        let log = paths.logs().join(format!("{name}.log"));
        // Appended to, not truncated: a restarted kubelet keeps the first one's log.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        self.spawn_appending(&name, Stage::NodeAgent, "nsenter", &cmd, &log)
    }

    fn spawn_appending(
        &mut self,
        name: &str,
        stage: Stage,
        program: &str,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push(child);
        self.ledger
            .record_process(name, pid, stage)
            .with_context(|| format!("{name} exited at once:\n{}", tail(log, 20)))?;
        Ok(())
    }

    fn spawn_node_agents(
        &mut self,
        opts: &LabOptions,
        paths: &LabPaths,
        n: &NodeNet,
        ns: &str,
    ) -> anyhow::Result<()> {
        self.spawn_kubelet(opts, paths, n, ns)?;
        let cmd = vec![
            format!("--net=/run/netns/{ns}"),
            opts.k8s_bin.join("kube-proxy").display().to_string(),
            format!(
                "--config={}",
                paths
                    .conf()
                    .join(format!("{}/kube-proxy.yaml", n.short))
                    .display()
            ),
            "--v=2".to_owned(),
        ];
        let name = format!("kube-proxy-{}", n.short);
        let log = paths.logs().join(format!("{name}.log"));
        self.spawn(&name, Stage::NodeAgent, "nsenter", &cmd, &log)
    }

    /// Hands the children over: the lab is complete, dropping this no longer tears it down.
    fn disarm(mut self) -> Vec<Child> {
        self.armed = false;
        std::mem::take(&mut self.children)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let left = self.ledger.teardown();
        if !left.is_empty() {
            eprintln!("lodestone clusterlab: a failed start left behind: {left}");
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "lodestone clusterlab {}: the test failed; last lines of every daemon's log:\n{}",
                self.id,
                self.logs_tail(25)
            );
        }
        let t = Instant::now();
        self.forwarder = None;
        let left = self.ledger.teardown();
        for c in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            let _ = c.wait();
        }
        if left.is_empty() {
            eprintln!(
                "lodestone clusterlab {}: torn down in {:.1} s",
                self.id,
                t.elapsed().as_secs_f64()
            );
        } else {
            eprintln!("lodestone clusterlab {}: left behind: {left}", self.id);
        }
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| w.upgrade().is_some_and(|l| !Arc::ptr_eq(&l, &self.ledger)));
    }
}
