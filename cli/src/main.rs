//! `lodestonectl`: the Lodestone command-line tool.
//!
//! One module per subcommand under `commands/`; each has an `Args` (clap) and a `run`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::MigrateMetallb(args) => commands::migrate_metallb::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
