//! `lodestonectl migrate-metallb FILE... [-o yaml|json]`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use lodestone_cli::migrate::migrate;
use serde_json::{Value, json};

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// YAML documents separated by `---`.
    Yaml,
    /// One JSON `kind: List` holding every object.
    Json,
}

/// Arguments of `migrate-metallb`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// MetalLB YAML or JSON files (multi-document YAML and `kind: List` work); `-` reads stdin.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
}

/// Read every file, convert, print the result to stdout and the warnings to stderr.
///
/// Exit status 0 even with warnings (they are expected in a migration); 1 when a file cannot
/// be read or parsed, before anything is printed.
pub fn run(args: &Args) -> Result<ExitCode> {
    let mut docs = Vec::new();
    for path in &args.files {
        let text = read(path)?;
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("{} is not valid YAML", path.display()))?;
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
    }

    let (objects, warnings) = migrate(docs);

    let rendered = match args.output {
        Output::Yaml => serde_saphyr::to_string_multiple(&objects).context("writing YAML")?,
        Output::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
            let mut s = serde_json::to_string_pretty(&list).context("writing JSON")?;
            s.push('\n');
            s
        }
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(rendered.as_bytes())
        .context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;

    let mut stderr = std::io::stderr().lock();
    for w in &warnings {
        // A closed stderr must not turn a finished conversion into a failure.
        let _ = writeln!(stderr, "warning: {w}");
    }
    let _ = writeln!(
        stderr,
        "migrated {} object(s) with {} warning(s)",
        objects.len(),
        warnings.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn read(path: &PathBuf) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
