//! Authenticated envelopes for membership datagrams (pure: no socket, no clock).
//!
//! Layout of every datagram (integers big-endian):
//!
//! ```text
//! version (1) | name length n (1) | sender name (n) | boot (8) | seq (8) | payload | HMAC-SHA256 (32)
//! ```
//!
//! The MAC covers everything before it, so the sender's name, boot and sequence number are
//! authenticated along with the foca payload. Only holders of the shared key (a Kubernetes
//! Secret) can produce a datagram that is accepted, so a speaker without the key can neither
//! join nor declare anyone down.
//!
//! **Replays.** A MAC alone would let anyone on the node network record a datagram and send it
//! again later. For liveness that is not harmless: replaying a dead node's old acks or
//! announces could keep it looking alive past the suspicion window, and replaying a graceful
//! leave could evict a node that has since come back. So each sender numbers its datagrams:
//! `boot` is fixed for the life of a process and grows across restarts (the same clock-derived
//! number as the membership identity's bump), and `seq` counts up from zero within a boot.
//! The receiver keeps, per sender name, the newest boot and a 64-datagram sliding window
//! (as IPsec's anti-replay window does) so UDP reordering is tolerated but every
//! `(boot, seq)` is accepted at most once, and nothing from an older boot is accepted at all.
//! This needs no synchronised clocks and no per-datagram timestamp.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Envelope format version; bumped if the layout ever changes.
pub const VERSION: u8 = 1;
/// Length of the trailing MAC.
pub const MAC_LEN: usize = 32;
/// Shortest key accepted: 128 bits.
pub const MIN_KEY_LEN: usize = 16;
/// Width of the anti-replay window, in datagrams.
pub const REPLAY_WINDOW: u64 = 64;
/// Senders remembered at most; more only happens if key holders invent names.
pub const MAX_SENDERS: usize = 4096;

/// Bytes an envelope adds around a payload for a sender named `name`.
pub fn overhead(name: &str) -> usize {
    2 + name.len() + 8 + 8 + MAC_LEN
}

/// Why an envelope cannot be built or was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The shared key is shorter than [`MIN_KEY_LEN`].
    #[error("membership key is {0} bytes; at least {MIN_KEY_LEN} are required")]
    KeyTooShort(usize),
    /// A sender name must be 1 to 255 bytes long to fit the envelope.
    #[error("node name must be 1 to 255 bytes, got {0}")]
    BadName(usize),
    /// Too short, unknown version, or the name is not UTF-8.
    #[error("malformed envelope")]
    Malformed,
    /// The MAC does not match: wrong key or tampered datagram.
    #[error("bad MAC")]
    BadMac,
    /// Authentic, but already seen, too old for the window, or from an earlier boot.
    #[error("replayed or stale datagram")]
    Replay,
}

fn mac_for(key: &[u8]) -> Result<HmacSha256, AuthError> {
    if key.len() < MIN_KEY_LEN {
        return Err(AuthError::KeyTooShort(key.len()));
    }
    // HMAC takes keys of any length, so this cannot fail after the length check.
    HmacSha256::new_from_slice(key).map_err(|_| AuthError::KeyTooShort(key.len()))
}

/// Seals outgoing payloads for one sender (one process lifetime).
pub struct Sealer {
    mac: HmacSha256,
    header: Vec<u8>,
    boot: u64,
    seq: u64,
}

impl Sealer {
    /// A sealer for `name` in its boot `boot` (must grow across restarts of the same node).
    pub fn new(key: &[u8], name: &str, boot: u64) -> Result<Self, AuthError> {
        let mac = mac_for(key)?;
        let len = u8::try_from(name.len())
            .ok()
            .filter(|l| *l > 0)
            .ok_or(AuthError::BadName(name.len()))?;
        let mut header = Vec::with_capacity(2 + name.len());
        header.push(VERSION);
        header.push(len);
        header.extend_from_slice(name.as_bytes());
        Ok(Self {
            mac,
            header,
            boot,
            seq: 0,
        })
    }

    /// Wrap `payload` in an envelope with the next sequence number.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + 16 + payload.len() + MAC_LEN);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        let mut mac = self.mac.clone();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }
}

/// Anti-replay state for one sender.
#[derive(Debug, Clone, Copy)]
struct Window {
    boot: u64,
    highest: u64,
    /// Bit `i` set: `highest - i` was seen.
    seen: u64,
}

impl Window {
    fn fresh(boot: u64, seq: u64) -> Self {
        Self {
            boot,
            highest: seq,
            seen: 1,
        }
    }

    /// Record `(boot, seq)`; false when it must be dropped as a replay.
    fn accept(&mut self, boot: u64, seq: u64) -> bool {
        if boot < self.boot {
            return false;
        }
        if boot > self.boot {
            *self = Self::fresh(boot, seq);
            return true;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = seq;
            return true;
        }
        let age = self.highest - seq;
        if age >= REPLAY_WINDOW {
            return false;
        }
        let bit = 1u64 << age;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

/// Verifies incoming envelopes and remembers what each sender has already sent.
pub struct Opener {
    mac: HmacSha256,
    windows: HashMap<String, Window>,
}

/// An accepted envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The sender's node name, as it sealed it.
    pub sender: &'a str,
    /// The sender's boot number.
    pub boot: u64,
    /// The foca payload.
    pub payload: &'a [u8],
}

impl Opener {
    /// An opener that accepts envelopes sealed with `key`.
    pub fn new(key: &[u8]) -> Result<Self, AuthError> {
        Ok(Self {
            mac: mac_for(key)?,
            windows: HashMap::new(),
        })
    }

    /// Check the MAC (constant time) and the replay window, and return the payload.
    ///
    /// Nothing is remembered about a datagram whose MAC is wrong, so forged traffic cannot
    /// disturb the replay state of real senders.
    pub fn open<'a>(&mut self, datagram: &'a [u8]) -> Result<Opened<'a>, AuthError> {
        let body_len = datagram
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(AuthError::Malformed)?;
        let (body, tag) = datagram.split_at(body_len);
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| AuthError::BadMac)?;

        let (&version, rest) = body.split_first().ok_or(AuthError::Malformed)?;
        if version != VERSION {
            return Err(AuthError::Malformed);
        }
        let (&name_len, rest) = rest.split_first().ok_or(AuthError::Malformed)?;
        let name_len = usize::from(name_len);
        if name_len == 0 || rest.len() < name_len + 16 {
            return Err(AuthError::Malformed);
        }
        let (name, rest) = rest.split_at(name_len);
        let sender = std::str::from_utf8(name).map_err(|_| AuthError::Malformed)?;
        let (boot, rest) = rest.split_at(8);
        let (seq, payload) = rest.split_at(8);
        let boot = u64::from_be_bytes(boot.try_into().map_err(|_| AuthError::Malformed)?);
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| AuthError::Malformed)?);

        match self.windows.get_mut(sender) {
            Some(window) => {
                if !window.accept(boot, seq) {
                    return Err(AuthError::Replay);
                }
            }
            None => {
                if self.windows.len() >= MAX_SENDERS {
                    self.forget_oldest();
                }
                self.windows
                    .insert(sender.to_owned(), Window::fresh(boot, seq));
            }
        }
        Ok(Opened {
            sender,
            boot,
            payload,
        })
    }

    /// Drop the sender with the oldest boot, to bound memory.
    fn forget_oldest(&mut self) {
        let oldest = self
            .windows
            .iter()
            .min_by_key(|(_, w)| w.boot)
            .map(|(name, _)| name.clone());
        if let Some(name) = oldest {
            self.windows.remove(&name);
        }
    }

    /// Number of senders whose replay state is kept.
    pub fn senders(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip() {
        let mut s = Sealer::new(KEY, "node-a", 7).unwrap();
        let mut o = Opener::new(KEY).unwrap();
        let d = s.seal(b"hello");
        assert_eq!(d.len(), 5 + overhead("node-a"));
        let opened = o.open(&d).unwrap();
        assert_eq!(
            opened,
            Opened {
                sender: "node-a",
                boot: 7,
                payload: b"hello"
            }
        );
    }

    #[test]
    fn short_keys_and_bad_names_are_refused() {
        assert_eq!(
            Sealer::new(b"short", "n", 1).err(),
            Some(AuthError::KeyTooShort(5))
        );
        assert!(Opener::new(b"").is_err());
        assert_eq!(Sealer::new(KEY, "", 1).err(), Some(AuthError::BadName(0)));
        let long = "x".repeat(256);
        assert_eq!(
            Sealer::new(KEY, &long, 1).err(),
            Some(AuthError::BadName(256))
        );
    }

    #[test]
    fn wrong_key_is_rejected_and_leaves_no_state() {
        let mut s = Sealer::new(b"another key of sixteen+ bytes", "node-a", 1).unwrap();
        let mut o = Opener::new(KEY).unwrap();
        assert_eq!(o.open(&s.seal(b"x")), Err(AuthError::BadMac));
        assert_eq!(o.senders(), 0);
    }

    #[test]
    fn every_bit_is_covered_by_the_mac() {
        let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
        let d = s.seal(b"payload");
        for i in 0..d.len() {
            let mut o = Opener::new(KEY).unwrap();
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            assert!(o.open(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncated_input_is_malformed_not_a_panic() {
        let mut o = Opener::new(KEY).unwrap();
        for len in 0..MAC_LEN {
            assert!(o.open(&vec![0u8; len]).is_err());
        }
    }

    #[test]
    fn replays_are_dropped() {
        let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
        let mut o = Opener::new(KEY).unwrap();
        let first = s.seal(b"1");
        let second = s.seal(b"2");
        assert!(o.open(&first).is_ok());
        assert_eq!(o.open(&first), Err(AuthError::Replay));
        assert!(o.open(&second).is_ok());
        assert_eq!(o.open(&second), Err(AuthError::Replay));
    }

    #[test]
    fn reordering_within_the_window_is_accepted() {
        let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
        let mut o = Opener::new(KEY).unwrap();
        let d: Vec<Vec<u8>> = (0..10).map(|_| s.seal(b"x")).collect();
        for i in [3, 0, 9, 1, 2, 8, 4, 7, 5, 6] {
            assert!(o.open(&d[i]).is_ok(), "datagram {i}");
        }
        for datagram in &d {
            assert_eq!(o.open(datagram), Err(AuthError::Replay));
        }
    }

    #[test]
    fn too_old_is_dropped() {
        let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
        let mut o = Opener::new(KEY).unwrap();
        let old = s.seal(b"old");
        let newer: Vec<Vec<u8>> = (0..REPLAY_WINDOW).map(|_| s.seal(b"x")).collect();
        for d in &newer {
            assert!(o.open(d).is_ok());
        }
        // `old` was never seen, but it is now outside the window.
        assert_eq!(o.open(&old), Err(AuthError::Replay));
    }

    #[test]
    fn a_restart_resets_the_window_and_kills_the_old_boot() {
        let mut before = Sealer::new(KEY, "node-a", 1).unwrap();
        let mut after = Sealer::new(KEY, "node-a", 2).unwrap();
        let mut o = Opener::new(KEY).unwrap();
        let late_from_before = before.seal(b"a");
        for _ in 0..3 {
            assert!(o.open(&before.seal(b"b")).is_ok());
        }
        // The new process starts again at seq 0, which must be accepted.
        assert!(o.open(&after.seal(b"c")).is_ok());
        assert_eq!(o.open(&late_from_before), Err(AuthError::Replay));
        assert_eq!(o.open(&before.seal(b"d")), Err(AuthError::Replay));
    }

    #[test]
    fn senders_are_bounded() {
        let mut o = Opener::new(KEY).unwrap();
        for i in 0..(MAX_SENDERS + 10) {
            let mut s = Sealer::new(KEY, &format!("n{i}"), i as u64).unwrap();
            assert!(o.open(&s.seal(b"x")).is_ok());
        }
        assert_eq!(o.senders(), MAX_SENDERS);
    }

    proptest! {
        /// Whatever order datagrams arrive in, each is accepted at most once, and every one
        /// within the window of the newest seen so far is accepted the first time.
        #[test]
        fn each_datagram_at_most_once(order in prop::collection::vec(0usize..200, 1..400)) {
            let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
            let mut o = Opener::new(KEY).unwrap();
            let d: Vec<Vec<u8>> = (0..200).map(|_| s.seal(b"x")).collect();
            let mut accepted = std::collections::BTreeSet::new();
            let mut highest: Option<usize> = None;
            for i in order {
                let ok = o.open(&d[i]).is_ok();
                let fresh = !accepted.contains(&i);
                let in_window = highest.is_none_or(|h| i + REPLAY_WINDOW as usize > h);
                prop_assert_eq!(ok, fresh && in_window, "datagram {} highest {:?}", i, highest);
                if ok {
                    accepted.insert(i);
                    highest = Some(highest.map_or(i, |h| h.max(i)));
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut o = Opener::new(KEY).unwrap();
            prop_assert!(o.open(&bytes).is_err());
        }
    }
}
