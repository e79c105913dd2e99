//! Who this speaker can prove it talks with (pure: the caller passes the time).
//!
//! SWIM's member list says who *answers*; it does not say whether this speaker shares the key
//! with them. A speaker whose keyring no longer matches (restarted after the Secret changed, a
//! rotation done out of order) hears the others' datagrams, rejects every one of them, and
//! concludes that everybody is gone. [`PeerTracker`] keeps the two facts the election needs to
//! tell that apart: which peers authenticated recently, and whether unauthenticated datagrams
//! keep arriving from the other nodes' addresses.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Peers remembered at most; only key holders can add one, so this only bounds a key holder
/// that invents names.
const MAX_PEERS: usize = 4096;

/// Recent authenticated and unauthenticated traffic, by peer.
#[derive(Debug)]
pub struct PeerTracker {
    window: Duration,
    authenticated: HashMap<String, Instant>,
    unauthenticated_from_seed: Option<Instant>,
}

/// What [`PeerTracker::summary`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSummary {
    /// Distinct peers heard with a valid MAC within the window.
    pub authenticated_peers: usize,
    /// Datagrams from seed addresses failed authentication within the window, and no peer
    /// authenticated in it.
    pub keyring_failing: bool,
}

impl PeerTracker {
    /// A tracker looking `window` back.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            authenticated: HashMap::new(),
            unauthenticated_from_seed: None,
        }
    }

    /// A datagram from `peer` was accepted at `now`.
    pub fn authenticated(&mut self, peer: &str, now: Instant) {
        // No allocation on the hot path once the peer is known.
        if let Some(at) = self.authenticated.get_mut(peer) {
            *at = now;
            return;
        }
        if self.authenticated.len() >= MAX_PEERS {
            self.prune(now);
            if self.authenticated.len() >= MAX_PEERS {
                return;
            }
        }
        self.authenticated.insert(peer.to_owned(), now);
    }

    /// A datagram from one of the other nodes' addresses failed authentication at `now`.
    pub fn unauthenticated_from_seed(&mut self, now: Instant) {
        self.unauthenticated_from_seed = Some(now);
    }

    /// When `peer` was last heard with a valid MAC (forgotten once out of the window).
    pub fn last_heard(&self, peer: &str) -> Option<Instant> {
        self.authenticated.get(peer).copied()
    }

    fn recent(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) <= self.window
    }

    fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.authenticated
            .retain(|_, at| now.saturating_duration_since(*at) <= window);
    }

    /// The state at `now`; forgets what fell out of the window.
    pub fn summary(&mut self, now: Instant) -> PeerSummary {
        self.prune(now);
        let authenticated_peers = self.authenticated.len();
        let failing_seen = self
            .unauthenticated_from_seed
            .is_some_and(|at| self.recent(at, now));
        PeerSummary {
            authenticated_peers,
            keyring_failing: failing_seen && authenticated_peers == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: Duration = Duration::from_secs(3);

    #[test]
    fn peers_count_while_recent() {
        let t0 = Instant::now();
        let mut p = PeerTracker::new(W);
        assert_eq!(
            p.summary(t0),
            PeerSummary {
                authenticated_peers: 0,
                keyring_failing: false
            }
        );
        p.authenticated("b", t0);
        p.authenticated("c", t0 + Duration::from_secs(1));
        p.authenticated("b", t0 + Duration::from_secs(2));
        assert_eq!(
            p.summary(t0 + Duration::from_secs(2)).authenticated_peers,
            2
        );
        // c last spoke at 1 s: gone after 4 s; b at 2 s: gone after 5 s.
        assert_eq!(
            p.summary(t0 + Duration::from_millis(4500))
                .authenticated_peers,
            1
        );
        assert_eq!(
            p.summary(t0 + Duration::from_millis(5500))
                .authenticated_peers,
            0
        );
    }

    #[test]
    fn failing_only_when_nobody_authenticates() {
        let t0 = Instant::now();
        let mut p = PeerTracker::new(W);
        p.unauthenticated_from_seed(t0);
        assert!(p.summary(t0).keyring_failing);
        // One peer that shares our key: the bad datagrams are someone else's problem.
        p.authenticated("b", t0 + Duration::from_secs(1));
        assert!(!p.summary(t0 + Duration::from_secs(1)).keyring_failing);
        // Both fall out of the window: neither failing nor proven.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            p.summary(later),
            PeerSummary {
                authenticated_peers: 0,
                keyring_failing: false
            }
        );
    }

    proptest! {
        /// The count is exactly the number of distinct names heard within the window.
        #[test]
        fn count_matches_a_naive_model(
            events in prop::collection::vec((0u8..6, 0u64..10_000), 0..60),
            probe in 0u64..15_000,
        ) {
            let t0 = Instant::now();
            let mut events = events;
            events.sort_by_key(|(_, t)| *t);
            let mut p = PeerTracker::new(W);
            for (name, ms) in &events {
                p.authenticated(&format!("n{name}"), t0 + Duration::from_millis(*ms));
            }
            let now = t0 + Duration::from_millis(probe.max(events.last().map_or(0, |e| e.1)));
            let model: std::collections::BTreeSet<u8> = events
                .iter()
                .filter(|(_, ms)| now.duration_since(t0 + Duration::from_millis(*ms)) <= W)
                .map(|(n, _)| *n)
                .collect();
            prop_assert_eq!(p.summary(now).authenticated_peers, model.len());
        }
    }
}
