//! lodestone-controller: assigns addresses from IPAddressPools to LoadBalancer Services.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kube::Client;
use lodestone_controller::metrics::{self, Metrics};
use lodestone_controller::reconciler;
use lodestone_controller::service::{ClassFilter, DEFAULT_CLASS};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Assigns addresses from IPAddressPools to LoadBalancer Services"
)]
struct Args {
    /// The `spec.loadBalancerClass` this controller serves.
    #[arg(long, env = "LODESTONE_LB_CLASS", default_value = DEFAULT_CLASS)]
    lb_class: String,
    /// Also serve LoadBalancer Services that name no class.
    #[arg(long, env = "LODESTONE_DEFAULT_CLASS", default_value_t = true, action = clap::ArgAction::Set)]
    default_class: bool,
    /// Elect a leader through a coordination.k8s.io Lease, so several replicas can run.
    #[arg(long, env = "LODESTONE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lodestone-system")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "lodestone-controller")]
    lease_name: String,
    /// Seconds a Lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// This replica's identity in the Lease and in Events (defaults to the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "LODESTONE_HEALTH_ADDR", default_value = "0.0.0.0:9090")]
    health_addr: SocketAddr,
    /// Writes to the API server in flight at once.
    #[arg(long, default_value_t = 32)]
    write_concurrency: usize,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LODESTONE_LOG_JSON")]
    log_json: bool,
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: `kubectl logs` and log files must not carry escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads: the arena limit applies to threads yet to allocate.
    let heap_tuned = lodestone_heap::limit_fragmentation();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(controller(heap_tuned))
}

async fn controller(heap_tuned: bool) -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_json);
    if !heap_tuned {
        warn!("the allocator refused the fragmentation limits; memory may stay at its peak");
    }
    let client = Client::try_default()
        .await
        .context("connecting to the API server (in-cluster config or KUBECONFIG)")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "lodestone-controller".into());
        format!("{host}-{}", std::process::id())
    });
    let metrics = Arc::new(Metrics::new());
    tokio::spawn({
        let metrics = metrics.clone();
        let addr = args.health_addr;
        async move {
            if let Err(e) = metrics::serve(addr, metrics).await {
                warn!(error = %e, addr = %addr, "metrics and health endpoint stopped");
            }
        }
    });

    // Leadership: a watch channel of "we hold the Lease". Without election we always lead.
    let (leader, _lease_task) = if args.leader_elect {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(&args.lease_namespace)
                .with_identity(&identity)
                .with_duration(args.lease_duration)
                .with_grace(args.lease_duration.div_ceil(3).max(1))
                .with_field_manager(format!("lodestone-controller-{identity}"))
                .build()
                .await
                .context("setting up leader election")?;
        let (rx, task) = manager.watch().await;
        (rx, Some(task))
    } else {
        let (tx, rx) = watch::channel(true);
        // Keep the sender alive for the life of the process.
        std::mem::forget(tx);
        (rx, None)
    };

    let config = reconciler::Config {
        class: ClassFilter {
            class: args.lb_class.clone(),
            default_class: args.default_class,
        },
        write_concurrency: args.write_concurrency,
        instance: identity.clone(),
    };
    info!(identity = %identity, class = %args.lb_class, default_class = args.default_class, "starting");
    let run = reconciler::run(client, config, leader, metrics);
    tokio::select! {
        r = run => r,
        _ = shutdown_signal() => {
            info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
