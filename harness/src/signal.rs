//! The one place the harness sends a Unix signal, through nix's safe kill(2).

use std::io;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Sends `sig` (e.g. `libc::SIGTERM`) to `pid`. The caller makes sure the pid is still the
/// process it means (its own unreaped child, or one checked by start time).
pub fn send(pid: u32, sig: i32) -> io::Result<()> {
    signal::kill(pid_of(pid)?, signal_of(sig)?).map_err(io::Error::from)
}

/// Sends `sig` to every process of the process group `pgid`, as a terminal sends ^C to its
/// foreground group.
pub fn send_group(pgid: u32, sig: i32) -> io::Result<()> {
    signal::killpg(pid_of(pgid)?, signal_of(sig)?).map_err(io::Error::from)
}

fn pid_of(pid: u32) -> io::Result<Pid> {
    libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))
}

/// `0` is kill(2)'s "is it there?" probe, which sends nothing.
fn signal_of(sig: i32) -> io::Result<Option<Signal>> {
    if sig == 0 {
        return Ok(None);
    }
    Signal::try_from(sig)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_a_child_and_refuses_nonsense() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        send(child.id(), 0).expect("probe");
        send(child.id(), libc::SIGTERM).expect("term");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert!(
            send(0, libc::SIGTERM).is_err(),
            "pid 0 would be our own group"
        );
        assert!(send(u32::MAX, libc::SIGTERM).is_err());
        assert!(send(child.id(), 12345).is_err());
    }
}
