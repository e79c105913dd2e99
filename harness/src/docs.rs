//! The commands the user documentation tells people to run, read from the Markdown itself, so
//! that tests run what the docs say rather than a copy that can drift from them.
//!
//! What counts as a command:
//! - in a fenced block marked `sh`, `bash` or `console`: every line that is not blank and not a
//!   `#` comment; lines ending in `\` and `for … done` loops join into one command;
//! - in an unmarked fenced block (a transcript): every line starting with `$ `, with the lines
//!   up to the next `$ ` line as its sample output;
//! - in prose: an inline code span that starts with a program a reader runs (`kubectl …`,
//!   `lodestonectl …`, `cargo …`, `ip …`, `arping …`, `curl …`, `ndisc6 …`, `mdbook …`).
//!
//! Other blocks (YAML, PromQL, diagrams) are not commands. The YAML blocks (fenced `yaml` or
//! `yml`) are examples of objects, read by [`yaml_blocks_in`] so a test can apply each to an API
//! server.

use std::path::{Path, PathBuf};

/// One documented command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocCommand {
    /// Path relative to the repository root, e.g. `docs/install.md`.
    pub file: String,
    /// 1-based line of the command's first line.
    pub line: usize,
    /// The command as a shell would read it.
    pub text: String,
    /// The sample output shown after a `$ ` line in a transcript block.
    pub output: Option<String>,
}

impl std::fmt::Display for DocCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.text)
    }
}

/// The repository root (the workspace this crate lives in).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The documentation files, relative to the root: `README.md` and every page under `docs/`.
pub fn doc_files() -> std::io::Result<Vec<String>> {
    let mut files = vec!["README.md".to_owned()];
    let mut pages: Vec<String> = std::fs::read_dir(repo_root().join("docs"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    pages.sort();
    files.extend(pages);
    Ok(files)
}

/// Every documented command, in file order.
pub fn all_commands() -> std::io::Result<Vec<DocCommand>> {
    let mut out = Vec::new();
    for file in doc_files()? {
        let text = std::fs::read_to_string(repo_root().join(&file))?;
        out.extend(commands_in(&file, &text));
    }
    Ok(out)
}

/// The commands of one documentation file.
pub fn commands_of(file: &str) -> std::io::Result<Vec<DocCommand>> {
    let text = std::fs::read_to_string(repo_root().join(file))?;
    Ok(commands_in(file, &text))
}

/// The one command of `file` whose text contains `needle` (repeated verbatim counts once); an error naming what was found
/// otherwise, so a test fails with a useful message when the docs change.
pub fn command(file: &str, needle: &str) -> Result<DocCommand, String> {
    let all = commands_of(file).map_err(|e| format!("{file}: {e}"))?;
    let hits: Vec<&DocCommand> = all.iter().filter(|c| c.text.contains(needle)).collect();
    match hits.as_slice() {
        [] => Err(format!(
            "no command in {file} contains {needle:?}; it has:\n{}",
            list(&all)
        )),
        // The same command repeated (a summary, then the step) is one command.
        [first, rest @ ..] if rest.iter().all(|c| bare(&c.text) == bare(&first.text)) => {
            Ok((*first).clone())
        }
        _ => Err(format!(
            "several commands in {file} contain {needle:?}:\n{}",
            list(&all)
        )),
    }
}

/// The fenced blocks of `file` whose info string is exactly `lang` (e.g. `frr`, `bird`,
/// `yaml`), in order: configuration the tests apply as the page shows it.
pub fn blocks(file: &str, lang: &str) -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join(file))?;
    let mut out = Vec::new();
    // Inside a block: whether it is one of ours, and its text so far.
    let mut inside: Option<(bool, String)> = None;
    for raw in text.lines() {
        if let Some(info) = raw.trim_start().strip_prefix("```") {
            match inside.take() {
                Some((true, block)) => out.push(block),
                Some((false, _)) => {}
                None => inside = Some((info.trim() == lang, String::new())),
            }
            continue;
        }
        if let Some((true, block)) = inside.as_mut() {
            block.push_str(raw);
            block.push('\n');
        }
    }
    Ok(out)
}

/// A command without a trailing `   # comment`.
fn bare(text: &str) -> &str {
    text.split("  #").next().unwrap_or(text).trim_end()
}

fn list(cmds: &[DocCommand]) -> String {
    cmds.iter().map(|c| format!("  {c}\n")).collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Block {
    None,
    Shell,
    Transcript,
    Other,
}

/// Parses the commands out of one Markdown text (see the module docs for the rules).
pub fn commands_in(file: &str, text: &str) -> Vec<DocCommand> {
    let mut out: Vec<DocCommand> = Vec::new();
    let mut block = Block::None;
    // A shell command still being joined: (first line, text, open `for`/`while` loops).
    let mut pending: Option<(usize, String, usize)> = None;
    // Whether the last entry of `out` is a transcript command of the current block.
    let mut in_output = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            block = match (block, lang.trim()) {
                (Block::None, "sh" | "bash" | "console" | "shell") => Block::Shell,
                (Block::None, "") => Block::Transcript,
                (Block::None, _) => Block::Other,
                _ => {
                    // A block closes; an unfinished command ends with it.
                    if let Some((line, text, _)) = pending.take() {
                        out.push(cmd(file, line, text, None));
                    }
                    Block::None
                }
            };
            in_output = false;
            continue;
        }
        match block {
            Block::Shell => {
                let line = raw.trim();
                if pending.is_none() && (line.is_empty() || line.starts_with('#')) {
                    continue;
                }
                let (first, mut acc, mut depth) = pending.take().unwrap_or((n, String::new(), 0));
                if !acc.is_empty() {
                    acc.push('\n');
                }
                acc.push_str(raw.trim_end());
                let word = line.split_whitespace().next().unwrap_or("");
                if matches!(word, "for" | "while" | "until") {
                    depth += 1;
                }
                if word == "done" || line.starts_with("done;") {
                    depth = depth.saturating_sub(1);
                }
                if depth > 0 || line.ends_with('\\') {
                    pending = Some((first, acc, depth));
                } else {
                    out.push(cmd(file, first, acc, None));
                }
            }
            Block::Transcript => {
                if let Some(c) = raw.strip_prefix("$ ") {
                    out.push(cmd(file, n, c.trim().to_owned(), Some(String::new())));
                    in_output = true;
                } else if in_output
                    && let Some(output) = out.last_mut().and_then(|c| c.output.as_mut())
                {
                    output.push_str(raw);
                    output.push('\n');
                }
            }
            Block::None => {
                for span in inline_spans(raw) {
                    let program = span.split_whitespace().next().unwrap_or("");
                    if PROGRAMS.contains(&program) && span.contains(' ') {
                        out.push(cmd(file, n, span.to_owned(), None));
                    }
                }
            }
            Block::Other => {}
        }
    }
    out
}

/// One fenced YAML block of the documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocYaml {
    /// Path relative to the repository root, e.g. `docs/install.md`.
    pub file: String,
    /// 1-based line of the block's first line (after the fence).
    pub line: usize,
    /// The block's text, as a reader would copy it.
    pub text: String,
}

impl std::fmt::Display for DocYaml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The YAML blocks of one Markdown text.
pub fn yaml_blocks_in(file: &str, text: &str) -> Vec<DocYaml> {
    let mut out = Vec::new();
    let mut open: Option<DocYaml> = None;
    let mut other = false;
    for (i, raw) in text.lines().enumerate() {
        if let Some(lang) = raw.trim_start().strip_prefix("```") {
            if let Some(block) = open.take() {
                out.push(block);
            } else if other {
                other = false;
            } else if matches!(lang.trim(), "yaml" | "yml") {
                open = Some(DocYaml {
                    file: file.to_owned(),
                    line: i + 2,
                    text: String::new(),
                });
            } else {
                other = true;
            }
            continue;
        }
        if let Some(block) = open.as_mut() {
            block.text.push_str(raw);
            block.text.push('\n');
        }
    }
    out
}

/// Every YAML block of the documentation, in file order.
pub fn all_yaml_blocks() -> std::io::Result<Vec<DocYaml>> {
    let mut out = Vec::new();
    for file in doc_files()? {
        let text = std::fs::read_to_string(repo_root().join(&file))?;
        out.extend(yaml_blocks_in(&file, &text));
    }
    Ok(out)
}

/// Programs whose inline mentions in prose are commands.
const PROGRAMS: &[&str] = &[
    "kubectl",
    "mdbook",
    "lodestonectl",
    "cargo",
    "ip",
    "arping",
    "curl",
    "ndisc6",
    "sudo",
];

/// The contents of the single-backtick code spans of one line.
fn inline_spans(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        if end > 0 {
            out.push(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    out
}

fn cmd(file: &str, line: usize, text: String, output: Option<String>) -> DocCommand {
    DocCommand {
        file: file.to_owned(),
        line,
        text,
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"Intro: run `kubectl get pods -A`, not `kubectl` alone, nor `KUBECONFIG`.
```sh
# a comment
kubectl get pods   # trailing comment stays

for p in a b; do
  echo "$p"
done
cargo run \
  -p x
```
```
$ lodestonectl status
POOL  ADDRESSES
blue  192.0.2.0/30
$ echo hi
hi
```
```yaml
kind: Pool
```
```
not a command
```
"#;

    #[test]
    fn shell_and_transcript_blocks_give_commands() {
        let got = commands_in("p.md", PAGE);
        let texts: Vec<&str> = got.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "kubectl get pods -A",
                "kubectl get pods   # trailing comment stays",
                "for p in a b; do\n  echo \"$p\"\ndone",
                "cargo run \\\n  -p x",
                "lodestonectl status",
                "echo hi",
            ]
        );
        assert_eq!(got[0].line, 1);
        assert_eq!(got[1].line, 4);
        assert_eq!(got[2].line, 6);
        assert_eq!(got[1].output, None);
        assert_eq!(
            got[4].output.as_deref(),
            Some("POOL  ADDRESSES\nblue  192.0.2.0/30\n")
        );
        assert_eq!(got[5].output.as_deref(), Some("hi\n"));
    }

    #[test]
    fn yaml_blocks_are_found_with_their_lines() {
        let got = yaml_blocks_in("p.md", PAGE);
        assert_eq!(
            got,
            [DocYaml {
                file: "p.md".into(),
                line: 20,
                text: "kind: Pool\n".into()
            }]
        );
        // A fence inside another block's text does not open a YAML block.
        let nested = "```sh\necho\n```\n```yml\na: 1\n---\nb: 2\n```\n";
        let got = yaml_blocks_in("q.md", nested);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "a: 1\n---\nb: 2\n");
        assert_eq!(got[0].line, 5);
    }

    #[test]
    fn the_real_docs_parse_and_have_commands() {
        let all = all_commands().expect("docs are readable");
        assert!(all.iter().any(|c| c.file == "README.md"), "{all:?}");
        assert!(all.iter().all(|c| !c.text.trim().is_empty()));
        let one =
            command("docs/testing.md", "nextest run --workspace").expect("one nextest command");
        assert_eq!(one.text, "cargo nextest run --workspace");
    }
}
