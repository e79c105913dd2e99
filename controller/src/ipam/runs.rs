//! A set of used address keys stored as coalesced inclusive runs, so that "the lowest free key at
//! or after `x`" is found by jumping over whole runs in O(log runs), whatever the pool size.
//!
//! A run set may be *padded* by filler keys: keys that are never handed out from the pools the
//! set serves (`.0` and `.255` for pools with `avoidBuggyIPs`). A stored run is then a maximal
//! interval of "used or filler" keys that contains at least one used key. Without padding, used
//! runs in such a pool would be broken at every `.255`/`.0` and a search would step over one run
//! per 256 addresses; with it, a search makes at most a few jumps.
//!
//! The padding code relies on filler stretches being at most two keys long (true for `.255, .0`).

use std::collections::BTreeMap;

/// Coalesced runs `start -> end` (inclusive) of used keys, optionally padded with filler keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Runs {
    map: BTreeMap<u128, u128>,
    max: u128,
}

/// No key is filler.
pub(crate) fn no_filler(_: u128) -> bool {
    false
}

impl Runs {
    /// An empty set over keys `0..=max`.
    pub(crate) fn new(max: u128) -> Self {
        Self {
            map: BTreeMap::new(),
            max,
        }
    }

    /// Number of stored runs.
    #[cfg(test)]
    pub(crate) fn run_count(&self) -> usize {
        self.map.len()
    }

    /// The run holding `x`, if any.
    pub(crate) fn run_containing(&self, x: u128) -> Option<(u128, u128)> {
        self.map
            .range(..=x)
            .next_back()
            .filter(|(_, end)| **end >= x)
            .map(|(s, e)| (*s, *e))
    }

    /// Record that `x` became used.
    pub(crate) fn insert(&mut self, x: u128, filler: impl Fn(u128) -> bool) {
        if self.run_containing(x).is_some() {
            // Already covered, as padding of a neighbouring run.
            return;
        }
        let (mut s, mut e) = (x, x);
        while s > 0 {
            let p = s - 1;
            if let Some((rs, _)) = self.run_containing(p) {
                self.map.remove(&rs);
                s = rs;
                break;
            }
            if !filler(p) {
                break;
            }
            s = p;
        }
        while e < self.max {
            let n = e + 1;
            if let Some(re) = self.map.remove(&n) {
                e = re;
                break;
            }
            if !filler(n) {
                break;
            }
            e = n;
        }
        self.map.insert(s, e);
    }

    /// Record that `x` is no longer used; `is_used` answers for the keys still in use.
    pub(crate) fn remove(
        &mut self,
        x: u128,
        filler: impl Fn(u128) -> bool,
        is_used: impl Fn(u128) -> bool,
    ) {
        let Some((s, e)) = self.run_containing(x) else {
            return;
        };
        // A maximal used-or-filler interval still deserves storing if it holds a used key; with
        // filler stretches of at most two, any three consecutive keys include a non-filler one,
        // and every non-filler key of a run is used.
        let worth = |a: u128, b: u128| (a..=b).take(3).any(|k| !filler(k) || is_used(k));
        if filler(x) {
            // `x` stays padding, so the run keeps its extent; it may have lost its last used key.
            if !worth(s, e) {
                self.map.remove(&s);
            }
            return;
        }
        self.map.remove(&s);
        if s < x && worth(s, x - 1) {
            self.map.insert(s, x - 1);
        }
        if x < e && worth(x + 1, e) {
            self.map.insert(x + 1, e);
        }
    }

    /// The lowest key in `from..=to` that is neither used nor filler.
    pub(crate) fn first_free(
        &self,
        from: u128,
        to: u128,
        filler: impl Fn(u128) -> bool,
    ) -> Option<u128> {
        let mut x = from;
        // Bounded: after a jump `x` is past a maximal run, hence neither used nor filler;
        // before a jump at most two filler keys are skipped.
        loop {
            if x > to {
                return None;
            }
            if let Some((_, e)) = self.run_containing(x) {
                if e >= to {
                    return None;
                }
                x = e + 1;
                continue;
            }
            if filler(x) {
                if x >= to {
                    return None;
                }
                x += 1;
                continue;
            }
            return Some(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn buggy(k: u128) -> bool {
        matches!(k & 0xff, 0 | 255)
    }

    #[test]
    fn coalesces_and_splits() {
        let mut r = Runs::new(u128::from(u32::MAX));
        for k in [5, 7, 6] {
            r.insert(k, no_filler);
        }
        assert_eq!(r.run_containing(6), Some((5, 7)));
        assert_eq!(r.run_count(), 1);
        assert_eq!(r.first_free(5, 100, no_filler), Some(8));
        assert_eq!(r.first_free(0, 100, no_filler), Some(0));
        assert_eq!(r.first_free(5, 7, no_filler), None);
        r.remove(6, no_filler, |_| true);
        assert_eq!(r.run_containing(5), Some((5, 5)));
        assert_eq!(r.run_containing(7), Some((7, 7)));
        assert_eq!(r.first_free(5, 100, no_filler), Some(6));
    }

    #[test]
    fn padding_bridges_buggy_addresses() {
        let mut used = BTreeSet::new();
        let mut r = Runs::new(u128::from(u32::MAX));
        // Use .1 ..= .254 of three consecutive /24s: one padded run covers them all.
        for k in (0u128..768).filter(|k| !buggy(*k)) {
            used.insert(k);
            r.insert(k, buggy);
        }
        assert_eq!(r.run_count(), 1);
        assert_eq!(r.run_containing(1), Some((0, 768)));
        assert_eq!(r.first_free(0, 10_000, buggy), Some(769));
        used.remove(&300);
        r.remove(300, buggy, |k| used.contains(&k));
        assert_eq!(r.first_free(0, 10_000, buggy), Some(300));
        // A run left with only padding is dropped.
        let mut r = Runs::new(u128::from(u32::MAX));
        r.insert(255, buggy);
        assert_eq!(r.run_containing(256), Some((255, 256)));
        r.remove(255, buggy, |_| false);
        assert_eq!(r.run_count(), 0);
    }

    #[test]
    fn edges_of_the_key_space() {
        let mut r = Runs::new(u128::MAX);
        r.insert(u128::MAX, no_filler);
        r.insert(0, no_filler);
        assert_eq!(
            r.first_free(u128::MAX - 1, u128::MAX, no_filler),
            Some(u128::MAX - 1)
        );
        assert_eq!(r.first_free(u128::MAX, u128::MAX, no_filler), None);
        r.remove(u128::MAX, no_filler, |_| false);
        assert_eq!(
            r.first_free(u128::MAX, u128::MAX, no_filler),
            Some(u128::MAX)
        );
        let mut r = Runs::new(255);
        r.insert(254, buggy);
        assert_eq!(r.run_containing(255), Some((254, 255)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Use(u128),
        Free(u128),
        Find(u128, u128),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u128..1100).prop_map(Op::Use),
            (0u128..1100).prop_map(Op::Free),
            (0u128..1100, 0u128..300).prop_map(|(a, n)| Op::Find(a, a + n)),
        ]
    }

    fn check(padded: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let filler = |k: u128| padded && buggy(k);
        let mut model = BTreeSet::new();
        let mut r = Runs::new(u128::from(u32::MAX));
        for op in ops {
            match op {
                Op::Use(k) => {
                    if model.insert(k) {
                        r.insert(k, filler);
                    }
                }
                Op::Free(k) => {
                    if model.remove(&k) {
                        r.remove(k, filler, |m| model.contains(&m));
                    }
                }
                Op::Find(a, b) => {
                    let want = (a..=b).find(|k| !model.contains(k) && !filler(*k));
                    prop_assert_eq!(r.first_free(a, b, filler), want);
                }
            }
            // Invariants: every used key is covered; runs are disjoint, non-adjacent, and
            // each covers only used or filler keys and at least one used key.
            for k in &model {
                prop_assert!(r.run_containing(*k).is_some());
            }
            let mut prev_end: Option<u128> = None;
            for (s, e) in &r.map {
                prop_assert!(prev_end.is_none_or(|p| p + 1 < *s));
                prop_assert!((*s..=*e).all(|k| model.contains(&k) || filler(k)));
                prop_assert!((*s..=*e).any(|k| model.contains(&k)));
                // Maximal: padding next to a run is part of it.
                prop_assert!(*s == 0 || !filler(*s - 1));
                prop_assert!(!filler(*e + 1));
                prev_end = Some(*e);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn exact_runs_match_a_set(ops in proptest::collection::vec(op(), 1..200)) {
            check(false, ops)?;
        }

        #[test]
        fn padded_runs_match_a_set(ops in proptest::collection::vec(op(), 1..200)) {
            check(true, ops)?;
        }
    }
}
