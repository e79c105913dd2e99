//! An unauthenticated UDP flood at a fixed rate, from a namespace, until dropped: what a
//! hostile or broken host on the node network can send to the speakers' membership port.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

fn flood(socket: &UdpSocket, target: SocketAddr, rate: u64, stop: &AtomicBool, sent: &AtomicU64) {
    // Bursts every 10 ms keep the rate without a timer per datagram.
    let per_burst = (rate / 100).max(1);
    let mut envelope = vec![1u8, 6];
    envelope.extend_from_slice(b"node-b");
    envelope.extend_from_slice(&[0u8; 16]); // boot, sequence
    envelope.extend_from_slice(&[0x55u8; 120]); // payload
    envelope.extend_from_slice(&[0xaau8; 32]); // a MAC that never matches
    let seq_at = 2 + 6 + 15;
    let mut garbage = [0u8; 200];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    let mut bursts = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..per_burst {
            let datagram: &[u8] = if i % 2 == 0 {
                // xorshift: different bytes every time, nothing allocated.
                for b in garbage.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x.to_le_bytes()[0];
                }
                &garbage
            } else {
                envelope[seq_at] = envelope[seq_at].wrapping_add(1);
                &envelope
            };
            if socket.send_to(datagram, target).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        bursts += 1;
        let due = start + Duration::from_millis(10 * bursts);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
