//! Authenticated envelopes for membership datagrams, and the keyring (pure: no socket, no clock).
//!
//! Layout of every datagram (integers big-endian):
//!
//! ```text
//! kind (1) | name length n (1) | sender name (n) | boot (8) | seq (8) | payload | HMAC-SHA256 (32)
//! ```
//!
//! `kind` is 1 for a SWIM (foca) payload and 2 for an identity hint (see
//! [`super::identity`]); speakers that only know kind 1 drop kind 2 as malformed. The MAC covers
//! everything before it, so the sender's name, boot and sequence number are authenticated along
//! with the payload. Only holders of a key of the keyring (a Kubernetes Secret) can produce a
//! datagram that is accepted, so a speaker without it can neither join nor declare anyone down.
//!
//! **Keyring.** A datagram is sealed with the *primary* key (the first) and accepted when it
//! verifies under any key of the keyring, so keys can be rotated without a moment where two
//! speakers cannot hear each other (docs/install.md, "Rotating the key").
//!
//! **Cheap rejection.** Everything that can be checked without the key (length, kind, name
//! length) is checked first and allocates nothing, so a flood of garbage costs a few comparisons
//! per datagram; well-formed forgeries cost one MAC per key, still without allocating.
//!
//! **Replays.** A MAC alone would let anyone on the node network record a datagram and send it
//! again later. For liveness that is not harmless: replaying a dead node's old acks or
//! announces could keep it looking alive past the suspicion window, and replaying a graceful
//! leave could evict a node that has since come back. So each sender numbers its datagrams:
//! `boot` is a random 64-bit number drawn at every start of the process, and `seq` counts up
//! from zero within a boot. The receiver keeps, per sender name and per boot (the last
//! [`BOOTS_PER_SENDER`] boots), a 64-datagram sliding window (as IPsec's anti-replay window does)
//! so UDP reordering is tolerated but every `(boot, seq)` is accepted at most once.
//!
//! Boots are *not* ordered: an earlier design took the wall clock as the boot and dropped
//! everything from a smaller one, so a speaker restarted after the clock was stepped back was
//! ignored forever. A boot the receiver has not seen is a new process and is accepted. What
//! that gives up: datagrams of a boot the receiver no longer remembers (more than
//! [`BOOTS_PER_SENDER`] restarts ago, or recorded before the receiver itself started) can be
//! replayed once each. They carry that process's SWIM identity, which a newer identity of the
//! same node outranks (see [`super::identity`]), so SWIM ignores what they claim.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Kind byte of a datagram carrying a SWIM payload (the original envelope version 1).
pub const KIND_SWIM: u8 = 1;
/// Kind byte of an identity hint.
pub const KIND_HINT: u8 = 2;
/// Length of the trailing MAC.
pub const MAC_LEN: usize = 32;
/// Shortest key accepted: 128 bits.
pub const MIN_KEY_LEN: usize = 16;
/// Most keys a keyring holds: a rotation needs two.
pub const MAX_KEYS: usize = 4;
/// Width of the anti-replay window, in datagrams.
pub const REPLAY_WINDOW: u64 = 64;
/// Senders remembered at most; more only happens if key holders invent names.
pub const MAX_SENDERS: usize = 4096;
/// Boots (process starts) remembered per sender.
pub const BOOTS_PER_SENDER: usize = 4;
/// Largest datagram accepted; nothing larger is ever sent (see [`super::MAX_DATAGRAM`]).
pub const MAX_ENVELOPE: usize = super::MAX_DATAGRAM;
/// Smallest possible envelope: a one-byte name and an empty payload.
const MIN_ENVELOPE: usize = 2 + 1 + 16 + MAC_LEN;

/// Bytes an envelope adds around a payload for a sender named `name`.
pub fn overhead(name: &str) -> usize {
    2 + name.len() + 8 + 8 + MAC_LEN
}

/// Why an envelope cannot be built or was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// A key is shorter than [`MIN_KEY_LEN`].
    #[error("the membership key is {0} bytes; at least {MIN_KEY_LEN} are required")]
    KeyTooShort(usize),
    /// The keyring is empty or holds more than [`MAX_KEYS`] keys.
    #[error("the membership keyring must hold 1 to {MAX_KEYS} keys, got {0}")]
    KeyCount(usize),
    /// A sender name must be 1 to 255 bytes long to fit the envelope.
    #[error("node name must be 1 to 255 bytes, got {0}")]
    BadName(usize),
    /// Larger than any datagram a speaker sends.
    #[error("oversized envelope")]
    Oversized,
    /// Too short, unknown kind, or the name is not UTF-8.
    #[error("malformed envelope")]
    Malformed,
    /// The MAC does not match any key: another keyring, or a forged or tampered datagram.
    #[error("bad MAC")]
    BadMac,
    /// Authentic, but already seen or too old for the window of its boot.
    #[error("replayed or stale datagram")]
    Replay,
}

/// The keys a speaker accepts; the first (primary) seals what it sends.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keyring")
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

impl Keyring {
    /// A keyring of `keys`, the first primary; each must be at least [`MIN_KEY_LEN`] bytes.
    pub fn new(keys: Vec<Vec<u8>>) -> Result<Self, AuthError> {
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(AuthError::KeyCount(keys.len()));
        }
        if let Some(short) = keys.iter().find(|k| k.len() < MIN_KEY_LEN) {
            return Err(AuthError::KeyTooShort(short.len()));
        }
        Ok(Self { keys })
    }

    /// The keys of a key file: one per line, surrounding whitespace and empty lines ignored,
    /// the first line primary.
    pub fn parse(text: &[u8]) -> Result<Self, AuthError> {
        Self::new(
            text.split(|b| *b == b'\n')
                .map(<[u8]>::trim_ascii)
                .filter(|line| !line.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
        )
    }

    /// The key that seals.
    pub fn primary(&self) -> &[u8] {
        // `new` refuses an empty keyring.
        self.keys.first().map_or(&[], Vec::as_slice)
    }

    /// The keys, primary first.
    pub fn into_keys(self) -> Vec<Vec<u8>> {
        self.keys
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true for a keyring built by [`Keyring::new`].
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A short public fingerprint per key (first 4 bytes of its SHA-256, in hex), primary
    /// first, to compare keyrings across nodes in logs without showing a key.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode(&Sha256::digest(k)[..4]))
            .collect()
    }
}

fn mac_for(key: &[u8]) -> Result<HmacSha256, AuthError> {
    if key.len() < MIN_KEY_LEN {
        return Err(AuthError::KeyTooShort(key.len()));
    }
    // HMAC takes keys of any length, so this cannot fail after the length check.
    HmacSha256::new_from_slice(key).map_err(|_| AuthError::KeyTooShort(key.len()))
}

/// A fresh boot number for this process: random, so it needs no clock and no state, and
/// never ordered against another. The top bit is set so that speakers of the previous release,
/// which took the wall clock (below 2^63 until 2262) and dropped smaller boots, accept it
/// during a rolling upgrade.
pub fn random_boot() -> u64 {
    rand::random::<u64>() | (1 << 63)
}

/// Seals outgoing payloads for one sender (one process lifetime).
pub struct Sealer {
    mac: HmacSha256,
    header: Vec<u8>,
    boot: u64,
    seq: u64,
}

impl Sealer {
    /// A sealer for `name` in its boot `boot` (see [`random_boot`]), sealing with `key`.
    pub fn new(key: &[u8], name: &str, boot: u64) -> Result<Self, AuthError> {
        let mac = mac_for(key)?;
        let len = u8::try_from(name.len())
            .ok()
            .filter(|l| *l > 0)
            .ok_or(AuthError::BadName(name.len()))?;
        let mut header = Vec::with_capacity(2 + name.len());
        header.push(KIND_SWIM);
        header.push(len);
        header.extend_from_slice(name.as_bytes());
        Ok(Self {
            mac,
            header,
            boot,
            seq: 0,
        })
    }

    /// Seal with `key` from now on; boot and sequence carry on.
    pub fn set_key(&mut self, key: &[u8]) -> Result<(), AuthError> {
        self.mac = mac_for(key)?;
        Ok(())
    }

    /// This process's boot number.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Wrap a SWIM `payload` in an envelope with the next sequence number.
    pub fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        self.seal_kind(KIND_SWIM, payload)
    }

    /// Wrap `payload` as a datagram of `kind`.
    pub fn seal_kind(&mut self, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + 16 + payload.len() + MAC_LEN);
        out.extend_from_slice(&self.header);
        if let Some(first) = out.first_mut() {
            *first = kind;
        }
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

/// Anti-replay state for one boot of one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    highest: u64,
    /// Bit `i` set: `highest - i` was seen.
    seen: u64,
}

impl Window {
    /// A window that has seen only `seq`.
    pub fn fresh(seq: u64) -> Self {
        Self {
            highest: seq,
            seen: 1,
        }
    }

    /// Record `seq`; false when it must be dropped as a replay.
    pub fn accept(&mut self, seq: u64) -> bool {
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

/// Anti-replay state for one sender: a window per recent boot.
#[derive(Debug, Clone, Default)]
pub struct SenderWindows {
    /// (boot, window, last use), at most [`BOOTS_PER_SENDER`].
    boots: Vec<(u64, Window, u64)>,
    /// Last use of any boot, for evicting senders.
    last_use: u64,
}

impl SenderWindows {
    /// Record `(boot, seq)` at logical time `tick`; false when it must be dropped as a replay.
    /// An unknown boot is a new process and always accepted; the least recently used boot is
    /// forgotten to make room.
    pub fn accept(&mut self, boot: u64, seq: u64, tick: u64) -> bool {
        self.last_use = tick;
        if let Some((_, window, used)) = self.boots.iter_mut().find(|(b, _, _)| *b == boot) {
            *used = tick;
            return window.accept(seq);
        }
        if self.boots.len() >= BOOTS_PER_SENDER
            && let Some(oldest) = self
                .boots
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(i, _)| i)
        {
            self.boots.swap_remove(oldest);
        }
        self.boots.push((boot, Window::fresh(seq), tick));
        true
    }

    /// Boots remembered.
    pub fn boots(&self) -> usize {
        self.boots.len()
    }
}

/// Verifies incoming envelopes and remembers what each sender has already sent.
pub struct Opener {
    macs: Vec<HmacSha256>,
    windows: HashMap<String, SenderWindows>,
    tick: u64,
}

/// An accepted envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// [`KIND_SWIM`] or [`KIND_HINT`].
    pub kind: u8,
    /// The sender's node name, as it sealed it.
    pub sender: &'a str,
    /// The sender's boot number.
    pub boot: u64,
    /// The payload.
    pub payload: &'a [u8],
    /// Which key of the keyring verified it (0: the primary).
    pub key_index: usize,
}

/// The parts of an envelope that can be checked without a key.
struct Parsed<'a> {
    kind: u8,
    name: &'a [u8],
    boot: u64,
    seq: u64,
    payload: &'a [u8],
    body: &'a [u8],
    tag: &'a [u8],
}

fn parse(datagram: &[u8]) -> Result<Parsed<'_>, AuthError> {
    if datagram.len() > MAX_ENVELOPE {
        return Err(AuthError::Oversized);
    }
    if datagram.len() < MIN_ENVELOPE {
        return Err(AuthError::Malformed);
    }
    let (body, tag) = datagram.split_at(datagram.len() - MAC_LEN);
    let (&kind, rest) = body.split_first().ok_or(AuthError::Malformed)?;
    if kind != KIND_SWIM && kind != KIND_HINT {
        return Err(AuthError::Malformed);
    }
    let (&name_len, rest) = rest.split_first().ok_or(AuthError::Malformed)?;
    let name_len = usize::from(name_len);
    if name_len == 0 || rest.len() < name_len + 16 {
        return Err(AuthError::Malformed);
    }
    let (name, rest) = rest.split_at(name_len);
    let (boot, rest) = rest.split_at(8);
    let (seq, payload) = rest.split_at(8);
    let word = |b: &[u8]| b.try_into().map(u64::from_be_bytes);
    Ok(Parsed {
        kind,
        name,
        boot: word(boot).map_err(|_| AuthError::Malformed)?,
        seq: word(seq).map_err(|_| AuthError::Malformed)?,
        payload,
        body,
        tag,
    })
}

impl Opener {
    /// An opener that accepts envelopes sealed with any key of `keys`.
    pub fn new(keys: &Keyring) -> Result<Self, AuthError> {
        Ok(Self {
            macs: Self::macs(keys)?,
            windows: HashMap::new(),
            tick: 0,
        })
    }

    fn macs(keys: &Keyring) -> Result<Vec<HmacSha256>, AuthError> {
        if keys.is_empty() {
            return Err(AuthError::KeyCount(0));
        }
        keys.keys.iter().map(|k| mac_for(k)).collect()
    }

    /// Accept `keys` from now on; what each sender has sent is still remembered.
    pub fn set_keys(&mut self, keys: &Keyring) -> Result<(), AuthError> {
        self.macs = Self::macs(keys)?;
        Ok(())
    }

    /// Check the shape, then the MAC (constant time, each key in turn), then the replay window,
    /// and return the payload.
    ///
    /// Nothing is remembered and nothing allocated for a datagram whose MAC is wrong, so forged
    /// traffic cannot disturb the replay state of real senders.
    pub fn open<'a>(&mut self, datagram: &'a [u8]) -> Result<Opened<'a>, AuthError> {
        let p = parse(datagram)?;
        let key_index = self
            .macs
            .iter()
            .position(|mac| {
                let mut mac = mac.clone();
                mac.update(p.body);
                mac.verify_slice(p.tag).is_ok()
            })
            .ok_or(AuthError::BadMac)?;
        let sender = std::str::from_utf8(p.name).map_err(|_| AuthError::Malformed)?;

        self.tick = self.tick.wrapping_add(1);
        let tick = self.tick;
        match self.windows.get_mut(sender) {
            Some(windows) => {
                if !windows.accept(p.boot, p.seq, tick) {
                    return Err(AuthError::Replay);
                }
            }
            None => {
                if self.windows.len() >= MAX_SENDERS {
                    self.forget_least_recent();
                }
                let mut windows = SenderWindows::default();
                windows.accept(p.boot, p.seq, tick);
                self.windows.insert(sender.to_owned(), windows);
            }
        }
        Ok(Opened {
            kind: p.kind,
            sender,
            boot: p.boot,
            payload: p.payload,
            key_index,
        })
    }

    /// Drop the sender heard from least recently, to bound memory.
    fn forget_least_recent(&mut self) {
        let oldest = self
            .windows
            .iter()
            .min_by_key(|(_, w)| w.last_use)
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
    const NEW_KEY: &[u8] = b"the next key, also 32 bytes long";

    fn ring(keys: &[&[u8]]) -> Keyring {
        Keyring::new(keys.iter().map(|k| k.to_vec()).collect()).unwrap()
    }

    fn opener() -> Opener {
        Opener::new(&ring(&[KEY])).unwrap()
    }

    #[test]
    fn round_trip() {
        let mut s = Sealer::new(KEY, "node-a", 7).unwrap();
        let mut o = opener();
        let d = s.seal(b"hello");
        assert_eq!(d.len(), 5 + overhead("node-a"));
        let opened = o.open(&d).unwrap();
        assert_eq!(
            opened,
            Opened {
                kind: KIND_SWIM,
                sender: "node-a",
                boot: 7,
                payload: b"hello",
                key_index: 0,
            }
        );
        let hint = s.seal_kind(KIND_HINT, b"x");
        assert_eq!(o.open(&hint).unwrap().kind, KIND_HINT);
    }

    #[test]
    fn short_keys_bad_keyrings_and_bad_names_are_refused() {
        assert_eq!(
            Sealer::new(b"short", "n", 1).err(),
            Some(AuthError::KeyTooShort(5))
        );
        assert_eq!(Keyring::new(vec![]).err(), Some(AuthError::KeyCount(0)));
        assert_eq!(
            Keyring::new(vec![KEY.to_vec(); MAX_KEYS + 1]).err(),
            Some(AuthError::KeyCount(MAX_KEYS + 1))
        );
        assert_eq!(
            Keyring::new(vec![KEY.to_vec(), b"tiny".to_vec()]).err(),
            Some(AuthError::KeyTooShort(4))
        );
        assert_eq!(Sealer::new(KEY, "", 1).err(), Some(AuthError::BadName(0)));
        let long = "x".repeat(256);
        assert_eq!(
            Sealer::new(KEY, &long, 1).err(),
            Some(AuthError::BadName(256))
        );
    }

    #[test]
    fn key_files_hold_one_key_per_line_primary_first() {
        let text = b"  0123456789abcdef0123456789abcdef  \n\n the next key, also 32 bytes long\r\n";
        let k = Keyring::parse(text).unwrap();
        assert_eq!(k, ring(&[KEY, NEW_KEY]));
        assert_eq!(k.primary(), KEY);
        // The single-key files written so far still read the same.
        assert_eq!(
            Keyring::parse(b"0123456789abcdef0123456789abcdef\n").unwrap(),
            ring(&[KEY])
        );
        assert_eq!(Keyring::parse(b"\n \n").err(), Some(AuthError::KeyCount(0)));
        // Fingerprints identify keys without showing them.
        let f = k.fingerprints();
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.len() == 8));
        assert_ne!(f[0], f[1]);
        assert!(!format!("{k:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn any_key_of_the_keyring_opens_and_the_index_is_reported() {
        let mut old = Sealer::new(KEY, "node-a", 1).unwrap();
        let mut new = Sealer::new(NEW_KEY, "node-b", 1).unwrap();
        let mut o = Opener::new(&ring(&[NEW_KEY, KEY])).unwrap();
        assert_eq!(o.open(&new.seal(b"x")).unwrap().key_index, 0);
        assert_eq!(o.open(&old.seal(b"x")).unwrap().key_index, 1);
        // The old key removed: the old sender is rejected, its replay state kept.
        o.set_keys(&ring(&[NEW_KEY])).unwrap();
        assert_eq!(o.open(&old.seal(b"x")), Err(AuthError::BadMac));
        // A sealer switched to the new key carries on with its boot and sequence.
        old.set_key(NEW_KEY).unwrap();
        let d = old.seal(b"y");
        let opened = o.open(&d).unwrap();
        assert_eq!((opened.sender, opened.boot), ("node-a", 1));
    }

    #[test]
    fn wrong_key_is_rejected_and_leaves_no_state() {
        let mut s = Sealer::new(b"another key of sixteen+ bytes", "node-a", 1).unwrap();
        let mut o = opener();
        assert_eq!(o.open(&s.seal(b"x")), Err(AuthError::BadMac));
        assert_eq!(o.senders(), 0);
    }

    #[test]
    fn shape_is_checked_before_the_mac() {
        let mut o = opener();
        assert_eq!(o.open(&[0u8; MAX_ENVELOPE + 1]), Err(AuthError::Oversized));
        let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
        let mut d = s.seal(b"x");
        // An unknown kind is malformed even before its MAC is looked at.
        d[0] = 9;
        assert_eq!(o.open(&d), Err(AuthError::Malformed));
        // A name longer than the datagram.
        let mut d = s.seal(b"x");
        d[1] = 200;
        assert_eq!(o.open(&d), Err(AuthError::Malformed));
    }

    #[test]
    fn every_bit_is_covered_by_the_mac() {
        let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
        let d = s.seal(b"payload");
        for i in 0..d.len() {
            let mut o = opener();
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            assert!(o.open(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncated_input_is_malformed_not_a_panic() {
        let mut o = opener();
        for len in 0..MIN_ENVELOPE {
            assert_eq!(o.open(&vec![1u8; len]), Err(AuthError::Malformed));
        }
    }

    #[test]
    fn replays_are_dropped() {
        let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
        let mut o = opener();
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
        let mut o = opener();
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
        let mut o = opener();
        let old = s.seal(b"old");
        let newer: Vec<Vec<u8>> = (0..REPLAY_WINDOW).map(|_| s.seal(b"x")).collect();
        for d in &newer {
            assert!(o.open(d).is_ok());
        }
        // `old` was never seen, but it is now outside the window.
        assert_eq!(o.open(&old), Err(AuthError::Replay));
    }

    /// The bug this design fixes: a speaker restarted after its clock was stepped back had a
    /// smaller boot than its previous life and was dropped as a replay forever.
    #[test]
    fn a_restart_is_heard_whatever_its_boot_number() {
        let mut before = Sealer::new(KEY, "node-a", 1_700_000_300).unwrap();
        let mut o = opener();
        let recorded = before.seal(b"a");
        assert!(o.open(&recorded).is_ok());
        for _ in 0..3 {
            assert!(o.open(&before.seal(b"b")).is_ok());
        }
        // Restarted with a *smaller* boot, as a wall-clock boot after an NTP step back.
        let mut after = Sealer::new(KEY, "node-a", 1_700_000_000).unwrap();
        for _ in 0..100 {
            assert!(o.open(&after.seal(b"c")).is_ok());
        }
        // The previous life's datagrams are still not replayable.
        assert_eq!(o.open(&recorded), Err(AuthError::Replay));
    }

    #[test]
    fn random_boots_are_distinct_and_above_wall_clock_boots() {
        let a = random_boot();
        let b = random_boot();
        assert_ne!(a, b);
        assert!(a >= 1 << 63 && b >= 1 << 63);
    }

    #[test]
    fn senders_are_bounded() {
        let mut o = opener();
        for i in 0..(MAX_SENDERS + 10) {
            let mut s = Sealer::new(KEY, &format!("n{i}"), i as u64).unwrap();
            assert!(o.open(&s.seal(b"x")).is_ok());
        }
        assert_eq!(o.senders(), MAX_SENDERS);
    }

    #[test]
    fn boots_per_sender_are_bounded() {
        let mut w = SenderWindows::default();
        for boot in 0..20u64 {
            assert!(w.accept(boot, 0, boot));
        }
        assert_eq!(w.boots(), BOOTS_PER_SENDER);
    }

    proptest! {
        /// Whatever order datagrams arrive in, each is accepted at most once, and every one
        /// within the window of the newest seen so far is accepted the first time.
        #[test]
        fn each_datagram_at_most_once(order in prop::collection::vec(0usize..200, 1..400)) {
            let mut s = Sealer::new(KEY, "node-a", 1).unwrap();
            let mut o = opener();
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

        /// Several lives of one sender, with boots in any numeric order (clocks stepped back
        /// and forth), interleaved in any order: every (boot, seq) is accepted at most once, the
        /// first datagram of a life never seen is always accepted, and within a life the
        /// window rule holds as long as no more than BOOTS_PER_SENDER lives are in play.
        #[test]
        fn lives_in_any_order(
            boots in prop::collection::btree_set(any::<u64>(), 1..=BOOTS_PER_SENDER),
            order in prop::collection::vec((0usize..BOOTS_PER_SENDER, 0u64..100), 1..300),
        ) {
            let boots: Vec<u64> = boots.into_iter().collect();
            let mut sealers: Vec<Sealer> =
                boots.iter().map(|b| Sealer::new(KEY, "node-a", *b).unwrap()).collect();
            let sealed: Vec<Vec<Vec<u8>>> = sealers
                .iter_mut()
                .map(|s| (0..100).map(|_| s.seal(b"x")).collect())
                .collect();
            let mut o = opener();
            let mut accepted = std::collections::BTreeSet::new();
            let mut highest: HashMap<usize, u64> = HashMap::new();
            for (life, seq) in order {
                let life = life % boots.len();
                let ok = o.open(&sealed[life][seq as usize]).is_ok();
                let fresh = !accepted.contains(&(life, seq));
                let in_window = highest.get(&life).is_none_or(|h| seq + REPLAY_WINDOW > *h);
                prop_assert_eq!(ok, fresh && in_window);
                if ok {
                    accepted.insert((life, seq));
                    let h = highest.entry(life).or_insert(seq);
                    *h = (*h).max(seq);
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let mut o = opener();
            prop_assert!(o.open(&bytes).is_err());
        }
    }
}
