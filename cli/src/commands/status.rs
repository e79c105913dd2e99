//! `lodestonectl status`: pool usage and every LoadBalancer Service's address, pool and node.

use std::process::ExitCode;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use lodestone_cli::diagnose::{render_status, status};
use lodestone_crds::IPAddressPool;

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
        let view = status(&pools, &services);
        print(args.output, &view, || render_status(&view))?;
        Ok(ExitCode::SUCCESS)
    })
}
