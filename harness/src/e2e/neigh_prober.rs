//! An independent judge of who answers for an address: a prober on the client's LAN that asks
//! "who has this address?" every few milliseconds (ARP for IPv4, a Neighbour Solicitation for
//! IPv6) and records every claim it hears, with the time and the MAC.
//!
//! It runs in a namespace of its own on the lab's bridge (see [`Lab::neigh_prober`]), not in the
//! client's: the client's kernel would otherwise learn from the prober's answers and stop being
//! an independent witness of what a real client sees.
//!
//! Two kinds of claims are recorded: answers to the prober's own questions, attributed to the
//! round (question) they answer, and announcements nobody asked for (gratuitous ARP,
//! unsolicited NA). [`judge`] turns them into the figures the tests assert on: rounds answered
//! by two MACs, the longest run of rounds nobody answered, and announcements by a MAC that did
//! not answer for the address around that time.
//!
//! The frames are written by hand: an ARP request is 28 bytes behind an Ethernet header and a
//! Neighbour Solicitation 32 bytes of ICMPv6 (the kernel adds the IPv6 header and checksum), and
//! no maintained crate offers a prober, only the builders the speaker itself uses (which the
//! judge must not share). The sockets are socket2's and the calls nix's, all safe.
//!
//! [`Lab::neigh_prober`]: super::lab::Lab::neigh_prober

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::LinkAddr;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::{Host, NetnsError};

const ETH_P_ARP: u16 = 0x0806;

/// One claim heard for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// When it arrived.
    pub at: Instant,
    /// The address claimed.
    pub ip: IpAddr,
    /// The MAC claiming it, lower case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The round it answers, or `None` for an announcement nobody asked for.
    pub round: Option<u64>,
}

#[derive(Debug, Default)]
struct Log {
    /// Round number → when its questions were sent.
    rounds: Vec<Instant>,
    claims: Vec<Claim>,
}

/// A running prober; stops when dropped.
#[derive(Debug)]
pub struct NeighProber {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<io::Result<()>, NetnsError>>>,
    addresses: Vec<IpAddr>,
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An ARP request (Ethernet broadcast) from `mac`/`sender` for `target`.
pub fn arp_request(mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// An ARP claim in a frame: (sender IP, sender MAC, whether it answers `asker`).
/// `None` for anything that is not an ARP packet claiming an address.
pub fn arp_claim(frame: &[u8], asker: Ipv4Addr) -> Option<(Ipv4Addr, [u8; 6], bool)> {
    let arp = frame.get(14..42)?;
    if frame.get(12..14)? != ETH_P_ARP.to_be_bytes() || arp.get(..6)? != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let op = u16::from_be_bytes([arp[6], arp[7]]);
    let sha: [u8; 6] = arp.get(8..14)?.try_into().ok()?;
    let spa = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    let tpa = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    match op {
        // An answer, to us or (gratuitous reply) to nobody in particular.
        2 => Some((spa, sha, tpa == asker)),
        // A gratuitous request: sender and target are the claimed address.
        1 if spa == tpa && !spa.is_unspecified() => Some((spa, sha, false)),
        _ => None,
    }
}

/// The ICMPv6 body of a Neighbour Solicitation for `target` from `mac`.
pub fn neighbor_solicitation(target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut b = vec![135, 0, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(&mac);
    b
}

/// An NA claim in an ICMPv6 message: (target, MAC from its Target Link-Layer option, solicited).
pub fn na_claim(icmp: &[u8]) -> Option<(Ipv6Addr, [u8; 6], bool)> {
    if *icmp.first()? != 136 {
        return None;
    }
    let solicited = icmp.get(4)? & 0x40 != 0;
    let target: [u8; 16] = icmp.get(8..24)?.try_into().ok()?;
    let mut options = icmp.get(24..)?;
    while let [kind, len, ..] = options {
        let size = usize::from(*len) * 8;
        if size == 0 {
            return None;
        }
        if *kind == 2 {
            let mac: [u8; 6] = options.get(2..8)?.try_into().ok()?;
            return Some((Ipv6Addr::from(target), mac, solicited));
        }
        options = options.get(size..)?;
    }
    None
}

fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The sockets of the prober, inside its namespace.
struct Sockets {
    arp: Socket,
    icmp6: Socket,
    ifindex: u32,
}

/// The link-layer address the kernel reports for `ifname` (its index and MAC).
///
/// Binding a packet socket to one interface takes a `sockaddr_ll`, which neither nix nor
/// socket2 lets safe code build; getifaddrs(3) hands one out for each interface. Its protocol
/// field is 0, which bind(2) on a packet socket reads as "keep the socket's own" (ETH_P_ARP).
fn link_address(ifname: &str) -> io::Result<LinkAddr> {
    nix::ifaddrs::getifaddrs()?
        .filter(|a| a.interface_name == ifname)
        .find_map(|a| a.address.as_ref()?.as_link_addr().copied())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no link-layer address for {ifname}"),
            )
        })
}

fn open_sockets(ifname: &str) -> io::Result<Sockets> {
    let link = link_address(ifname)?;
    let ifindex = u32::try_from(link.ifindex()).map_err(io::Error::other)?;
    // Only ARP frames, and only from `ifname` once bound.
    let arp = Socket::new(
        Domain::PACKET,
        Type::RAW.nonblocking(),
        Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
    )?;
    nix::sys::socket::bind(arp.as_raw_fd(), &link)?;
    let icmp6 = Socket::new(
        Domain::IPV6,
        Type::RAW.nonblocking(),
        Some(Protocol::ICMPV6),
    )?;
    // Neighbour Discovery messages with another hop limit are dropped by the receiver.
    icmp6.set_multicast_hops_v6(255)?;
    icmp6.set_unicast_hops_v6(255)?;
    Ok(Sockets {
        arp,
        icmp6,
        ifindex,
    })
}

fn send_arp(s: &Sockets, frame: &[u8]) {
    // A lost question is an unanswered round, which is what the judge measures.
    let _ = s.arp.send(frame);
}

fn send_ns(s: &Sockets, target: Ipv6Addr, body: &[u8]) {
    let to = SocketAddrV6::new(solicited_node(target), 0, 0, s.ifindex);
    let _ = s.icmp6.send_to(body, &SockAddr::from(to));
}

/// Waits up to `timeout` for either socket to become readable; returns which.
fn wait_readable(s: &Sockets, timeout: Duration) -> (bool, bool) {
    let mut fds = [
        PollFd::new(s.arp.as_fd(), PollFlags::POLLIN),
        PollFd::new(s.icmp6.as_fd(), PollFlags::POLLIN),
    ];
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match nix::poll::poll(&mut fds, timeout) {
        Ok(n) if n > 0 => {}
        _ => return (false, false),
    }
    let readable = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
    (readable(&fds[0]), readable(&fds[1]))
}

/// One datagram or frame, or `None` when there is none waiting.
fn recv(socket: &Socket, buf: &mut [u8]) -> Option<usize> {
    let mut socket = socket;
    socket.read(buf).ok()
}

impl NeighProber {
    /// Starts asking, from `host` (its `eth0`, its MAC, its first addresses `ip4` / `ip6`), for
    /// each of `addresses` every `interval`.
    pub fn start(
        host: &Host,
        ip4: Ipv4Addr,
        addresses: &[IpAddr],
        interval: Duration,
    ) -> Result<NeighProber, NetnsError> {
        let mac = parse_mac(&host.mac()?).ok_or_else(|| NetnsError::Parse {
            command: "ip -j link show eth0".into(),
            reason: "no MAC".into(),
        })?;
        let log: Arc<Mutex<Log>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            let addresses = addresses.to_vec();
            host.ns().thread_in(move || -> io::Result<()> {
                let sockets = open_sockets("eth0")?;
                let questions: Vec<(IpAddr, Vec<u8>)> = addresses
                    .iter()
                    .map(|ip| match ip {
                        IpAddr::V4(v4) => (*ip, arp_request(mac, ip4, *v4)),
                        IpAddr::V6(v6) => (*ip, neighbor_solicitation(*v6, mac)),
                    })
                    .collect();
                let wanted: BTreeSet<IpAddr> = addresses.iter().copied().collect();
                let mut buf = vec![0u8; 2048];
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= next {
                        {
                            let mut l = lock(&log);
                            l.rounds.push(now);
                        }
                        for (ip, q) in &questions {
                            match ip {
                                IpAddr::V4(_) => send_arp(&sockets, q),
                                IpAddr::V6(v6) => send_ns(&sockets, *v6, q),
                            }
                        }
                        next = now + interval;
                    }
                    let (arp, icmp) =
                        wait_readable(&sockets, next.saturating_duration_since(Instant::now()));
                    let at = Instant::now();
                    let mut found: Vec<(IpAddr, [u8; 6], bool)> = Vec::new();
                    if arp {
                        while let Some(n) = recv(&sockets.arp, &mut buf) {
                            if let Some((ip, m, answer)) =
                                buf.get(..n).and_then(|f| arp_claim(f, ip4))
                            {
                                found.push((IpAddr::V4(ip), m, answer));
                            }
                        }
                    }
                    if icmp {
                        while let Some(n) = recv(&sockets.icmp6, &mut buf) {
                            if let Some((ip, m, solicited)) = buf.get(..n).and_then(na_claim) {
                                found.push((IpAddr::V6(ip), m, solicited));
                            }
                        }
                    }
                    if !found.is_empty() {
                        let mut l = lock(&log);
                        let round = l.rounds.len().checked_sub(1).map(|r| r as u64);
                        for (ip, m, answer) in
                            found.into_iter().filter(|(ip, ..)| wanted.contains(ip))
                        {
                            l.claims.push(Claim {
                                at,
                                ip,
                                mac: mac_string(&m),
                                round: if answer { round } else { None },
                            });
                        }
                    }
                }
                Ok(())
            })?
        };
        Ok(NeighProber {
            log,
            stop,
            thread: Some(thread),
            addresses: addresses.to_vec(),
        })
    }

    /// Every claim so far, in arrival order.
    pub fn claims(&self) -> Vec<Claim> {
        lock(&self.log).claims.clone()
    }

    /// When each round's questions were sent.
    pub fn rounds(&self) -> Vec<Instant> {
        lock(&self.log).rounds.clone()
    }

    /// The addresses asked for.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    /// How long each question about `ip` sent in `[from, to]` took to be answered (its first
    /// answer), in round order. Questions nobody answered are left out.
    pub fn answer_latencies(&self, ip: IpAddr, from: Instant, to: Instant) -> Vec<Duration> {
        let log = lock(&self.log);
        let mut first: BTreeMap<u64, Instant> = BTreeMap::new();
        for c in log.claims.iter().filter(|c| c.ip == ip) {
            if let Some(r) = c.round {
                first.entry(r).or_insert(c.at);
            }
        }
        first
            .into_iter()
            .filter_map(|(r, at)| {
                let sent = *log.rounds.get(usize::try_from(r).ok()?)?;
                (sent >= from && sent <= to).then(|| at.saturating_duration_since(sent))
            })
            .collect()
    }

    /// [`judge`] over every address, for rounds sent in `[from, to]`.
    pub fn judge(&self, from: Instant, to: Instant) -> BTreeMap<IpAddr, AddressReport> {
        let log = lock(&self.log);
        self.addresses
            .iter()
            .map(|ip| (*ip, judge(&log.rounds, &log.claims, *ip, from, to)))
            .collect()
    }

    /// Waits until `ip` is answered by `mac` alone for `rounds` consecutive rounds sent after
    /// `since`, or `timeout` passes.
    pub fn wait_answered_by(
        &self,
        ip: IpAddr,
        mac: &str,
        rounds: usize,
        since: Instant,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let log = lock(&self.log);
                let mut by_round: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
                for c in log.claims.iter().filter(|c| c.ip == ip) {
                    if let Some(r) = c.round
                        && log.rounds.get(r as usize).is_some_and(|t| *t >= since)
                    {
                        by_round.entry(r).or_default().insert(c.mac.as_str());
                    }
                }
                let tail: Vec<_> = by_round.values().rev().take(rounds).collect();
                if tail.len() == rounds
                    && tail
                        .iter()
                        .all(|m| m.len() == 1 && m.contains(mac.to_ascii_lowercase().as_str()))
                {
                    return true;
                }
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NeighProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the prober saw for one address over an interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressReport {
    /// Rounds whose question was answered by more than one MAC: (when, the MACs).
    pub double_answers: Vec<(Instant, BTreeSet<String>)>,
    /// The longest run of consecutive rounds nobody answered, as time from the first
    /// unanswered question to the next answered one (or the end of the interval).
    pub longest_silence: Duration,
    /// Rounds asked, and rounds answered.
    pub rounds: usize,
    /// Rounds answered by at least one MAC.
    pub answered: usize,
    /// Every MAC that answered, in order of first answer.
    pub answerers: Vec<String>,
    /// Announcements nobody asked for by a MAC that answered none of the rounds within a
    /// second of it: (when, MAC). A node announcing an address it does not own.
    pub stray_announcements: Vec<(Instant, String)>,
}

/// Judges the claims for `ip` over the rounds sent in `[from, to]`.
pub fn judge(
    rounds: &[Instant],
    claims: &[Claim],
    ip: IpAddr,
    from: Instant,
    to: Instant,
) -> AddressReport {
    let mut out = AddressReport::default();
    let in_interval = |r: u64| {
        rounds
            .get(usize::try_from(r).unwrap_or(usize::MAX))
            .is_some_and(|t| *t >= from && *t <= to)
    };
    let mut per_round: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for c in claims.iter().filter(|c| c.ip == ip) {
        if let Some(r) = c.round {
            per_round.entry(r).or_default().insert(c.mac.clone());
            if in_interval(r) && !out.answerers.contains(&c.mac) {
                out.answerers.push(c.mac.clone());
            }
        }
    }
    let mut silent_since: Option<Instant> = None;
    for (r, sent) in rounds.iter().enumerate() {
        if *sent < from || *sent > to {
            continue;
        }
        out.rounds += 1;
        match per_round.get(&(r as u64)) {
            Some(macs) if !macs.is_empty() => {
                out.answered += 1;
                if macs.len() > 1 {
                    out.double_answers.push((*sent, macs.clone()));
                }
                if let Some(since) = silent_since.take() {
                    out.longest_silence = out.longest_silence.max(sent.duration_since(since));
                }
            }
            _ => {
                silent_since.get_or_insert(*sent);
            }
        }
    }
    if let Some(since) = silent_since {
        let end = rounds
            .iter()
            .rev()
            .find(|t| **t <= to)
            .copied()
            .unwrap_or(since);
        out.longest_silence = out.longest_silence.max(end.duration_since(since));
    }
    // An announcement is judged by the second after it: the announcer should be the one
    // answering then. Announcements too close to the end of the interval are not judged.
    let after = Duration::from_secs(1);
    for c in claims
        .iter()
        .filter(|c| c.ip == ip && c.round.is_none() && c.at >= from && c.at + after <= to)
    {
        let soon = |t: Instant| t >= c.at && t <= c.at + after;
        let answered = |mine: bool| {
            per_round.iter().any(|(r, macs)| {
                macs.contains(&c.mac) == mine
                    && rounds
                        .get(usize::try_from(*r).unwrap_or(usize::MAX))
                        .is_some_and(|t| soon(*t))
            })
        };
        if !answered(true) && answered(false) {
            out.stray_announcements.push((c.at, c.mac.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mac = [2, 0, 0, 0, 0, 9];
        let req = arp_request(
            mac,
            Ipv4Addr::new(192, 0, 2, 3),
            Ipv4Addr::new(192, 0, 2, 100),
        );
        assert_eq!(req.len(), 42);
        // A request for another address is no claim.
        assert_eq!(arp_claim(&req, Ipv4Addr::new(192, 0, 2, 3)), None);
        // A reply to us: turn the request around.
        let mut reply = req.clone();
        reply[21] = 2;
        reply[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        reply[28..32].copy_from_slice(&[192, 0, 2, 100]);
        reply[38..42].copy_from_slice(&[192, 0, 2, 3]);
        assert_eq!(
            arp_claim(&reply, Ipv4Addr::new(192, 0, 2, 3)),
            Some((Ipv4Addr::new(192, 0, 2, 100), [2, 0, 0, 0, 0, 7], true))
        );
        // A gratuitous request: sender = target.
        let garp = arp_request(
            mac,
            Ipv4Addr::new(192, 0, 2, 100),
            Ipv4Addr::new(192, 0, 2, 100),
        );
        assert_eq!(
            arp_claim(&garp, Ipv4Addr::new(192, 0, 2, 3)),
            Some((Ipv4Addr::new(192, 0, 2, 100), mac, false))
        );
        let target: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let mut na = neighbor_solicitation(target, mac);
        assert_eq!(na_claim(&na), None);
        na[0] = 136;
        na[4] = 0x60;
        na[24] = 2;
        assert_eq!(na_claim(&na), Some((target, mac, true)));
        assert_eq!(
            solicited_node(target),
            "ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(na_claim(&[136, 0, 0]), None);
    }

    /// The sockets against the real kernel: a neighbour's own kernel answers the prober's ARP
    /// requests and Neighbour Solicitations, and the prober attributes the answers to rounds.
    #[test]
    fn hears_a_kernel_answer_both_families() {
        use crate::netns::Topology;
        let topo = Topology::new().unwrap();
        let prober_host = topo
            .add_host(
                "ldpr",
                Some("192.0.2.3/24".parse().unwrap()),
                Some("2001:db8::3/64".parse().unwrap()),
            )
            .unwrap();
        let target = topo
            .add_host(
                "ldtg",
                Some("192.0.2.20/24".parse().unwrap()),
                Some("2001:db8::20/64".parse().unwrap()),
            )
            .unwrap();
        let mac = target.mac().unwrap();
        let (v4, v6): (IpAddr, IpAddr) = (
            "192.0.2.20".parse().unwrap(),
            "2001:db8::20".parse().unwrap(),
        );
        let since = Instant::now();
        let prober = NeighProber::start(
            &prober_host,
            Ipv4Addr::new(192, 0, 2, 3),
            &[v4, v6],
            Duration::from_millis(20),
        )
        .unwrap();
        for ip in [v4, v6] {
            assert!(
                prober.wait_answered_by(ip, &mac, 3, since, Duration::from_secs(20)),
                "{ip} not answered by {mac}: {:?}",
                prober.claims()
            );
        }
        // Nobody answers for an address nobody holds; the rounds go on regardless.
        assert!(
            prober
                .claims()
                .iter()
                .all(|c| c.mac == mac.to_ascii_lowercase())
        );
        assert!(prober.rounds().len() >= 3);
    }

    #[test]
    fn judging_rounds() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let ip: IpAddr = "192.0.2.100".parse().unwrap();
        let rounds: Vec<Instant> = (0..10).map(|i| ms(i * 10)).collect();
        // Announcements are judged by the second after them.
        let late = |n: u64| ms(n) + Duration::from_secs(1);
        let claim = |round: Option<u64>, at: u64, mac: &str| Claim {
            at: ms(at),
            ip,
            mac: mac.into(),
            round,
        };
        let claims = vec![
            claim(Some(0), 1, "aa"),
            claim(Some(1), 11, "aa"),
            // rounds 2..=4 unanswered
            claim(None, 45, "cc"),
            claim(None, 46, "bb"),
            claim(Some(5), 51, "bb"),
            claim(Some(6), 61, "bb"),
            claim(Some(6), 62, "aa"),
            claim(Some(7), 71, "bb"),
            claim(Some(8), 81, "bb"),
            claim(Some(9), 91, "bb"),
        ];
        let r = judge(&rounds, &claims, ip, t0, late(100));
        assert_eq!(r.rounds, 10);
        assert_eq!(r.answered, 7);
        assert_eq!(r.longest_silence, Duration::from_millis(30));
        assert_eq!(
            judge(&rounds, &claims, ip, t0, ms(100)).stray_announcements,
            vec![]
        );
        assert_eq!(r.double_answers.len(), 1);
        assert_eq!(r.answerers, ["aa", "bb"]);
        assert_eq!(r.stray_announcements, vec![(ms(45), "cc".to_owned())]);
        // "bb" announcing at 46 ms and answering from 51 ms on is no stray.
        assert!(r.stray_announcements.iter().all(|(_, m)| m != "bb"));
    }
}
