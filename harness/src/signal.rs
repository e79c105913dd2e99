//! The one place the harness sends a Unix signal, so `unsafe` for kill(2) lives here alone.
#![allow(unsafe_code)] // kill(2); with a SAFETY comment

use std::io;

/// Sends `sig` (e.g. `libc::SIGTERM`) to `pid`. The caller makes sure the pid is still the
/// process it means (its own unreaped child, or one checked by start time).
pub fn send(pid: u32, sig: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches none of our memory.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
