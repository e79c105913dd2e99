//! An unauthenticated UDP flood at a fixed rate, from a namespace, until dropped: what a
//! hostile or broken host on the node network can send to the speakers' membership port.

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, sendmmsg};

use crate::netns::{Netns, NetnsError};

/// Sends `rate` datagrams/s to `target`; stops when dropped.
///
/// Half are random bytes, half look like membership envelopes (kind 1, a node's name, boot and
/// sequence, a payload) with a MAC that never matches: those pass every check that needs no key
/// and cost the receiver a full MAC verification each, the worst a sender without the key can
/// do.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    /// Starts flooding `target` from `ns` at `rate` datagrams/s.
    pub fn start(ns: &Netns, target: SocketAddr, rate: u64) -> Result<Flood, NetnsError> {
        let bind: SocketAddr = if target.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        };
        let socket = ns
            .run_in(move || UdpSocket::bind(bind))?
            .map_err(|source| NetnsError::Io {
                context: format!("binding the flood socket in {}", ns.name()),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::spawn(move || flood(&socket, target, rate, &stop2, &sent2));
        Ok(Flood {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Datagrams handed to the kernel per `sendmmsg(2)` call.
const BATCH: usize = 64;

fn flood(socket: &UdpSocket, target: SocketAddr, rate: u64, stop: &AtomicBool, sent: &AtomicU64) {
    // Connected, so every datagram of a batch goes to `target` without an address each.
    if socket.connect(target).is_err() {
        return;
    }
    // Bursts every 10 ms keep the rate without a timer per datagram.
    let per_burst = usize::try_from((rate / 100).max(1)).unwrap_or(BATCH);
    let mut envelopes: Vec<Vec<u8>> = Vec::with_capacity(BATCH / 2);
    let mut garbage: Vec<[u8; 200]> = vec![[0u8; 200]; BATCH / 2];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut seq = 0u64;
    let mut headers = MultiHeaders::<()>::preallocate(BATCH, None);
    let start = Instant::now();
    let mut bursts = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut left = per_burst;
        while left > 0 {
            let n = left.min(BATCH);
            // Half random bytes (xorshift), half envelopes with a fresh sequence number each.
            for g in garbage.iter_mut() {
                for b in g.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x.to_le_bytes()[0];
                }
            }
            envelopes.clear();
            for _ in 0..BATCH / 2 {
                seq = seq.wrapping_add(1);
                let mut e = vec![1u8, 6];
                e.extend_from_slice(b"node-b");
                e.extend_from_slice(&0u64.to_be_bytes()); // boot
                e.extend_from_slice(&seq.to_be_bytes());
                e.extend_from_slice(&[0x55u8; 120]); // payload
                e.extend_from_slice(&[0xaau8; 32]); // a MAC that never matches
                envelopes.push(e);
            }
            let batch: Vec<&[u8]> = garbage
                .iter()
                .map(|g| &g[..])
                .zip(envelopes.iter().map(Vec::as_slice))
                .flat_map(|(g, e)| [g, e])
                .take(n)
                .collect();
            let done = send_batch(socket, &mut headers, &batch);
            sent.fetch_add(done as u64, Ordering::Relaxed);
            left -= n;
        }
        bursts += 1;
        let due = start + Duration::from_millis(10 * bursts);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Sends `datagrams` on the connected `socket` in one `sendmmsg(2)`; returns how many went out.
/// One system call per batch instead of per datagram: on a loaded two-core machine a sender
/// making one call per datagram falls far short of 40,000 a second. `headers` is reused from
/// batch to batch.
fn send_batch(socket: &UdpSocket, headers: &mut MultiHeaders<()>, datagrams: &[&[u8]]) -> usize {
    let slices: Vec<[IoSlice<'_>; 1]> = datagrams.iter().map(|d| [IoSlice::new(d)]).collect();
    // Connected: no address per datagram, and no control messages.
    let addresses = vec![None; slices.len()];
    let control: [ControlMessage<'_>; 0] = [];
    sendmmsg(
        socket.as_raw_fd(),
        headers,
        &slices,
        addresses,
        control,
        MsgFlags::empty(),
    )
    .map_or(0, Iterator::count)
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What it counts as sent reaches a receiver in the same namespace (through loopback; the
    /// receiver's buffer may overflow, so not all of it), and it prints its rate
    /// (`--nocapture`), the figure to compare when the sending changes.
    #[test]
    fn floods_a_receiver_and_counts_what_it_sent() {
        let ns = Netns::new("ldfl").unwrap();
        let receiver = ns
            .run_in(|| UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap()
            .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let target = receiver.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let counting = {
            let received = Arc::clone(&received);
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while receiver.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let flood = Flood::start(&ns, target, 40_000).unwrap();
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        let sent = flood.sent();
        let elapsed = start.elapsed();
        drop(flood);
        counting.join().unwrap();
        let received = received.load(Ordering::Relaxed);
        println!(
            "flood: {sent} datagrams in {:.2} s = {:.0}/s (asked 40000/s); {received} received",
            elapsed.as_secs_f64(),
            sent as f64 / elapsed.as_secs_f64()
        );
        // A burst (400 datagrams) may still go out after `sent` was read.
        assert!(sent > 0);
        assert!(
            received > 0 && received <= sent + 400,
            "{received} of {sent}"
        );
    }
}
