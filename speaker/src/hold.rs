//! Holding through a vanished pool (pure).
//!
//! When IPAddressPools disappear while Services still hold their addresses (the IPAddressPool
//! CRD deleted, which deletes every pool at once; a finalizer removed by hand), the controller
//! keeps every assignment until a pool containing it exists again. The speaker does the same
//! for announcing: a pool that vanished while an address of it was served keeps taking part in
//! the plan, so nothing goes dark, until a present pool contains the address again (the CRD and
//! the pools re-created) or no Service holds it any more.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use lodestone_crds::IPAddressPool;
use lodestone_crds::addresses::parse_pool;

/// The pools last planned with, by name.
#[derive(Debug, Default, Clone)]
pub struct PoolHold {
    last: BTreeMap<String, Arc<IPAddressPool>>,
    held: BTreeSet<String>,
}

/// What changed in one step.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HoldChanges {
    /// Pools held from now on.
    pub started: Vec<String>,
    /// Pools no longer held.
    pub released: Vec<String>,
}

fn name_of(p: &IPAddressPool) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

impl PoolHold {
    /// The pools to plan with: `present`, plus every pool planned with last time that is gone
    /// and contains an address of `served` (the addresses the last plan served) that no present
    /// pool contains.
    pub fn pools(
        &mut self,
        present: Vec<Arc<IPAddressPool>>,
        served: &BTreeSet<IpAddr>,
    ) -> (Vec<Arc<IPAddressPool>>, HoldChanges) {
        let names: BTreeSet<String> = present.iter().map(|p| name_of(p)).collect();
        let gone: Vec<&Arc<IPAddressPool>> = self
            .last
            .iter()
            .filter(|(name, _)| !names.contains(*name))
            .map(|(_, p)| p)
            .collect();
        // The common case, nothing gone, costs two name sets; the rest parses each pool once.
        let kept: Vec<Arc<IPAddressPool>> = if gone.is_empty() {
            Vec::new()
        } else {
            let parsed: Vec<_> = present
                .iter()
                .filter_map(|p| parse_pool(&p.spec.addresses).ok())
                .collect();
            let orphans: Vec<IpAddr> = served
                .iter()
                .filter(|ip| !parsed.iter().any(|a| a.contains(**ip)))
                .copied()
                .collect();
            gone.into_iter()
                .filter(|p| {
                    parse_pool(&p.spec.addresses)
                        .is_ok_and(|a| orphans.iter().any(|ip| a.contains(*ip)))
                })
                .map(Arc::clone)
                .collect()
        };
        let held: BTreeSet<String> = kept.iter().map(|p| name_of(p)).collect();
        let changes = HoldChanges {
            started: held.difference(&self.held).cloned().collect(),
            released: self.held.difference(&held).cloned().collect(),
        };
        self.held = held;
        let mut all = present;
        all.extend(kept);
        self.last = all.iter().map(|p| (name_of(p), Arc::clone(p))).collect();
        (all, changes)
    }

    /// Pools held now.
    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodestone_crds::IPAddressPoolSpec;

    fn pool(name: &str, addrs: &[&str]) -> Arc<IPAddressPool> {
        Arc::new(IPAddressPool::new(
            name,
            IPAddressPoolSpec {
                addresses: addrs.iter().map(|a| (*a).into()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                allow_link_local: false,
                service_allocation: None,
            },
        ))
    }

    fn names(pools: &[Arc<IPAddressPool>]) -> Vec<String> {
        pools.iter().map(|p| name_of(p)).collect()
    }

    #[test]
    fn a_vanished_pool_is_held_while_served_and_released_when_back() {
        let mut h = PoolHold::default();
        let blue = pool("blue", &["192.0.2.0/28"]);
        let green = pool("green", &["198.51.100.0/28"]);
        let served = BTreeSet::from(["192.0.2.1".parse().unwrap()]);
        let (p, c) = h.pools(vec![blue.clone(), green.clone()], &served);
        assert_eq!(names(&p), ["blue", "green"]);
        assert_eq!(c, HoldChanges::default());

        // The CRD is deleted: every pool gone at once. Blue serves an address: held; green
        // serves none: dropped.
        let (p, c) = h.pools(vec![], &served);
        assert_eq!(names(&p), ["blue"]);
        assert_eq!(c.started, ["blue"]);
        // Still gone: still held, nothing new to say.
        let (p, c) = h.pools(vec![], &served);
        assert_eq!(names(&p), ["blue"]);
        assert_eq!(c, HoldChanges::default());
        assert!(h.held().contains("blue"));

        // Re-created (under another name even): the present pool serves it, the hold ends.
        let again = pool("blue-2", &["192.0.2.0/24"]);
        let (p, c) = h.pools(vec![again], &served);
        assert_eq!(names(&p), ["blue-2"]);
        assert_eq!(c.released, ["blue"]);
        assert!(h.held().is_empty());
    }

    #[test]
    fn a_pool_is_released_once_nothing_it_holds_is_served() {
        let mut h = PoolHold::default();
        let served = BTreeSet::from(["192.0.2.1".parse().unwrap()]);
        h.pools(vec![pool("blue", &["192.0.2.0/28"])], &served);
        let (p, _) = h.pools(vec![], &served);
        assert_eq!(names(&p), ["blue"]);
        let (p, c) = h.pools(vec![], &BTreeSet::new());
        assert!(p.is_empty());
        assert_eq!(c.released, ["blue"]);
    }
}
