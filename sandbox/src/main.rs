//! `cargo run --release -p lodestone-sandbox` (as root): Lodestone's whole job on one machine.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lodestone_sandbox::{Options, Report, Sink, Story};

/// Runs the real controller and three real speakers against an embedded API server in network
/// namespaces, and shows an address being assigned, announced, reached, failed over and moved
/// by `externalTrafficPolicy: Local`. Everything is removed on exit.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory with `lodestone-controller` and `lodestone-speaker` (default: next to this
    /// executable, else built with `cargo build --release`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep everything running after the story, until Ctrl-C, to explore with kubectl.
    #[arg(long)]
    keep: bool,
    /// Print the facts as one JSON object on stdout (the story goes to stderr).
    #[arg(long)]
    json: bool,
    /// Suppress the story (useful with --json).
    #[arg(long)]
    quiet: bool,
    /// Node that gets the only ready endpoint under `externalTrafficPolicy: Local` (default: the
    /// live node that does not own the address).
    #[arg(long)]
    local_node: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sink = match (args.quiet, args.json) {
        (true, _) => Sink::Silent,
        (false, true) => Sink::Stderr,
        (false, false) => Sink::Stdout,
    };
    let story = Story::new(sink);
    let opts = Options {
        bin_dir: args.bin_dir,
        keep: args.keep,
        local_node: args.local_node,
    };
    let mut report = Report::default();
    let result = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(lodestone_sandbox::run(&opts, story, &mut report)),
        Err(e) => Err(anyhow::Error::new(e).context("starting the tokio runtime")),
    };
    // By now every guard has run: the sandbox is dropped inside `run`.
    if let Err(e) = &result {
        report.error = Some(format!("{e:#}"));
        eprintln!("sandbox failed: {e:#}");
    }
    report.ok = result.is_ok();
    if args.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("cannot print the report: {e}"),
        }
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
