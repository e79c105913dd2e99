//! Bidirectional Forwarding Detection (RFC 5880, single hop per RFC 5881), asynchronous mode,
//! one session per BGP peer that asks for it: [`fsm`] decides, this module does the I/O.
//!
//! - Control packets are received on UDP port 3784 ([`PORT`]) of both families, by one socket
//!   each, opened when the first session starts. `IP_MINTTL`/`IPV6_MINHOPCOUNT` 255 makes the
//!   kernel drop anything that crossed a router (RFC 5881 5, GTSM). A packet goes to its
//!   session by "your discriminator", or by source address while that is still zero.
//! - Each session sends from its own socket, bound to a source port in 49152-65535 and
//!   connected to the peer's port 3784, with TTL 255.
//! - Transmission is jittered to 75-100% of the interval (90% with a multiplier of 1, RFC
//!   5880 6.8.7).
//!
//! - Everything here runs on a thread of its own (started with the first session), like the
//!   membership and the data plane: the speaker's main runtime decodes lists of thousands of
//!   objects, plans over them and encodes UPDATEs with thousands of routes, and a BFD packet
//!   that waits behind that work by more than the detection time (300 ms with 100 ms x 3) makes
//!   the router declare the node dead and drop its BGP session, which then re-sends every route,
//!   which delays BFD again.
//! - A detection timer that expires is checked against the packets already queued for the
//!   session: after the thread was descheduled for a while, the timer and the packets that
//!   arrived meanwhile are ready at the same time, and the packets win.
//!
//! The session's state is published on a watch channel: the BGP session tears itself down
//! when it goes from Up to Down. Stopping a session sends AdminDown, so the router does not
//! count a graceful stop as a failure.

pub mod fsm;
pub mod packet;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::interfaces::AbortOnDrop;
use packet::{Packet, State};

/// UDP port of single-hop BFD control packets.
pub const PORT: u16 = 3784;
/// Source ports a session may send from (RFC 5881 4).
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// How many AdminDown packets a stopping session sends.
const ADMIN_DOWN_PACKETS: usize = 3;

#[derive(Default)]
struct Registry {
    by_peer: HashMap<IpAddr, mpsc::UnboundedSender<Packet>>,
    by_disc: HashMap<u32, IpAddr>,
    next_disc: u32,
    receivers: Vec<AbortOnDrop<()>>,
    /// Dropped last (after the tasks above are aborted): ends the thread.
    thread: Option<Thread>,
}

/// The BFD thread's runtime; the thread ends when this is dropped (with the last [`Bfd`]).
struct Thread {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

/// Starts the BFD thread with a current-thread runtime and returns its handle.
fn start_thread() -> io::Result<Thread> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bfd".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            if tx.send(Ok((runtime.handle().clone(), stop_tx))).is_ok() {
                // Err once the sender is dropped: the last handle is gone.
                let _ = runtime.block_on(stop_rx);
            }
        })?;
    // The thread answers as soon as its runtime is built (well under a millisecond).
    let (handle, stop) = rx
        .recv()
        .map_err(|_| io::Error::other("the BFD thread ended before it started"))??;
    Ok(Thread {
        handle,
        _stop: stop,
    })
}

/// The node's BFD sessions. Cheap to clone.
#[derive(Clone, Default)]
pub struct Bfd {
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Bfd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bfd")
    }
}

/// A running session; dropping it stops the session without AdminDown (use
/// [`BfdSession::shutdown`] to tell the peer).
#[derive(Debug)]
pub struct BfdSession {
    /// The session's state, updated on every change.
    pub state: watch::Receiver<State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl BfdSession {
    /// Sends AdminDown and waits (briefly) for the session to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
        }
    }
}

impl Drop for BfdSession {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn lock(r: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

fn receive_socket(v6: bool) -> io::Result<UdpSocket> {
    let (domain, any) = if v6 {
        (
            Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT)),
        )
    } else {
        (
            Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)),
        )
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if v6 {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    crate::sys::set_min_ttl(&s, v6, 255)?;
    s.set_nonblocking(true)?;
    s.bind(&any.into())?;
    UdpSocket::from_std(s.into())
}

fn send_socket(peer: IpAddr) -> io::Result<UdpSocket> {
    let v6 = peer.is_ipv6();
    let s = Socket::new(
        Domain::for_address(SocketAddr::new(peer, 0)),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if v6 {
        s.set_unicast_hops_v6(255)?;
    } else {
        s.set_ttl_v4(255)?;
    }
    s.set_nonblocking(true)?;
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let mut rng = rand::rng();
    let mut last = None;
    for _ in 0..32 {
        let port = rng.random_range(SOURCE_PORTS);
        match s.bind(&SocketAddr::new(any, port).into()) {
            Ok(()) => {
                s.connect(&SocketAddr::new(peer, PORT).into())?;
                return UdpSocket::from_std(s.into());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free BFD source port")))
}

async fn receive_loop(socket: UdpSocket, registry: Arc<Mutex<Registry>>) {
    let mut buf = [0u8; 128];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(%error, "BFD receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let p = match packet::decode(&buf[..n]) {
            Ok(p) => p,
            Err(error) => {
                tracing::debug!(%from, %error, "BFD packet discarded");
                continue;
            }
        };
        let reg = lock(&registry);
        let peer = if p.your_disc != 0 {
            reg.by_disc.get(&p.your_disc).copied()
        } else {
            Some(from.ip().to_canonical())
        };
        if let Some(tx) = peer.and_then(|peer| reg.by_peer.get(&peer)) {
            let _ = tx.send(p);
        }
    }
}

fn jittered(interval: Duration, detect_mult: u8) -> Duration {
    let top = if detect_mult == 1 { 0.9 } else { 1.0 };
    interval.mul_f64(rand::rng().random_range(0.75..top))
}

impl Bfd {
    /// No sessions yet; sockets open with the first.
    pub fn new() -> Bfd {
        Bfd::default()
    }

    /// Starts the thread and the receiving sockets, once; returns the thread's runtime.
    fn ensure_started(&self) -> io::Result<tokio::runtime::Handle> {
        let mut reg = lock(&self.registry);
        if reg.thread.is_none() {
            reg.thread = Some(start_thread()?);
        }
        let handle = match &reg.thread {
            Some(t) => t.handle.clone(),
            None => return Err(io::Error::other("no BFD thread")),
        };
        if !reg.receivers.is_empty() {
            return Ok(handle);
        }
        // Sockets register with the reactor of the runtime they are created in.
        let _entered = handle.enter();
        let mut receivers = Vec::new();
        for v6 in [false, true] {
            match receive_socket(v6) {
                Ok(s) => receivers.push(AbortOnDrop(
                    handle.spawn(receive_loop(s, Arc::clone(&self.registry))),
                )),
                // A node without IPv6 still does IPv4 BFD.
                Err(error) if v6 => tracing::warn!(%error, "no IPv6 BFD socket"),
                Err(error) => return Err(error),
            }
        }
        reg.receivers = receivers;
        Ok(handle)
    }

    /// Starts a session with `peer` (replacing any previous one with the same peer).
    pub fn session(&self, peer: IpAddr, cfg: fsm::Config) -> io::Result<BfdSession> {
        let peer = peer.to_canonical();
        let runtime = self.ensure_started()?;
        let socket = {
            let _entered = runtime.enter();
            send_socket(peer)?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let disc = {
            let mut reg = lock(&self.registry);
            reg.by_disc.retain(|_, p| *p != peer);
            reg.next_disc = reg.next_disc.wrapping_add(1).max(1);
            let mut disc = rand::rng().random::<u32>() | 1;
            while reg.by_disc.contains_key(&disc) {
                disc = disc.wrapping_add(2);
            }
            reg.by_disc.insert(disc, peer);
            reg.by_peer.insert(peer, tx);
            disc
        };
        let (state_tx, state_rx) = watch::channel(State::Down);
        let (stop_tx, stop_rx) = oneshot::channel();
        let registry = Arc::clone(&self.registry);
        let task = runtime.spawn(async move {
            run_session(fsm::Session::new(cfg, disc), socket, rx, state_tx, stop_rx).await;
            let mut reg = lock(&registry);
            if reg.by_disc.get(&disc) == Some(&peer) {
                reg.by_disc.remove(&disc);
                reg.by_peer.remove(&peer);
            }
        });
        tracing::debug!(%peer, disc, "BFD session started");
        Ok(BfdSession {
            state: state_rx,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// A packet for the session: the state machine's answer carried out.
fn on_packet(
    s: &mut fsm::Session,
    p: &Packet,
    detect_at: &mut Option<Instant>,
    state: &watch::Sender<State>,
    send: &impl Fn(&Packet),
) {
    let out = s.receive(p);
    if let Some(d) = out.detect {
        *detect_at = Some(Instant::now() + d);
    }
    if let Some(p) = out.send_now {
        send(&p);
    }
    if let Some(from) = out.changed_from {
        tracing::info!(from = %from, to = %s.state(), "BFD session changed state");
        let _ = state.send(s.state());
    }
}

async fn run_session(
    mut s: fsm::Session,
    socket: UdpSocket,
    mut rx: mpsc::UnboundedReceiver<Packet>,
    state: watch::Sender<State>,
    mut stop: oneshot::Receiver<()>,
) {
    let send = |p: &Packet| {
        let bytes = packet::encode(p);
        if let Err(error) = socket.try_send(&bytes) {
            tracing::trace!(%error, "BFD send failed");
        }
    };
    let detect_mult = s.packet().detect_mult;
    let mut next_tx = Instant::now();
    let mut last_tx: Option<Instant> = None;
    let mut detect_at: Option<Instant> = None;
    loop {
        let tx_enabled = s.tx_interval().is_some();
        tokio::select! {
            _ = &mut stop => {
                let p = s.admin_down();
                for _ in 0..ADMIN_DOWN_PACKETS {
                    send(&p);
                }
                let _ = state.send(State::AdminDown);
                return;
            }
            Some(p) = rx.recv() => {
                on_packet(&mut s, &p, &mut detect_at, &state, &send);
                // Up (or the peer asking for more) shortens the interval: the next packet is
                // due by the new one, not by what was planned at the old rate, or the peer's
                // detection time runs out first.
                if let Some(interval) = s.tx_interval() {
                    next_tx = next_tx.min(Instant::now() + jittered(interval, detect_mult));
                }
            }
            () = tokio::time::sleep_until(next_tx), if tx_enabled => {
                send(&s.packet());
                let now = Instant::now();
                let interval = s.tx_interval().unwrap_or(fsm::SLOW_TX);
                if let Some(gap) = last_tx.map(|t| now - t)
                    && s.state() == State::Up
                    && gap > interval * u32::from(detect_mult)
                {
                    tracing::warn!(gap_ms = gap.as_millis(), "BFD packets went out too late: the peer may have declared this session down (CPU starvation?)");
                }
                last_tx = Some(now);
                next_tx = now + jittered(interval, detect_mult);
            }
            () = tokio::time::sleep_until(detect_at.unwrap_or_else(Instant::now)), if detect_at.is_some() => {
                // After a stall the timer and the packets that came meanwhile are ready
                // together: let the receiver hand them over, and let them count first.
                tokio::task::yield_now().await;
                let mut heard = false;
                while let Ok(p) = rx.try_recv() {
                    heard = true;
                    on_packet(&mut s, &p, &mut detect_at, &state, &send);
                }
                if heard {
                    continue;
                }
                detect_at = None;
                let out = s.detection_timeout();
                if let Some(p) = out.send_now {
                    send(&p);
                }
                if let Some(from) = out.changed_from {
                    tracing::info!(from = %from, to = %s.state(), "BFD detection time expired");
                    let _ = state.send(s.state());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_peer(state: State) -> Packet {
        Packet {
            diag: 0,
            state,
            poll: false,
            final_: false,
            detect_mult: 3,
            my_disc: 2,
            your_disc: 1,
            desired_min_tx: Duration::from_millis(100),
            required_min_rx: Duration::from_millis(100),
        }
    }

    /// The flap seen with a second peer under load: the session's thread did not run for longer
    /// than the detection time while the peer's packets kept arriving. When it runs again, the
    /// detection timer and those packets are ready together; the packets must win, or the
    /// session goes Down (and the router drops the BGP session) although the peer never went
    /// silent. Real sockets and the real receiver; the stall is this test blocking the
    /// runtime's only thread. Before the drain, a run of six failed nearly every time (tokio
    /// picks among ready branches at random).
    #[tokio::test]
    async fn packets_that_came_during_a_stall_count_before_the_detection_timer() {
        let cfg = fsm::Config {
            desired_min_tx: Duration::from_millis(100),
            required_min_rx: Duration::from_millis(100),
            detect_mult: 3,
            passive: false,
        };
        for round in 0..6 {
            let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            peer.connect(receiver.local_addr().unwrap()).unwrap();
            let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let ours = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            ours.connect(sink.local_addr().unwrap()).await.unwrap();
            let (tx, rx) = mpsc::unbounded_channel();
            let registry = Arc::new(Mutex::new(Registry::default()));
            {
                let mut reg = lock(&registry);
                reg.by_disc.insert(1, peer.local_addr().unwrap().ip());
                reg.by_peer.insert(peer.local_addr().unwrap().ip(), tx);
            }
            let _receiver = AbortOnDrop(tokio::spawn(receive_loop(receiver, registry)));
            let (state_tx, mut state_rx) = watch::channel(State::Down);
            let (_stop, stop_rx) = oneshot::channel();
            let _session = AbortOnDrop(tokio::spawn(run_session(
                fsm::Session::new(cfg, 1),
                ours,
                rx,
                state_tx,
                stop_rx,
            )));
            let send = |state| peer.send(&packet::encode(&from_peer(state))).unwrap();
            send(State::Down);
            send(State::Up);
            tokio::time::timeout(
                Duration::from_secs(5),
                state_rx.wait_for(|s| *s == State::Up),
            )
            .await
            .expect("the session comes up")
            .unwrap();
            // The stall: the peer sends every 100 ms, this thread does not run for 500 ms.
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(100));
                send(State::Up);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(*state_rx.borrow(), State::Up, "round {round}");
        }
    }

    #[test]
    fn jitter_stays_within_the_rfc_bounds() {
        for _ in 0..1000 {
            let j = jittered(Duration::from_millis(100), 3);
            assert!(j >= Duration::from_millis(75) && j <= Duration::from_millis(100));
            let j = jittered(Duration::from_millis(100), 1);
            assert!(j <= Duration::from_millis(90));
        }
    }
}
