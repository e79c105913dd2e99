//! CPU load from `stress-ng` (Debian's `stress-ng` package), for the scenarios that must hold on
//! a loaded node. Stopped when dropped, also when a test fails.

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
        // Our own child, not reaped yet, so the pid is still ours.
        let _ = crate::signal::send(self.0.id(), libc::SIGTERM);
        let _ = self.0.wait();
    }
}
