//! Who a speaker is in the membership, and how a restarted one outranks its previous life
//! without trusting the wall clock (pure: no socket, no clock).
//!
//! SWIM remembers a member that was declared down (for a day, foca's default), and a member
//! that reappears under the same identity stays down. So each start of a speaker takes a new
//! identity: the node name and address plus a `bump`. Two identities with the same address are
//! the same node, and foca keeps the one that wins [`foca::Identity::win_addr_conflict`]: the
//! higher bump. A new process must therefore start *above* every identity its node had before.
//!
//! The first guess is the wall clock (nanoseconds since 1970), right whenever the clock moved
//! forward since the last start. When it did not (an NTP step back, a wrong RTC after a
//! reboot), the others still remember the old, higher bump and would ignore the newcomer for a
//! day. Nothing on disk is needed to recover: the peers hold the old identity, so the counter is
//! "persisted" by the cluster itself.
//!
//! - A peer that receives a datagram from an identity that would lose against one it knows at
//!   the same address answers with an *identity hint* carrying the bump to beat
//!   ([`hint_for`]); the same check runs on the speaker's own member list, which may contain its
//!   old identity after a feed ([`outranking_bump`]).
//! - The speaker then takes the identity `bump + 1` ([`NodeId::outranking`]) and announces it,
//!   which wins the conflict everywhere and replaces the old identity at once.
//!
//! The replay protection of the envelope does not use the bump at all (see [`super::auth`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One speaker as foca knows it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Kubernetes node name.
    pub name: String,
    /// Where the speaker receives membership datagrams.
    pub addr: SocketAddr,
    /// Orders the identities of one node: the higher bump wins when two share an address.
    pub bump: u64,
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.addr, self.bump)
    }
}

impl foca::Identity for NodeId {
    // The socket address is what a seed is known by before we learn its name, and foca accepts
    // an Announce addressed to any identity with our address.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        // At u64::MAX there is nothing above: foca then reports that it cannot rejoin.
        Some(Self {
            bump: self.bump.checked_add(1)?,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

impl NodeId {
    /// A placeholder for a seed whose name is not known yet: only good as an Announce target.
    pub(crate) fn seed(addr: SocketAddr) -> Self {
        Self {
            name: String::new(),
            addr,
            bump: 0,
        }
    }

    /// This identity moved above `bump`, or `None` when nothing is above it.
    pub fn outranking(&self, bump: u64) -> Option<Self> {
        let next = bump.max(self.bump).checked_add(1)?;
        Some(Self {
            bump: next,
            ..self.clone()
        })
    }
}

/// The first bump of a process: the wall clock in nanoseconds, `offset_secs` added (only tests
/// shift it, to play a clock stepped back across a restart). Any value works; a wrong one only
/// costs one identity hint.
pub fn initial_bump(since_epoch: Option<std::time::Duration>, offset_secs: i64) -> u64 {
    let nanos = since_epoch.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let offset = offset_secs.unsigned_abs().saturating_mul(1_000_000_000);
    let shifted = if offset_secs < 0 {
        nanos.saturating_sub(offset)
    } else {
        nanos.saturating_add(offset)
    };
    // Leave room above for renewals and hints.
    shifted.min(u64::MAX / 2)
}

/// The highest bump among `known` identities at `me`'s address that `me` would lose against:
/// a previous life of this node that the cluster still remembers.
pub fn outranking_bump<'a>(
    me: &NodeId,
    known: impl IntoIterator<Item = &'a NodeId>,
) -> Option<u64> {
    use foca::Identity;
    known
        .into_iter()
        .filter(|k| *k != me && k.addr == me.addr && !me.win_addr_conflict(k))
        .map(|k| k.bump)
        .max()
}

/// What a peer should hint to `sender` given the identities it knows: `Some(bump)` when foca
/// would discard `sender` in favour of one of them.
pub fn hint_for<'a>(sender: &NodeId, known: impl IntoIterator<Item = &'a NodeId>) -> Option<u64> {
    outranking_bump(sender, known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;
    use proptest::prelude::*;

    fn id(name: &str, port: u16, bump: u64) -> NodeId {
        NodeId {
            name: name.into(),
            addr: SocketAddr::from(([192, 0, 2, 1], port)),
            bump,
        }
    }

    #[test]
    fn a_clock_stepped_back_is_outranked_then_outranks() {
        let before = id("node-c", 7946, 1_700_000_300_000_000_000);
        // Restarted after an NTP step of five minutes back.
        let after = id("node-c", 7946, 1_700_000_000_000_000_000);
        assert!(!after.win_addr_conflict(&before));
        // A peer that still knows `before` hints its bump...
        let hint = hint_for(&after, [&before, &id("node-a", 7946, 5)]).unwrap();
        assert_eq!(hint, before.bump);
        // ...and the restarted speaker moves above it, and then wins.
        let next = after.outranking(hint).unwrap();
        assert!(next.win_addr_conflict(&before));
        assert_eq!(next.name, "node-c");
        // Nothing left to hint.
        assert_eq!(hint_for(&next, [&before]), None);
    }

    #[test]
    fn other_nodes_and_ourselves_are_not_rivals() {
        let me = id("node-c", 7946, 10);
        assert_eq!(outranking_bump(&me, [&me]), None);
        // Another address is another node, even with a larger bump.
        assert_eq!(outranking_bump(&me, [&id("node-b", 7947, 99)]), None);
        // A lower bump at our address loses against us anyway.
        assert_eq!(outranking_bump(&me, [&id("node-c", 7946, 9)]), None);
        // An equal bump (the same number, a different identity) must be beaten too.
        assert_eq!(outranking_bump(&me, [&id("other", 7946, 10)]), Some(10));
    }

    #[test]
    fn initial_bump_follows_the_clock_and_its_offset() {
        let now = std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(initial_bump(Some(now), 0), 1_700_000_000_000_000_000);
        assert_eq!(initial_bump(Some(now), -300), 1_699_999_700_000_000_000);
        assert_eq!(initial_bump(None, -300), 0);
        assert_eq!(initial_bump(Some(now), i64::MAX), u64::MAX / 2);
    }

    #[test]
    fn renewal_stops_at_the_top() {
        assert_eq!(id("n", 1, u64::MAX).renew(), None);
        assert_eq!(id("n", 1, u64::MAX).outranking(3), None);
        assert_eq!(id("n", 1, 3).renew().unwrap().bump, 4);
    }

    proptest! {
        /// Whatever identities the cluster remembers at our address, one hint is enough: the
        /// identity that follows it wins against every one of them.
        #[test]
        fn one_hint_outranks_every_remembered_identity(
            mine in 0u64..u64::MAX / 2,
            remembered in prop::collection::vec(0u64..u64::MAX / 2, 0..6),
        ) {
            let me = id("node-c", 7946, mine);
            let known: Vec<NodeId> = remembered.iter().map(|b| id("node-c", 7946, *b)).collect();
            let next = match hint_for(&me, &known) {
                Some(bump) => me.outranking(bump).unwrap(),
                None => me.clone(),
            };
            for k in &known {
                prop_assert!(*k == next || next.win_addr_conflict(k), "{:?} vs {:?}", next, k);
            }
            prop_assert_eq!(hint_for(&next, &known), None);
        }
    }
}
