//! Pure: the lab's addresses and every configuration file and command line it starts its
//! daemons with. Nothing here touches the machine, so all of it is unit-tested.
//!
//! Addresses (documentation ranges only; the root namespace never gets any of them):
//!
//! | what | IPv4 | IPv6 (dual-stack labs) |
//! |---|---|---|
//! | LAN (bridge in the lab namespace) | 192.0.2.0/24 | 2001:db8::/64 |
//! | kube-apiserver, the nodes' gateway | 192.0.2.1 | 2001:db8::1 |
//! | client | 192.0.2.2 | 2001:db8::2 |
//! | node *i* (0-based) | 192.0.2.(11+i) | 2001:db8::(11+i) |
//! | pods of node *i* | 198.51.100.(64·i)/26 | 2001:db8:1:(i)::/64 |
//! | Services (ClusterIPs) | 203.0.113.0/24 | 2001:db8:2::/112 |
//!
//! Node pod CIDRs are static (Nodes are created with `spec.podCIDRs` before their kubelets
//! start) and routed with static routes, so no CNI daemon or node IPAM is needed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The most nodes a lab can have (pod CIDRs are /26 slices of one /24).
pub const MAX_NODES: usize = 4;

/// The LAN's IPv4 prefix length.
pub const LAN_V4_PREFIX: u8 = 24;
/// The LAN's IPv6 prefix length.
pub const LAN_V6_PREFIX: u8 = 64;
/// kube-apiserver's (and the gateway's) IPv4 address.
pub const APISERVER_V4: &str = "192.0.2.1";
/// The gateway's IPv6 address.
pub const GATEWAY_V6: &str = "2001:db8::1";
/// kube-apiserver's port.
pub const APISERVER_PORT: u16 = 6443;
/// The client's IPv4 address.
pub const CLIENT_V4: &str = "192.0.2.2";
/// The client's IPv6 address.
pub const CLIENT_V6: &str = "2001:db8::2";
/// Service ClusterIP range, IPv4 (the `kubernetes` Service is its first address).
pub const SERVICE_V4: &str = "203.0.113.0/24";
/// Service ClusterIP range, IPv6 (kube-apiserver allows at most 20 host bits).
pub const SERVICE_V6: &str = "2001:db8:2::/112";
/// All pods, IPv4.
pub const CLUSTER_V4: &str = "198.51.100.0/24";
/// All pods, IPv6.
pub const CLUSTER_V6: &str = "2001:db8:1::/48";
/// The pause image every node's containerd and kubelet use.
pub const PAUSE_IMAGE: &str = "lab.local/pause:1.0";

/// One node's addresses and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    /// Node name (Node object and hostname override), e.g. `node-a`.
    pub name: String,
    /// Short letter used in file and cgroup names, e.g. `a`.
    pub short: char,
    /// IPv4 address on the LAN.
    pub v4: IpAddr,
    /// IPv6 address on the LAN (dual-stack labs).
    pub v6: Option<IpAddr>,
    /// Pod CIDR, IPv4.
    pub pods_v4: String,
    /// Pod CIDR, IPv6 (dual-stack labs).
    pub pods_v6: Option<String>,
}

impl NodeNet {
    /// `node_ip` for kubelet: `v4` or `v4,v6`.
    pub fn node_ips(&self) -> String {
        match self.v6 {
            Some(v6) => format!("{},{v6}", self.v4),
            None => self.v4.to_string(),
        }
    }

    /// The pod CIDRs, primary family first.
    pub fn pod_cidrs(&self) -> Vec<String> {
        let mut v = vec![self.pods_v4.clone()];
        v.extend(self.pods_v6.clone());
        v
    }
}

/// The addresses of node `i` (0-based) of a lab.
pub fn node_net(i: usize, dual_stack: bool) -> NodeNet {
    let short = char::from(b'a' + (i as u8));
    NodeNet {
        name: format!("node-{short}"),
        short,
        v4: IpAddr::from([192, 0, 2, 11 + i as u8]),
        v6: dual_stack.then(|| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11 + i as u16])),
        pods_v4: format!("198.51.100.{}/26", 64 * i),
        pods_v6: dual_stack.then(|| format!("2001:db8:1:{i:x}::/64")),
    }
}

/// `--service-cluster-ip-range`.
pub fn service_ranges(dual_stack: bool) -> String {
    if dual_stack {
        format!("{SERVICE_V4},{SERVICE_V6}")
    } else {
        SERVICE_V4.to_owned()
    }
}

/// `--cluster-cidr` / kube-proxy's `clusterCIDR`.
pub fn cluster_ranges(dual_stack: bool) -> String {
    if dual_stack {
        format!("{CLUSTER_V4},{CLUSTER_V6}")
    } else {
        CLUSTER_V4.to_owned()
    }
}

/// The paths of one lab: `data` (disk: etcd, containerd roots, kubelet roots, logs, PKI) and
/// `run` (sockets and runtime state; short, because unix socket paths are at most 107 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPaths {
    /// Persistent state of this lab.
    pub data: PathBuf,
    /// Sockets and runtime state.
    pub run: PathBuf,
}

impl LabPaths {
    /// PKI, tokens.
    pub fn pki(&self) -> PathBuf {
        self.data.join("pki")
    }
    /// Configuration files.
    pub fn conf(&self) -> PathBuf {
        self.data.join("conf")
    }
    /// Daemon logs.
    pub fn logs(&self) -> PathBuf {
        self.data.join("logs")
    }
    /// Where the kubelets' data lives: made a shared bind mount so the volumes kubelet mounts
    /// in its own mount namespace reach containerd's.
    pub fn shared(&self) -> PathBuf {
        self.data.join("shared")
    }
    /// Pod logs (kubelet's `podLogsDir` per node lives below).
    pub fn pod_logs(&self) -> PathBuf {
        self.data.join("podlogs")
    }
    /// Image archives.
    pub fn images(&self) -> PathBuf {
        self.data.join("images")
    }
    /// The admin kubeconfig (pointing at the lab's API server through the root-namespace relay).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.data.join("kubeconfig")
    }
    /// The API server's audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.logs().join("audit.log")
    }
    /// A node's containerd socket.
    pub fn containerd_socket(&self, node: &NodeNet) -> PathBuf {
        self.run
            .join(node.short.to_string())
            .join("containerd.sock")
    }
}

/// etcd's command line inside the lab's namespace (its own loopback, fixed ports).
pub fn etcd_args(paths: &LabPaths) -> Vec<String> {
    crate::cluster::etcd_args(&paths.data.join("etcd"), 2379, 2380)
}

/// kube-apiserver's command line.
pub fn apiserver_args(
    paths: &LabPaths,
    dual_stack: bool,
    audit_policy: Option<&Path>,
) -> Vec<String> {
    let pki = paths.pki();
    let p = |name: &str| pki.join(name).display().to_string();
    let mut args = vec![
        "--etcd-servers=http://127.0.0.1:2379".to_owned(),
        format!("--bind-address={APISERVER_V4}"),
        format!("--advertise-address={APISERVER_V4}"),
        format!("--secure-port={APISERVER_PORT}"),
        format!(
            "--cert-dir={}",
            paths.data.join("apiserver-certs").display()
        ),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        format!("--token-auth-file={}", p("tokens.csv")),
        format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
        format!("--kubelet-client-key={}", p("kubelet-client.key")),
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
        format!("--service-cluster-ip-range={}", service_ranges(dual_stack)),
        "--authorization-mode=Node,RBAC".to_owned(),
        "--enable-admission-plugins=NodeRestriction".to_owned(),
        "--allow-privileged=true".to_owned(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--profiling=false".to_owned(),
    ];
    if let Some(policy) = audit_policy {
        args.push(format!("--audit-policy-file={}", policy.display()));
        args.push(format!("--audit-log-path={}", paths.audit_log().display()));
        args.push("--audit-log-maxsize=200".to_owned());
        args.push("--audit-log-format=json".to_owned());
    }
    args
}

/// The audit policy: metadata of every request, enough to find each 403 and who got it.
pub fn audit_policy() -> &'static str {
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n"
}

/// kube-controller-manager's command line.
pub fn controller_manager_args(paths: &LabPaths, dual_stack: bool) -> Vec<String> {
    let kc = paths
        .conf()
        .join("controller-manager.kubeconfig")
        .display()
        .to_string();
    let pki = paths.pki();
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".to_owned(),
        // Ports of the lab's namespace, but keep clear of anything a test might use.
        "--secure-port=10257".to_owned(),
        "--leader-elect=false".to_owned(),
        format!("--root-ca-file={}", pki.join("ca.crt").display()),
        format!(
            "--service-account-private-key-file={}",
            pki.join("sa.key").display()
        ),
        "--use-service-account-credentials=true".to_owned(),
        format!("--service-cluster-ip-range={}", service_ranges(dual_stack)),
        format!("--cluster-cidr={}", cluster_ranges(dual_stack)),
        "--allocate-node-cidrs=false".to_owned(),
        // With kubelet's 10 s lease (renewed every 2.5 s), a node cut off is NotReady after
        // 20 s instead of 40 s: the fault tests cut nodes and wait for the API to notice.
        "--node-monitor-grace-period=20s".to_owned(),
    ]
}

/// kube-scheduler's command line.
pub fn scheduler_args(paths: &LabPaths) -> Vec<String> {
    let kc = paths
        .conf()
        .join("scheduler.kubeconfig")
        .display()
        .to_string();
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--secure-port=10259".to_owned(),
        "--leader-elect=false".to_owned(),
    ]
}

/// A node's containerd configuration: everything per node (root, state, sockets, runc root,
/// pod netns under the state dir, CNI config), and `restrict_oom_score_adj` because the machine
/// lacks CAP_SYS_RESOURCE (kit README pitfall 4).
pub fn containerd_toml(paths: &LabPaths, node: &NodeNet) -> String {
    let n = node.short;
    let data = paths.shared().join(format!("{n}"));
    let run = paths.run.join(format!("{n}"));
    let sock = paths.containerd_socket(node);
    let netd = paths.conf().join(format!("{n}/net.d"));
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{netd}"
"#,
        root = data.join("containerd").display(),
        state = run.join("containerd").display(),
        sock = sock.display(),
        opt = data.join("opt").display(),
        runc = run.join("runc").display(),
        netd = netd.display(),
    )
}

/// A node's CNI configuration: a bridge with host-local IPAM over the node's pod CIDRs.
pub fn cni_conflist(paths: &LabPaths, node: &NodeNet) -> String {
    let mut ranges = vec![serde_json::json!([{ "subnet": node.pods_v4 }])];
    let mut routes = vec![serde_json::json!({"dst": "0.0.0.0/0"})];
    if let Some(v6) = &node.pods_v6 {
        ranges.push(serde_json::json!([{ "subnet": v6 }]));
        routes.push(serde_json::json!({"dst": "::/0"}));
    }
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": format!("lab-{}", node.short),
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local", "ranges": ranges, "routes": routes,
                    "dataDir": paths.shared().join(format!("{}/cni-ipam", node.short)),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    serde_json::to_string_pretty(&conf).unwrap_or_default()
}

/// The kubelet's cgroup root for `node` (one per node and lab, in every hierarchy).
pub fn cgroup_root(lab_id: &str, node: &NodeNet) -> String {
    format!("lodestone-{lab_id}-{}", node.short)
}

/// A node's KubeletConfiguration.
pub fn kubelet_yaml(paths: &LabPaths, lab_id: &str, node: &NodeNet) -> String {
    let pki = paths.pki();
    let sock = paths.containerd_socket(node);
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {addr}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: "{ca}"}}
authorization: {{mode: Webhook}}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroot}
cgroupsPerQOS: true
failSwapOn: false
containerRuntimeEndpoint: unix://{sock}
imageServiceEndpoint: unix://{sock}
clusterDomain: cluster.local
resolvConf: "{resolv}"
podLogsDir: "{podlogs}"
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
maxPods: 60
serializeImagePulls: false
protectKernelDefaults: false
nodeLeaseDurationSeconds: 10
# Mounted Secrets follow an update at the next pod sync: 10 s instead of a minute, so the key
# rotation that docs/install.md describes finishes within a test.
syncFrequency: 10s
"#,
        addr = node.v4,
        ca = pki.join("ca.crt").display(),
        cgroot = cgroup_root(lab_id, node),
        sock = sock.display(),
        resolv = paths.conf().join("resolv.conf").display(),
        podlogs = paths.pod_logs().join(node.short.to_string()).display(),
    )
}

/// A node's KubeProxyConfiguration (iptables mode; conntrack limits are machine-wide, so
/// kube-proxy must not touch them).
pub fn kube_proxy_yaml(paths: &LabPaths, node: &NodeNet, dual_stack: bool) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: "{kc}"}}
hostnameOverride: {name}
bindAddress: {addr}
healthzBindAddress: {addr}:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: "{cluster}"
conntrack: {{maxPerCore: 0, min: 0}}
"#,
        kc = paths.conf().join("kube-proxy.kubeconfig").display(),
        name = node.name,
        addr = node.v4,
        cluster = cluster_ranges(dual_stack),
    )
}

/// kubelet's command line (after the sysctl bind mounts, see the lab).
pub fn kubelet_args(bin: &Path, paths: &LabPaths, node: &NodeNet) -> Vec<String> {
    let n = node.short;
    let root = paths.shared().join(format!("{n}/kubelet"));
    vec![
        bin.display().to_string(),
        format!(
            "--config={}",
            paths.conf().join(format!("{n}/kubelet.yaml")).display()
        ),
        format!(
            "--kubeconfig={}",
            paths
                .conf()
                .join(format!("kubelet-{n}.kubeconfig"))
                .display()
        ),
        format!("--hostname-override={}", node.name),
        format!("--node-ip={}", node.node_ips()),
        format!("--root-dir={}", root.display()),
        format!("--cert-dir={}", root.join("pki").display()),
        format!("--pod-infra-container-image={PAUSE_IMAGE}"),
        "--v=2".to_owned(),
    ]
}

/// The Node object a node registers as, created before its kubelet starts so the static pod
/// CIDRs are there from the first moment.
pub fn node_object(node: &NodeNet) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"podCIDR": node.pods_v4, "podCIDRs": node.pod_cidrs()},
    })
}

/// The users of the static token file: (user, uid, groups). Tokens are generated per lab.
pub fn token_users(nodes: &[NodeNet]) -> Vec<(String, String, Vec<String>)> {
    let mut users = vec![
        (
            "lab-admin".to_owned(),
            "lab-admin".to_owned(),
            vec!["system:masters".to_owned()],
        ),
        (
            "system:kube-controller-manager".to_owned(),
            "kcm".to_owned(),
            vec![],
        ),
        (
            "system:kube-scheduler".to_owned(),
            "scheduler".to_owned(),
            vec![],
        ),
        (
            "system:kube-proxy".to_owned(),
            "kube-proxy".to_owned(),
            vec![],
        ),
    ];
    for n in nodes {
        users.push((
            format!("system:node:{}", n.name),
            format!("node-{}", n.short),
            vec!["system:nodes".to_owned()],
        ));
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> LabPaths {
        LabPaths {
            data: PathBuf::from("/var/tmp/lodestone-clusterlab/7-0"),
            run: PathBuf::from("/run/lsk-7-0"),
        }
    }

    #[test]
    fn nodes_get_distinct_documentation_addresses_and_pod_cidrs() {
        let nodes: Vec<NodeNet> = (0..MAX_NODES).map(|i| node_net(i, true)).collect();
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                assert_ne!(a.v4, b.v4);
                assert_ne!(a.v6, b.v6);
                assert_ne!(a.pods_v4, b.pods_v4);
                assert_ne!(a.pods_v6, b.pods_v6);
            }
            let v4: ipnet::Ipv4Net = a.pods_v4.parse().unwrap();
            let all4: ipnet::Ipv4Net = CLUSTER_V4.parse().unwrap();
            assert!(all4.contains(&v4), "{v4} inside {all4}");
            let v6: ipnet::Ipv6Net = a.pods_v6.as_deref().unwrap().parse().unwrap();
            let all6: ipnet::Ipv6Net = CLUSTER_V6.parse().unwrap();
            assert!(all6.contains(&v6), "{v6} inside {all6}");
        }
        assert_eq!(node_net(0, false).node_ips(), "192.0.2.11");
        assert_eq!(node_net(1, true).node_ips(), "192.0.2.12,2001:db8::12");
        assert_eq!(node_net(2, true).name, "node-c");
    }

    #[test]
    fn the_ipv6_service_range_is_within_kube_apiservers_limit() {
        let r: ipnet::Ipv6Net = SERVICE_V6.parse().unwrap();
        assert!(
            r.prefix_len() >= 108,
            "kube-apiserver refuses more than 20 host bits"
        );
        assert_eq!(service_ranges(false), SERVICE_V4);
        assert_eq!(service_ranges(true), format!("{SERVICE_V4},{SERVICE_V6}"));
    }

    #[test]
    fn socket_paths_fit_sun_path() {
        let p = paths();
        let sock = p.containerd_socket(&node_net(3, true));
        // sun_path is 108 bytes with the terminating NUL; containerd adds ".ttrpc".
        assert!(sock.display().to_string().len() + ".ttrpc".len() < 108);
    }

    #[test]
    fn containerd_config_keeps_everything_per_node() {
        let p = paths();
        let a = containerd_toml(&p, &node_net(0, false));
        let b = containerd_toml(&p, &node_net(1, false));
        assert!(a.contains("restrict_oom_score_adj = true"));
        assert!(a.contains("netns_mounts_under_state_dir = true"));
        assert!(a.contains(&format!("sandbox_image = \"{PAUSE_IMAGE}\"")));
        // No line with a path is shared between two nodes.
        for line in a
            .lines()
            .filter(|l| l.contains(" = \"/") && !l.contains("/usr/lib/cni"))
        {
            assert!(!b.contains(line), "shared: {line}");
        }
        // The config is TOML that parses... by eye: every [table] is balanced.
        assert_eq!(a.matches('[').count(), a.matches(']').count());
    }

    #[test]
    fn cni_config_routes_both_families_when_dual_stack() {
        let p = paths();
        let single: serde_json::Value =
            serde_json::from_str(&cni_conflist(&p, &node_net(0, false))).unwrap();
        assert_eq!(
            single["plugins"][0]["ipam"]["ranges"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let dual: serde_json::Value =
            serde_json::from_str(&cni_conflist(&p, &node_net(1, true))).unwrap();
        let ranges = dual["plugins"][0]["ipam"]["ranges"].as_array().unwrap();
        assert_eq!(ranges[0][0]["subnet"], "198.51.100.64/26");
        assert_eq!(ranges[1][0]["subnet"], "2001:db8:1:1::/64");
        assert_eq!(dual["plugins"][0]["ipam"]["routes"][1]["dst"], "::/0");
    }

    #[test]
    fn kubelet_and_proxy_configs_name_the_node() {
        let p = paths();
        let n = node_net(2, true);
        let k = kubelet_yaml(&p, "7-0", &n);
        assert!(k.contains("address: 192.0.2.13"));
        assert!(k.contains("cgroupRoot: /lodestone-7-0-c"));
        assert!(k.contains("/run/lsk-7-0/c/containerd.sock"));
        let kp = kube_proxy_yaml(&p, &n, true);
        assert!(kp.contains("hostnameOverride: node-c"));
        assert!(kp.contains("clusterCIDR: \"198.51.100.0/24,2001:db8:1::/48\""));
        assert!(kp.contains("maxPerCore: 0"));
        let args = kubelet_args(Path::new("/bin/kubelet"), &p, &n);
        assert!(args.contains(&"--node-ip=192.0.2.13,2001:db8::13".to_owned()));
        assert_eq!(args[0], "/bin/kubelet");
    }

    #[test]
    fn apiserver_args_enable_audit_only_when_asked() {
        let p = paths();
        let plain = apiserver_args(&p, true, None);
        assert!(plain.iter().all(|a| !a.starts_with("--audit")));
        assert!(plain.contains(&format!(
            "--service-cluster-ip-range={SERVICE_V4},{SERVICE_V6}"
        )));
        let audited = apiserver_args(&p, false, Some(Path::new("/x/policy.yaml")));
        assert!(audited.contains(&"--audit-policy-file=/x/policy.yaml".to_owned()));
        assert!(audited.iter().any(|a| a.starts_with("--audit-log-path=")));
    }

    #[test]
    fn node_objects_carry_both_pod_cidrs() {
        let o = node_object(&node_net(1, true));
        assert_eq!(
            o["spec"]["podCIDRs"],
            serde_json::json!(["198.51.100.64/26", "2001:db8:1:1::/64"])
        );
        assert_eq!(o["metadata"]["labels"]["kubernetes.io/hostname"], "node-b");
        let users = token_users(&[node_net(0, false)]);
        assert!(
            users
                .iter()
                .any(|(u, _, g)| u == "system:node:node-a" && g == &["system:nodes"])
        );
    }
}
