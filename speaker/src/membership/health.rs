//! Not mistaking our own slowness, or a peer's, for a failure (pure: the caller passes the time).
//!
//! SWIM declares a member down when it misses a probe and then fails to refute the suspicion in
//! time. On a loaded node both can happen to a healthy peer: our own timers fire late, so the
//! ack we wait for seems to be missing; or the peer is descheduled for a few hundred
//! milliseconds and refutes too late. Two remedies from Lifeguard (Dadgar et al., 2018), adapted
//! to what the shell around foca can see:
//!
//! - **Local health** ([`LocalHealth`]): when our own timers fire late, our event loop is
//!   starved, and what we conclude from timeouts is unreliable. A score rises with each late
//!   probe timer and decays with each probe period on time; probe timeouts, probe periods and
//!   suspicion timeouts this node starts are stretched by `1 + score`. A healthy node keeps the
//!   LAN timings (score 0), so failover time does not change when nothing is loaded.
//! - **Evidence before down** ([`suspicion_verdict`]): when a suspicion we raised expires, the
//!   suspect is declared down only if we have not heard an authenticated datagram from it since
//!   we suspected it. A peer that talks to us is alive, it only has not refuted yet; we wait
//!   another suspicion period, up to a bound, for its refutation. A dead or cut-off peer sends
//!   nothing, so real failures are declared as fast as before.

use std::time::{Duration, Instant};

/// The local health score never exceeds this: timeouts stretch at most ninefold.
pub const MAX_SCORE: u32 = 8;

/// Lifeguard's local health multiplier, driven by timer lateness.
#[derive(Debug, Clone)]
pub struct LocalHealth {
    score: u32,
    /// The probe period the last decision was made in, to count at most one step per period.
    period_started: Option<Instant>,
    late_in_period: bool,
}

impl Default for LocalHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalHealth {
    /// Healthy.
    pub fn new() -> Self {
        Self {
            score: 0,
            period_started: None,
            late_in_period: false,
        }
    }

    /// Timeouts of this node are multiplied by this (1 when healthy).
    pub fn multiplier(&self) -> u32 {
        self.score + 1
    }

    /// The current score (0 healthy, up to [`MAX_SCORE`]).
    pub fn score(&self) -> u32 {
        self.score
    }

    /// A probe timer fired `late` after its due time; `tolerance` is what a healthy loop may
    /// take (a fraction of the probe round trip). Returns true when the score rose.
    pub fn timer_fired(&mut self, late: Duration, tolerance: Duration) -> bool {
        if late <= tolerance || self.late_in_period {
            return false;
        }
        self.late_in_period = true;
        if self.score < MAX_SCORE {
            self.score += 1;
            return true;
        }
        false
    }

    /// Called as each probe period starts (`now`): a period without a late timer lowers the
    /// score by one.
    pub fn period_started(&mut self, now: Instant) {
        if self.period_started.is_some() && !self.late_in_period {
            self.score = self.score.saturating_sub(1);
        }
        self.period_started = Some(now);
        self.late_in_period = false;
    }

    /// `base` stretched by the multiplier.
    pub fn scale(&self, base: Duration) -> Duration {
        base.saturating_mul(self.multiplier())
    }
}

/// How long the loop overslept: with the earliest timer due at `earliest_due` and the previous
/// turn ended at `turn_ended`, the time since the later of the two, when that timer is due by
/// `now` (zero otherwise). A loop that wakes on time oversleeps by its wake-up latency only.
pub fn overslept(turn_ended: Instant, earliest_due: Option<Instant>, now: Instant) -> Duration {
    match earliest_due {
        Some(due) if due <= now => now.saturating_duration_since(due.max(turn_ended)),
        _ => Duration::ZERO,
    }
}

/// Whether the suspicion of `id` at `incarnation` still stands in `members`: the member is known
/// under that very identity, still suspect, and has not refuted (refuting raises its
/// incarnation).
///
/// foca 2.0 answers an expired suspicion with a "you are down" message to the suspect even when
/// the suspect has refuted in time (it checks the incarnation before declaring it down, but
/// sends the message whatever the check said), so a healthy member that merely answered late
/// takes a new identity and "rejoins". Checking first and dropping a stale timer avoids that.
pub fn still_suspected<'a, T: PartialEq + 'a>(
    members: impl IntoIterator<Item = &'a foca::Member<T>>,
    id: &T,
    incarnation: foca::Incarnation,
) -> bool {
    members.into_iter().any(|m| {
        m.id() == id && m.state() == foca::State::Suspect && m.incarnation() == incarnation
    })
}

/// What to do when a suspicion this node raised expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Declare the suspect down now.
    Down,
    /// It has spoken since: look again at this time.
    WaitUntil(Instant),
}

/// Decide on an expired suspicion raised at `raised_at`, at `now`, given when the suspect was
/// last heard (authenticated) and the timings: `period` is one suspicion timeout, `max_total`
/// the longest a talking-but-unrefuted suspect is given in all.
pub fn suspicion_verdict(
    raised_at: Instant,
    now: Instant,
    last_heard: Option<Instant>,
    period: Duration,
    max_total: Duration,
) -> Verdict {
    let spoke_since = last_heard.is_some_and(|heard| heard > raised_at);
    let limit = raised_at + max_total;
    if !spoke_since || now >= limit {
        return Verdict::Down;
    }
    Verdict::WaitUntil((now + period).min(limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOL: Duration = Duration::from_millis(25);

    #[test]
    fn late_timers_raise_the_score_once_per_period_and_quiet_periods_lower_it() {
        let t0 = Instant::now();
        let mut h = LocalHealth::new();
        assert_eq!(h.multiplier(), 1);
        h.period_started(t0);
        assert!(!h.timer_fired(Duration::from_millis(10), TOL));
        assert!(h.timer_fired(Duration::from_millis(200), TOL));
        // A second late timer in the same period does not count twice.
        assert!(!h.timer_fired(Duration::from_millis(200), TOL));
        assert_eq!(h.multiplier(), 2);
        assert_eq!(
            h.scale(Duration::from_millis(50)),
            Duration::from_millis(100)
        );
        // The next period ends late too; then one quiet period brings it down by one.
        h.period_started(t0 + Duration::from_millis(150));
        assert!(h.timer_fired(Duration::from_millis(90), TOL));
        assert_eq!(h.score(), 2);
        h.period_started(t0 + Duration::from_millis(300));
        h.period_started(t0 + Duration::from_millis(450));
        assert_eq!(h.score(), 1);
        h.period_started(t0 + Duration::from_millis(600));
        h.period_started(t0 + Duration::from_millis(750));
        assert_eq!(h.score(), 0);
    }

    #[test]
    fn the_score_is_bounded() {
        let t0 = Instant::now();
        let mut h = LocalHealth::new();
        for i in 0..50 {
            h.period_started(t0 + Duration::from_millis(i * 150));
            h.timer_fired(Duration::from_secs(1), TOL);
        }
        assert_eq!(h.score(), MAX_SCORE);
        assert_eq!(h.multiplier(), MAX_SCORE + 1);
    }

    #[test]
    fn a_silent_suspect_goes_down_on_time() {
        let t0 = Instant::now();
        let p = Duration::from_millis(300);
        let max = Duration::from_millis(1200);
        assert_eq!(suspicion_verdict(t0, t0 + p, None, p, max), Verdict::Down);
        // Heard only before the suspicion: no evidence of life since.
        assert_eq!(
            suspicion_verdict(t0, t0 + p, Some(t0 - Duration::from_millis(1)), p, max),
            Verdict::Down
        );
    }

    #[test]
    fn a_talking_suspect_gets_time_up_to_the_bound() {
        let t0 = Instant::now();
        let p = Duration::from_millis(300);
        let max = Duration::from_millis(1200);
        let heard = Some(t0 + Duration::from_millis(100));
        assert_eq!(
            suspicion_verdict(t0, t0 + p, heard, p, max),
            Verdict::WaitUntil(t0 + 2 * p)
        );
        assert_eq!(
            suspicion_verdict(t0, t0 + Duration::from_millis(1000), heard, p, max),
            Verdict::WaitUntil(t0 + max)
        );
        assert_eq!(
            suspicion_verdict(t0, t0 + max, heard, p, max),
            Verdict::Down
        );
    }

    #[test]
    fn only_a_standing_suspicion_counts() {
        use foca::{Member, State};
        let members = [
            Member::new("a", 3, State::Suspect),
            Member::new("b", 5, State::Alive),
            Member::new("c", 1, State::Down),
        ];
        assert!(still_suspected(&members, &"a", 3));
        // Refuted: the incarnation moved on.
        assert!(!still_suspected(&members, &"a", 2));
        // Alive again, or already down, or unknown.
        assert!(!still_suspected(&members, &"b", 5));
        assert!(!still_suspected(&members, &"c", 1));
        assert!(!still_suspected(&members, &"d", 0));
    }

    #[test]
    fn oversleeping_counts_from_the_due_time_or_the_last_turn() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Woken 2 s after a timer due 50 ms after the last turn.
        assert_eq!(overslept(t0, Some(t0 + ms(50)), t0 + ms(2050)), ms(2000));
        // A timer already due when the last turn ended (armed with no delay) counts from then.
        assert_eq!(overslept(t0, Some(t0 - ms(5)), t0 + ms(30)), ms(30));
        // Nothing due yet, or nothing armed: no stall.
        assert_eq!(
            overslept(t0, Some(t0 + ms(100)), t0 + ms(40)),
            Duration::ZERO
        );
        assert_eq!(overslept(t0, None, t0 + ms(4000)), Duration::ZERO);
    }

    proptest! {
        /// However the suspect talks, it is declared down no later than `max_total` after the
        /// suspicion, and a silent one exactly when its first period ends.
        #[test]
        fn down_within_the_bound(
            heard_ms in prop::collection::vec(0u64..3000, 0..20),
            period_ms in 1u64..500,
            extra in 1u32..6,
        ) {
            let t0 = Instant::now();
            let period = Duration::from_millis(period_ms);
            let max = period * extra;
            let mut heard: Vec<Instant> = heard_ms.iter().map(|m| t0 + Duration::from_millis(*m)).collect();
            heard.sort();
            let mut now = t0 + period;
            loop {
                let last = heard.iter().rev().find(|h| **h <= now).copied();
                match suspicion_verdict(t0, now, last, period, max) {
                    Verdict::Down => break,
                    Verdict::WaitUntil(next) => {
                        prop_assert!(next > now);
                        now = next;
                    }
                }
            }
            prop_assert!(now <= t0 + max.max(period));
            if heard.iter().all(|h| *h > t0 + period) {
                prop_assert_eq!(now, t0 + period);
            }
        }
    }
}
