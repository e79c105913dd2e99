//! Claim only what is free (pure: the caller passes the time).
//!
//! An address newly given to this cluster is probed before it is announced: ARP probes (RFC 5227
//! §2.1.1, sender IP 0.0.0.0) or Duplicate Address Detection (RFC 4862 §5.4, a Neighbor
//! Solicitation from `::` to the solicited-node group), then a short wait. If another MAC claims
//! the address meanwhile, it is not announced: it stays "in use" and is probed again later, each
//! time twice as late (up to [`ProbeConfig::retry_max`]). An address this cluster already serves
//! (a failover, a restart) is never probed: the shell decides which are new, so a failover stays
//! as fast as it was. Once announced, a foreign claim is defended instead ([`defend_due`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::frames::MacAddr;

/// RFC 5227 §2.4's DEFEND_INTERVAL: an address is defended at most once this often.
pub const DEFEND_INTERVAL: Duration = Duration::from_secs(10);

/// How newly assigned addresses are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// From the first probe to the decision (0 disables probing). RFC 5227 takes 7 s for a
    /// host's own address; a new Service should not wait that long, and the others on the link
    /// answer within milliseconds.
    pub time: Duration,
    /// Probes sent, evenly spread over the first part of [`ProbeConfig::time`].
    pub count: u32,
    /// First wait before probing an address found in use again.
    pub retry_first: Duration,
    /// Longest wait between two probes of an address found in use.
    pub retry_max: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            time: Duration::from_millis(500),
            count: 3,
            retry_first: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
        }
    }
}

impl ProbeConfig {
    /// Pause between two probes: the probes take the first two thirds of the time, the last
    /// third is left for the answer to the last one.
    pub fn probe_gap(&self) -> Duration {
        (self.time * 2 / 3) / self.count.max(1)
    }

    /// Wait before probe number `attempt` (1: the first retry) of an address found in use.
    pub fn retry_after(&self, attempt: u32) -> Duration {
        (self
            .retry_first
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16))))
        .min(self.retry_max)
    }
}

/// Where an address newly claimed stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Probes are out; it is free unless someone answers before `until`.
    Probing {
        /// When the decision falls.
        until: Instant,
        /// Failed rounds before this one.
        attempt: u32,
        /// The first foreign claim heard during this round.
        heard: Option<(MacAddr, String)>,
    },
    /// Another MAC answered: not announced, probed again at `retry_at`.
    InUse {
        /// Who answered.
        mac: MacAddr,
        /// Where.
        interface: String,
        /// Failed rounds so far.
        attempt: u32,
        /// When to probe again.
        retry_at: Instant,
    },
}

/// A decision taken by [`Claims::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Nobody answered: announce it.
    Free(IpAddr),
    /// Someone answered: do not announce; probe again after `retry_in`.
    InUse {
        /// The address.
        ip: IpAddr,
        /// Who answered.
        mac: MacAddr,
        /// Where.
        interface: String,
        /// Failed rounds so far.
        attempt: u32,
        /// Until the next round.
        retry_in: Duration,
    },
    /// Time for another round of probes.
    Reprobe(IpAddr),
}

/// Every address being probed or found in use.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    config: ProbeConfig,
    map: BTreeMap<IpAddr, Claim>,
}

impl Claims {
    /// No claim pending.
    pub fn new(config: ProbeConfig) -> Self {
        Claims {
            config,
            map: BTreeMap::new(),
        }
    }

    /// Probing is on.
    pub fn enabled(&self) -> bool {
        !self.config.time.is_zero() && self.config.count > 0
    }

    /// The settings.
    pub fn config(&self) -> ProbeConfig {
        self.config
    }

    /// Starts probing `ip` unless it is already probed or in use.
    pub fn start(&mut self, ip: IpAddr, now: Instant) {
        if !self.enabled() {
            return;
        }
        let until = now + self.config.time;
        self.map.entry(ip).or_insert(Claim::Probing {
            until,
            attempt: 0,
            heard: None,
        });
    }

    /// Forgets the addresses no longer wanted.
    pub fn retain(&mut self, wanted: impl Fn(&IpAddr) -> bool) {
        self.map.retain(|ip, _| wanted(ip));
    }

    /// Not to be answered nor announced yet.
    pub fn pending(&self, ip: &IpAddr) -> bool {
        self.map.contains_key(ip)
    }

    /// Whether `ip` is being probed now (the sockets must listen for answers).
    pub fn probing(&self, ip: &IpAddr) -> Option<u32> {
        match self.map.get(ip) {
            Some(Claim::Probing { attempt, .. }) => Some(*attempt),
            _ => None,
        }
    }

    /// A foreign MAC claimed `ip` (or probes for it too): remembered if `ip` is being probed.
    /// Returns whether it was.
    pub fn heard(&mut self, ip: IpAddr, mac: MacAddr, interface: &str) -> bool {
        match self.map.get_mut(&ip) {
            Some(Claim::Probing { heard, .. }) => {
                if heard.is_none() {
                    *heard = Some((mac, interface.to_owned()));
                }
                true
            }
            _ => false,
        }
    }

    /// Takes the decisions due at `now`.
    pub fn step(&mut self, now: Instant) -> Vec<ClaimOutcome> {
        let mut out = Vec::new();
        let config = self.config;
        self.map.retain(|ip, claim| match claim {
            Claim::Probing {
                until,
                attempt,
                heard,
            } if *until <= now => match heard.take() {
                None => {
                    out.push(ClaimOutcome::Free(*ip));
                    false
                }
                Some((mac, interface)) => {
                    let attempt = attempt.saturating_add(1);
                    let retry_in = config.retry_after(attempt);
                    out.push(ClaimOutcome::InUse {
                        ip: *ip,
                        mac,
                        interface: interface.clone(),
                        attempt,
                        retry_in,
                    });
                    *claim = Claim::InUse {
                        mac,
                        interface,
                        attempt,
                        retry_at: now + retry_in,
                    };
                    true
                }
            },
            Claim::InUse {
                attempt, retry_at, ..
            } if *retry_at <= now => {
                out.push(ClaimOutcome::Reprobe(*ip));
                *claim = Claim::Probing {
                    until: now + config.time,
                    attempt: *attempt,
                    heard: None,
                };
                true
            }
            _ => true,
        });
        out
    }

    /// The next time [`Claims::step`] has something to decide.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.map
            .values()
            .map(|c| match c {
                Claim::Probing { until, .. } => *until,
                Claim::InUse { retry_at, .. } => *retry_at,
            })
            .min()
    }

    /// The addresses found in use, with the MAC that answered.
    pub fn in_use(&self) -> BTreeMap<IpAddr, MacAddr> {
        self.map
            .iter()
            .filter_map(|(ip, c)| match c {
                Claim::InUse { mac, .. } => Some((*ip, *mac)),
                Claim::Probing { .. } => None,
            })
            .collect()
    }
}

/// Whether a foreign claim of an announced address is answered with a new announcement now:
/// at most once per [`DEFEND_INTERVAL`] (RFC 5227 §2.4 (b)), so that two hosts configured with
/// the same address, or a forger, cannot start an endless exchange.
pub fn defend_due(last_defence: Option<Instant>, now: Instant) -> bool {
    last_defence.is_none_or(|t| now.saturating_duration_since(t) >= DEFEND_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr(2, 0, 0, 0, 0, 9);

    fn ip() -> IpAddr {
        "192.0.2.100".parse().unwrap()
    }

    #[test]
    fn silence_means_free() {
        let mut c = Claims::new(ProbeConfig::default());
        let t0 = Instant::now();
        c.start(ip(), t0);
        assert!(c.pending(&ip()));
        assert_eq!(c.step(t0 + Duration::from_millis(499)), vec![]);
        assert_eq!(
            c.step(t0 + Duration::from_millis(500)),
            vec![ClaimOutcome::Free(ip())]
        );
        assert!(!c.pending(&ip()));
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn an_answer_means_in_use_then_reprobes_with_backoff() {
        let cfg = ProbeConfig::default();
        let mut c = Claims::new(cfg);
        let mut now = Instant::now();
        c.start(ip(), now);
        let mut waits = Vec::new();
        for round in 1..=8u32 {
            assert!(c.heard(ip(), MAC, "eth0"));
            now = c.next_deadline().unwrap();
            let out = c.step(now);
            let [
                ClaimOutcome::InUse {
                    attempt,
                    retry_in,
                    mac,
                    ..
                },
            ] = out.as_slice()
            else {
                panic!("{out:?}");
            };
            assert_eq!((*attempt, *mac), (round, MAC));
            assert_eq!(c.in_use().get(&ip()), Some(&MAC));
            waits.push(*retry_in);
            now = c.next_deadline().unwrap();
            assert_eq!(c.step(now), vec![ClaimOutcome::Reprobe(ip())]);
            assert_eq!(c.probing(&ip()), Some(round));
        }
        assert_eq!(waits[0], cfg.retry_first);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), cfg.retry_max);
        // The taker left: the next round is silent, and the address is free.
        now = c.next_deadline().unwrap();
        assert_eq!(c.step(now), vec![ClaimOutcome::Free(ip())]);
    }

    #[test]
    fn an_address_in_use_ignores_claims_until_it_probes_again() {
        let mut c = Claims::new(ProbeConfig::default());
        assert!(!c.heard(ip(), MAC, "eth0"), "nothing probed");
        let t0 = Instant::now();
        c.start(ip(), t0);
        c.heard(ip(), MAC, "eth0");
        c.step(t0 + Duration::from_secs(1));
        assert!(!c.heard(ip(), MAC, "eth0"));
        c.retain(|_| false);
        assert!(!c.pending(&ip()));
    }

    #[test]
    fn disabled_probes_nothing() {
        let mut c = Claims::new(ProbeConfig {
            time: Duration::ZERO,
            ..ProbeConfig::default()
        });
        c.start(ip(), Instant::now());
        assert!(!c.pending(&ip()));
    }

    #[test]
    fn defence_at_most_once_per_interval() {
        let t0 = Instant::now();
        assert!(defend_due(None, t0));
        assert!(!defend_due(Some(t0), t0 + Duration::from_secs(9)));
        assert!(defend_due(Some(t0), t0 + DEFEND_INTERVAL));
    }
}
