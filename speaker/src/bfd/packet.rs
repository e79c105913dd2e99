//! BFD control packets (RFC 5880 4.1), without authentication.
//!
//! Written by hand: the packet is 24 fixed bytes, and no maintained crate on crates.io builds
//! and checks it (the BFD crates there are unmaintained experiments or tied to a daemon).

use std::time::Duration;

/// BFD version 1.
pub const VERSION: u8 = 1;
/// Length of a packet without authentication.
pub const LEN: usize = 24;

/// Session states as carried in the packet (RFC 5880 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Administratively down.
    AdminDown = 0,
    /// Down.
    Down = 1,
    /// Init.
    Init = 2,
    /// Up.
    Up = 3,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    /// The RFC's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Diagnostic codes (RFC 5880 4.1) the speaker sets.
pub mod diag {
    /// No diagnostic.
    pub const NONE: u8 = 0;
    /// Control detection time expired.
    pub const DETECTION_TIME_EXPIRED: u8 = 1;
    /// Neighbor signaled session down.
    pub const NEIGHBOR_DOWN: u8 = 3;
    /// Administratively down.
    pub const ADMIN_DOWN: u8 = 7;
}

/// One control packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Diagnostic code.
    pub diag: u8,
    /// Sender's state.
    pub state: State,
    /// Poll: the sender changed its timers and asks for a Final.
    pub poll: bool,
    /// Final: answers a Poll.
    pub final_: bool,
    /// Detection time multiplier.
    pub detect_mult: u8,
    /// Sender's discriminator.
    pub my_disc: u32,
    /// The discriminator the sender knows for us (0 while unknown).
    pub your_disc: u32,
    /// Desired minimum transmit interval.
    pub desired_min_tx: Duration,
    /// Required minimum receive interval.
    pub required_min_rx: Duration,
}

/// Why a received packet is discarded (RFC 5880 6.8.6).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadPacket {
    /// Shorter than a packet, or than its own length field says.
    #[error("truncated BFD packet")]
    Truncated,
    /// Not version 1.
    #[error("BFD version {0}")]
    Version(u8),
    /// Length field below 24 (or 26 with authentication).
    #[error("BFD length {0}")]
    Length(u8),
    /// Authentication present: not configured here, so not accepted (RFC 5880 6.8.6).
    #[error("BFD authentication is not supported")]
    Authentication,
    /// Detect multiplier zero, multipoint set, or zero discriminators where they may not be.
    #[error("invalid BFD field: {0}")]
    Field(&'static str),
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The 24 bytes of a packet.
pub fn encode(p: &Packet) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = (VERSION << 5) | (p.diag & 0x1F);
    b[1] = ((p.state as u8) << 6) | (u8::from(p.poll) << 5) | (u8::from(p.final_) << 4);
    b[2] = p.detect_mult;
    b[3] = LEN as u8;
    b[4..8].copy_from_slice(&p.my_disc.to_be_bytes());
    b[8..12].copy_from_slice(&p.your_disc.to_be_bytes());
    b[12..16].copy_from_slice(&micros(p.desired_min_tx).to_be_bytes());
    b[16..20].copy_from_slice(&micros(p.required_min_rx).to_be_bytes());
    // Required Min Echo RX Interval: 0, this system does not take echo packets.
    b
}

/// Parses and checks a received datagram.
pub fn decode(b: &[u8]) -> Result<Packet, BadPacket> {
    if b.len() < LEN {
        return Err(BadPacket::Truncated);
    }
    let version = b[0] >> 5;
    if version != VERSION {
        return Err(BadPacket::Version(version));
    }
    let auth = b[1] & 0x04 != 0;
    let len = b[3];
    if usize::from(len) < LEN || (auth && len < 26) {
        return Err(BadPacket::Length(len));
    }
    if usize::from(len) > b.len() {
        return Err(BadPacket::Truncated);
    }
    if auth {
        return Err(BadPacket::Authentication);
    }
    let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let p = Packet {
        diag: b[0] & 0x1F,
        state: State::from_bits(b[1] >> 6),
        poll: b[1] & 0x20 != 0,
        final_: b[1] & 0x10 != 0,
        detect_mult: b[2],
        my_disc: word(4),
        your_disc: word(8),
        desired_min_tx: Duration::from_micros(u64::from(word(12))),
        required_min_rx: Duration::from_micros(u64::from(word(16))),
    };
    if p.detect_mult == 0 {
        return Err(BadPacket::Field("detect multiplier 0"));
    }
    if b[1] & 0x01 != 0 {
        return Err(BadPacket::Field("multipoint"));
    }
    if p.my_disc == 0 {
        return Err(BadPacket::Field("my discriminator 0"));
    }
    if p.your_disc == 0 && !matches!(p.state, State::Down | State::AdminDown) {
        return Err(BadPacket::Field("your discriminator 0 while not down"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Packet {
        Packet {
            diag: diag::NONE,
            state: State::Up,
            poll: true,
            final_: false,
            detect_mult: 3,
            my_disc: 7,
            your_disc: 9,
            desired_min_tx: Duration::from_millis(100),
            required_min_rx: Duration::from_millis(300),
        }
    }

    #[test]
    fn round_trip_and_wire_layout() {
        let b = encode(&sample());
        assert_eq!(b[0], 0x20);
        assert_eq!(b[1], 0xE0);
        assert_eq!(b[3], 24);
        assert_eq!(&b[12..16], &100_000u32.to_be_bytes());
        assert_eq!(decode(&b), Ok(sample()));
    }

    #[test]
    fn invalid_packets_are_discarded() {
        let mut v0 = encode(&sample());
        v0[0] = 0;
        assert_eq!(decode(&v0), Err(BadPacket::Version(0)));
        let mut auth = encode(&sample());
        auth[1] |= 0x04;
        auth[3] = 26;
        assert_eq!(
            decode(&[&auth[..], &[0, 0]].concat()),
            Err(BadPacket::Authentication)
        );
        let mut no_your = sample();
        no_your.your_disc = 0;
        assert!(decode(&encode(&no_your)).is_err());
        no_your.state = State::Down;
        assert!(decode(&encode(&no_your)).is_ok());
        assert_eq!(decode(&[0u8; 10]), Err(BadPacket::Truncated));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&b);
        }
    }
}
