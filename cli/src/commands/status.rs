//! `lodestonectl status`: pool usage, every LoadBalancer Service's address, pool and node, and
//! every node's BGP session with each BGPPeer.

use std::process::ExitCode;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use lodestone_cli::diagnose::{bgp_sessions, render_status, status};
use lodestone_crds::{BGPPeer, IPAddressPool};

use super::cluster::{KubeArgs, Output, print, runtime};

/// Arguments of `status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    kube: KubeArgs,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Fetch pools and Services, print the view.
pub fn run(args: &Args) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let (client, namespace) = args.kube.connect().await?;
        // Pools are cluster-wide; Services of every namespace unless `-n` names one.
        let pools = Api::<IPAddressPool>::all(client.clone())
            .list(&ListParams::default())
            .await
            .context("listing IPAddressPools")?
            .items;
        // Cluster-wide too; a cluster without the BGP CRDs (an older install) has no sessions.
        let peers = Api::<BGPPeer>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let services: Api<Service> = if args.kube.namespace.is_some() {
            Api::namespaced(client, &namespace)
        } else {
            Api::all(client)
        };
        let services = services
            .list(&ListParams::default())
            .await
            .context("listing Services")?
            .items;
        let mut view = status(&pools, &services);
        view.bgp_sessions = bgp_sessions(&peers);
        print(args.output, &view, || render_status(&view))?;
        Ok(ExitCode::SUCCESS)
    })
}
