//! Reaching the cluster as kubectl does: `KUBECONFIG` (or `~/.kube/config`), `--kubeconfig`,
//! `--context`, `-n/--namespace`.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use lodestone_crds::events::error_chain;

/// The API server this run talks to, for error messages.
static SERVER: OnceLock<String> = OnceLock::new();

/// Output formats of the cluster commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// The kubectl-like connection flags.
#[derive(clap::Args, Debug, Clone)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: `$KUBECONFIG`, then `~/.kube/config`).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,

    /// Namespace (default: the context's namespace, then `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

impl KubeArgs {
    /// A client and the namespace to use.
    pub async fn connect(&self) -> Result<(kube::Client, String)> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &options).await
            }
            None => kube::Config::from_kubeconfig(&options).await,
        }
        .context("loading the kubeconfig")?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let _ = SERVER.set(config.cluster_url.to_string());
        let client = kube::Client::try_from(config).context("building the API client")?;
        Ok((client, namespace))
    }
}

/// An error as one line for people. kube's own text for a failed connection is only
/// `client error (Connect)`, with the reason (an unknown certificate authority, a refused
/// connection) several causes down: every cause is named once, with the server and a hint.
pub fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = match cause.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) if s.code == 404 => format!(
                "the API server does not serve it (404 {}); are Lodestone's CRDs installed (kubectl apply -f deploy/crds/)?",
                s.message
            ),
            Some(kube::Error::Api(s)) => {
                format!(
                    "the API server answered {} {}: {}",
                    s.code, s.reason, s.message
                )
            }
            Some(k) => {
                let chain = error_chain(k);
                let mut part = format!(
                    "cannot talk to the API server{}: {chain}",
                    SERVER.get().map(|s| format!(" at {s}")).unwrap_or_default()
                );
                if chain.contains("certificate") {
                    part.push_str(
                        " (does the kubeconfig's certificate-authority belong to this server?)",
                    );
                }
                part
            }
            None => cause.to_string(),
        };
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
        if cause.downcast_ref::<kube::Error>().is_some() {
            break;
        }
    }
    text
}

/// Print `value` as JSON or YAML, or `table` for [`Output::Table`].
pub fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<()> {
    let text = match output {
        Output::Table => table(),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(value).context("writing JSON")?;
            s.push('\n');
            s
        }
        Output::Yaml => serde_saphyr::to_string(value).context("writing YAML")?,
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    stdout.flush().context("writing to stdout")
}

/// A current-thread runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
