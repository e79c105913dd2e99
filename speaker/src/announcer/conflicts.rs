//! Conflicts aggregated into a few reports, whatever the rate of forged frames (pure: the
//! caller passes the time).
//!
//! Every foreign claim for an owned address (a gratuitous ARP, a reply, an unsolicited NA from
//! another MAC) is counted in a series per (address, MAC), as Kubernetes folds repeated Events
//! into a series with a count and first/last timestamps. A series is reported when it starts and
//! then at most once per [`ConflictLimits::report_every`] with what it counted since, and every
//! report takes a token from one bucket for the whole speaker, so 20,000 forged frames a second
//! with random MACs still give a handful of reports a minute. The map is bounded and its entries
//! expire: a flood of invented MACs cannot grow it.
//!
//! The bucket is written here rather than taken from `governor`: it must run on the caller's
//! clock so that these rules are tested without sleeping, and it is ten lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::frames::MacAddr;

/// Bounds of the conflict bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictLimits {
    /// A series is reported again at most this often.
    pub report_every: Duration,
    /// Reports in a burst, for the whole speaker (the bucket's capacity).
    pub burst: u32,
    /// One report more is allowed every this long, for the whole speaker.
    pub refill: Duration,
    /// Series tracked at most; the least recently seen is forgotten first.
    pub capacity: usize,
    /// A series not seen for this long is forgotten.
    pub expire: Duration,
}

impl Default for ConflictLimits {
    fn default() -> Self {
        ConflictLimits {
            report_every: Duration::from_secs(60),
            burst: 5,
            refill: Duration::from_secs(12),
            capacity: 256,
            expire: Duration::from_secs(600),
        }
    }
}

/// One report of a series: what to tell the user about one foreign MAC claiming one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictReport {
    /// The contested address.
    pub ip: IpAddr,
    /// The other claimant's MAC.
    pub mac: MacAddr,
    /// Where the claim was last seen.
    pub interface: String,
    /// Claims counted in this series since it started.
    pub count: u64,
    /// Claims since the previous report of this series (all of them in the first one).
    pub since_last_report: u64,
    /// When the series started.
    pub first_seen: SystemTime,
    /// When its latest claim was seen.
    pub last_seen: SystemTime,
    /// Series forgotten unreported since the previous report of any series (the map was full).
    pub forgotten: u64,
}

#[derive(Debug, Clone)]
struct Series {
    interface: String,
    count: u64,
    unreported: u64,
    first_wall: SystemTime,
    last_wall: SystemTime,
    last: Instant,
    reported_at: Option<Instant>,
}

/// A token bucket on the caller's clock.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn take(&mut self, limits: &ConflictLimits, now: Instant) -> bool {
        let burst = f64::from(limits.burst);
        let refilled = match self.at {
            None => burst,
            Some(at) => {
                let per = limits.refill.as_secs_f64().max(f64::EPSILON);
                (self.tokens + now.saturating_duration_since(at).as_secs_f64() / per).min(burst)
            }
        };
        self.at = Some(now);
        if refilled >= 1.0 {
            self.tokens = refilled - 1.0;
            true
        } else {
            self.tokens = refilled;
            false
        }
    }
}

/// The series of foreign claims, bounded.
#[derive(Debug, Clone)]
pub struct ConflictTracker {
    limits: ConflictLimits,
    series: HashMap<(IpAddr, MacAddr), Series>,
    bucket: Bucket,
    forgotten: u64,
}

impl ConflictTracker {
    /// An empty tracker.
    pub fn new(limits: ConflictLimits) -> Self {
        ConflictTracker {
            limits,
            series: HashMap::new(),
            bucket: Bucket {
                tokens: 0.0,
                at: None,
            },
            forgotten: 0,
        }
    }

    /// Series tracked now.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// No series tracked.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Counts one claim of `ip` by `mac`; returns a report when one is due at once (a new
    /// series, or one whose last report is old enough, and a token left).
    pub fn observe(
        &mut self,
        ip: IpAddr,
        mac: MacAddr,
        interface: &str,
        now: Instant,
        wall: SystemTime,
    ) -> Option<ConflictReport> {
        let key = (ip, mac);
        if !self.series.contains_key(&key) {
            self.make_room(now);
        }
        let s = self.series.entry(key).or_insert_with(|| Series {
            interface: interface.to_owned(),
            count: 0,
            unreported: 0,
            first_wall: wall,
            last_wall: wall,
            last: now,
            reported_at: None,
        });
        s.count = s.count.saturating_add(1);
        s.unreported = s.unreported.saturating_add(1);
        s.last = now;
        s.last_wall = wall;
        if s.interface != interface {
            interface.clone_into(&mut s.interface);
        }
        self.report_if_due(key, now)
    }

    /// Reports every series with unreported claims whose time has come, as far as tokens allow;
    /// forgets expired series. Call it every second or so.
    pub fn flush(&mut self, now: Instant) -> Vec<ConflictReport> {
        let expire = self.limits.expire;
        self.series
            .retain(|_, s| now.saturating_duration_since(s.last) < expire);
        let mut due: Vec<((IpAddr, MacAddr), Instant)> = self
            .series
            .iter()
            .filter(|(_, s)| s.unreported > 0)
            .map(|(k, s)| (*k, s.last))
            .collect();
        // The busiest claims are the likeliest to be real: most recent first.
        due.sort_by_key(|d| std::cmp::Reverse(d.1));
        due.into_iter()
            .filter_map(|(key, _)| self.report_if_due(key, now))
            .collect()
    }

    fn report_if_due(&mut self, key: (IpAddr, MacAddr), now: Instant) -> Option<ConflictReport> {
        let every = self.limits.report_every;
        let s = self.series.get(&key)?;
        let due = s.unreported > 0
            && s.reported_at
                .is_none_or(|t| now.saturating_duration_since(t) >= every);
        if !due || !self.bucket.take(&self.limits, now) {
            return None;
        }
        let s = self.series.get_mut(&key)?;
        let report = ConflictReport {
            ip: key.0,
            mac: key.1,
            interface: s.interface.clone(),
            count: s.count,
            since_last_report: s.unreported,
            first_seen: s.first_wall,
            last_seen: s.last_wall,
            forgotten: std::mem::take(&mut self.forgotten),
        };
        s.unreported = 0;
        s.reported_at = Some(now);
        Some(report)
    }

    /// Before adding a series to a full map: drop the expired ones, then the least recently
    /// seen.
    fn make_room(&mut self, now: Instant) {
        if self.series.len() < self.limits.capacity.max(1) {
            return;
        }
        let expire = self.limits.expire;
        self.series
            .retain(|_, s| now.saturating_duration_since(s.last) < expire);
        while self.series.len() >= self.limits.capacity.max(1) {
            let Some(oldest) = self
                .series
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if self
                .series
                .remove(&oldest)
                .is_some_and(|s| s.unreported > 0)
            {
                self.forgotten = self.forgotten.saturating_add(1);
            }
        }
    }

    /// Forgets the series of addresses no longer owned.
    pub fn retain_addresses(&mut self, owned: impl Fn(&IpAddr) -> bool) {
        self.series.retain(|(ip, _), _| owned(ip));
    }
}

/// The note of a conflict Event (and the text of its log line), in the manner of a Kubernetes
/// Event series: count, first and last seen.
pub fn conflict_note(r: &ConflictReport, node: &str) -> String {
    let time = |t: SystemTime| {
        chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let mut note = format!(
        "{} is also claimed by {} on {} of {node}: another machine uses this address; \
         {} claims since {} (last {}), {} since the previous report",
        r.ip,
        r.mac,
        r.interface,
        r.count,
        time(r.first_seen),
        time(r.last_seen),
        r.since_last_report,
    );
    if r.forgotten > 0 {
        note.push_str(&format!(
            "; {} other claimant(s) not reported (too many at once)",
            r.forgotten
        ));
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }
    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr::new(2, 0, b[0], b[1], b[2], b[3])
    }

    #[test]
    fn a_series_is_reported_at_start_then_aggregated() {
        let mut t = ConflictTracker::new(ConflictLimits::default());
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let first = t
            .observe(ip(100), mac(1), "eth0", t0, w)
            .expect("first claim reported");
        assert_eq!((first.count, first.since_last_report), (1, 1));
        for i in 1..1000u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(t.observe(ip(100), mac(1), "eth0", at, w), None);
        }
        assert!(t.flush(t0 + Duration::from_secs(30)).is_empty());
        let later = t.flush(t0 + Duration::from_secs(60));
        assert_eq!(later.len(), 1);
        assert_eq!((later[0].count, later[0].since_last_report), (1000, 999));
        // Nothing new: nothing to say.
        assert!(t.flush(t0 + Duration::from_secs(200)).is_empty());
    }

    #[test]
    fn series_expire() {
        let limits = ConflictLimits::default();
        let mut t = ConflictTracker::new(limits);
        let t0 = Instant::now();
        t.observe(ip(1), mac(1), "eth0", t0, SystemTime::UNIX_EPOCH);
        assert_eq!(t.len(), 1);
        t.flush(t0 + limits.expire);
        assert!(t.is_empty());
    }

    #[test]
    fn note_names_mac_count_and_times() {
        let r = ConflictReport {
            ip: ip(100),
            mac: mac(7),
            interface: "eth0".into(),
            count: 12,
            since_last_report: 11,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(10),
            forgotten: 3,
        };
        let n = conflict_note(&r, "node-a");
        assert!(n.contains("02:00:00:00:00:07"), "{n}");
        assert!(
            n.contains("12 claims since 1970-01-01T00:00:00Z (last 1970-01-01T00:00:10Z)"),
            "{n}"
        );
        assert!(n.contains("3 other claimant(s)"), "{n}");
        assert!(n.len() <= lodestone_crds::events::EVENT_NOTE_MAX);
    }

    proptest! {
        /// Whatever the flood (many MACs, many addresses, any timing), the map stays bounded,
        /// the reports stay within the bucket, and no claim is lost from the counts of the
        /// series that were reported.
        #[test]
        fn bounded_whatever_the_flood(
            claims in proptest::collection::vec((0u8..4, 0u32..5000, 0u64..50), 1..3000),
        ) {
            let limits = ConflictLimits { capacity: 64, ..ConflictLimits::default() };
            let mut t = ConflictTracker::new(limits);
            let t0 = Instant::now();
            let mut now = t0;
            let mut reports = 0u64;
            for (a, m, dt) in claims {
                now += Duration::from_millis(dt);
                reports += u64::from(t.observe(ip(a), mac(m), "eth0", now, SystemTime::UNIX_EPOCH).is_some());
                prop_assert!(t.len() <= limits.capacity);
                if dt == 0 {
                    reports += t.flush(now).len() as u64;
                }
            }
            let elapsed = now.duration_since(t0).as_secs_f64();
            let allowed = f64::from(limits.burst) + elapsed / limits.refill.as_secs_f64();
            prop_assert!(reports as f64 <= allowed + 1e-9, "{reports} reports in {elapsed} s");
        }
    }
}
