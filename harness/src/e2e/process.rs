//! A real `lodestone-speaker` (or any binary) running inside a node namespace.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::netns::{Netns, NetnsError};

/// A process started in a namespace with `ip netns exec` (which execs, so the pid is the
/// program's own), logging to a file; killed when dropped.
#[derive(Debug)]
pub struct SpeakerProcess {
    child: Child,
    log: PathBuf,
}

impl SpeakerProcess {
    /// Starts `binary args..` in `ns` with `env` added, stdout and stderr appended to `log`.
    pub fn spawn(
        ns: &Netns,
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<SpeakerProcess, NetnsError> {
        let io_err = |what: &str| {
            let context = format!("{what} for {} in {}", binary.display(), ns.name());
            move |source: io::Error| NetnsError::Io { context, source }
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err("opening the log"))?;
        let err = out.try_clone().map_err(io_err("cloning the log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(binary)
            .args(args)
            // The key a caller's own environment may hold must not override the one a test
            // chose (a key file, or `env`).
            .env_remove("LODESTONE_MEMBERLIST_KEY")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err("spawning"))?;
        Ok(SpeakerProcess {
            child,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has used so far (user + system, from `/proc/PID/stat`).
    pub fn cpu_time(&self) -> io::Result<std::time::Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may contain spaces) start after the last ')';
        // utime and stime are fields 14 and 15 of proc_pid_stat(5), so 12 and 13 from there.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> io::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
        };
        let per_second = clock_ticks_per_second();
        let total = ticks(11)? + ticks(12)?;
        Ok(std::time::Duration::from_millis(
            total.saturating_mul(1000) / per_second,
        ))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`, `libc::SIGKILL`).
    pub fn kill(&self, signal: i32) -> io::Result<()> {
        // Our own unreaped child: the pid cannot have been recycled for another process.
        crate::signal::send(self.child.id(), signal)
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for SpeakerProcess {
    fn drop(&mut self) {
        // Errors mean it already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's clock ticks per second, the unit of `/proc/PID/stat`'s CPU times (100 when
/// sysconf cannot tell).
pub fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(v)) if v > 0 => v.unsigned_abs(),
        _ => 100,
    }
}
