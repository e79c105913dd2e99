//! Network-namespace topologies: real kernel networking between "machines" on one host.
//!
//! [`Netns`] is a guard around one named namespace (`ip netns add`); dropping it kills what
//! runs inside and deletes the namespace, and with it every interface it holds, also when a
//! test panics. [`Topology`] builds a layer-2 segment: a "switch" namespace with a bridge, and
//! hosts attached to it by veth pairs whose host end is `eth0`.
//!
//! Shelling out to `ip` (iproute2) is deliberate: this is the harness, not the product, and
//! `ip` is what a person debugging a failed test would type.

mod topology;

#[cfg(test)]
mod tests;

pub use topology::{HOST_IF, Host, Neighbour, Topology};

use std::fs::File;
use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Errors from building or driving namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command could not be started, or a namespace file could not be opened.
    #[error("{context}: {source}")]
    Io {
        /// What was being attempted.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command's output was not what we expected.
    #[error("cannot parse output of `{command}`: {reason}")]
    Parse {
        /// The command line.
        command: String,
        /// Why it did not parse.
        reason: String,
    },
}

/// Result type of this module.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Makes namespace names unique within this process; the pid makes them unique across
/// concurrently running test binaries.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command (outside any namespace) and returns its stdout, failing on a non-zero exit.
pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Io {
            context: format!("running {cmd}"),
            source,
        })?;
    check(cmd, args, output)
}

fn check(cmd: &str, args: &[&str], output: Output) -> Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetnsError::Command {
            command: format!("{cmd} {}", args.join(" ")),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Names of the namespaces `ip netns list` shows (for tests that check cleanup).
pub fn list() -> Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    // Lines look like "name" or "name (id: 3)".
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// A network namespace that exists as long as this guard does.
///
/// Interface names inside are chosen by the caller and do not derive from the namespace name,
/// so the 15-character `IFNAMSIZ` limit never depends on the prefix.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

/// A process started with [`Netns::spawn`]; killed and reaped when dropped.
#[derive(Debug)]
pub struct NsChild(Child);

impl NsChild {
    /// The underlying process, e.g. to read its piped stdout or wait for it.
    pub fn child(&mut self) -> &mut Child {
        &mut self.0
    }

    /// Waits for the process and returns its output (stdout and stderr are piped).
    pub fn wait_output(&mut self) -> io::Result<Output> {
        use std::io::Read;
        // Read stderr on the side so that a chatty process cannot fill one pipe and block
        // while we wait on the other.
        let stderr = self.0.stderr.take();
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_end(&mut buf);
            }
            buf
        });
        let mut stdout = Vec::new();
        if let Some(mut o) = self.0.stdout.take() {
            o.read_to_end(&mut stdout)?;
        }
        let status = self.0.wait()?;
        let stderr = err_reader.join().unwrap_or_default();
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        // Errors mean the process already exited: nothing left to clean up.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<counter>` with its loopback up.
    pub fn new(prefix: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        // From here the guard owns the namespace, so an error below still deletes it.
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.exec_ok("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `cmd args..` inside the namespace and returns its output, whatever its exit status.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NetnsError::Io {
                context: format!("running {cmd} in {}", self.name),
                source,
            })
    }

    /// Runs `cmd args..` inside the namespace; returns stdout, fails on a non-zero exit.
    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let output = self.exec(cmd, args)?;
        check(cmd, args, output)
    }

    /// Starts `cmd args..` inside the namespace with stdout and stderr piped.
    ///
    /// The returned guard kills the process when dropped; whatever is still running in the
    /// namespace when the [`Netns`] is dropped is killed too.
    pub fn spawn(&self, cmd: &str, args: &[&str]) -> Result<NsChild> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(NsChild)
            .map_err(|source| NetnsError::Io {
                context: format!("spawning {cmd} in {}", self.name),
                source,
            })
    }

    /// Starts a background process that lives exactly as long as the namespace.
    pub fn spawn_detached(&self, cmd: &str, args: &[&str]) -> Result<u32> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| NetnsError::Io {
                context: format!("spawning {cmd} in {}", self.name),
                source,
            })?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec_ok("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace, and returns its result.
    ///
    /// Sockets (netlink, packet, raw) created by `f` belong to the namespace, so in-process
    /// code such as an announcer on a current-thread tokio runtime built inside `f` behaves
    /// as if it ran on that "machine". A panic in `f` is propagated to the caller.
    pub fn run_in<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in_named(&self.name, f)
    }

    /// Like [`Netns::run_in`] but in the background: starts `f` on a new OS thread inside
    /// the namespace and returns at once. The thread keeps the namespace alive (in the
    /// kernel) even if this guard is dropped first, so join it before dropping the guard.
    pub fn thread_in<F, R>(&self, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|source| NetnsError::Io {
            context: format!("opening {path}"),
            source,
        })?;
        std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                enter(&file).map_err(|source| NetnsError::Io {
                    context: format!("setns into {path}"),
                    source,
                })?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Io {
                context: "spawning a thread".into(),
                source,
            })
    }

    fn kill_everything_inside(&self) {
        for mut child in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Processes started by other means (e.g. `exec` of something that daemonised). Our
        // own pid can show up when a thread of ours is still inside; never kill ourselves.
        let own = std::process::id().to_string();
        if let Ok(pids) = run("ip", &["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace().filter(|p| *p != own) {
                let _ = Command::new("kill")
                    .args(["-KILL", pid])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// [`Netns::run_in`] for a namespace known only by its name (`/run/netns/<name>`), such as one
/// a recorded lab created: runs `f` on a fresh OS thread inside it and returns its result.
pub fn run_in_named<F, R>(name: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).map_err(|source| NetnsError::Io {
        context: format!("opening {path}"),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> Result<R> {
            enter(&file).map_err(|source| NetnsError::Io {
                context: format!("setns into {path}"),
                source,
            })?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Moves the calling thread into the network namespace behind `ns_file`.
///
/// std has no `setns`; nix's is safe. Only the calling thread changes namespace, which is why
/// [`Netns::run_in`] spawns a thread that is thrown away afterwards.
fn enter(ns_file: &File) -> io::Result<()> {
    nix::sched::setns(ns_file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Someone else may have removed it already (the real-cluster lab's ledger does).
        if !std::path::Path::new("/var/run/netns")
            .join(&self.name)
            .exists()
        {
            return;
        }
        self.kill_everything_inside();
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!(
                "lodestone-harness: cannot delete namespace {}: {e}",
                self.name
            );
        }
    }
}
