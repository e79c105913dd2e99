//! `lodestone-speaker`: one per node; answers ARP/NDP for the LoadBalancer addresses this node
//! owns. See `docs/announcing.md`.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lodestone_speaker::announcer::AnnouncerConfig;
use lodestone_speaker::announcer::claims::ProbeConfig;
use lodestone_speaker::interfaces::DEFAULT_EXCLUDE;
use lodestone_speaker::membership::Keyring;
use lodestone_speaker::plan::{ClassFilter, DEFAULT_LB_CLASS};
use lodestone_speaker::run::{SpeakerConfig, run};

/// Environment variable that may hold the membership key instead of the file.
const KEY_ENV: &str = "LODESTONE_MEMBERLIST_KEY";

#[derive(Parser, Debug)]
#[command(name = "lodestone-speaker", version, about)]
struct Args {
    /// This node's name, as in its Node object (usually from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// `spec.loadBalancerClass` served by Lodestone.
    #[arg(long, env = "LODESTONE_LB_CLASS", default_value = DEFAULT_LB_CLASS)]
    lb_class: String,
    /// Also serve LoadBalancer Services without a class.
    #[arg(long, env = "LODESTONE_DEFAULT_CLASS", default_value_t = true, action = clap::ArgAction::Set)]
    default_class: bool,
    /// UDP port of the membership protocol, the same on every node.
    #[arg(long, default_value_t = 7946)]
    membership_port: u16,
    /// Local address the membership socket binds to (default: any, of the advertised family).
    #[arg(long)]
    membership_bind: Option<IpAddr>,
    /// Address the other speakers reach this one at (default: this Node's InternalIP).
    #[arg(long)]
    membership_advertise: Option<IpAddr>,
    /// File holding the membership keyring: one key per line (each at least 16 bytes;
    /// surrounding whitespace and empty lines ignored), the first seals and all are accepted.
    /// Read again every 2 s, so a rotated Secret applies without a restart.
    /// `LODESTONE_MEMBERLIST_KEY` (same format, read once) takes precedence when set.
    #[arg(long, default_value = "/etc/lodestone/memberlist/key")]
    memberlist_key_file: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:7473")]
    health_addr: SocketAddr,
    /// Serve them on this address only, with `--health-addr`'s port: the node's own (the
    /// DaemonSet passes `status.hostIP`). A wildcard listener would also answer on Service
    /// addresses a node holds locally (kube-proxy's IPVS mode puts them on a dummy interface).
    #[arg(long, env = "HOST_IP")]
    health_ip: Option<IpAddr>,
    /// Interfaces never chosen automatically (regular expression).
    #[arg(long, default_value = DEFAULT_EXCLUDE)]
    interface_exclude: String,
    /// Gratuitous ARPs / unsolicited NAs sent when starting to announce an address.
    #[arg(long, default_value_t = 3)]
    gratuitous_count: u32,
    /// Pause between two of them, in milliseconds.
    #[arg(long, default_value_t = 500)]
    gratuitous_interval_ms: u64,
    /// Re-send the gratuitous burst for every owned address this often, in seconds (0: never;
    /// bursts are still sent on takeover, on a link coming back, after a partition heals, a
    /// peer rejoins or the API server comes back).
    #[arg(long, default_value_t = 0)]
    gratuitous_refresh_secs: u64,
    /// Milliseconds an address new to the cluster is probed (ARP probes / IPv6 duplicate
    /// address detection) before it is announced; if another machine answers meanwhile, it is
    /// not announced (condition reason AddressInUse). 0 disables probing. Failovers are never
    /// probed.
    #[arg(long, default_value_t = 500)]
    probe_time_ms: u64,
    /// Seconds the API server may stay unreachable before this speaker withdraws from the
    /// election, provided another speaker still reaches it (docs/announcing.md).
    #[arg(long, default_value_t = 30)]
    api_loss_timeout_secs: u64,
    /// The speaker's namespace: BGP password Secrets are read from it.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lodestone-system")]
    namespace: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// The keyring, and the file to watch when it came from one.
fn read_keys(args: &Args) -> anyhow::Result<(Vec<Vec<u8>>, Option<PathBuf>)> {
    let (raw, file) = match std::env::var_os(KEY_ENV) {
        Some(v) => (v.into_encoded_bytes(), None),
        None => {
            let raw = std::fs::read(&args.memberlist_key_file).with_context(|| {
                format!(
                    "no membership key: set {KEY_ENV} or provide {} (the Secret lodestone-memberlist, key `key`); \
                     speakers refuse to run unauthenticated",
                    args.memberlist_key_file.display()
                )
            })?;
            (raw, Some(args.memberlist_key_file.clone()))
        }
    };
    let keys = Keyring::parse(&raw).map_err(|e| match &file {
        Some(f) => anyhow::anyhow!("{e} (in {})", f.display()),
        None => anyhow::anyhow!("{e} (in {KEY_ENV})"),
    })?;
    tracing::info!(keys = keys.len(), fingerprints = ?keys.fingerprints(), "membership keyring read");
    Ok((keys.into_keys(), file))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will not hand over gracefully");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts: the arena limit applies to threads yet to allocate (the
    // membership and BFD threads).
    let heap_tuned = lodestone_heap::limit_fragmentation();
    // One runtime thread: the work is small and I/O-bound, and a single thread keeps the
    // resident memory low (no per-worker allocator arenas); the failover path never waits
    // behind other threads.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(speaker(heap_tuned))
}

async fn speaker(heap_tuned: bool) -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colour only on a terminal: `kubectl logs` and log files must not carry escape codes.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
    }
    if !heap_tuned {
        tracing::warn!("the allocator refused its settings; memory may stay at its start-up peak");
    }
    let (keys, key_file) = read_keys(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let cfg = SpeakerConfig {
        node_name: args.node_name.clone(),
        class: ClassFilter {
            class: args.lb_class.clone(),
            default_class: args.default_class,
        },
        membership_port: args.membership_port,
        membership_bind: args.membership_bind,
        membership_advertise: args.membership_advertise,
        keys,
        key_file,
        health_addr: args.health_ip.map_or(args.health_addr, |ip| {
            SocketAddr::new(ip, args.health_addr.port())
        }),
        announcer: AnnouncerConfig {
            gratuitous_count: args.gratuitous_count,
            gratuitous_interval: Duration::from_millis(args.gratuitous_interval_ms),
            exclude: args.interface_exclude.clone(),
            refresh_interval: (args.gratuitous_refresh_secs > 0)
                .then(|| Duration::from_secs(args.gratuitous_refresh_secs)),
            probe: ProbeConfig {
                time: Duration::from_millis(args.probe_time_ms),
                ..ProbeConfig::default()
            },
            ..AnnouncerConfig::default()
        },
        api_loss_timeout: Duration::from_secs(args.api_loss_timeout_secs),
        namespace: args.namespace.clone(),
    };
    run(client, cfg, shutdown_signal()).await?;
    Ok(())
}
