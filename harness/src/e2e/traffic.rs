//! Traffic to a service address: a responder on every node, a prober on the client.
//!
//! The responder answers each UDP datagram sent to a service address with the node's name. The
//! address is put on the node's `lo`, so the kernel accepts packets for it, with
//! `arp_ignore=1` / `arp_announce=2` so the kernel never answers ARP for it on `eth0`: ARP
//! answers must come from the speaker alone. For IPv6 the kernel answers a Neighbour
//! Solicitation only for addresses on the receiving interface, so an address on `lo` is not
//! answered on `eth0` (checked by `vip_on_lo_is_not_answered_by_the_kernel` in the e2e tests).
//!
//! The prober sends a numbered request every few milliseconds from the client namespace and
//! records which node answered and when: the raw material of failover measurements.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::{Netns, NetnsError};

/// Receive timeout, which bounds how long a stop request waits.
const TICK: Duration = Duration::from_millis(50);

fn io_err(ns: &Netns, what: &str) -> impl FnOnce(io::Error) -> NetnsError {
    let context = format!("{what} in {}", ns.name());
    move |source| NetnsError::Io { context, source }
}

/// Makes `ns` accept traffic for `vips` without its kernel answering ARP/NDP for them.
pub fn prepare_node_for_vips(ns: &Netns, vips: &[IpAddr]) -> Result<(), NetnsError> {
    for key in ["all", "default", "eth0", "lo"] {
        // `eth0` may not exist yet in some topologies; the "all" keys are what matters.
        let _ = ns.sysctl(&format!("net.ipv4.conf.{key}.arp_ignore"), "1");
        let _ = ns.sysctl(&format!("net.ipv4.conf.{key}.arp_announce"), "2");
    }
    for vip in vips {
        let prefix = if vip.is_ipv4() { 32 } else { 128 };
        let addr = format!("{vip}/{prefix}");
        // Already present (a second call) is fine.
        // `nodad`: a binding right after the add must not race duplicate address detection.
        let mut args = vec!["addr", "add", addr.as_str(), "dev", "lo"];
        if vip.is_ipv6() {
            args.push("nodad");
        }
        let out = ns.exec("ip", &args)?;
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("exists") {
            return Err(NetnsError::Command {
                command: format!("ip addr add {addr} dev lo"),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}

/// Answers `<request>` with `<request> <node>` on each address; stops when dropped.
#[derive(Debug)]
pub struct Responder {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Responder {
    /// Prepares `ns` ([`prepare_node_for_vips`]) and answers on `vip:port` for every vip.
    pub fn start(
        ns: &Netns,
        node: &str,
        vips: &[IpAddr],
        port: u16,
    ) -> Result<Responder, NetnsError> {
        prepare_node_for_vips(ns, vips)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for vip in vips {
            let bind = SocketAddr::new(*vip, port);
            let sock = ns
                .run_in(move || UdpSocket::bind(bind))?
                .map_err(io_err(ns, &format!("binding responder {bind}")))?;
            sock.set_read_timeout(Some(TICK))
                .map_err(io_err(ns, "setting the responder timeout"))?;
            let stop = Arc::clone(&stop);
            let node = node.to_owned();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let _ = sock.send_to(format!("{req} {node}").as_bytes(), from);
                    }
                }
            }));
        }
        Ok(Responder { stop, threads })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One answer the prober received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// When the request was sent.
    pub sent: Instant,
    /// When the answer arrived.
    pub received: Instant,
    /// The node that answered.
    pub node: String,
}

#[derive(Debug, Default)]
struct Log {
    sent: BTreeMap<u64, Instant>,
    answers: Vec<Answer>,
}

/// Sends a request to `vip:port` every `interval` and records the answers; stops when dropped.
#[derive(Debug)]
pub struct Prober {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Prober {
    /// Starts probing from `ns` (the client).
    pub fn start(
        ns: &Netns,
        vip: IpAddr,
        port: u16,
        interval: Duration,
    ) -> Result<Prober, NetnsError> {
        let bind: SocketAddr = if vip.is_ipv4() {
            "0.0.0.0:0".parse().map_err(|_| unreachable_parse())?
        } else {
            "[::]:0".parse().map_err(|_| unreachable_parse())?
        };
        let sock = ns
            .run_in(move || UdpSocket::bind(bind))?
            .map_err(io_err(ns, "binding the prober"))?;
        sock.set_read_timeout(Some(TICK))
            .map_err(io_err(ns, "setting the prober timeout"))?;
        let recv = sock
            .try_clone()
            .map_err(io_err(ns, "cloning the prober socket"))?;
        let log: Arc<Mutex<Log>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let target = SocketAddr::new(vip, port);
        let sender = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    lock(&log).sent.insert(seq, Instant::now());
                    // A send error (no neighbour yet) is just a request without an answer.
                    let _ = sock.send_to(seq.to_string().as_bytes(), target);
                    std::thread::sleep(interval);
                }
            })
        };
        let receiver = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = recv.recv_from(&mut buf) else {
                        continue;
                    };
                    let received = Instant::now();
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let Some((seq, node)) = text.split_once(' ') else {
                        continue;
                    };
                    let Ok(seq) = seq.parse::<u64>() else {
                        continue;
                    };
                    let mut log = lock(&log);
                    if let Some(sent) = log.sent.get(&seq).copied() {
                        log.answers.push(Answer {
                            sent,
                            received,
                            node: node.to_owned(),
                        });
                    }
                }
            })
        };
        Ok(Prober {
            log,
            stop,
            threads: vec![sender, receiver],
        })
    }

    /// All answers so far, in arrival order.
    pub fn answers(&self) -> Vec<Answer> {
        lock(&self.log).answers.clone()
    }

    /// The first answer from `node` to a request sent at or after `since`.
    pub fn first_from_since(&self, node: &str, since: Instant) -> Option<Answer> {
        lock(&self.log)
            .answers
            .iter()
            .find(|a| a.sent >= since && a.node == node)
            .cloned()
    }

    /// The first answer from any node but `not` to a request sent at or after `since`.
    pub fn first_not_from_since(&self, not: &str, since: Instant) -> Option<Answer> {
        lock(&self.log)
            .answers
            .iter()
            .find(|a| a.sent >= since && a.node != not)
            .cloned()
    }

    /// Waits (polling) until `pick` finds an answer, or `timeout` passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pick: impl Fn(&Prober) -> Option<Answer>,
    ) -> Option<Answer> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = pick(self) {
                return Some(a);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

fn unreachable_parse() -> NetnsError {
    NetnsError::Parse {
        command: "socket address".into(),
        reason: "constant failed to parse".into(),
    }
}

/// The client-side outage over `[from, to]`: the longest time without an answer, counted
/// from `from` (or the previous answer) to the next answer (or `to`), over answers to requests
/// sent in that interval.
pub fn longest_gap(answers: &[Answer], from: Instant, to: Instant) -> Duration {
    let mut received: Vec<Instant> = answers
        .iter()
        .filter(|a| a.sent >= from && a.sent <= to)
        .map(|a| a.received)
        .collect();
    received.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for r in received {
        longest = longest.max(r.saturating_duration_since(last));
        last = last.max(r);
    }
    longest.max(to.saturating_duration_since(last))
}

/// Which answering node held the address at each moment: consecutive answers collapsed into
/// runs `(node, first answer, last answer)`.
pub fn runs(answers: &[Answer]) -> Vec<(String, Instant, Instant)> {
    let mut out: Vec<(String, Instant, Instant)> = Vec::new();
    for a in answers {
        match out.last_mut() {
            Some((node, _, last)) if *node == a.node => *last = a.received,
            _ => out.push((a.node.clone(), a.received, a.received)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::Topology;

    #[test]
    fn prober_sees_the_responder_by_name() {
        let topo = Topology::new().unwrap();
        let node = topo
            .add_host("ldn", Some("192.0.2.11/24".parse().unwrap()), None)
            .unwrap();
        let client = topo
            .add_host("ldc", Some("192.0.2.2/24".parse().unwrap()), None)
            .unwrap();
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        let _r = Responder::start(node.ns(), "node-x", &[vip], 7000).unwrap();
        // Without an ARP answer for the VIP nothing arrives: the kernel must stay silent.
        let p = Prober::start(client.ns(), vip, 7000, Duration::from_millis(10)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            p.answers().is_empty(),
            "the kernel answered ARP for a VIP on lo"
        );
        // Resolve the VIP by hand (what a speaker would make the client do).
        let mac = node.mac().unwrap();
        client
            .ns()
            .exec_ok(
                "ip",
                &[
                    "neigh",
                    "replace",
                    "192.0.2.100",
                    "lladdr",
                    &mac,
                    "dev",
                    "eth0",
                ],
            )
            .unwrap();
        let got = p
            .wait_for(Duration::from_secs(5), |p| {
                p.first_from_since("node-x", p_start(p))
            })
            .expect("an answer from node-x");
        assert!(got.received >= got.sent);
        assert_eq!(runs(&p.answers()).len(), 1);
    }

    #[test]
    fn longest_gap_counts_from_the_edges() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let a = |sent: u64, received: u64| Answer {
            sent: ms(sent),
            received: ms(received),
            node: "n".into(),
        };
        let answers = [a(0, 1), a(10, 11), a(20, 300), a(310, 311)];
        assert_eq!(
            longest_gap(&answers, ms(0), ms(320)),
            Duration::from_millis(289)
        );
        assert_eq!(
            longest_gap(&answers, ms(0), ms(1000)),
            Duration::from_millis(689)
        );
        assert_eq!(longest_gap(&[], ms(0), ms(50)), Duration::from_millis(50));
    }

    fn p_start(p: &Prober) -> Instant {
        lock(&p.log)
            .sent
            .values()
            .next()
            .copied()
            .unwrap_or_else(Instant::now)
    }
}
