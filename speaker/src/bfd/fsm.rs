//! One BFD session in asynchronous mode (RFC 5880 6.2, 6.8), pure: packets and timeouts in,
//! state changes and packets to send out. The shell ([`super`]) owns the sockets and timers.

use std::time::Duration;

use super::packet::{Packet, State, diag};

/// While the session is not up, packets go at most once a second (RFC 5880 6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// Timers of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Desired minimum transmit interval once up.
    pub desired_min_tx: Duration,
    /// Required minimum receive interval.
    pub required_min_rx: Duration,
    /// Detection multiplier.
    pub detect_mult: u8,
    /// Send nothing until the peer has sent something (RFC 5880 6.1 passive role).
    pub passive: bool,
}

/// What the shell must do after a packet or a timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The state changed from this one.
    pub changed_from: Option<State>,
    /// Send this packet at once (a Final, or news of a state change).
    pub send_now: Option<Packet>,
    /// (Re)start the detection timer with this duration (`None`: leave it).
    pub detect: Option<Duration>,
}

/// The session's variables (RFC 5880 6.8.1).
#[derive(Clone, Debug)]
pub struct Session {
    cfg: Config,
    state: State,
    remote_state: State,
    local_disc: u32,
    remote_disc: u32,
    local_diag: u8,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_detect_mult: u8,
    poll: bool,
}

impl Session {
    /// A Down session with discriminator `local_disc` (nonzero, unique on this system).
    pub fn new(cfg: Config, local_disc: u32) -> Session {
        Session {
            cfg,
            state: State::Down,
            remote_state: State::Down,
            local_disc,
            remote_disc: 0,
            local_diag: diag::NONE,
            // RFC 5880 6.8.1: initialised to 1 microsecond.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_detect_mult: 0,
            poll: false,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our discriminator.
    pub fn local_disc(&self) -> u32 {
        self.local_disc
    }

    /// The peer's discriminator (0 while unknown).
    pub fn remote_disc(&self) -> u32 {
        self.remote_disc
    }

    fn advertised_tx(&self) -> Duration {
        if self.state == State::Up {
            self.cfg.desired_min_tx
        } else {
            self.cfg.desired_min_tx.max(SLOW_TX)
        }
    }

    /// How often to send periodic packets now, before jitter; `None` when we must be silent
    /// (passive and the peer unheard, or the peer asks for none).
    pub fn tx_interval(&self) -> Option<Duration> {
        if self.cfg.passive && self.remote_disc == 0 {
            return None;
        }
        if self.remote_min_rx.is_zero() {
            return None;
        }
        Some(self.advertised_tx().max(self.remote_min_rx))
    }

    /// Detection time: the peer's multiplier times the slower of what we accept and what it
    /// sends (RFC 5880 6.8.4).
    pub fn detection_time(&self) -> Duration {
        self.cfg.required_min_rx.max(self.remote_desired_tx) * u32::from(self.remote_detect_mult)
    }

    /// The next periodic packet.
    pub fn packet(&self) -> Packet {
        Packet {
            diag: self.local_diag,
            state: self.state,
            poll: self.poll,
            final_: false,
            detect_mult: self.cfg.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: self.advertised_tx(),
            required_min_rx: self.cfg.required_min_rx,
        }
    }

    fn set_state(&mut self, s: State, d: u8, out: &mut Outcome) {
        if s != self.state {
            let from = self.state;
            self.state = s;
            self.local_diag = d;
            out.changed_from = Some(from);
            // Our advertised interval changes with Up (1 s floor otherwise): tell the peer
            // with a Poll (RFC 5880 6.8.3) and send at once.
            self.poll = true;
            out.send_now = Some(self.packet());
        }
    }

    /// A valid packet for this session arrived (RFC 5880 6.8.6).
    pub fn receive(&mut self, p: &Packet) -> Outcome {
        let mut out = Outcome::default();
        if self.state == State::AdminDown {
            return out;
        }
        self.remote_disc = p.my_disc;
        self.remote_state = p.state;
        self.remote_min_rx = p.required_min_rx;
        self.remote_desired_tx = p.desired_min_tx;
        self.remote_detect_mult = p.detect_mult;
        if p.final_ {
            self.poll = false;
        }
        match (self.state, p.state) {
            (State::Init | State::Up, State::AdminDown) => {
                self.set_state(State::Down, diag::NEIGHBOR_DOWN, &mut out)
            }
            (_, State::AdminDown) => {}
            (State::Down, State::Down) => self.set_state(State::Init, diag::NONE, &mut out),
            (State::Down, State::Init) => self.set_state(State::Up, diag::NONE, &mut out),
            (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, diag::NONE, &mut out)
            }
            (State::Up, State::Down) => self.set_state(State::Down, diag::NEIGHBOR_DOWN, &mut out),
            _ => {}
        }
        if p.poll {
            // Answer a Poll at once with a Final, and nothing else in it (RFC 5880 6.5).
            let mut f = self.packet();
            f.poll = false;
            f.final_ = true;
            out.send_now = Some(f);
        }
        if self.state != State::Down || self.remote_state != State::AdminDown {
            out.detect = Some(self.detection_time());
        }
        out
    }

    /// Nothing heard for the detection time.
    pub fn detection_timeout(&mut self) -> Outcome {
        let mut out = Outcome::default();
        if matches!(self.state, State::Init | State::Up) {
            self.set_state(State::Down, diag::DETECTION_TIME_EXPIRED, &mut out);
            self.remote_disc = 0;
            self.remote_min_rx = Duration::from_micros(1);
            if let Some(p) = out.send_now.as_mut() {
                p.your_disc = 0;
            }
        }
        out
    }

    /// Administratively down: the packet to send so that the peer does not count it as a
    /// failure (RFC 5880 6.8.16).
    pub fn admin_down(&mut self) -> Packet {
        self.state = State::AdminDown;
        self.local_diag = diag::ADMIN_DOWN;
        self.poll = false;
        self.packet()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> Config {
        Config {
            desired_min_tx: Duration::from_millis(100),
            required_min_rx: Duration::from_millis(100),
            detect_mult: 3,
            passive: false,
        }
    }

    /// Two sessions talking to each other until quiet.
    fn converse(a: &mut Session, b: &mut Session) {
        for _ in 0..6 {
            let pa = a.packet();
            let ob = b.receive(&pa);
            let pb = ob.send_now.unwrap_or_else(|| b.packet());
            let oa = a.receive(&pb);
            if let Some(f) = oa.send_now {
                b.receive(&f);
            }
        }
    }

    #[test]
    fn three_way_handshake_comes_up_and_speeds_up() {
        let mut a = Session::new(cfg(), 1);
        let mut b = Session::new(cfg(), 2);
        assert_eq!(a.tx_interval(), Some(SLOW_TX));
        converse(&mut a, &mut b);
        assert_eq!((a.state(), b.state()), (State::Up, State::Up));
        assert_eq!(a.tx_interval(), Some(Duration::from_millis(100)));
        assert_eq!(a.detection_time(), Duration::from_millis(300));
        assert_eq!(a.remote_disc(), 2);
        // The poll sequence completed on both sides.
        assert!(!a.packet().poll && !b.packet().poll);
    }

    #[test]
    fn silence_takes_it_down_with_the_right_diagnostic() {
        let mut a = Session::new(cfg(), 1);
        let mut b = Session::new(cfg(), 2);
        converse(&mut a, &mut b);
        let o = a.detection_timeout();
        assert_eq!(o.changed_from, Some(State::Up));
        assert_eq!(a.state(), State::Down);
        let p = o.send_now.unwrap();
        assert_eq!((p.diag, p.your_disc), (diag::DETECTION_TIME_EXPIRED, 0));
        // Back to slow transmission while down.
        assert_eq!(a.tx_interval(), Some(SLOW_TX));
    }

    #[test]
    fn the_peer_going_down_or_admin_down_takes_us_down() {
        let mut a = Session::new(cfg(), 1);
        let mut b = Session::new(cfg(), 2);
        converse(&mut a, &mut b);
        let down = b.admin_down();
        let o = a.receive(&down);
        assert_eq!(o.changed_from, Some(State::Up));
        assert_eq!(a.packet().diag, diag::NEIGHBOR_DOWN);
        // An admin-down peer keeps us Down, not Init.
        a.receive(&down);
        assert_eq!(a.state(), State::Down);
    }

    #[test]
    fn passive_waits_for_the_peer() {
        let mut p = Session::new(
            Config {
                passive: true,
                ..cfg()
            },
            1,
        );
        assert_eq!(p.tx_interval(), None);
        let mut active = Session::new(cfg(), 2);
        p.receive(&active.packet());
        assert!(p.tx_interval().is_some());
        converse(&mut active, &mut p);
        assert_eq!(p.state(), State::Up);
    }

    #[test]
    fn a_poll_is_answered_with_a_final() {
        let mut a = Session::new(cfg(), 1);
        let mut q = Session::new(cfg(), 2).packet();
        q.poll = true;
        let o = a.receive(&q);
        let f = o.send_now.unwrap();
        assert!(f.final_ && !f.poll);
    }

    proptest! {
        /// Whatever the peer sends, the session's packets stay valid and the detection time is
        /// the peer's multiplier times the slower interval.
        #[test]
        fn stays_consistent(packets in proptest::collection::vec((0u8..4, any::<bool>(), any::<bool>(), 1u8..10, 1u32..1_000_000), 0..40)) {
            let mut s = Session::new(cfg(), 1);
            for (state, poll, fin, mult, tx) in packets {
                let st = match state { 0 => State::AdminDown, 1 => State::Down, 2 => State::Init, _ => State::Up };
                let p = Packet { diag: 0, state: st, poll, final_: fin, detect_mult: mult, my_disc: 5, your_disc: 1,
                    desired_min_tx: Duration::from_micros(u64::from(tx)), required_min_rx: Duration::from_millis(50) };
                let o = s.receive(&p);
                if let Some(d) = o.detect {
                    prop_assert_eq!(d, Duration::from_millis(100).max(p.desired_min_tx) * u32::from(mult));
                }
                let mine = super::super::packet::decode(&super::super::packet::encode(&s.packet()));
                prop_assert!(mine.is_ok(), "{:?}", mine);
            }
        }
    }
}
