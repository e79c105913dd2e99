//! At most one log line per key per interval, with the count of what was left out (pure: the
//! caller passes the time).
//!
//! Rejected membership datagrams are worth a warning (a peer with another key, a replay, a
//! scan), but a flood must not turn into a flood of log lines: 40,000 forged datagrams a second
//! would otherwise write 40,000 lines a second. Keys are (source address, reason); the map is
//! bounded, and once full, new sources share one overflow entry, so spoofed source addresses
//! cannot grow it either.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Entry {
    logged_at: Instant,
    suppressed: u64,
}

/// What to do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the line; `suppressed` occurrences were left out since the previous one.
    /// `overflow` is true when the line stands for many sources (the map is full).
    Log {
        /// Occurrences not logged since the previous line for this key.
        suppressed: u64,
        /// The key shares the overflow entry.
        overflow: bool,
    },
    /// Count it, write nothing.
    Suppress,
}

/// Rate limiter for log lines keyed by `K`.
#[derive(Debug)]
pub struct LogLimiter<K> {
    every: Duration,
    capacity: usize,
    entries: HashMap<K, Entry>,
    overflow: Option<Entry>,
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    /// One line per key per `every`, at most `capacity` keys tracked one by one.
    pub fn new(every: Duration, capacity: usize) -> Self {
        Self {
            every,
            capacity,
            entries: HashMap::new(),
            overflow: None,
        }
    }

    /// Whether a line is due for `e` at `now`, and what it suppressed since the last one.
    fn due(e: &mut Entry, every: Duration, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(e.logged_at) < every {
            e.suppressed = e.suppressed.saturating_add(1);
            return None;
        }
        let suppressed = e.suppressed;
        *e = Entry {
            logged_at: now,
            suppressed: 0,
        };
        Some(suppressed)
    }

    /// One occurrence for `key` at `now`.
    pub fn check(&mut self, key: &K, now: Instant) -> Verdict {
        let every = self.every;
        let verdict = |due: Option<u64>, overflow| match due {
            Some(suppressed) => Verdict::Log {
                suppressed,
                overflow,
            },
            None => Verdict::Suppress,
        };
        if let Some(e) = self.entries.get_mut(key) {
            return verdict(Self::due(e, every, now), false);
        }
        if self.entries.len() >= self.capacity {
            // Entries whose interval has passed would log anyway: forget them first. What they
            // suppressed is lost, which is the price of the bound.
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.logged_at) < every);
        }
        let fresh = Entry {
            logged_at: now,
            suppressed: 0,
        };
        if self.entries.len() < self.capacity {
            self.entries.insert(key.clone(), fresh);
            return verdict(Some(0), false);
        }
        match &mut self.overflow {
            Some(e) => verdict(Self::due(e, every, now), true),
            None => {
                self.overflow = Some(fresh);
                verdict(Some(0), true)
            }
        }
    }

    /// Keys tracked one by one.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No key tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EVERY: Duration = Duration::from_secs(10);

    #[test]
    fn one_line_per_interval_with_the_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(EVERY, 16);
        let log = |suppressed| Verdict::Log {
            suppressed,
            overflow: false,
        };
        assert_eq!(l.check(&"a", t0), log(0));
        for i in 1..=5 {
            assert_eq!(
                l.check(&"a", t0 + Duration::from_secs(i)),
                Verdict::Suppress
            );
        }
        // Another key is independent.
        assert_eq!(l.check(&"b", t0 + Duration::from_secs(1)), log(0));
        assert_eq!(l.check(&"a", t0 + EVERY), log(5));
        assert_eq!(l.check(&"a", t0 + EVERY), Verdict::Suppress);
    }

    #[test]
    fn a_full_map_shares_one_overflow_line() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(EVERY, 2);
        l.check(&1, t0);
        l.check(&2, t0);
        assert_eq!(
            l.check(&3, t0),
            Verdict::Log {
                suppressed: 0,
                overflow: true
            }
        );
        assert_eq!(l.check(&4, t0), Verdict::Suppress);
        assert_eq!(l.len(), 2);
        // Once the tracked keys' interval passed, they make room again.
        assert_eq!(
            l.check(&5, t0 + EVERY),
            Verdict::Log {
                suppressed: 0,
                overflow: false
            }
        );
    }

    proptest! {
        /// Per key, lines are at least `every` apart, and every occurrence is either logged or
        /// counted in the next line of the same key (or of the overflow line).
        #[test]
        fn bounded_lines_and_memory(
            events in prop::collection::vec((0u16..50, 0u64..100_000), 1..500),
        ) {
            let t0 = Instant::now();
            let mut events = events;
            events.sort_by_key(|e| e.1);
            let mut l = LogLimiter::new(EVERY, 8);
            let mut last: HashMap<u16, Instant> = HashMap::new();
            let mut lines = 0u64;
            let mut counted = 0u64;
            for (key, ms) in &events {
                let now = t0 + Duration::from_millis(*ms);
                match l.check(key, now) {
                    Verdict::Log { suppressed, overflow } => {
                        lines += 1;
                        counted += suppressed;
                        if !overflow {
                            if let Some(prev) = last.get(key) {
                                prop_assert!(now.duration_since(*prev) >= EVERY);
                            }
                            last.insert(*key, now);
                        }
                    }
                    Verdict::Suppress => {}
                }
                prop_assert!(l.len() <= 8);
            }
            prop_assert!(lines + counted <= events.len() as u64);
            // With 50 keys over at most 100 s, the lines are bounded by keys × intervals + overflow.
            prop_assert!(lines <= 9 * 11);
        }
    }
}
