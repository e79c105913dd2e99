//! Which node owns an address: a pure, deterministic election.
//!
//! Every speaker runs the same function over the same inputs (the address and the eligible
//! nodes, see [`crate::eligibility`]) and so agrees on one owner without talking to the others.
//! `lodestonectl why` runs it too, to name the node the speakers elect.
//!
//! The order is the one MetalLB's speaker uses (`speaker/layer2_controller.go`,
//! `ShouldAnnounce`): nodes are sorted by `sha256(nodeName + "#" + ipString)` ascending, where
//! `ipString` is the *first* address the Service announces (so every address of a dual-stack or
//! shared Service lands on the same node), and the first node wins. MetalLB compares the raw
//! digests with `bytes.Compare`; comparing the lowercase hex strings of the digests gives the same
//! order (fixed length, and hex digits sort like the nibbles they encode), which is how PureLB and
//! OpenELB describe it. Keeping the exact string means a cluster migrating from MetalLB keeps its
//! owners, so no address moves during the migration.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// The election key of `node` for `address`: `sha256(node + "#" + address)`.
///
/// Lower keys rank first. `address` is used as given; call [`canonical_address`] first when it
/// comes from user input, so that every speaker hashes the same spelling.
pub fn election_key(node: &str, address: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(node.as_bytes());
    hasher.update(b"#");
    hasher.update(address.as_bytes());
    hasher.finalize().into()
}

/// The spelling of an address that goes into the hash, matching Go's `net.IP.String()`.
///
/// Go prints IPv6 in RFC 5952 form (as Rust's `Display` does) and prints IPv4-mapped IPv6
/// addresses as dotted IPv4, so `::ffff:192.0.2.1` becomes `192.0.2.1`. Anything that does not
/// parse as an IP address (a hostname ingress) is used verbatim.
pub fn canonical_address(address: &str) -> String {
    match address.trim().parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => address.to_owned(),
    }
}

/// The node that announces `address`, or `None` when there is no candidate.
pub fn owner<'a>(address: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let address = canonical_address(address);
    candidates
        .into_iter()
        .map(|node| (election_key(node, &address), node))
        .min()
        .map(|(_, node)| node)
}

/// The owner among `candidates`: the `current` one while it is a candidate, else the election
/// winner for `address` (MetalLB's hash order).
///
/// Pure and order-independent, so every node that sees the same current owner and candidates
/// picks the same one; an address therefore has one owner, moves only when its owner stops
/// being a candidate, and a fresh assignment is the one MetalLB would make.
pub fn sticky_owner<'a>(
    current: Option<&str>,
    address: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    if let Some(current) = current
        && let Some(kept) = candidates.iter().find(|c| **c == current)
    {
        return Some(kept);
    }
    owner(address, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn hex_key(node: &str, address: &str) -> String {
        hex::encode(election_key(node, address))
    }

    #[test]
    fn key_is_sha256_of_node_hash_address() {
        // Computed independently: printf '%s' 'node-a#192.0.2.10' | sha256sum
        assert_eq!(
            hex_key("node-a", "192.0.2.10"),
            hex::encode(Sha256::digest(b"node-a#192.0.2.10"))
        );
        assert_ne!(
            hex_key("node-a", "192.0.2.10"),
            hex_key("node-a", "192.0.2.11")
        );
        // The separator matters: "a#bc" and "ab#c" must not collide by construction.
        assert_ne!(hex_key("a", "bc"), hex_key("ab", "c"));
    }

    #[test]
    fn lowest_hash_wins() {
        let nodes = ["node-a", "node-b", "node-c"];
        let address = "192.0.2.10";
        let expected = nodes.iter().min_by_key(|n| hex_key(n, address)).copied();
        assert_eq!(owner(address, nodes), expected);
    }

    #[test]
    fn no_candidates_no_owner() {
        assert_eq!(owner("192.0.2.1", std::iter::empty()), None);
    }

    #[test]
    fn addresses_are_spelt_like_go() {
        assert_eq!(canonical_address("2001:DB8:0:0::1"), "2001:db8::1");
        assert_eq!(canonical_address("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(canonical_address(" 192.0.2.7"), "192.0.2.7");
        assert_eq!(canonical_address("lb.example.com"), "lb.example.com");
        let nodes = ["n1", "n2", "n3", "n4"];
        assert_eq!(owner("2001:DB8::0:1", nodes), owner("2001:db8::1", nodes));
    }

    #[test]
    fn spreads_addresses_over_nodes() {
        let nodes = ["node-a", "node-b", "node-c"];
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..1000u32 {
            let address = format!("198.51.100.{}", i % 256);
            let address = if i < 256 {
                address
            } else {
                format!("2001:db8::{i:x}")
            };
            if let Some(o) = owner(&address, nodes) {
                *counts.entry(o).or_default() += 1;
            }
        }
        assert_eq!(counts.values().sum::<usize>(), 1000);
        for node in nodes {
            let got = counts.get(node).copied().unwrap_or(0);
            // A fair share is 333; binomial sd is about 15, so 250..=420 is > 5 sd either way.
            assert!(
                (250..=420).contains(&got),
                "{node} owns {got} of 1000: {counts:?}"
            );
        }
    }

    fn node_names() -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set("[a-z][a-z0-9-]{0,12}", 1..8)
            .prop_map(|s| s.into_iter().collect())
    }

    fn addresses() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<[u8; 1]>().prop_map(|[b]| format!("192.0.2.{b}")),
            any::<u16>().prop_map(|x| format!("2001:db8::{x:x}")),
        ]
    }

    proptest! {
        #[test]
        fn owner_is_independent_of_order(
            nodes in node_names(), address in addresses(), seed in any::<u64>()
        ) {
            let mut shuffled = nodes.clone();
            // Deterministic shuffle from the seed: rotate and reverse.
            let k = (seed as usize) % shuffled.len();
            shuffled.rotate_left(k);
            if seed % 2 == 0 { shuffled.reverse(); }
            let a = owner(&address, nodes.iter().map(String::as_str));
            let b = owner(&address, shuffled.iter().map(String::as_str));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn byte_order_equals_hex_order(a in "[a-z]{1,8}", b in "[a-z]{1,8}", address in addresses()) {
            let (ka, kb) = (election_key(&a, &address), election_key(&b, &address));
            prop_assert_eq!(ka.cmp(&kb), hex::encode(ka).cmp(&hex::encode(kb)));
        }

        #[test]
        fn removing_a_non_owner_keeps_the_owner(
            nodes in node_names(), address in addresses(), pick in any::<usize>()
        ) {
            let before = owner(&address, nodes.iter().map(String::as_str)).map(str::to_owned);
            let victim = &nodes[pick % nodes.len()];
            prop_assume!(Some(victim) != before.as_ref());
            let after = owner(&address, nodes.iter().filter(|n| *n != victim).map(String::as_str));
            prop_assert_eq!(after.map(str::to_owned), before);
        }

        #[test]
        fn adding_a_node_moves_only_to_it(
            nodes in node_names(), newcomer in "[a-z][a-z0-9-]{0,12}", address in addresses()
        ) {
            prop_assume!(!nodes.contains(&newcomer));
            let before = owner(&address, nodes.iter().map(String::as_str));
            let after = owner(
                &address,
                nodes.iter().map(String::as_str).chain(std::iter::once(newcomer.as_str())),
            );
            prop_assert!(after == before || after == Some(newcomer.as_str()));
        }
    }
}
