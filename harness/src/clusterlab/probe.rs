//! A client that keeps asking a Service over HTTP from inside a namespace (the lab's client
//! machine) and records every answer, so a test can say how long clients were cut off by a
//! fault, and who answered before and after.
//!
//! Each request is a fresh TCP connection (so a connection that kube-proxy or a dead node
//! holds does not hide an outage), with a short timeout, every `interval`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::run_in_named;

/// One request's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// When the request was sent.
    pub at: Instant,
    /// The response body, or `None` when the request failed or timed out.
    pub body: Option<String>,
}

/// A running prober; stops when dropped.
#[derive(Debug)]
pub struct HttpProber {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Probe>>>,
    thread: Option<JoinHandle<()>>,
}

/// One `GET /` over a fresh connection to `target`, with `timeout` for each step.
fn get(target: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&target, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let host = match target {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.split_whitespace().nth(1).filter(|c| *c == "200")?;
    Some(body.trim().to_owned())
}

impl HttpProber {
    /// Starts probing `target` from inside the namespace named `ns` every `interval`.
    pub fn start(ns: &str, target: SocketAddr, interval: Duration) -> std::io::Result<HttpProber> {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Probe>>> = Arc::default();
        let (s, l, name) = (Arc::clone(&stop), Arc::clone(&log), ns.to_owned());
        let thread = std::thread::Builder::new()
            .name(format!("probe-{target}"))
            .spawn(move || {
                // The whole loop runs inside the namespace: every socket is the client's.
                let _ = run_in_named(&name, move || {
                    let timeout = Duration::from_millis(300);
                    while !s.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let body = get(target, timeout);
                        l.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Probe { at, body });
                        let spent = at.elapsed();
                        if spent < interval {
                            std::thread::sleep(interval - spent);
                        }
                    }
                });
            })?;
        Ok(HttpProber {
            stop,
            log,
            thread: Some(thread),
        })
    }

    /// Every probe so far.
    pub fn probes(&self) -> Vec<Probe> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until a probe sent after `since` succeeds, for at most `timeout`; its body.
    pub fn wait_success_after(&self, since: Instant, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(b) = self
                .probes()
                .into_iter()
                .find(|p| p.at >= since && p.body.is_some())
                .and_then(|p| p.body)
            {
                return Some(b);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HttpProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What clients saw from `since` on: the longest run of failed probes (from the first failure
/// to the next success), how many probes failed, and how many were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// First failure to the next success, longest such span (zero when nothing failed).
    pub longest: Duration,
    /// Failed probes.
    pub failed: usize,
    /// All probes.
    pub sent: usize,
}

/// [`Outage`] over the probes sent at or after `since`.
pub fn outage(probes: &[Probe], since: Instant) -> Outage {
    let mut longest = Duration::ZERO;
    let mut run_start: Option<Instant> = None;
    let (mut failed, mut sent) = (0, 0);
    for p in probes.iter().filter(|p| p.at >= since) {
        sent += 1;
        match (&p.body, run_start) {
            (None, None) => {
                failed += 1;
                run_start = Some(p.at);
            }
            (None, Some(_)) => failed += 1,
            (Some(_), Some(start)) => {
                longest = longest.max(p.at - start);
                run_start = None;
            }
            (Some(_), None) => {}
        }
    }
    if let (Some(start), Some(last)) = (run_start, probes.last()) {
        // Still failing at the end: the outage lasts at least until the last probe.
        longest = longest.max(last.at - start);
    }
    Outage {
        longest,
        failed,
        sent,
    }
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ms without an answer ({} of {} requests failed)",
            self.longest.as_millis(),
            self.failed,
            self.sent
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(pattern: &str) -> (Instant, Vec<Probe>) {
        let t0 = Instant::now();
        let v = pattern
            .chars()
            .enumerate()
            .map(|(i, c)| Probe {
                at: t0 + Duration::from_millis(10 * i as u64),
                body: (c == '+').then(|| "ok".to_owned()),
            })
            .collect();
        (t0, v)
    }

    #[test]
    fn the_longest_failure_run_counts_to_the_next_success() {
        let (t0, p) = probes("++--+---++");
        let o = outage(&p, t0);
        // The second run: probes 5, 6, 7 failed, probe 8 succeeded: 30 ms.
        assert_eq!(o.longest, Duration::from_millis(30));
        assert_eq!((o.failed, o.sent), (5, 10));
        let (t0, p) = probes("++++");
        assert_eq!(outage(&p, t0).longest, Duration::ZERO);
    }

    #[test]
    fn a_run_still_failing_at_the_end_counts_to_the_last_probe() {
        let (t0, p) = probes("+---");
        assert_eq!(outage(&p, t0).longest, Duration::from_millis(20));
        // Probes before `since` are ignored.
        assert_eq!(outage(&p, t0 + Duration::from_millis(35)).sent, 0);
    }

    #[test]
    fn a_real_server_in_a_namespace_is_probed() {
        let ns = crate::netns::Netns::new("ldpr").unwrap();
        let server = ns
            .run_in(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in server.incoming() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\npod=x node=y\n");
            }
        });
        let t0 = Instant::now();
        let p = HttpProber::start(ns.name(), target, Duration::from_millis(10)).unwrap();
        assert_eq!(
            p.wait_success_after(t0, Duration::from_secs(10)).as_deref(),
            Some("pod=x node=y")
        );
        drop(p);
    }
}
