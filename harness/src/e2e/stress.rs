//! CPU load from `stress-ng` (Debian's `stress-ng` package), for the scenarios that must hold on
//! a loaded node. Stopped when dropped, also when a test fails.
#![allow(unsafe_code)] // kill(2) on our own child; with a SAFETY comment

use std::process::{Child, Command, Stdio};

/// `stress-ng --cpu N` in the root namespace, until dropped.
pub struct Stress(Child);

impl Stress {
    /// Starts `workers` CPU workers.
    pub fn start(workers: u64) -> std::io::Result<Stress> {
        let child = Command::new("stress-ng")
            .args(["--cpu", &workers.to_string(), "--quiet"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("starting stress-ng (apt-get install stress-ng): {e}"),
                )
            })?;
        Ok(Stress(child))
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        // SIGTERM lets stress-ng stop its workers; SIGKILL (Child::kill) would orphan them.
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child, not reaped yet, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.0.wait();
    }
}
