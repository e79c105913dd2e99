//! `lodestonectl`: the Lodestone command-line tool.
//!
//! One module per subcommand under `commands/`; each has an `Args` (clap) and a `run`.
//!
//! Installed as `kubectl-lodestone` on the PATH, the same binary is a kubectl plugin:
//! `kubectl lodestone status` runs exactly what `lodestonectl status` runs; only the name in
//! help and usage text follows the name it was invoked under.
#![forbid(unsafe_code)]

mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Lodestone's command-line tool.
#[derive(Parser, Debug)]
#[command(name = "lodestonectl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Convert MetalLB IPAddressPool and L2Advertisement YAML into Lodestone resources.
    ///
    /// Writes the Lodestone resources to stdout and a warning to stderr for everything that
    /// could not be carried over (BGP objects, unknown fields, name collisions).
    MigrateMetallb(commands::migrate_metallb::Args),
    /// Show each pool's usage and conditions, and each LoadBalancer Service's address, pool
    /// and announcing node.
    Status(commands::status::Args),
    /// Explain why a Service has no address or is not announced, from its conditions and
    /// Events, the pools, the L2Advertisements and its EndpointSlices.
    Why(commands::why::Args),
}

/// The name to show in usage: `kubectl lodestone` when run as the kubectl plugin.
fn display_name() -> &'static str {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let base = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if base.starts_with("kubectl-lodestone") {
        "kubectl lodestone"
    } else {
        "lodestonectl"
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().bin_name(display_name()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::MigrateMetallb(args) => commands::migrate_metallb::run(&args),
        Command::Status(args) => commands::status::run(&args),
        Command::Why(args) => commands::why::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", commands::cluster::describe(&e));
            ExitCode::FAILURE
        }
    }
}
