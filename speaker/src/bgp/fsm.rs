//! The BGP finite state machine of one session (RFC 4271 8), pure: events in, actions out. The
//! shell ([`super::session`]) owns the socket and the timers and does what the actions say.
//!
//! Simplifications that keep the FSM small, each safe for a speaker that only advertises:
//!
//! - A session either connects (active) or accepts (passive), never both, so the two sides
//!   never race with two connections and collision detection (RFC 4271 6.8) is never needed.
//! - Automatic restart: every failure leaves the state machine waiting for the connect-retry
//!   timer (Idle or Active), which backs off from one second up to the peer's `connectTime`
//!   and is reset once a session is established; passive sessions wait for the next incoming
//!   connection instead.
//! - Received routes are validated and dropped: the speaker has no RIB-In.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::wire::{Family, Message, Notification, OpenInfo, OpenParams, codes};

/// The hold time proposed in OPEN is used in OpenSent only after this long (RFC 4271 8: "a
/// large value, 4 minutes is suggested").
pub const OPEN_SENT_HOLD: Duration = Duration::from_secs(240);
/// First pause before a new connection attempt.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// RFC 4271 session states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Not trying (stopped, or waiting to retry after an error).
    Idle,
    /// Connecting.
    Connect,
    /// Waiting: for the retry timer (active) or for the peer to connect (passive).
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for the first KEEPALIVE.
    OpenConfirm,
    /// Up: routes flow.
    Established,
}

impl State {
    /// The RFC's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }

    fn connected(self) -> bool {
        matches!(
            self,
            State::OpenSent | State::OpenConfirm | State::Established
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The session's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Our AS.
    pub local_asn: u32,
    /// The AS the peer must have.
    pub peer_asn: u32,
    /// Hold time we propose, seconds (0 or at least 3).
    pub hold_time: u16,
    /// Keepalive interval asked for; default a third of the negotiated hold time.
    pub keepalive: Option<Duration>,
    /// Our BGP identifier.
    pub bgp_id: Ipv4Addr,
    /// Wait for the peer to connect instead of connecting.
    pub passive: bool,
    /// Longest back-off between attempts.
    pub connect_time: Duration,
    /// Families we offer.
    pub families: Vec<Family>,
}

/// The shell's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// Next connection attempt.
    ConnectRetry,
    /// Peer silent for too long.
    Hold,
    /// Time to send a KEEPALIVE.
    Keepalive,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start (or restart after [`Event::Stop`]).
    Start,
    /// Stop, telling the peer why if a connection is up.
    Stop(Notification),
    /// The TCP connection is up (connected, or accepted when passive).
    Connected,
    /// Connecting failed.
    ConnectFailed(String),
    /// The connection closed or failed.
    Closed(String),
    /// A timer fired.
    Timer(Timer),
    /// A message arrived.
    Received(Message),
    /// A message could not be decoded: send this and reset.
    Malformed(Notification),
    /// BFD declared the path down.
    BfdDown,
}

/// What was negotiated when the session came up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Hold time; zero means no keepalives and no hold timer.
    pub hold_time: Duration,
    /// Keepalive interval (`None` with a zero hold time).
    pub keepalive: Option<Duration>,
    /// Families both sides speak.
    pub families: BTreeSet<Family>,
    /// Both sides sent the 4-octet AS capability.
    pub asn4: bool,
    /// The peer's BGP identifier.
    pub peer_id: Ipv4Addr,
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Our OPEN.
    Open(OpenParams),
    /// KEEPALIVE.
    Keepalive,
    /// NOTIFICATION.
    Notification(Notification),
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Send a message.
    Send(Out),
    /// Close the connection (after sending what precedes).
    Close,
    /// (Re)start a timer.
    Arm(Timer, Duration),
    /// Stop a timer.
    Cancel(Timer),
    /// The session is established: advertise everything (the Adj-RIB-Out starts empty).
    Up(Negotiated),
    /// The session left Established: whatever was advertised is gone at the peer.
    Down,
    /// The peer asked for our routes of a family again (RFC 2918).
    Refresh(Family),
}

/// One session's state machine.
#[derive(Clone, Debug)]
pub struct Fsm {
    cfg: Config,
    state: State,
    retry: Duration,
    negotiated: Option<Negotiated>,
    last_error: Option<String>,
}

impl Fsm {
    /// A stopped session.
    pub fn new(cfg: Config) -> Fsm {
        Fsm {
            cfg,
            state: State::Idle,
            retry: FIRST_RETRY,
            negotiated: None,
            last_error: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the session last failed, if it did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// What was negotiated, while OpenConfirm or Established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn open_params(&self) -> OpenParams {
        OpenParams {
            asn: self.cfg.local_asn,
            hold_time: self.cfg.hold_time,
            bgp_id: self.cfg.bgp_id,
            families: self.cfg.families.clone(),
        }
    }

    fn start(&mut self) -> Vec<Action> {
        if self.cfg.passive {
            self.state = State::Active;
            vec![]
        } else {
            self.state = State::Connect;
            vec![Action::Connect]
        }
    }

    /// Leave whatever state for the wait before the next attempt.
    fn fail(&mut self, why: String, mut actions: Vec<Action>) -> Vec<Action> {
        if self.state.connected() {
            actions.push(Action::Close);
        }
        actions.push(Action::Cancel(Timer::Hold));
        actions.push(Action::Cancel(Timer::Keepalive));
        if self.state == State::Established {
            actions.push(Action::Down);
        }
        self.negotiated = None;
        self.last_error = Some(why);
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            self.state = if matches!(self.state, State::Connect | State::Active) {
                State::Active
            } else {
                State::Idle
            };
            actions.push(Action::Arm(Timer::ConnectRetry, self.retry));
            self.retry = (self.retry * 2).min(self.cfg.connect_time.max(FIRST_RETRY));
        }
        actions
    }

    fn reject(&mut self, n: Notification) -> Vec<Action> {
        let why = format!("sent NOTIFICATION: {n}");
        self.fail(why, vec![Action::Send(Out::Notification(n))])
    }

    fn check_open(&self, open: &OpenInfo) -> Result<Negotiated, Notification> {
        if open.asn != self.cfg.peer_asn {
            let mut n = Notification::new(codes::OPEN, codes::OPEN_BAD_PEER_AS);
            n.data = u16::try_from(open.asn)
                .unwrap_or(super::wire::AS_TRANS)
                .to_be_bytes()
                .to_vec();
            return Err(n);
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(Notification::new(codes::OPEN, codes::OPEN_BAD_HOLD_TIME));
        }
        let ibgp = self.cfg.local_asn == self.cfg.peer_asn;
        if open.bgp_id.is_unspecified() || (ibgp && open.bgp_id == self.cfg.bgp_id) {
            return Err(Notification::new(codes::OPEN, codes::OPEN_BAD_BGP_ID));
        }
        let theirs = open
            .families
            .clone()
            .unwrap_or_else(|| BTreeSet::from([Family::Ipv4]));
        let families = self
            .cfg
            .families
            .iter()
            .copied()
            .filter(|f| theirs.contains(f))
            .collect();
        let hold = Duration::from_secs(u64::from(self.cfg.hold_time.min(open.hold_time)));
        let keepalive = (!hold.is_zero()).then(|| {
            self.cfg
                .keepalive
                .unwrap_or(hold / 3)
                .min(hold)
                .max(Duration::from_millis(100))
        });
        Ok(Negotiated {
            hold_time: hold,
            keepalive,
            families,
            asn4: open.asn4,
            peer_id: open.bgp_id,
        })
    }

    fn rearm_hold(&self, actions: &mut Vec<Action>) {
        if let Some(n) = &self.negotiated
            && !n.hold_time.is_zero()
        {
            actions.push(Action::Arm(Timer::Hold, n.hold_time));
        }
    }

    /// Feed one event; returns what to do.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use State::*;
        match (self.state, event) {
            (_, Event::Stop(n)) => {
                let mut actions = Vec::new();
                if self.state.connected() {
                    actions.push(Action::Send(Out::Notification(n)));
                    actions.push(Action::Close);
                }
                if self.state == Connect {
                    actions.push(Action::Close);
                }
                actions.extend([
                    Action::Cancel(Timer::ConnectRetry),
                    Action::Cancel(Timer::Hold),
                    Action::Cancel(Timer::Keepalive),
                ]);
                if self.state == Established {
                    actions.push(Action::Down);
                }
                self.state = Idle;
                self.negotiated = None;
                actions
            }
            (Idle, Event::Start) => {
                self.retry = FIRST_RETRY;
                self.start()
            }
            (Idle | Active, Event::Timer(Timer::ConnectRetry)) => self.start(),
            (Connect | Active, Event::Connected) => {
                self.state = OpenSent;
                vec![
                    Action::Cancel(Timer::ConnectRetry),
                    Action::Send(Out::Open(self.open_params())),
                    Action::Arm(Timer::Hold, OPEN_SENT_HOLD),
                ]
            }
            (Connect, Event::ConnectFailed(why)) => self.fail(why, vec![]),
            (OpenSent | OpenConfirm | Established, Event::Closed(why)) => self.fail(why, vec![]),
            (OpenSent | OpenConfirm | Established, Event::Malformed(n)) => self.reject(n),
            (OpenSent | OpenConfirm | Established, Event::Received(Message::Notification(n))) => {
                self.fail(format!("peer sent NOTIFICATION: {n}"), vec![])
            }
            (OpenSent | OpenConfirm | Established, Event::Timer(Timer::Hold)) => {
                self.reject(Notification::new(codes::HOLD_TIMER_EXPIRED, 0))
            }
            (OpenConfirm | Established, Event::BfdDown) => {
                let actions = vec![Action::Send(Out::Notification(Notification::cease(
                    codes::CEASE_BFD_DOWN,
                )))];
                self.fail("BFD session went down".into(), actions)
            }
            (OpenSent, Event::Received(Message::Open(open))) => match self.check_open(&open) {
                Ok(negotiated) => {
                    self.state = OpenConfirm;
                    let mut actions = vec![Action::Send(Out::Keepalive)];
                    actions.push(Action::Cancel(Timer::Hold));
                    if let Some(k) = negotiated.keepalive {
                        actions.push(Action::Arm(Timer::Keepalive, k));
                    }
                    self.negotiated = Some(negotiated);
                    self.rearm_hold(&mut actions);
                    actions
                }
                Err(n) => self.reject(n),
            },
            (OpenSent, Event::Received(_)) => self.reject(Notification::new(codes::FSM, 1)),
            (OpenConfirm, Event::Received(Message::Keepalive)) => {
                self.state = Established;
                self.retry = FIRST_RETRY;
                self.last_error = None;
                let mut actions = Vec::new();
                self.rearm_hold(&mut actions);
                if let Some(n) = &self.negotiated {
                    actions.push(Action::Up(n.clone()));
                }
                actions
            }
            (OpenConfirm, Event::Received(_)) => self.reject(Notification::new(codes::FSM, 2)),
            (OpenConfirm | Established, Event::Timer(Timer::Keepalive)) => {
                let mut actions = vec![Action::Send(Out::Keepalive)];
                if let Some(k) = self.negotiated.as_ref().and_then(|n| n.keepalive) {
                    actions.push(Action::Arm(Timer::Keepalive, k));
                }
                actions
            }
            (Established, Event::Received(Message::Keepalive | Message::Update)) => {
                let mut actions = Vec::new();
                self.rearm_hold(&mut actions);
                actions
            }
            (Established, Event::Received(Message::RouteRefresh(family))) => {
                let mut actions = Vec::new();
                self.rearm_hold(&mut actions);
                // A family we did not negotiate (or do not know) is ignored (RFC 2918 4).
                if let Some(f) = family
                    && self
                        .negotiated
                        .as_ref()
                        .is_some_and(|n| n.families.contains(&f))
                {
                    actions.push(Action::Refresh(f));
                }
                actions
            }
            (Established, Event::Received(Message::Open(_))) => {
                self.reject(Notification::new(codes::FSM, 3))
            }
            // Stale timers, duplicate starts, BFD news while not up: nothing to do.
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(passive: bool) -> Config {
        Config {
            local_asn: 64512,
            peer_asn: 64500,
            hold_time: 9,
            keepalive: None,
            bgp_id: "192.0.2.11".parse().unwrap(),
            passive,
            connect_time: Duration::from_secs(8),
            families: vec![Family::Ipv4, Family::Ipv6],
        }
    }

    fn their_open(asn: u32, hold: u16) -> Message {
        Message::Open(OpenInfo {
            asn,
            hold_time: hold,
            bgp_id: "192.0.2.1".parse().unwrap(),
            families: Some(BTreeSet::from([Family::Ipv4, Family::Ipv6])),
            asn4: true,
            route_refresh: true,
        })
    }

    fn established() -> Fsm {
        let mut f = Fsm::new(cfg(false));
        f.handle(Event::Start);
        f.handle(Event::Connected);
        f.handle(Event::Received(their_open(64500, 30)));
        f.handle(Event::Received(Message::Keepalive));
        assert_eq!(f.state(), State::Established);
        f
    }

    #[test]
    fn the_happy_path_negotiates_the_smaller_hold_time() {
        let mut f = Fsm::new(cfg(false));
        assert_eq!(f.handle(Event::Start), vec![Action::Connect]);
        assert_eq!(f.state(), State::Connect);
        let a = f.handle(Event::Connected);
        assert!(matches!(a[1], Action::Send(Out::Open(_))), "{a:?}");
        assert!(a.contains(&Action::Arm(Timer::Hold, OPEN_SENT_HOLD)));
        assert_eq!(f.state(), State::OpenSent);
        let a = f.handle(Event::Received(their_open(64500, 30)));
        assert_eq!(f.state(), State::OpenConfirm);
        assert_eq!(a[0], Action::Send(Out::Keepalive));
        assert!(a.contains(&Action::Arm(Timer::Keepalive, Duration::from_secs(3))));
        assert!(a.contains(&Action::Arm(Timer::Hold, Duration::from_secs(9))));
        let a = f.handle(Event::Received(Message::Keepalive));
        assert_eq!(f.state(), State::Established);
        let Some(Action::Up(n)) = a.last() else {
            panic!("{a:?}")
        };
        assert_eq!(n.hold_time, Duration::from_secs(9));
        assert_eq!(n.families, BTreeSet::from([Family::Ipv4, Family::Ipv6]));
        // Keepalives and updates keep it up.
        assert_eq!(
            f.handle(Event::Received(Message::Update)),
            vec![Action::Arm(Timer::Hold, Duration::from_secs(9))]
        );
        assert_eq!(
            f.handle(Event::Timer(Timer::Keepalive)),
            vec![
                Action::Send(Out::Keepalive),
                Action::Arm(Timer::Keepalive, Duration::from_secs(3))
            ]
        );
    }

    #[test]
    fn a_wrong_peer_as_is_refused_with_bad_peer_as() {
        let mut f = Fsm::new(cfg(false));
        f.handle(Event::Start);
        f.handle(Event::Connected);
        let a = f.handle(Event::Received(their_open(64999, 30)));
        assert!(matches!(
            &a[0],
            Action::Send(Out::Notification(Notification {
                code: 2,
                subcode: 2,
                ..
            }))
        ));
        assert!(a.contains(&Action::Close));
        assert!(a.contains(&Action::Arm(Timer::ConnectRetry, FIRST_RETRY)));
        assert_eq!(f.state(), State::Idle);
        assert!(f.last_error().unwrap().contains("bad peer AS"));
        // And it tries again when the timer fires.
        assert_eq!(
            f.handle(Event::Timer(Timer::ConnectRetry)),
            vec![Action::Connect]
        );
    }

    #[test]
    fn no_multiprotocol_capability_means_ipv4_only() {
        let mut f = Fsm::new(cfg(false));
        f.handle(Event::Start);
        f.handle(Event::Connected);
        f.handle(Event::Received(Message::Open(OpenInfo {
            asn: 64500,
            hold_time: 90,
            bgp_id: "192.0.2.1".parse().unwrap(),
            families: None,
            asn4: false,
            route_refresh: false,
        })));
        assert_eq!(
            f.negotiated().unwrap().families,
            BTreeSet::from([Family::Ipv4])
        );
    }

    #[test]
    fn hold_time_zero_means_no_keepalives() {
        let mut f = Fsm::new(cfg(false));
        f.handle(Event::Start);
        f.handle(Event::Connected);
        let a = f.handle(Event::Received(their_open(64500, 0)));
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::Arm(Timer::Keepalive | Timer::Hold, _))),
            "{a:?}"
        );
        assert_eq!(f.negotiated().unwrap().keepalive, None);
    }

    #[test]
    fn hold_timer_expiry_sends_its_notification_and_goes_down() {
        let mut f = established();
        let a = f.handle(Event::Timer(Timer::Hold));
        assert_eq!(
            a[0],
            Action::Send(Out::Notification(Notification::new(4, 0)))
        );
        assert!(a.contains(&Action::Close) && a.contains(&Action::Down));
        assert_eq!(f.state(), State::Idle);
    }

    #[test]
    fn route_refresh_resends_only_negotiated_families() {
        let mut f = established();
        let a = f.handle(Event::Received(Message::RouteRefresh(Some(Family::Ipv6))));
        assert!(a.contains(&Action::Refresh(Family::Ipv6)));
        let a = f.handle(Event::Received(Message::RouteRefresh(None)));
        assert!(!a.iter().any(|a| matches!(a, Action::Refresh(_))));
    }

    #[test]
    fn unexpected_messages_are_fsm_errors_with_the_state_subcode() {
        let mut f = Fsm::new(cfg(false));
        f.handle(Event::Start);
        f.handle(Event::Connected);
        let a = f.handle(Event::Received(Message::Keepalive));
        assert_eq!(
            a[0],
            Action::Send(Out::Notification(Notification::new(5, 1)))
        );
        let mut f = established();
        let a = f.handle(Event::Received(their_open(64500, 30)));
        assert_eq!(
            a[0],
            Action::Send(Out::Notification(Notification::new(5, 3)))
        );
    }

    #[test]
    fn stop_sends_cease_when_connected() {
        let mut f = established();
        let a = f.handle(Event::Stop(Notification::cease(
            codes::CEASE_ADMIN_SHUTDOWN,
        )));
        assert_eq!(
            a[..2],
            [
                Action::Send(Out::Notification(Notification::cease(2))),
                Action::Close
            ]
        );
        assert!(a.contains(&Action::Down));
        assert_eq!(f.state(), State::Idle);
        // Stopped means stopped: a stale retry timer does not reconnect... until started.
        let mut f = Fsm::new(cfg(false));
        f.handle(Event::Start);
        let a = f.handle(Event::Stop(Notification::cease(2)));
        assert!(!a.iter().any(|a| matches!(a, Action::Send(_))), "{a:?}");
    }

    #[test]
    fn connect_failures_back_off_up_to_connect_time_then_reset_when_up() {
        let mut f = Fsm::new(cfg(false));
        f.handle(Event::Start);
        let mut delays = Vec::new();
        for _ in 0..6 {
            let a = f.handle(Event::ConnectFailed("refused".into()));
            assert_eq!(f.state(), State::Active);
            for act in a {
                if let Action::Arm(Timer::ConnectRetry, d) = act {
                    delays.push(d.as_secs());
                }
            }
            assert_eq!(
                f.handle(Event::Timer(Timer::ConnectRetry)),
                vec![Action::Connect]
            );
        }
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        f.handle(Event::Connected);
        f.handle(Event::Received(their_open(64500, 30)));
        f.handle(Event::Received(Message::Keepalive));
        let a = f.handle(Event::Closed("reset".into()));
        assert!(a.contains(&Action::Arm(Timer::ConnectRetry, FIRST_RETRY)));
    }

    #[test]
    fn passive_sessions_wait_for_the_peer() {
        let mut f = Fsm::new(cfg(true));
        assert!(f.handle(Event::Start).is_empty());
        assert_eq!(f.state(), State::Active);
        f.handle(Event::Connected);
        assert_eq!(f.state(), State::OpenSent);
        let a = f.handle(Event::Closed("reset".into()));
        assert_eq!(f.state(), State::Active);
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::Arm(Timer::ConnectRetry, _)))
        );
    }

    #[test]
    fn bfd_down_tears_an_established_session_down() {
        let mut f = established();
        let a = f.handle(Event::BfdDown);
        assert_eq!(
            a[0],
            Action::Send(Out::Notification(Notification::cease(10)))
        );
        assert!(a.contains(&Action::Down));
    }

    fn any_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Start),
            Just(Event::Stop(Notification::cease(2))),
            Just(Event::Connected),
            Just(Event::ConnectFailed("x".into())),
            Just(Event::Closed("x".into())),
            Just(Event::Timer(Timer::ConnectRetry)),
            Just(Event::Timer(Timer::Hold)),
            Just(Event::Timer(Timer::Keepalive)),
            Just(Event::Received(Message::Keepalive)),
            Just(Event::Received(Message::Update)),
            Just(Event::Received(Message::RouteRefresh(Some(Family::Ipv4)))),
            Just(Event::Received(Message::Notification(Notification::new(
                6, 2
            )))),
            (0u32..3, 0u16..5).prop_map(|(a, h)| Event::Received(their_open(64499 + a, h))),
            Just(Event::Malformed(Notification::new(1, 2))),
            Just(Event::BfdDown),
        ]
    }

    proptest! {
        /// Whatever happens, in any order: `Up` and `Down` alternate, starting with `Up`;
        /// Established is reached only through `Up`; and a session that is not connected is
        /// never asked to send.
        #[test]
        fn up_and_down_alternate(events in proptest::collection::vec(any_event(), 0..80)) {
            let mut f = Fsm::new(cfg(false));
            let mut up = false;
            for e in events {
                let was_connected = f.state().connected() || f.state() == State::Connect;
                let connecting = matches!(e, Event::Connected) && matches!(f.state(), State::Connect | State::Active);
                let actions = f.handle(e);
                for a in &actions {
                    match a {
                        Action::Up(_) => { prop_assert!(!up); up = true; }
                        Action::Down => { prop_assert!(up); up = false; }
                        Action::Send(_) => prop_assert!(was_connected || connecting, "{actions:?}"),
                        _ => {}
                    }
                }
                prop_assert_eq!(up, f.state() == State::Established);
            }
        }
    }
}
