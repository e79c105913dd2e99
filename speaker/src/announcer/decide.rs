//! What to do with one received ARP or NDP frame: pure decisions over the frame and what
//! this node answers for, used by the receive loops of [`super::manager`].

use super::*;

/// What to do with a received ARP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpAction {
    /// Answer it: the target is ours here.
    Reply,
    /// Someone else claims an address we own.
    Conflict,
    /// Not our business.
    Ignore,
}

/// Decides what to do with an ARP frame received on a link.
///
/// `owned_here(ip)` says whether we announce `ip` on that link right now; `is_local(mac)`
/// whether a MAC is one of this host's (our own frames are not conflicts).
pub fn arp_action(
    frame: &ArpFrame,
    is_local: impl Fn(MacAddr) -> bool,
    owned_here: impl Fn(Ipv4Addr) -> bool,
) -> ArpAction {
    // A sender no unicast reply can reach (a zero, broadcast or multicast MAC) or one claiming a
    // broadcast or multicast address is malformed or forged: a reply would go to every host, or
    // to none, and such a "claim" is no conflict.
    if !usable_sender(frame) {
        return ArpAction::Ignore;
    }
    // Any frame whose *sender* is an address we own, from a MAC that is not ours, means
    // another machine uses it: a reply, a gratuitous ARP, or a request it sends from it.
    if !frame.sender_ip.is_unspecified()
        && owned_here(frame.sender_ip)
        && !is_local(frame.sender_mac)
    {
        return ArpAction::Conflict;
    }
    if frame.op == ArpOp::Request && owned_here(frame.target_ip) && !is_local(frame.sender_mac) {
        return ArpAction::Reply;
    }
    ArpAction::Ignore
}

/// Whether an ARP frame's sender is a host that could own an address and take a unicast reply.
pub fn usable_sender(frame: &ArpFrame) -> bool {
    let mac = frame.sender_mac;
    mac.is_unicast()
        && !mac.is_zero()
        && !frame.sender_ip.is_broadcast()
        && !frame.sender_ip.is_multicast()
}

/// What to do with a received NDP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdpAction {
    /// Send a Neighbor Advertisement for `target` to `dst`.
    Reply {
        /// Owned address being resolved.
        target: Ipv6Addr,
        /// Where to send the advertisement.
        dst: Ipv6Addr,
        /// S flag (false when answering a DAD probe, which goes to all-nodes).
        solicited: bool,
    },
    /// Another machine advertises an address we own.
    Conflict {
        /// The address.
        target: Ipv6Addr,
        /// Its MAC.
        mac: MacAddr,
    },
    /// Drop it.
    Ignore,
}

/// Decides what to do with an NDP message from `source` that arrived with `hop_limit`.
pub fn ndp_action(
    msg: &NdpMessage,
    source: Ipv6Addr,
    hop_limit: Option<u8>,
    is_local: impl Fn(MacAddr) -> bool,
    owned_here: impl Fn(Ipv6Addr) -> bool,
) -> NdpAction {
    // RFC 4861 §7.1: a hop limit below 255 means the packet was routed: not from this link.
    if hop_limit != Some(255) {
        return NdpAction::Ignore;
    }
    match msg {
        NdpMessage::Solicitation(ns) => {
            if !owned_here(ns.target) {
                return NdpAction::Ignore;
            }
            if source.is_unspecified() {
                // DAD probe for our address: defend it on all-nodes (RFC 4861 §7.2.4). A
                // probe carrying a source link-layer option is invalid (§7.1.1).
                if ns.source_mac.is_some() {
                    return NdpAction::Ignore;
                }
                return NdpAction::Reply {
                    target: ns.target,
                    dst: ALL_NODES,
                    solicited: false,
                };
            }
            if ns.source_mac.is_some_and(&is_local) {
                return NdpAction::Ignore;
            }
            NdpAction::Reply {
                target: ns.target,
                dst: source,
                solicited: true,
            }
        }
        NdpMessage::Advertisement(na) => match na.target_mac {
            Some(mac) if owned_here(na.target) && !is_local(mac) => NdpAction::Conflict {
                target: na.target,
                mac,
            },
            _ => NdpAction::Ignore,
        },
    }
}
