//! `lodestonectl why SERVICE`: why a Service has no address or is not announced.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use lodestone_cli::diagnose::{Severity, WhyInput, render_why, why};
use lodestone_crds::class::{ClassFilter, DEFAULT_CLASS};
use lodestone_crds::{IPAddressPool, L2Advertisement, ServiceKey};
use serde_json::json;

use super::cluster::{KubeArgs, Output, print, runtime};

/// Arguments of `why`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Service: `NAME` (in `-n`'s namespace) or `NAMESPACE/NAME`.
    service: String,

    #[command(flatten)]
    kube: KubeArgs,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// The `spec.loadBalancerClass` the controller and speakers serve (their `--lb-class`).
    #[arg(long, env = "LODESTONE_LB_CLASS", default_value = DEFAULT_CLASS)]
    lb_class: String,

    /// Whether they also serve Services that name no class (their `--default-class`).
    #[arg(long, env = "LODESTONE_DEFAULT_CLASS", default_value_t = true, action = clap::ArgAction::Set)]
    default_class: bool,
}

/// Split `ns/name` or take `name` in `default_ns`.
pub fn parse_target(s: &str, default_ns: &str) -> Result<ServiceKey> {
    let full = if s.contains('/') {
        s.to_string()
    } else {
        format!("{default_ns}/{s}")
    };
    match ServiceKey::parse(&full) {
        Some(key) => Ok(key),
        None => bail!("expected NAME or NAMESPACE/NAME, got {s:?}"),
    }
}

/// Fetch the Service and everything that explains it, print the findings. Exit status 0
/// whatever they say: finding problems is what the command is for.
pub fn run(args: &Args) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let (client, default_ns) = args.kube.connect().await?;
        let key = parse_target(&args.service, &default_ns)?;
        let (ns, name) = (key.namespace.clone(), key.name.clone());
        let svc = Api::<Service>::namespaced(client.clone(), &ns)
            .get(&name)
            .await
            .with_context(|| format!("getting Service {ns}/{name}"))?;
        let lp = ListParams::default();
        let pools = Api::<IPAddressPool>::all(client.clone())
            .list(&lp)
            .await
            .context("listing IPAddressPools")?
            .items;
        let l2advertisements = Api::<L2Advertisement>::all(client.clone())
            .list(&lp)
            .await
            .context("listing L2Advertisements")?
            .items;
        let namespace_labels = Api::<Namespace>::all(client.clone())
            .get(&ns)
            .await
            .with_context(|| format!("getting Namespace {ns}"))?
            .metadata
            .labels
            .unwrap_or_default();
        // regarding.uid is not a supported field selector everywhere; filter here.
        let uid = svc.metadata.uid.clone();
        let events = Api::<Event>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .context("listing Events")?
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Service")
                        && r.name.as_deref() == Some(name.as_str())
                        && (r.uid.is_none() || r.uid == uid)
                })
            })
            .collect();
        let endpoint_slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns)
            .list(
                &lp.clone()
                    .labels(&format!("kubernetes.io/service-name={name}")),
            )
            .await
            .context("listing EndpointSlices")?
            .items;
        // Nodes only sharpen the node-selector findings; a user who may not list them still
        // gets the rest.
        let nodes = Api::<Node>::all(client)
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let input = WhyInput {
            pools,
            l2advertisements,
            namespace_labels,
            events,
            endpoint_slices,
            nodes,
            class: ClassFilter {
                class: args.lb_class.clone(),
                default_class: args.default_class,
            },
        };
        let findings = why(&svc, &input);
        let target = key.to_string();
        let doc = json!({
            "service": target,
            "problems": findings.iter().filter(|f| f.severity == Severity::Problem).count(),
            "findings": findings,
        });
        print(args.output, &doc, || render_why(&target, &findings))?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_target;
    use lodestone_crds::ServiceKey;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("web", "team").unwrap(),
            ServiceKey::new("team", "web")
        );
        assert_eq!(
            parse_target("prod/web", "team").unwrap(),
            ServiceKey::new("prod", "web")
        );
        assert!(parse_target("/web", "team").is_err());
        assert!(parse_target("a/b/c", "team").is_err());
        assert!(parse_target("a/", "team").is_err());
    }
}
