//! Shared pieces of the data-plane tests: an announcer running inside a node namespace,
//! and waiting for eventual conditions.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lodestone_harness::netns::{Netns, NetnsError};
use lodestone_speaker::announcer::{Announcer, AnnouncerConfig, AnnouncerEvent};

/// How long an eventual condition may take before the test fails. Generous: machines are
/// shared; this is a deadline, not a measurement.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds or [`DEADLINE`] passes; panics with `what` on timeout.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Test configuration: short bursts so tests do not idle.
pub fn fast_config() -> AnnouncerConfig {
    AnnouncerConfig {
        gratuitous_count: 3,
        gratuitous_interval: Duration::from_millis(100),
        ..AnnouncerConfig::default()
    }
}

/// An [`Announcer`] running on a current-thread runtime on a thread inside a namespace.
/// The handle's methods are synchronous and usable from the test thread.
pub struct RunningAnnouncer {
    pub announcer: Announcer,
    events: mpsc::Receiver<AnnouncerEvent>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), NetnsError>>>,
}

impl RunningAnnouncer {
    pub fn start(ns: &Netns, config: AnnouncerConfig) -> RunningAnnouncer {
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = ns
            .thread_in(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let (announcer, mut events) = Announcer::start(config).await.unwrap();
                    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
                    let (ev_tx, ev_rx) = mpsc::channel();
                    ready_tx.send((announcer.clone(), ev_rx, stop_tx)).unwrap();
                    loop {
                        tokio::select! {
                            ev = events.recv() => match ev {
                                Some(ev) => { let _ = ev_tx.send(ev); }
                                None => break,
                            },
                            _ = &mut stop_rx => break,
                        }
                    }
                    announcer.shutdown().await;
                })
            })
            .unwrap();
        let (announcer, events, stop) = ready_rx.recv().unwrap();
        RunningAnnouncer {
            announcer,
            events,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Replaces the owned set: each address on automatically chosen interfaces.
    pub fn own(&self, ips: &[IpAddr]) {
        self.announcer
            .set_owned(ips.iter().map(|ip| (*ip, None)).collect::<BTreeMap<_, _>>());
    }

    /// Waits until `ip` is announced on `eth0`.
    pub fn wait_announced(&self, ip: IpAddr) {
        wait_until(&format!("{ip} announced on eth0"), || {
            self.announcer.announced_on().get(&ip) == Some(&vec!["eth0".to_string()])
        });
    }

    /// Events received so far.
    pub fn drain_events(&self) -> Vec<AnnouncerEvent> {
        self.events.try_iter().collect()
    }

    /// Waits for an event matching `pred`, returning it.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&AnnouncerEvent) -> bool) -> AnnouncerEvent {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.events.recv_timeout(left) {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) => continue,
                Err(_) => panic!("timed out waiting for event: {what}"),
            }
        }
    }
}

impl Drop for RunningAnnouncer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Distinct MACs that answered `arping -c 3` for `target` from `ns`.
pub fn arping_macs(ns: &Netns, target: IpAddr) -> Vec<String> {
    let out = ns
        .exec(
            "arping",
            &["-c", "3", "-W", "0.2", "-i", "eth0", &target.to_string()],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut macs: Vec<String> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|m| m.to_ascii_lowercase())
        .collect();
    macs.sort();
    macs.dedup();
    macs
}
