//! ARP and NDP messages, built and parsed as pure functions over bytes.
//!
//! ARP travels in whole Ethernet frames (we read and write them on an `AF_PACKET` socket).
//! NDP travels as ICMPv6 bodies on a raw ICMPv6 socket: the kernel adds the IPv6 header on
//! send and computes the checksum, and strips the header on receive, so the functions here
//! see and produce only the ICMPv6 part.
//!
//! Every parser returns a [`FrameError`] for malformed input instead of panicking; the
//! property tests below feed them arbitrary and mutated bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use pnet_base::MacAddr;
use pnet_packet::arp::{
    ArpHardwareTypes, ArpOperation, ArpOperations, ArpPacket, MutableArpPacket,
};
use pnet_packet::ethernet::{EtherType, EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    Icmpv6Codes, MutableNeighborAdvertPacket, MutableNeighborSolicitPacket, NdpOptionTypes,
    NeighborAdvertFlags, NeighborAdvertPacket, NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{Icmpv6Packet, Icmpv6Types, MutableIcmpv6Packet};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::{MutablePacket, Packet};

/// Ethertype of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Length of an Ethernet header.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Length of an ARP body for IPv4 over Ethernet.
pub const ARP_BODY_LEN: usize = 28;
/// Length of a complete ARP frame (without the padding a NIC may add up to 60 bytes).
pub const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + ARP_BODY_LEN;
/// Length of a Neighbor Solicitation or Advertisement without options.
pub const ND_HEADER_LEN: usize = 24;
/// ICMPv6 type of a Neighbor Solicitation.
pub const ICMPV6_NEIGHBOR_SOLICITATION: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
pub const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;

/// Why bytes are not an ARP or NDP message we handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the fixed part of the message.
    #[error("too short: {len} bytes, need at least {need}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The Ethernet frame does not carry ARP.
    #[error("not ARP: ethertype {0:#06x}")]
    NotArp(u16),
    /// ARP for a link layer other than Ethernet (hardware type 1, length 6).
    #[error("ARP hardware type {htype} with address length {hlen} is not Ethernet")]
    UnsupportedHardware {
        /// Hardware type field.
        htype: u16,
        /// Hardware address length field.
        hlen: u8,
    },
    /// ARP for a protocol other than IPv4 (type 0x0800, length 4).
    #[error("ARP protocol type {ptype:#06x} with address length {plen} is not IPv4")]
    UnsupportedProtocol {
        /// Protocol type field.
        ptype: u16,
        /// Protocol address length field.
        plen: u8,
    },
    /// An ARP operation other than request (1) or reply (2).
    #[error("ARP operation {0} is neither request nor reply")]
    UnsupportedOperation(u16),
    /// An ICMPv6 type other than the one(s) expected.
    #[error("ICMPv6 type {0} is not a neighbor solicitation/advertisement")]
    UnexpectedType(u8),
    /// RFC 4861 requires code 0.
    #[error("ICMPv6 code {0} is not 0")]
    NonZeroCode(u8),
    /// An NDP option with length 0 or running past the end (RFC 4861 §4.6: discard).
    #[error("malformed NDP option at offset {offset}")]
    BadOption {
        /// Offset of the option in the ICMPv6 body.
        offset: usize,
    },
    /// The Ethernet frame does not carry IPv6.
    #[error("not IPv6: ethertype {0:#06x}")]
    NotIpv6(u16),
    /// The IPv6 packet does not carry ICMPv6 directly (next header, or IP version, wrong).
    #[error("not ICMPv6 in IPv6: version {version}, next header {next_header}")]
    NotIcmpv6 {
        /// IP version field.
        version: u8,
        /// Next header field.
        next_header: u8,
    },
    /// The ICMPv6 checksum does not match.
    #[error("bad ICMPv6 checksum")]
    BadChecksum,
    /// RFC 4861 forbids a multicast target address.
    #[error("target address {0} is multicast")]
    MulticastTarget(Ipv6Addr),
}

/// An ARP operation we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    /// "Who has target_ip? Tell sender_ip."
    Request,
    /// "target_ip: sender_ip is at sender_mac."
    Reply,
}

/// A parsed ARP frame (IPv4 over Ethernet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    /// Ethernet source.
    pub eth_src: MacAddr,
    /// Ethernet destination.
    pub eth_dst: MacAddr,
    /// Request or reply.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address (0.0.0.0 in an ARP probe).
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    /// A gratuitous ARP (announcement) claims the sender's own address: sender IP == target IP.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }

    /// An ARP probe (RFC 5227) asks with sender IP 0.0.0.0, before an address is in use.
    pub fn is_probe(&self) -> bool {
        self.sender_ip.is_unspecified()
    }
}

/// Parses an Ethernet frame carrying ARP for IPv4. Trailing padding is ignored.
pub fn parse_arp(frame: &[u8]) -> Result<ArpFrame, FrameError> {
    let too_short = FrameError::TooShort {
        len: frame.len(),
        need: ARP_FRAME_LEN,
    };
    if frame.len() < ARP_FRAME_LEN {
        return Err(too_short);
    }
    let eth = EthernetPacket::new(frame).ok_or(too_short.clone())?;
    let ethertype = eth.get_ethertype();
    if ethertype != EtherTypes::Arp {
        return Err(FrameError::NotArp(ethertype.0));
    }
    let arp = ArpPacket::new(eth.payload()).ok_or(too_short)?;
    let htype = arp.get_hardware_type();
    let hlen = arp.get_hw_addr_len();
    if htype != ArpHardwareTypes::Ethernet || hlen != 6 {
        return Err(FrameError::UnsupportedHardware {
            htype: htype.0,
            hlen,
        });
    }
    let ptype = arp.get_protocol_type();
    let plen = arp.get_proto_addr_len();
    if ptype != EtherTypes::Ipv4 || plen != 4 {
        return Err(FrameError::UnsupportedProtocol {
            ptype: ptype.0,
            plen,
        });
    }
    let op = match arp.get_operation() {
        ArpOperations::Request => ArpOp::Request,
        ArpOperations::Reply => ArpOp::Reply,
        other => return Err(FrameError::UnsupportedOperation(other.0)),
    };
    Ok(ArpFrame {
        eth_src: eth.get_source(),
        eth_dst: eth.get_destination(),
        op,
        sender_mac: arp.get_sender_hw_addr(),
        sender_ip: arp.get_sender_proto_addr(),
        target_mac: arp.get_target_hw_addr(),
        target_ip: arp.get_target_proto_addr(),
    })
}

/// Fields of an ARP frame to build.
struct ArpFields {
    eth_dst: MacAddr,
    op: ArpOperation,
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
}

fn build_arp(f: ArpFields) -> Vec<u8> {
    let mut buf = vec![0u8; ARP_FRAME_LEN];
    {
        // The buffer is sized for exactly these two headers, so the constructors succeed;
        // nothing here depends on received data.
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits Ethernet header");
        eth.set_destination(f.eth_dst);
        eth.set_source(f.sender_mac);
        eth.set_ethertype(EtherType(ETH_P_ARP));
        let mut arp = MutableArpPacket::new(eth.payload_mut()).expect("buffer fits ARP body");
        arp.set_hardware_type(ArpHardwareTypes::Ethernet);
        arp.set_protocol_type(EtherTypes::Ipv4);
        arp.set_hw_addr_len(6);
        arp.set_proto_addr_len(4);
        arp.set_operation(f.op);
        arp.set_sender_hw_addr(f.sender_mac);
        arp.set_sender_proto_addr(f.sender_ip);
        arp.set_target_hw_addr(f.target_mac);
        arp.set_target_proto_addr(f.target_ip);
    }
    buf
}

/// A broadcast ARP request "who has `target_ip`? tell `sender_ip`".
pub fn arp_request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    build_arp(ArpFields {
        eth_dst: MacAddr::broadcast(),
        op: ArpOperations::Request,
        sender_mac,
        sender_ip,
        target_mac: MacAddr::zero(),
        target_ip,
    })
}

/// The unicast reply to `request`: its target address is at `our_mac`.
pub fn arp_reply(request: &ArpFrame, our_mac: MacAddr) -> Vec<u8> {
    build_arp(ArpFields {
        eth_dst: request.sender_mac,
        op: ArpOperations::Reply,
        sender_mac: our_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    })
}

/// A gratuitous ARP announcing `ip` at `mac`: a broadcast request with sender IP == target IP
/// (an "ARP announcement", RFC 5227 §2.3), which neighbours use to update an existing entry.
pub fn gratuitous_arp(ip: Ipv4Addr, mac: MacAddr) -> Vec<u8> {
    build_arp(ArpFields {
        eth_dst: MacAddr::broadcast(),
        op: ArpOperations::Request,
        sender_mac: mac,
        sender_ip: ip,
        target_mac: MacAddr::zero(),
        target_ip: ip,
    })
}

/// A parsed Neighbor Solicitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicitation {
    /// The address being resolved.
    pub target: Ipv6Addr,
    /// The Source Link-Layer Address option, when present.
    pub source_mac: Option<MacAddr>,
}

/// A parsed Neighbor Advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborAdvertisement {
    /// The address advertised.
    pub target: Ipv6Addr,
    /// The Target Link-Layer Address option, when present.
    pub target_mac: Option<MacAddr>,
    /// R flag.
    pub router: bool,
    /// S flag: an answer to a solicitation.
    pub solicited: bool,
    /// O flag: replace an existing cache entry.
    pub override_flag: bool,
}

/// An NDP message we handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdpMessage {
    /// Type 135.
    Solicitation(NeighborSolicitation),
    /// Type 136.
    Advertisement(NeighborAdvertisement),
}

/// Walks NDP options (RFC 4861 §4.6) after the fixed header and returns the link-layer
/// address carried in the option of type `wanted`, if any.
fn link_layer_option(icmp: &[u8], wanted: u8) -> Result<Option<MacAddr>, FrameError> {
    let mut found = None;
    let mut offset = ND_HEADER_LEN;
    while offset < icmp.len() {
        let bad = FrameError::BadOption { offset };
        let (Some(&kind), Some(&len8)) = (icmp.get(offset), icmp.get(offset + 1)) else {
            return Err(bad);
        };
        let len = usize::from(len8) * 8;
        // A zero length would loop forever; RFC 4861 says to discard such packets.
        if len == 0 {
            return Err(bad);
        }
        let Some(option) = icmp.get(offset..offset + len) else {
            return Err(bad);
        };
        if kind == wanted
            && found.is_none()
            && let Some(&[a, b, c, d, e, f]) = option.get(2..8)
        {
            found = Some(MacAddr::new(a, b, c, d, e, f));
        }
        offset += len;
    }
    Ok(found)
}

fn check_header(icmp: &[u8], expected_type: u8) -> Result<(), FrameError> {
    let (Some(&kind), Some(&code)) = (icmp.first(), icmp.get(1)) else {
        return Err(FrameError::TooShort {
            len: icmp.len(),
            need: ND_HEADER_LEN,
        });
    };
    if kind != expected_type {
        return Err(FrameError::UnexpectedType(kind));
    }
    if icmp.len() < ND_HEADER_LEN {
        return Err(FrameError::TooShort {
            len: icmp.len(),
            need: ND_HEADER_LEN,
        });
    }
    if code != 0 {
        return Err(FrameError::NonZeroCode(code));
    }
    Ok(())
}

/// Parses the ICMPv6 body of a Neighbor Solicitation (RFC 4861 §7.1.1 checks that need no
/// IP header: code 0, length, non-multicast target, well-formed options).
pub fn parse_neighbor_solicitation(icmp: &[u8]) -> Result<NeighborSolicitation, FrameError> {
    check_header(icmp, ICMPV6_NEIGHBOR_SOLICITATION)?;
    let too_short = FrameError::TooShort {
        len: icmp.len(),
        need: ND_HEADER_LEN,
    };
    let ns = NeighborSolicitPacket::new(icmp).ok_or(too_short)?;
    let target = ns.get_target_addr();
    if target.is_multicast() {
        return Err(FrameError::MulticastTarget(target));
    }
    let source_mac = link_layer_option(icmp, NdpOptionTypes::SourceLLAddr.0)?;
    Ok(NeighborSolicitation { target, source_mac })
}

/// Parses the ICMPv6 body of a Neighbor Advertisement (RFC 4861 §7.1.2 checks that need no
/// IP header).
pub fn parse_neighbor_advertisement(icmp: &[u8]) -> Result<NeighborAdvertisement, FrameError> {
    check_header(icmp, ICMPV6_NEIGHBOR_ADVERTISEMENT)?;
    let too_short = FrameError::TooShort {
        len: icmp.len(),
        need: ND_HEADER_LEN,
    };
    let na = NeighborAdvertPacket::new(icmp).ok_or(too_short)?;
    let target = na.get_target_addr();
    if target.is_multicast() {
        return Err(FrameError::MulticastTarget(target));
    }
    let flags = na.get_flags();
    let target_mac = link_layer_option(icmp, NdpOptionTypes::TargetLLAddr.0)?;
    Ok(NeighborAdvertisement {
        target,
        target_mac,
        router: flags & NeighborAdvertFlags::Router != 0,
        solicited: flags & NeighborAdvertFlags::Solicited != 0,
        override_flag: flags & NeighborAdvertFlags::Override != 0,
    })
}

/// Parses a Neighbor Solicitation or Advertisement.
pub fn parse_ndp(icmp: &[u8]) -> Result<NdpMessage, FrameError> {
    match icmp.first() {
        Some(&ICMPV6_NEIGHBOR_SOLICITATION) => {
            parse_neighbor_solicitation(icmp).map(NdpMessage::Solicitation)
        }
        Some(&ICMPV6_NEIGHBOR_ADVERTISEMENT) => {
            parse_neighbor_advertisement(icmp).map(NdpMessage::Advertisement)
        }
        Some(&other) => Err(FrameError::UnexpectedType(other)),
        None => Err(FrameError::TooShort {
            len: 0,
            need: ND_HEADER_LEN,
        }),
    }
}

/// Length of a Neighbor Solicitation/Advertisement with one link-layer address option.
const ND_WITH_LLA_LEN: usize = ND_HEADER_LEN + 8;

fn write_lla_option(buf: &mut [u8], kind: u8, mac: MacAddr) {
    // Callers pass the 8-byte tail of a buffer of ND_WITH_LLA_LEN bytes.
    if let Some(opt) = buf.get_mut(..8) {
        opt.copy_from_slice(&[kind, 1, mac.0, mac.1, mac.2, mac.3, mac.4, mac.5]);
    }
}

/// The ICMPv6 body of a Neighbor Advertisement for `target` at `mac`, with the Target
/// Link-Layer Address option. The checksum is left 0: the kernel computes it for raw
/// ICMPv6 sockets.
pub fn neighbor_advertisement(
    target: Ipv6Addr,
    mac: MacAddr,
    solicited: bool,
    override_flag: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; ND_WITH_LLA_LEN];
    {
        // Sized for the header plus one option: the constructor succeeds.
        let mut na = MutableNeighborAdvertPacket::new(&mut buf).expect("buffer fits NA");
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_icmpv6_code(Icmpv6Codes::NoCode);
        let mut flags = 0;
        if solicited {
            flags |= NeighborAdvertFlags::Solicited;
        }
        if override_flag {
            flags |= NeighborAdvertFlags::Override;
        }
        na.set_flags(flags);
        na.set_target_addr(target);
    }
    if let Some(tail) = buf.get_mut(ND_HEADER_LEN..) {
        write_lla_option(tail, NdpOptionTypes::TargetLLAddr.0, mac);
    }
    buf
}

/// The ICMPv6 body of a Neighbor Solicitation for `target`, with the Source Link-Layer
/// Address option when `source_mac` is given (it must be absent in DAD probes).
pub fn neighbor_solicitation(target: Ipv6Addr, source_mac: Option<MacAddr>) -> Vec<u8> {
    let len = if source_mac.is_some() {
        ND_WITH_LLA_LEN
    } else {
        ND_HEADER_LEN
    };
    let mut buf = vec![0u8; len];
    {
        // Sized for at least the fixed header: the constructor succeeds.
        let mut ns = MutableNeighborSolicitPacket::new(&mut buf).expect("buffer fits NS");
        ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
        ns.set_icmpv6_code(Icmpv6Codes::NoCode);
        ns.set_target_addr(target);
    }
    if let (Some(mac), Some(tail)) = (source_mac, buf.get_mut(ND_HEADER_LEN..)) {
        write_lla_option(tail, NdpOptionTypes::SourceLLAddr.0, mac);
    }
    buf
}

/// Length of an IPv6 header without extension headers.
pub const IPV6_HEADER_LEN: usize = 40;

/// An ICMPv6 message read from a whole Ethernet frame (packet sockets see frames, not
/// bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Icmp<'a> {
    /// IPv6 source address.
    pub source: Ipv6Addr,
    /// IPv6 destination address.
    pub destination: Ipv6Addr,
    /// IPv6 hop limit.
    pub hop_limit: u8,
    /// The ICMPv6 message (header and body), without link-layer padding.
    pub icmp: &'a [u8],
}

/// Parses an Ethernet frame carrying ICMPv6 directly in IPv6 (no extension headers, as NDP
/// is sent) and verifies the ICMPv6 checksum, which nobody has checked for a packet socket.
pub fn parse_ipv6_icmp_frame(frame: &[u8]) -> Result<Ipv6Icmp<'_>, FrameError> {
    let need = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    let too_short = |need: usize| FrameError::TooShort {
        len: frame.len(),
        need,
    };
    if frame.len() < need {
        return Err(too_short(need));
    }
    let eth = EthernetPacket::new(frame).ok_or(too_short(need))?;
    let ethertype = eth.get_ethertype();
    if ethertype != EtherTypes::Ipv6 {
        return Err(FrameError::NotIpv6(ethertype.0));
    }
    let ip = Ipv6Packet::new(eth.payload()).ok_or(too_short(need))?;
    let version = ip.get_version();
    let next_header = ip.get_next_header();
    if version != 6 || next_header != IpNextHeaderProtocols::Icmpv6 {
        return Err(FrameError::NotIcmpv6 {
            version,
            next_header: next_header.0,
        });
    }
    let payload_len = usize::from(ip.get_payload_length());
    let icmp = frame
        .get(need..need + payload_len)
        .ok_or(too_short(need + payload_len))?;
    let (source, destination) = (ip.get_source(), ip.get_destination());
    let packet = Icmpv6Packet::new(icmp).ok_or(too_short(need + 4))?;
    if pnet_packet::icmpv6::checksum(&packet, &source, &destination) != packet.get_checksum() {
        return Err(FrameError::BadChecksum);
    }
    Ok(Ipv6Icmp {
        source,
        destination,
        hop_limit: ip.get_hop_limit(),
        icmp,
    })
}

/// Wraps an ICMPv6 message into an Ethernet + IPv6 frame (tests and benchmarks use it to
/// send what a kernel would), filling in the checksum.
pub fn ipv6_icmp_frame(
    eth_src: MacAddr,
    eth_dst: MacAddr,
    source: Ipv6Addr,
    destination: Ipv6Addr,
    hop_limit: u8,
    icmp: &[u8],
) -> Vec<u8> {
    let mut body = icmp.to_vec();
    fill_icmpv6_checksum(&mut body, source, destination);
    let mut frame = Vec::with_capacity(ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + body.len());
    frame.extend_from_slice(&eth_dst.octets());
    frame.extend_from_slice(&eth_src.octets());
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    // ICMPv6 messages we build are tiny; saturate rather than wrap for absurd input.
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[58, hop_limit]);
    frame.extend_from_slice(&source.octets());
    frame.extend_from_slice(&destination.octets());
    frame.extend_from_slice(&body);
    frame
}

/// Computes and stores the ICMPv6 checksum of `icmp` sent from `src` to `dst`. Only needed
/// when writing whole IPv6 packets ourselves (tests, benchmarks); raw ICMPv6 sockets let the
/// kernel do it.
pub fn fill_icmpv6_checksum(icmp: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
    if let Some(mut p) = MutableIcmpv6Packet::new(icmp) {
        p.set_checksum(0);
        let sum = pnet_packet::icmpv6::checksum(&p.to_immutable(), &src, &dst);
        p.set_checksum(sum);
    }
}

/// The solicited-node multicast group of `ip` (RFC 4291 §2.7.1): `ff02::1:ffXX:XXXX` with
/// the low 24 bits of the address.
pub fn solicited_node_multicast(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast MAC of an IPv6 multicast group (RFC 2464 §7): `33:33` + low 32 bits.
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr::new(0x33, 0x33, o[12], o[13], o[14], o[15])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC_A: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0a);
    const MAC_B: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0b);
    const IP_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn request_round_trips() {
        let frame = arp_request(MAC_A, IP_A, IP_B);
        assert_eq!(frame.len(), ARP_FRAME_LEN);
        let p = parse_arp(&frame).unwrap();
        assert_eq!(p.op, ArpOp::Request);
        assert_eq!(p.eth_dst, MacAddr::broadcast());
        assert_eq!(p.eth_src, MAC_A);
        assert_eq!(p.sender_mac, MAC_A);
        assert_eq!(p.sender_ip, IP_A);
        assert_eq!(p.target_ip, IP_B);
        assert!(!p.is_gratuitous());
        assert!(!p.is_probe());
    }

    #[test]
    fn reply_answers_the_request() {
        let req = parse_arp(&arp_request(MAC_A, IP_A, IP_B)).unwrap();
        let reply = parse_arp(&arp_reply(&req, MAC_B)).unwrap();
        assert_eq!(reply.op, ArpOp::Reply);
        assert_eq!(reply.eth_dst, MAC_A);
        assert_eq!(reply.eth_src, MAC_B);
        assert_eq!(reply.sender_mac, MAC_B);
        assert_eq!(reply.sender_ip, IP_B);
        assert_eq!(reply.target_mac, MAC_A);
        assert_eq!(reply.target_ip, IP_A);
    }

    #[test]
    fn gratuitous_is_a_broadcast_announcement() {
        let g = parse_arp(&gratuitous_arp(IP_B, MAC_B)).unwrap();
        assert!(g.is_gratuitous());
        assert_eq!(g.op, ArpOp::Request);
        assert_eq!(g.eth_dst, MacAddr::broadcast());
        assert_eq!(g.sender_mac, MAC_B);
        assert_eq!(g.sender_ip, IP_B);
    }

    #[test]
    fn padded_frames_parse_and_bytes_are_exact() {
        let mut frame = arp_request(MAC_A, IP_A, IP_B);
        // Byte layout checked by hand against RFC 826 / Wireshark.
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[14..22], &[0, 1, 0x08, 0, 6, 4, 0, 1]);
        assert_eq!(&frame[28..32], &[192, 0, 2, 1]);
        assert_eq!(&frame[38..42], &[192, 0, 2, 100]);
        frame.resize(60, 0);
        assert_eq!(parse_arp(&frame).unwrap().target_ip, IP_B);
    }

    #[test]
    fn wrong_fields_are_rejected() {
        let good = arp_request(MAC_A, IP_A, IP_B);
        let mut f = good.clone();
        f[12] = 0x08;
        f[13] = 0x00;
        assert_eq!(parse_arp(&f), Err(FrameError::NotArp(0x0800)));
        let mut f = good.clone();
        f[15] = 6; // IEEE 802 hardware type
        assert!(matches!(
            parse_arp(&f),
            Err(FrameError::UnsupportedHardware { htype: 6, .. })
        ));
        let mut f = good.clone();
        f[18] = 8;
        assert!(matches!(
            parse_arp(&f),
            Err(FrameError::UnsupportedHardware { hlen: 8, .. })
        ));
        let mut f = good.clone();
        f[16] = 0x86;
        f[17] = 0xdd;
        assert!(matches!(
            parse_arp(&f),
            Err(FrameError::UnsupportedProtocol { .. })
        ));
        let mut f = good.clone();
        f[19] = 16;
        assert!(matches!(
            parse_arp(&f),
            Err(FrameError::UnsupportedProtocol { plen: 16, .. })
        ));
        let mut f = good.clone();
        f[21] = 3; // RARP request
        assert_eq!(parse_arp(&f), Err(FrameError::UnsupportedOperation(3)));
        assert_eq!(
            parse_arp(&good[..41]),
            Err(FrameError::TooShort { len: 41, need: 42 })
        );
        assert!(parse_arp(&[]).is_err());
    }

    #[test]
    fn neighbor_advertisement_layout() {
        let target = v6("2001:db8::100");
        let na = neighbor_advertisement(target, MAC_B, true, true);
        assert_eq!(na.len(), 32);
        assert_eq!(na[0], 136);
        assert_eq!(na[1], 0);
        assert_eq!(na[4], 0b0110_0000);
        assert_eq!(&na[24..32], &[2, 1, 0x02, 0, 0, 0, 0, 0x0b]);
        let p = parse_neighbor_advertisement(&na).unwrap();
        assert_eq!(p.target, target);
        assert_eq!(p.target_mac, Some(MAC_B));
        assert!(p.solicited && p.override_flag && !p.router);
        let unsolicited =
            parse_neighbor_advertisement(&neighbor_advertisement(target, MAC_B, false, true))
                .unwrap();
        assert!(!unsolicited.solicited && unsolicited.override_flag);
    }

    #[test]
    fn neighbor_solicitation_round_trips() {
        let target = v6("2001:db8::100");
        let ns = neighbor_solicitation(target, Some(MAC_A));
        let p = parse_neighbor_solicitation(&ns).unwrap();
        assert_eq!(p.target, target);
        assert_eq!(p.source_mac, Some(MAC_A));
        let dad = parse_ndp(&neighbor_solicitation(target, None)).unwrap();
        assert_eq!(
            dad,
            NdpMessage::Solicitation(NeighborSolicitation {
                target,
                source_mac: None
            })
        );
    }

    #[test]
    fn malformed_ndp_is_rejected() {
        let target = v6("2001:db8::100");
        let ns = neighbor_solicitation(target, Some(MAC_A));
        // Zero-length option.
        let mut f = ns.clone();
        f[25] = 0;
        assert_eq!(
            parse_neighbor_solicitation(&f),
            Err(FrameError::BadOption { offset: 24 })
        );
        // Option longer than the packet.
        let mut f = ns.clone();
        f[25] = 2;
        assert_eq!(
            parse_neighbor_solicitation(&f),
            Err(FrameError::BadOption { offset: 24 })
        );
        // A lone option byte.
        let mut f = ns[..24].to_vec();
        f.push(1);
        assert!(matches!(
            parse_neighbor_solicitation(&f),
            Err(FrameError::BadOption { .. })
        ));
        let mut f = ns.clone();
        f[1] = 1;
        assert_eq!(
            parse_neighbor_solicitation(&f),
            Err(FrameError::NonZeroCode(1))
        );
        assert_eq!(
            parse_neighbor_solicitation(&ns[..23]),
            Err(FrameError::TooShort { len: 23, need: 24 })
        );
        assert_eq!(
            parse_neighbor_advertisement(&ns),
            Err(FrameError::UnexpectedType(135))
        );
        let multicast = neighbor_solicitation(v6("ff02::1"), None);
        assert!(matches!(
            parse_neighbor_solicitation(&multicast),
            Err(FrameError::MulticastTarget(_))
        ));
        assert!(parse_ndp(&[]).is_err());
        assert_eq!(
            parse_ndp(&[128, 0, 0, 0]),
            Err(FrameError::UnexpectedType(128))
        );
    }

    #[test]
    fn unknown_options_are_skipped() {
        let target = v6("2001:db8::100");
        let mut ns = neighbor_solicitation(target, None);
        // A nonce option (type 14, 8 bytes) before the source link-layer address.
        ns.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        ns.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(
            parse_neighbor_solicitation(&ns).unwrap().source_mac,
            Some(MAC_A)
        );
    }

    #[test]
    fn solicited_node_groups() {
        assert_eq!(
            solicited_node_multicast(v6("2001:db8::1:2345:6789")),
            v6("ff02::1:ff45:6789")
        );
        assert_eq!(
            ipv6_multicast_mac(v6("ff02::1:ff45:6789")),
            MacAddr::new(0x33, 0x33, 0xff, 0x45, 0x67, 0x89)
        );
    }

    /// Independent RFC 1071 sum over the IPv6 pseudo-header and the body.
    fn ones_complement_sum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 58]);
        bytes.extend_from_slice(body);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn checksum_is_filled() {
        let (src, dst) = (v6("2001:db8::1"), v6("ff02::1:ff00:100"));
        let mut ns = neighbor_solicitation(v6("2001:db8::100"), Some(MAC_A));
        assert_ne!(ones_complement_sum(src, dst, &ns), 0xffff);
        fill_icmpv6_checksum(&mut ns, src, dst);
        // With a correct checksum in place the sum over everything is all ones.
        assert_eq!(ones_complement_sum(src, dst, &ns), 0xffff);
    }

    #[test]
    fn ipv6_icmp_frames_round_trip_and_checksums_are_verified() {
        let (src, dst) = (v6("2001:db8::1"), v6("2001:db8::100"));
        let ns = neighbor_solicitation(dst, Some(MAC_A));
        let frame = ipv6_icmp_frame(MAC_A, MAC_B, src, dst, 255, &ns);
        let p = parse_ipv6_icmp_frame(&frame).unwrap();
        assert_eq!((p.source, p.destination, p.hop_limit), (src, dst, 255));
        assert_eq!(
            parse_neighbor_solicitation(p.icmp).unwrap().source_mac,
            Some(MAC_A)
        );
        // Ethernet padding after the payload is ignored.
        let mut padded = frame.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(parse_ipv6_icmp_frame(&padded).unwrap().icmp, p.icmp);
        let mut corrupt = frame.clone();
        corrupt[70] ^= 1;
        assert_eq!(
            parse_ipv6_icmp_frame(&corrupt),
            Err(FrameError::BadChecksum)
        );
        let mut udp = frame.clone();
        udp[20] = 17;
        assert!(matches!(
            parse_ipv6_icmp_frame(&udp),
            Err(FrameError::NotIcmpv6 {
                next_header: 17,
                ..
            })
        ));
        let mut long = frame.clone();
        long[19] = 200;
        assert!(matches!(
            parse_ipv6_icmp_frame(&long),
            Err(FrameError::TooShort { .. })
        ));
        assert_eq!(
            parse_ipv6_icmp_frame(&arp_request(MAC_A, IP_A, IP_B)),
            Err(FrameError::TooShort { len: 42, need: 54 })
        );
        let mut v4 = frame.clone();
        v4[12] = 0x08;
        v4[13] = 0;
        assert_eq!(parse_ipv6_icmp_frame(&v4), Err(FrameError::NotIpv6(0x0800)));
    }

    fn mac() -> impl Strategy<Value = MacAddr> {
        any::<[u8; 6]>().prop_map(|m| MacAddr::new(m[0], m[1], m[2], m[3], m[4], m[5]))
    }

    fn valid_arp() -> impl Strategy<Value = Vec<u8>> {
        (mac(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(m, s, t, reply)| {
            let req = arp_request(m, Ipv4Addr::from(s), Ipv4Addr::from(t));
            if reply {
                match parse_arp(&req) {
                    Ok(r) => arp_reply(&r, MacAddr::new(2, 0, 0, 0, 0, 1)),
                    Err(_) => req,
                }
            } else {
                req
            }
        })
    }

    fn valid_ndp() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u128>(),
            mac(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(t, m, is_na, s, o)| {
                // Keep targets unicast so that the valid case parses.
                let target = Ipv6Addr::from(t & !(0xffu128 << 120));
                if is_na {
                    neighbor_advertisement(target, m, s, o)
                } else {
                    neighbor_solicitation(target, if s { Some(m) } else { None })
                }
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_arp(&bytes);
            let _ = parse_ndp(&bytes);
            let _ = parse_neighbor_solicitation(&bytes);
            let _ = parse_neighbor_advertisement(&bytes);
            let _ = parse_ipv6_icmp_frame(&bytes);
        }

        #[test]
        fn mutated_ipv6_frames_never_panic(
            target in any::<u128>(), idx in 0usize..86, val in any::<u8>(), cut in 0usize..90
        ) {
            let ns = neighbor_solicitation(Ipv6Addr::from(target), Some(MAC_A));
            let mut f = ipv6_icmp_frame(MAC_A, MAC_B, Ipv6Addr::LOCALHOST, Ipv6Addr::from(target), 255, &ns);
            if let Some(b) = f.get_mut(idx) {
                *b = val;
            }
            let cut = cut.min(f.len());
            if let Ok(p) = parse_ipv6_icmp_frame(&f[..cut]) {
                let _ = parse_ndp(p.icmp);
            }
        }

        #[test]
        fn arp_round_trip(m in mac(), s in any::<u32>(), t in any::<u32>()) {
            let p = parse_arp(&arp_request(m, Ipv4Addr::from(s), Ipv4Addr::from(t))).unwrap();
            prop_assert_eq!(p.sender_mac, m);
            prop_assert_eq!(p.sender_ip, Ipv4Addr::from(s));
            prop_assert_eq!(p.target_ip, Ipv4Addr::from(t));
        }

        #[test]
        fn truncated_arp_is_too_short(frame in valid_arp(), cut in 0usize..ARP_FRAME_LEN) {
            prop_assert_eq!(
                parse_arp(&frame[..cut]),
                Err(FrameError::TooShort { len: cut, need: ARP_FRAME_LEN })
            );
        }

        #[test]
        fn mutated_arp_never_panics_and_header_damage_is_caught(
            frame in valid_arp(), idx in 0usize..ARP_FRAME_LEN, val in any::<u8>()
        ) {
            let mut f = frame.clone();
            f[idx] = val;
            let parsed = parse_arp(&f);
            // Bytes 12..22 are ethertype, htype, ptype, hlen, plen, op: any change there
            // that alters the byte must make the frame unacceptable... except op 1 <-> 2.
            if (12..21).contains(&idx) && frame[idx] != val {
                prop_assert!(parsed.is_err());
            }
            if !(12..22).contains(&idx) {
                prop_assert!(parsed.is_ok());
            }
        }

        #[test]
        fn ndp_round_trip(frame in valid_ndp()) {
            prop_assert!(parse_ndp(&frame).is_ok());
        }

        #[test]
        fn truncated_ndp_never_panics(frame in valid_ndp(), cut in 0usize..32) {
            let cut = cut.min(frame.len());
            let r = parse_ndp(&frame[..cut]);
            if cut < ND_HEADER_LEN {
                prop_assert!(r.is_err());
            }
        }

        #[test]
        fn mutated_ndp_never_panics(
            frame in valid_ndp(), idx in 0usize..32, val in any::<u8>(),
            extra in proptest::collection::vec(any::<u8>(), 0..24)
        ) {
            let mut f = frame.clone();
            if let Some(b) = f.get_mut(idx) {
                *b = val;
            }
            let _ = parse_ndp(&f);
            f.extend_from_slice(&extra);
            let _ = parse_ndp(&f);
        }

        #[test]
        fn zero_length_option_is_always_rejected(frame in valid_ndp(), extra in any::<u8>()) {
            let mut f = frame.clone();
            f.extend_from_slice(&[extra, 0, 0, 0, 0, 0, 0, 0]);
            let rejected = matches!(parse_ndp(&f), Err(FrameError::BadOption { .. }));
            prop_assert!(rejected);
        }
    }
}
