//! What to send a peer so that it holds exactly the desired routes: the difference between the
//! Adj-RIB-Out (what the peer was told) and the desired routes, pure.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::routes::Routes;
use super::wire::{Family, RouteAttrs};

/// The UPDATEs to send, before encoding: withdrawals first (a route that must go goes at
/// once), then announcements grouped by attributes (one attribute set per UPDATE).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Prefixes to withdraw, per family.
    pub withdraw: BTreeMap<Family, Vec<IpNet>>,
    /// Prefixes to announce, per family and attribute set.
    pub announce: BTreeMap<(Family, RouteAttrs), Vec<IpNet>>,
}

impl Changes {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.withdraw.is_empty() && self.announce.is_empty()
    }
}

/// The routes of `desired` the session can carry: of a negotiated family with a next hop.
pub fn sendable(desired: &Routes, families: &BTreeSet<Family>) -> Routes {
    desired
        .iter()
        .filter(|(p, _)| families.contains(&Family::of(p.addr())))
        .map(|(p, a)| (*p, a.clone()))
        .collect()
}

/// From `advertised` to `desired`: withdraw what is gone, (re-)announce what is new or whose
/// attributes changed (an announcement replaces the previous one, RFC 4271 3.1).
pub fn diff(advertised: &Routes, desired: &Routes) -> Changes {
    let mut out = Changes::default();
    for p in advertised.keys().filter(|p| !desired.contains_key(*p)) {
        out.withdraw
            .entry(Family::of(p.addr()))
            .or_default()
            .push(*p);
    }
    for (p, attrs) in desired {
        if advertised.get(p) != Some(attrs) {
            out.announce
                .entry((Family::of(p.addr()), attrs.clone()))
                .or_default()
                .push(*p);
        }
    }
    out
}

/// Everything of one family, as after a ROUTE-REFRESH or when a session comes up.
pub fn full(desired: &Routes, family: Option<Family>) -> Changes {
    let mut out = Changes::default();
    for (p, attrs) in desired {
        let f = Family::of(p.addr());
        if family.is_none_or(|want| want == f) {
            out.announce.entry((f, attrs.clone())).or_default().push(*p);
        }
    }
    out
}

/// `advertised` after `changes` were sent.
pub fn apply(advertised: &mut Routes, changes: &Changes) {
    for p in changes.withdraw.values().flatten() {
        advertised.remove(p);
    }
    for ((_, attrs), prefixes) in &changes.announce {
        for p in prefixes {
            advertised.insert(*p, attrs.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_crds::bgp::Community;
    use proptest::prelude::*;

    fn routes(entries: &[(&str, Option<u32>)]) -> Routes {
        entries
            .iter()
            .map(|(p, lp)| {
                (
                    p.parse().unwrap(),
                    RouteAttrs {
                        local_pref: *lp,
                        communities: BTreeSet::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn withdraws_the_gone_announces_the_new_and_the_changed() {
        let old = routes(&[
            ("203.0.113.1/32", None),
            ("203.0.113.2/32", None),
            ("2001:db8::1/128", None),
        ]);
        let new = routes(&[
            ("203.0.113.2/32", Some(200)),
            ("203.0.113.3/32", None),
            ("2001:db8::1/128", None),
        ]);
        let c = diff(&old, &new);
        assert_eq!(
            c.withdraw[&Family::Ipv4],
            vec!["203.0.113.1/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(c.announce.len(), 2);
        assert!(
            !c.announce
                .values()
                .flatten()
                .any(|p| p.to_string() == "2001:db8::1/128")
        );
        let mut adv = old.clone();
        apply(&mut adv, &c);
        assert_eq!(adv, new);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn sendable_keeps_negotiated_families() {
        let r = routes(&[("203.0.113.1/32", None), ("2001:db8::1/128", None)]);
        let only_v4 = sendable(&r, &BTreeSet::from([Family::Ipv4]));
        assert_eq!(only_v4.len(), 1);
        assert_eq!(
            full(&r, Some(Family::Ipv6))
                .announce
                .values()
                .flatten()
                .count(),
            1
        );
    }

    proptest! {
        /// Applying the diff always yields the desired routes.
        #[test]
        fn diff_then_apply_reaches_desired(
            old in proptest::collection::btree_map((any::<u8>(), any::<bool>()), (proptest::option::of(0u32..3), 0u32..3), 0..30),
            new in proptest::collection::btree_map((any::<u8>(), any::<bool>()), (proptest::option::of(0u32..3), 0u32..3), 0..30),
        ) {
            let conv = |m: &BTreeMap<(u8, bool), (Option<u32>, u32)>| -> Routes {
                m.iter().map(|((b, v6), (lp, c))| {
                    let p: IpNet = if *v6 { format!("2001:db8::{b:x}/128") } else { format!("203.0.113.{b}/32") }.parse().unwrap();
                    (p, RouteAttrs { local_pref: *lp, communities: BTreeSet::from([Community::Standard(*c)]) })
                }).collect()
            };
            let (old, new) = (conv(&old), conv(&new));
            let c = diff(&old, &new);
            let mut adv = old.clone();
            apply(&mut adv, &c);
            prop_assert_eq!(adv, new);
        }
    }
}
