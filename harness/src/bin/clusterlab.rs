//! `lodestone-clusterlab`: a real multi-node Kubernetes cluster in network namespaces on this
//! machine, for trying Lodestone (or anything) on real kube-apiserver, kubelets and kube-proxy.
//! It stays up until interrupted (^C, SIGTERM), then removes everything it made.
//!
//! ```sh
//! LODESTONE_K8S_BIN=/path/to/kubernetes/server/bin cargo run -p lodestone-harness --bin lodestone-clusterlab
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lodestone_harness::clusterlab::{ClusterLab, K8S_BIN_VAR, LabOptions};

#[derive(Parser, Debug)]
#[command(
    name = "lodestone-clusterlab",
    about = "A real Kubernetes cluster (control plane, nodes, client) in network namespaces; ^C removes it"
)]
struct Args {
    /// Number of nodes (1 to 4).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// IPv4 only (default: dual-stack, IPv4 primary).
    #[arg(long)]
    single_stack: bool,
    /// More OCI image archives to import into every node.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Also copy the admin kubeconfig here (it points at 127.0.0.1 through a relay).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut opts = LabOptions::from_env()?.with_context(|| {
        format!("set {K8S_BIN_VAR} to a directory of Kubernetes server binaries")
    })?;
    opts.nodes = args.nodes;
    opts.dual_stack = !args.single_stack;
    opts.images = args.images;
    let lab = ClusterLab::start(opts).await?;
    let kubeconfig = match &args.kubeconfig {
        Some(p) => {
            std::fs::copy(lab.kubeconfig_path(), p)?;
            p.clone()
        }
        None => lab.kubeconfig_path(),
    };
    println!(
        "kubectl --kubeconfig {} get nodes -o wide",
        kubeconfig.display()
    );
    for n in &lab.nodes {
        println!(
            "node {}: ip netns exec {} ...  ({}{})",
            n.net.name,
            n.host.ns().name(),
            n.net.v4,
            n.net.v6.map(|v| format!(", {v}")).unwrap_or_default()
        );
    }
    println!("client: ip netns exec {} ...", lab.client.ns().name());
    println!("logs: {}", lab.paths().logs().display());
    println!("^C to tear it down");
    // The lab's signal handler tears down and exits; until then, keep the relay serving.
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}
