//! The I/O shell of one BGP session: a tokio task that owns the TCP connection, the timers and
//! the Adj-RIB-Out, feeds [`Fsm`] and does what it says.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::BgpMetrics;
use super::adj_rib_out::{self, Changes};
use super::fsm::{Action, Config, Event, Fsm, Negotiated, Out, State, Timer};
use super::routes::Routes;
use super::wire::{self, Decoder, Family, Notification, UpdateContext};
use crate::bfd;
use crate::interfaces::LinkInfo;

/// How long a TCP connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write may block before the connection counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything that defines a session; a change restarts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSpec {
    /// The BGPPeer's name.
    pub peer_name: String,
    /// Where the peer listens.
    pub peer: SocketAddr,
    /// Local address to connect from.
    pub source: Option<IpAddr>,
    /// TTL of our packets: 1 for directly connected eBGP, 255 for iBGP and multihop.
    pub ttl: u8,
    /// The state machine's settings.
    pub fsm: Config,
    /// TCP MD5 key.
    pub password: Option<Vec<u8>>,
    /// BFD timers, when the peer asks for BFD.
    pub bfd: Option<bfd::fsm::Config>,
}

/// What a session tells the manager after each change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The BGPPeer's name.
    pub peer_name: String,
    /// Session state.
    pub state: State,
    /// Prefixes the peer holds from us.
    pub advertised: usize,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// BFD state, when BFD runs.
    pub bfd: Option<bfd::packet::State>,
}

/// Commands to a running session.
#[derive(Debug)]
pub enum Command {
    /// The routes to advertise now.
    Routes(Arc<Routes>),
    /// Withdraw everything, send this NOTIFICATION (a Cease) and end.
    Stop(Notification),
    /// A connection the listener accepted from this peer (passive sessions).
    Accepted(TcpStream),
}

/// The next hops of this node towards the peer: the session's local address for its own
/// family, and a global address of the other family on the same link, if the link has one.
pub fn next_hops(local: IpAddr, links: &[LinkInfo]) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let link = links
        .iter()
        .find(|l| l.addrs.iter().any(|a| a.addr() == local));
    let v4 = match local {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => link.and_then(|l| {
            l.addrs.iter().find_map(|a| match a.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
        }),
    };
    let v6 = match local {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => link.and_then(|l| {
            l.addrs.iter().find_map(|a| match a.addr() {
                IpAddr::V6(a) if !a.is_unicast_link_local() => Some(a),
                _ => None,
            })
        }),
    };
    (v4, v6)
}

/// Prepares a socket for the peer: MD5 key, TTL, no Nagle (a withdrawal leaves at once).
pub fn prepare_socket(
    s: &Socket,
    peer: IpAddr,
    ttl: u8,
    password: Option<&[u8]>,
) -> io::Result<()> {
    if let Some(key) = password {
        crate::sys::set_tcp_md5(s, peer, key)?;
    }
    if peer.is_ipv6() {
        s.set_unicast_hops_v6(u32::from(ttl))?;
    } else {
        s.set_ttl_v4(u32::from(ttl))?;
        // CS6 (network control), as routers mark their BGP packets.
        s.set_tos_v4(0xC0)?;
    }
    s.set_tcp_nodelay(true)?;
    Ok(())
}

async fn connect(spec: SessionSpec) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(spec.peer),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    prepare_socket(&s, spec.peer.ip(), spec.ttl, spec.password.as_deref())?;
    if let Some(source) = spec.source {
        s.bind(&SocketAddr::new(source, 0).into())?;
    }
    let socket = TcpSocket::from_std_stream(s.into());
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(spec.peer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?
}

struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    decoder: Decoder,
    local: IpAddr,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// A running session.
#[derive(Debug)]
pub struct SessionHandle {
    /// Its definition.
    pub spec: SessionSpec,
    tx: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl SessionHandle {
    /// Sends a command; false when the session has ended.
    pub fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Stops with `n` (after withdrawing) and waits up to `timeout` for the goodbye to leave.
    pub async fn stop(self, n: Notification, timeout: Duration) {
        let _ = self.tx.send(Command::Stop(n));
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Starts a session task.
pub fn spawn(
    spec: SessionSpec,
    routes: Arc<Routes>,
    reports: mpsc::UnboundedSender<Report>,
    metrics: BgpMetrics,
    bfd: Option<bfd::BfdSession>,
) -> SessionHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(
        Session {
            fsm: Fsm::new(spec.fsm.clone()),
            spec: spec.clone(),
            routes,
            reports,
            metrics,
            bfd,
            conn: None,
            connecting: None,
            timers: BTreeMap::new(),
            negotiated: None,
            ctx: None,
            advertised: Routes::new(),
            events: VecDeque::new(),
            last_report: None,
            warned_no_next_hop: BTreeSet::new(),
        }
        .run(rx),
    );
    SessionHandle { spec, tx, task }
}

struct Session {
    spec: SessionSpec,
    fsm: Fsm,
    routes: Arc<Routes>,
    reports: mpsc::UnboundedSender<Report>,
    metrics: BgpMetrics,
    bfd: Option<bfd::BfdSession>,
    conn: Option<Conn>,
    connecting: Option<Connecting>,
    timers: BTreeMap<Timer, Instant>,
    negotiated: Option<Negotiated>,
    ctx: Option<UpdateContext>,
    advertised: Routes,
    events: VecDeque<Event>,
    last_report: Option<Report>,
    warned_no_next_hop: BTreeSet<Family>,
}

async fn bfd_changed(
    rx: &mut Option<watch::Receiver<bfd::packet::State>>,
) -> Option<bfd::packet::State> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut bfd_rx = self.bfd.as_ref().map(|b| b.state.clone());
        let mut bfd_was_up = false;
        self.events.push_back(Event::Start);
        self.process().await;
        loop {
            let next_timer = self.timers.values().min().copied();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Routes(r)) => {
                        self.routes = r;
                        self.sync().await;
                    }
                    Some(Command::Stop(n)) => {
                        self.goodbye(n).await;
                        return;
                    }
                    None => {
                        self.goodbye(Notification::cease(wire::codes::CEASE_PEER_DECONFIGURED)).await;
                        return;
                    }
                    Some(Command::Accepted(stream)) => {
                        if self.spec.fsm.passive && matches!(self.fsm.state(), State::Active | State::Idle) && self.conn.is_none() {
                            self.attach(stream);
                            self.events.push_back(Event::Connected);
                        } else {
                            tracing::debug!(peer = %self.spec.peer_name, "refusing a second connection");
                        }
                    }
                },
                res = async { self.connecting.as_mut().expect("guarded").await }, if self.connecting.is_some() => {
                    self.connecting = None;
                    match res {
                        Ok(stream) => {
                            self.attach(stream);
                            self.events.push_back(Event::Connected);
                        }
                        Err(e) => self.events.push_back(Event::ConnectFailed(format!("connecting to {}: {e}", self.spec.peer))),
                    }
                }
                read = async { let c = self.conn.as_mut().expect("guarded"); c.stream.read_buf(&mut c.rbuf).await }, if self.conn.is_some() => {
                    match read {
                        Ok(0) => self.events.push_back(Event::Closed("the peer closed the connection".into())),
                        Ok(_) => self.decode_all(),
                        Err(e) => self.events.push_back(Event::Closed(format!("reading: {e}"))),
                    }
                }
                () = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    let now = Instant::now();
                    let due: Vec<Timer> = self.timers.iter().filter(|(_, at)| **at <= now).map(|(t, _)| *t).collect();
                    for t in due {
                        self.timers.remove(&t);
                        self.events.push_back(Event::Timer(t));
                    }
                }
                Some(state) = bfd_changed(&mut bfd_rx) => {
                    let up = state == bfd::packet::State::Up;
                    if bfd_was_up && !up {
                        self.events.push_back(Event::BfdDown);
                    }
                    bfd_was_up = up;
                }
            }
            self.process().await;
        }
    }

    fn attach(&mut self, stream: TcpStream) {
        let local = stream
            .local_addr()
            .map(|a| a.ip().to_canonical())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        self.conn = Some(Conn {
            stream,
            rbuf: Vec::with_capacity(4096),
            decoder: Decoder::default(),
            local,
        });
    }

    fn decode_all(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        loop {
            match c.decoder.decode(&mut c.rbuf) {
                Ok(Some(msg)) => {
                    if let wire::Message::Notification(_) = &msg {
                        self.metrics.notifications_received.inc();
                    }
                    self.events.push_back(Event::Received(msg));
                }
                Ok(None) => break,
                Err(n) => {
                    self.metrics.malformed.inc();
                    tracing::warn!(peer = %self.spec.peer_name, notification = %n, "malformed message from the peer");
                    c.rbuf.clear();
                    self.events.push_back(Event::Malformed(n));
                    break;
                }
            }
        }
    }

    /// Runs queued events through the FSM until none is left.
    async fn process(&mut self) {
        while let Some(event) = self.events.pop_front() {
            let before = self.fsm.state();
            let actions = self.fsm.handle(event);
            for a in actions {
                self.apply(a).await;
            }
            if self.fsm.state() != before {
                tracing::info!(peer = %self.spec.peer_name, from = %before, to = %self.fsm.state(),
                    error = self.fsm.last_error().unwrap_or_default(), "BGP session changed state");
            }
        }
        self.report();
    }

    async fn write(&mut self, bytes: &[u8]) {
        let Some(c) = self.conn.as_mut() else { return };
        let res = tokio::time::timeout(WRITE_TIMEOUT, c.stream.write_all(bytes)).await;
        let err = match res {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("writing: {e}"),
            Err(_) => "writing timed out".to_owned(),
        };
        // Reading will not tell: the connection is dead for writing.
        self.events.push_back(Event::Closed(err));
    }

    async fn apply(&mut self, action: Action) {
        match action {
            Action::Connect => {
                self.connecting = Some(Box::pin(connect(self.spec.clone())));
            }
            Action::Send(out) => {
                let bytes = match out {
                    Out::Open(p) => match wire::open(&p) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(peer = %self.spec.peer_name, error = %e, "cannot build OPEN");
                            return;
                        }
                    },
                    Out::Keepalive => wire::keepalive(),
                    Out::Notification(n) => {
                        self.metrics.notifications_sent.inc();
                        tracing::info!(peer = %self.spec.peer_name, notification = %n, "sending NOTIFICATION");
                        wire::notification(&n)
                    }
                };
                self.write(&bytes).await;
            }
            Action::Close => {
                self.connecting = None;
                if let Some(mut c) = self.conn.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), c.stream.shutdown()).await;
                }
            }
            Action::Arm(t, d) => {
                self.timers.insert(t, Instant::now() + d);
            }
            Action::Cancel(t) => {
                self.timers.remove(&t);
            }
            Action::Up(n) => {
                self.metrics.sessions_established.inc();
                if let Some(c) = self.conn.as_mut() {
                    c.decoder.asn4 = n.asn4;
                }
                self.ctx = Some(self.update_context(&n).await);
                self.negotiated = Some(n);
                self.advertised.clear();
                self.sync().await;
                let families: Vec<Family> = self
                    .negotiated
                    .iter()
                    .flat_map(|n| n.families.iter().copied())
                    .collect();
                for f in families {
                    if let Ok(b) = wire::end_of_rib(f) {
                        self.write(&b).await;
                    }
                }
            }
            Action::Down => {
                self.metrics.sessions_established.dec();
                self.metrics
                    .prefixes_advertised
                    .dec_by(i64::try_from(self.advertised.len()).unwrap_or(0));
                self.negotiated = None;
                self.ctx = None;
                self.advertised.clear();
            }
            Action::Refresh(f) => {
                let desired = self.sendable();
                let changes = adj_rib_out::full(&desired, Some(f));
                self.send_changes(&changes).await;
            }
        }
    }

    async fn update_context(&mut self, n: &Negotiated) -> UpdateContext {
        let local = self
            .conn
            .as_ref()
            .map(|c| c.local)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let links = match crate::interfaces::snapshot().await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "cannot read this node's addresses; next hops of the other family unknown");
                Vec::new()
            }
        };
        let (v4, v6) = next_hops(local, &links);
        UpdateContext {
            local_asn: self.spec.fsm.local_asn,
            ebgp: self.spec.fsm.local_asn != self.spec.fsm.peer_asn,
            asn4: n.asn4,
            next_hop_v4: v4,
            next_hop_v6: v6,
        }
    }

    /// The desired routes this session can carry.
    fn sendable(&mut self) -> Routes {
        let (Some(n), Some(ctx)) = (&self.negotiated, &self.ctx) else {
            return Routes::new();
        };
        let mut families: BTreeSet<Family> = n.families.clone();
        for (f, has) in [
            (Family::Ipv4, ctx.next_hop_v4.is_some()),
            (Family::Ipv6, ctx.next_hop_v6.is_some()),
        ] {
            if !has && families.remove(&f) && self.warned_no_next_hop.insert(f) {
                tracing::warn!(peer = %self.spec.peer_name, family = %f,
                    "no address of this family on the link to the peer: its routes are not advertised");
            }
        }
        adj_rib_out::sendable(&self.routes, &families)
    }

    /// Brings the peer in line with the desired routes.
    async fn sync(&mut self) {
        if self.fsm.state() != State::Established {
            return;
        }
        let desired = self.sendable();
        let changes = adj_rib_out::diff(&self.advertised, &desired);
        if changes.is_empty() {
            return;
        }
        self.send_changes(&changes).await;
        let before = self.advertised.len();
        adj_rib_out::apply(&mut self.advertised, &changes);
        let delta =
            i64::try_from(self.advertised.len()).unwrap_or(0) - i64::try_from(before).unwrap_or(0);
        self.metrics.prefixes_advertised.inc_by(delta);
        let withdrawn: usize = changes.withdraw.values().map(Vec::len).sum();
        let announced: usize = changes.announce.values().map(Vec::len).sum();
        tracing::debug!(peer = %self.spec.peer_name, announced, withdrawn, "routes sent");
        self.report();
    }

    async fn send_changes(&mut self, changes: &Changes) {
        let Some(ctx) = self.ctx.clone() else { return };
        let mut out: Vec<Vec<u8>> = Vec::new();
        for (family, prefixes) in &changes.withdraw {
            match wire::withdraw(*family, prefixes) {
                Ok(m) => out.extend(m),
                Err(e) => {
                    tracing::error!(peer = %self.spec.peer_name, error = %e, "cannot build a withdrawal")
                }
            }
        }
        for ((family, attrs), prefixes) in &changes.announce {
            match wire::announce(&ctx, *family, attrs, prefixes) {
                Ok(m) => out.extend(m),
                Err(e) => {
                    tracing::error!(peer = %self.spec.peer_name, error = %e, "cannot build an update")
                }
            }
        }
        // One write for the whole batch: the router sees them together.
        let batch: Vec<u8> = out.concat();
        self.metrics
            .updates_sent
            .inc_by(u64::try_from(out.len()).unwrap_or(0));
        self.write(&batch).await;
    }

    /// Graceful end: withdraw everything, Cease, AdminDown for BFD.
    async fn goodbye(&mut self, n: Notification) {
        if self.fsm.state() == State::Established && !self.advertised.is_empty() {
            let prefixes: Vec<IpNet> = self.advertised.keys().copied().collect();
            let mut by_family: BTreeMap<Family, Vec<IpNet>> = BTreeMap::new();
            for p in prefixes {
                by_family.entry(Family::of(p.addr())).or_default().push(p);
            }
            let changes = Changes {
                withdraw: by_family,
                announce: BTreeMap::new(),
            };
            self.send_changes(&changes).await;
        }
        self.events.push_back(Event::Stop(n));
        self.process().await;
        if let Some(b) = self.bfd.take() {
            b.shutdown().await;
        }
    }

    fn report(&mut self) {
        let r = Report {
            peer_name: self.spec.peer_name.clone(),
            state: self.fsm.state(),
            advertised: self.advertised.len(),
            last_error: self.fsm.last_error().map(str::to_owned),
            bfd: self.bfd.as_ref().map(|b| *b.state.borrow()),
        };
        if self.last_report.as_ref() != Some(&r) {
            let _ = self.reports.send(r.clone());
            self.last_report = Some(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(addrs: &[&str]) -> LinkInfo {
        LinkInfo {
            name: "eth0".into(),
            index: 2,
            mac: None,
            up: true,
            broadcast: true,
            master_is_bridge: false,
            addrs: addrs.iter().map(|a| a.parse::<IpNet>().unwrap()).collect(),
        }
    }

    #[test]
    fn next_hops_come_from_the_peering_link() {
        let links = vec![
            link(&["192.0.2.11/24", "fe80::1/64", "2001:db8::11/64"]),
            LinkInfo {
                index: 3,
                ..link(&["198.51.100.5/24", "2001:db8:9::5/64"])
            },
        ];
        assert_eq!(
            next_hops("192.0.2.11".parse().unwrap(), &links),
            (
                Some("192.0.2.11".parse().unwrap()),
                Some("2001:db8::11".parse().unwrap())
            )
        );
        assert_eq!(
            next_hops("2001:db8:9::5".parse().unwrap(), &links),
            (
                Some("198.51.100.5".parse().unwrap()),
                Some("2001:db8:9::5".parse().unwrap())
            )
        );
        // An address on no known link: only its own family.
        assert_eq!(
            next_hops("203.0.113.1".parse().unwrap(), &links),
            (Some("203.0.113.1".parse().unwrap()), None)
        );
    }
}
