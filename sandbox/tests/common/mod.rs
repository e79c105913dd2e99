//! Plumbing the documentation tests and the real-cluster suite share: running documented
//! shell commands in a copy of the checkout, and waiting for conditions.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lodestone_harness::docs::{self, DocCommand};

/// The outcome of one shell command.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn expect_ok(self, what: &str) -> String {
        assert!(
            self.ok,
            "{what} failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

/// Runs `script` with `sh -c` in `cwd`, with `PATH` led by `bin_dir` and `KUBECONFIG` set.
pub fn sh(script: &str, cwd: &Path, bin_dir: &Path, kubeconfig: &Path) -> Ran {
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    eprintln!("$ {script}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("sh runs");
    let ran = Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprint!("{}{}", ran.stdout, ran.stderr);
    ran
}

/// The documented command, found by its plan needle.
pub fn doc(file: &str, needle: &str) -> DocCommand {
    docs::command(file, needle).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `f` until it gives `Some`; a deadline only turns a hang into a failure.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, Duration::from_secs(90), f)
}

/// [`eventually`] with its own deadline.
pub fn eventually_within<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A temporary copy of the checkout's `deploy/` (without a membership key), to run the
/// documented install commands in.
pub fn checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = docs::repo_root().join("deploy");
    copy_dir(&src, &dir.path().join("deploy"));
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("readable dir").flatten() {
        let path = e.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(e.file_name()));
        } else if e.file_name() != "memberlist.key" {
            std::fs::copy(&path, to.join(e.file_name())).expect("copy");
        }
    }
}
