//! An unauthenticated UDP flood at a fixed rate, from a namespace, until dropped: what a
//! hostile or broken host on the node network can send to the speakers' membership port.
#![allow(unsafe_code)] // raw syscalls; each with a SAFETY comment

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
            let done = send_batch(socket, &batch);
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
/// making one call per datagram falls far short of 40,000 a second.
fn send_batch(socket: &UdpSocket, datagrams: &[&[u8]]) -> usize {
    use std::os::fd::AsRawFd;
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr().cast_mut().cast(),
            iov_len: d.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
    // SAFETY: `headers` holds `count` initialised mmsghdr whose single iovec each points into a
    // buffer of `datagrams`, all alive and unmoved for the duration of the call; the kernel only
    // reads them (and writes `msg_len`).
    let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), count, 0) };
    usize::try_from(n).unwrap_or(0)
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
