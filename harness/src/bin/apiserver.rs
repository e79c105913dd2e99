//! `lodestone-apiserver`: the embedded Kubernetes API server as a process, for the sandbox and
//! for poking at with kubectl.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use lodestone_harness::apiserver::{Server, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "lodestone-apiserver",
    about = "In-memory Kubernetes API server (HTTPS, bearer token)"
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Bearer token to accept (random when absent).
    #[arg(long, env = "LODESTONE_APISERVER_TOKEN")]
    token: Option<String>,
    /// Watch events retained for resuming watches.
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LODESTONE_APISERVER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let server = Server::start(ServerConfig {
        port: args.port,
        token: args.token,
        watch_history: args.watch_history,
        ..ServerConfig::default()
    })
    .await?;
    if let Some(path) = &args.kubeconfig {
        server
            .write_kubeconfig(path)
            .with_context(|| format!("writing kubeconfig {}", path.display()))?;
    }
    println!("{}", server.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
