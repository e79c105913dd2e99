//! Bounded fuzzing of every decoder that reads bytes from the node network (issue 14, item 7):
//! ARP and Ethernet frames, NDP messages and whole IPv6/ICMPv6 frames, the decisions taken on
//! them, and the membership datagram (its authenticated envelope, then foca's SWIM decoding).
//!
//! cargo-fuzz needs a nightly toolchain, so these are proptest runs over arbitrary and mutated
//! bytes on stable. Each property runs `LODESTONE_FUZZ_CASES` cases (default 2,000) in the
//! ordinary suite; `fuzz_for_a_bounded_time` (ignored by default) keeps generating new inputs
//! for `LODESTONE_FUZZ_SECS` seconds (default 60), as CI runs it:
//! `cargo nextest run -p lodestone-speaker --test fuzz_decoders --run-ignored only`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Codec, Foca, NoCustomBroadcast, PostcardCodec};
use lodestone_speaker::announcer::{arp_action, ndp_action};
use lodestone_speaker::frames::{
    self, MacAddr, arp_request, gratuitous_arp, ipv6_icmp_frame, neighbor_advertisement,
    neighbor_solicitation,
};
use lodestone_speaker::membership::auth::{
    AuthError, KIND_HINT, KIND_SWIM, Keyring, Opener, Sealer,
};
use lodestone_speaker::membership::{MembershipConfig, NodeId};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand_foca::SeedableRng;
use rand_foca::rngs::SmallRng;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn cases() -> u32 {
    std::env::var("LODESTONE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn mac(b: u8) -> MacAddr {
    MacAddr::new(2, 0, 0, 0, 0, b)
}

/// Every frame decoder and the decisions over its result; must never panic.
fn decode_everything(bytes: &[u8]) {
    let ours = |m: MacAddr| m == mac(1);
    if let Ok(frame) = frames::parse_arp(bytes) {
        let _ = arp_action(&frame, ours, |_| true);
        let _ = arp_action(&frame, ours, |_| false);
        let _ = frame.is_gratuitous() || frame.is_probe();
    }
    if let Ok(msg) = frames::parse_ndp(bytes) {
        for hop in [None, Some(255), Some(1)] {
            let _ = ndp_action(&msg, Ipv6Addr::UNSPECIFIED, hop, ours, |_| true);
            let _ = ndp_action(&msg, "2001:db8::1".parse().unwrap(), hop, ours, |_| true);
        }
    }
    if let Ok(packet) = frames::parse_ipv6_icmp_frame(bytes) {
        let _ = frames::parse_ndp(packet.icmp);
    }
    let _ = frames::parse_neighbor_solicitation(bytes);
    let _ = frames::parse_neighbor_advertisement(bytes);
}

/// Valid frames of every kind the speaker reads, as seeds to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let v4 = Ipv4Addr::new(192, 0, 2, 100);
    let v6: Ipv6Addr = "2001:db8::100".parse().unwrap();
    let ns = neighbor_solicitation(v6, Some(mac(2)));
    let na = neighbor_advertisement(v6, mac(2), true, true);
    vec![
        arp_request(mac(2), Ipv4Addr::new(192, 0, 2, 1), v4),
        arp_request(mac(2), Ipv4Addr::UNSPECIFIED, v4),
        gratuitous_arp(v4, mac(2)),
        ns.clone(),
        na.clone(),
        ipv6_icmp_frame(mac(2), mac(1), "fe80::2".parse().unwrap(), v6, 255, &ns),
        ipv6_icmp_frame(mac(2), mac(1), v6, "ff02::1".parse().unwrap(), 255, &na),
    ]
}

/// Arbitrary bytes, or a valid frame with some bytes overwritten, cut or extended.
fn frame_input() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        (
            0..seeds.len(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(move |(i, edits, cut, tail)| {
                let mut f = seeds[i].clone();
                for (at, b) in edits {
                    let n = f.len();
                    if let Some(x) = f.get_mut(at % n.max(1)) {
                        *x = b;
                    }
                }
                f.truncate(cut % (f.len() + 1));
                f.extend(tail);
                f
            }),
    ]
}

fn node(name: &str, port: u16) -> NodeId {
    NodeId {
        name: name.to_owned(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), port),
        bump: 1,
    }
}

type Swim = Foca<NodeId, PostcardCodec, SmallRng, NoCustomBroadcast>;

fn swim() -> Swim {
    let config = MembershipConfig::new(
        "a",
        "0.0.0.0:7946".parse().unwrap(),
        "192.0.2.10:7946".parse().unwrap(),
        KEY.to_vec(),
    )
    .foca_config()
    .unwrap();
    Foca::new(
        node("a", 7946),
        config,
        SmallRng::seed_from_u64(7),
        PostcardCodec,
    )
}

/// The membership datagram path as the speaker runs it: envelope, then SWIM.
fn decode_datagram(opener: &mut Opener, foca: &mut Swim, bytes: &[u8]) {
    let mut runtime = AccumulatingRuntime::new();
    if let Ok(opened) = opener.open(bytes) {
        let _: Result<foca::Header<NodeId>, _> = PostcardCodec.decode_header(opened.payload);
        let _ = foca.handle_data(opened.payload, &mut runtime);
    }
    // A payload that did not come through the envelope (a key holder's bug, say) must not
    // panic SWIM either.
    let _: Result<foca::Header<NodeId>, _> = PostcardCodec.decode_header(bytes);
    let _ = foca.handle_data(bytes, &mut runtime);
}

fn keyring() -> Keyring {
    Keyring::new(vec![KEY.to_vec()]).unwrap()
}

/// A valid datagram from `sender` carrying `payload`, then perhaps damaged.
fn datagram_input() -> impl Strategy<Value = (Vec<u8>, bool)> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| (b, false)),
        (
            "[a-z0-9.-]{1,40}",
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::option::of((any::<usize>(), 1u8..=255)),
        )
            .prop_map(|(name, boot, payload, flip)| {
                let mut sealer = Sealer::new(KEY, &name, boot).unwrap();
                let mut d = sealer.seal(&payload);
                let damaged = flip.is_some();
                if let Some((at, x)) = flip {
                    let n = d.len();
                    d[at % n] ^= x;
                }
                (d, damaged)
            }),
    ]
}

proptest! {
    #![proptest_config(Config { cases: cases(), ..Config::default() })]

    #[test]
    fn frame_decoders_never_panic(bytes in frame_input()) {
        decode_everything(&bytes);
    }

    #[test]
    fn membership_decoder_never_panics((bytes, damaged) in datagram_input()) {
        let mut opener = Opener::new(&keyring()).unwrap();
        let mut foca = swim();
        if damaged {
            // Any single damaged byte is caught by the shape checks or the MAC.
            prop_assert!(matches!(opener.open(&bytes), Err(AuthError::BadMac | AuthError::Malformed)));
        }
        decode_datagram(&mut opener, &mut foca, &bytes);
    }

    /// Valid datagrams round-trip: sender, boot, kind and payload come back as sealed, once
    /// (the second copy is a replay).
    #[test]
    fn membership_datagrams_round_trip(
        name in "[a-z0-9.-]{1,60}",
        boot in any::<u64>(),
        hint in any::<bool>(),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
    ) {
        let mut sealer = Sealer::new(KEY, &name, boot).unwrap();
        let mut opener = Opener::new(&keyring()).unwrap();
        let kind = if hint { KIND_HINT } else { KIND_SWIM };
        for payload in &payloads {
            let d = sealer.seal_kind(kind, payload);
            let opened = opener.open(&d).unwrap();
            prop_assert_eq!(opened.sender, name.as_str());
            prop_assert_eq!(opened.boot, boot);
            prop_assert_eq!(opened.kind, kind);
            prop_assert_eq!(opened.payload, payload.as_slice());
            prop_assert_eq!(opener.open(&d).unwrap_err(), AuthError::Replay);
        }
    }
}

/// Keeps generating inputs for every decoder until the time is up (CI: `--run-ignored only`).
#[test]
#[ignore = "a time-bounded fuzz run; CI runs it with --run-ignored only"]
fn fuzz_for_a_bounded_time() {
    let secs = std::env::var("LODESTONE_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(secs);
    // The runner takes a shared closure: the decoders' state lives in cells.
    let opener = std::cell::RefCell::new(Opener::new(&keyring()).unwrap());
    let foca = std::cell::RefCell::new(swim());
    let mut inputs = 0u64;
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let config = Config {
            cases: 5_000,
            rng_seed: proptest::test_runner::RngSeed::Fixed(round),
            failure_persistence: None,
            ..Config::default()
        };
        TestRunner::new(config.clone())
            .run(&frame_input(), |bytes| {
                decode_everything(&bytes);
                Ok(())
            })
            .unwrap();
        TestRunner::new(config)
            .run(&datagram_input(), |(bytes, _)| {
                decode_datagram(&mut opener.borrow_mut(), &mut foca.borrow_mut(), &bytes);
                Ok(())
            })
            .unwrap();
        inputs += 10_000;
    }
    println!("fuzzed {inputs} inputs in {secs} s without a panic");
}
