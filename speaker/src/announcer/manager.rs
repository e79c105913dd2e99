//! The data plane: one [`Manager`] turns the desired state and the link view into sockets,
//! group memberships, probes and bursts per interface, and the receive loops answer frames
//! with the decisions of [`super::decide`].

use super::*;

/// The sockets and receive tasks of one interface.
pub(super) struct Worker {
    pub(super) name: String,
    pub(super) mac: MacAddr,
    pub(super) arp: Option<(Arc<AsyncFd<ArpSocket>>, AbortOnDrop<()>)>,
    pub(super) ndp: Option<(Arc<AsyncFd<NdpSocket>>, AbortOnDrop<()>)>,
    /// Receives the unicast solicitations the raw socket cannot see; answers go out
    /// through `ndp`.
    pub(super) unicast_ns: Option<AbortOnDrop<()>>,
    /// Solicited-node memberships of the IPv6 addresses planned here.
    pub(super) groups: Groups<GroupSocket>,
}

/// Turns desired state + link view into a plan, sockets, group memberships and bursts.
pub(super) struct Manager {
    pub(super) shared: Arc<Shared>,
    pub(super) config: AnnouncerConfig,
    pub(super) filter: InterfaceFilter,
    pub(super) links: watch::Receiver<Arc<Vec<LinkInfo>>>,
    pub(super) _watcher: LinkWatcher,
    pub(super) workers: BTreeMap<u32, Worker>,
    pub(super) bursts: BTreeMap<(IpAddr, u32), AbortOnDrop<()>>,
    pub(super) announced: BTreeMap<IpAddr, Vec<String>>,
    /// The [`Shared::reassert`] generation last acted on.
    pub(super) reasserted: u64,
    /// Since when each link has been down (by index).
    pub(super) down_since: BTreeMap<u32, Instant>,
    /// Links back from a long outage, not used until the shell confirms or the time given
    /// here (see [`LINK_DOWN_HOLDS`]).
    pub(super) held: BTreeMap<u32, Instant>,
    /// The [`Shared::confirmed`] generation last acted on.
    pub(super) confirmed: u64,
    /// Probe tasks by (address, interface index), with the round they probe for.
    pub(super) probes: BTreeMap<(IpAddr, u32), (u32, AbortOnDrop<()>)>,
}

impl Manager {
    pub(super) async fn run(
        mut self,
        mut wake: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        // The first tick of an interval is immediate; the refresh starts one period in.
        let period = self.config.refresh_interval.filter(|p| !p.is_zero());
        let mut refresh =
            period.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
        let mut flush = tokio::time::interval(CONFLICT_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            self.reconcile();
            let claim_due = lock(&self.shared.claims).next_deadline();
            let hold_ends = self.held.values().min().copied();
            let hold_ends = match (hold_ends, claim_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                r = self.links.changed() => if r.is_err() { break },
                () = async { match hold_ends {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                } } => {}
                // Err: every handle is gone, so nobody can change the desired state again.
                r = wake.changed() => if r.is_err() { break },
                r = stop.changed() => if r.is_err() { break },
                _ = flush.tick() => {
                    let reports = lock(&self.shared.conflicts).flush(Instant::now());
                    for report in reports {
                        self.shared.emit(AnnouncerEvent::Conflict(report));
                    }
                }
                _ = async { match refresh.as_mut() {
                    Some(r) => { r.tick().await; }
                    None => std::future::pending().await,
                } } => {
                    self.shared.reassert.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        write(&self.shared.plan).clear();
        self.bursts.clear();
        self.probes.clear();
        self.workers.clear();
        for ip in std::mem::take(&mut self.announced).into_keys() {
            self.shared.emit(AnnouncerEvent::Stopped { ip });
        }
        self.shared.finished.notify_one();
    }

    fn reconcile(&mut self) {
        let links = self.links.borrow_and_update().clone();
        let desired = read(&self.shared.desired).clone();
        *write(&self.shared.local_macs) = links.iter().filter_map(|l| l.mac).collect();

        let confirmed = self.shared.confirmed.load(Ordering::Relaxed);
        if confirmed != self.confirmed {
            self.confirmed = confirmed;
            self.held.clear();
        }
        let now = Instant::now();
        for l in links.iter() {
            if !l.up {
                self.down_since.entry(l.index).or_insert(now);
            } else if let Some(since) = self.down_since.remove(&l.index)
                && now.duration_since(since) >= LINK_DOWN_HOLDS
            {
                tracing::debug!(interface = %l.name, "link back after a long outage: held until the shell confirms");
                self.held.insert(l.index, now + LINK_HOLD_MAX);
            }
        }
        self.held.retain(|index, until| {
            let keep = *until > now;
            if !keep {
                tracing::debug!(index, "held link released without a confirmation");
            }
            keep
        });
        self.down_since
            .retain(|index, _| links.iter().any(|l| l.index == *index));

        // Probes due for a decision are decided first: a free address joins the plan below.
        let outcomes = lock(&self.shared.claims).step(now);
        for outcome in outcomes {
            match outcome {
                ClaimOutcome::Free(ip) => {
                    tracing::debug!(service = %self.shared.service_of(ip), %ip, "probes unanswered: the address is free");
                }
                ClaimOutcome::InUse {
                    ip,
                    mac,
                    interface,
                    attempt,
                    retry_in,
                } => self.shared.emit(AnnouncerEvent::AddressInUse {
                    ip,
                    mac,
                    interface,
                    attempt,
                    retry_in,
                }),
                ClaimOutcome::Reprobe(_) => {}
            }
        }
        let (pending, probing): (BTreeSet<IpAddr>, BTreeMap<IpAddr, u32>) = {
            let claims = lock(&self.shared.claims);
            (
                desired
                    .keys()
                    .filter(|ip| claims.pending(ip))
                    .copied()
                    .collect(),
                desired
                    .keys()
                    .filter_map(|ip| claims.probing(ip).map(|a| (*ip, a)))
                    .collect(),
            )
        };
        let mut probe_plan: Plan = BTreeMap::new();
        let mut plan: Plan = BTreeMap::new();
        for (ip, requested) in &desired {
            let chosen = choose_interfaces(*ip, requested.as_deref(), &links, &self.filter);
            if pending.contains(ip) {
                if probing.contains_key(ip) {
                    probe_plan.insert(
                        *ip,
                        chosen
                            .iter()
                            .filter(|l| !self.held.contains_key(&l.index))
                            .map(|l| (l.index, l.name.clone()))
                            .collect(),
                    );
                }
                continue;
            }
            plan.insert(
                *ip,
                chosen
                    .iter()
                    .filter(|l| !self.held.contains_key(&l.index))
                    .map(|l| (l.index, l.name.clone()))
                    .collect(),
            );
        }

        // A worker whose link vanished, or was renamed or got a new MAC, starts afresh; a new
        // MAC must also be announced anew (below), or neighbours keep the old one.
        let mut replaced = BTreeSet::new();
        self.workers.retain(|index, w| {
            let same = links
                .iter()
                .any(|l| l.index == *index && l.name == w.name && l.mac == Some(w.mac));
            if !same {
                replaced.insert(*index);
            }
            same
        });
        for (ip, interfaces) in plan.iter_mut() {
            let v4 = ip.is_ipv4();
            interfaces.retain(|index, name| {
                let Some(mac) = links.iter().find(|l| l.index == *index).and_then(|l| l.mac) else {
                    return false;
                };
                match self.ensure_socket(*index, name, mac, v4) {
                    Ok(()) => true,
                    Err(e) => {
                        self.shared.emit(AnnouncerEvent::InterfaceError {
                            interface: name.clone(),
                            error: e.to_string(),
                        });
                        false
                    }
                }
            });
        }

        // Probes go out as whole frames on the ARP socket, and an IPv6 probe's answer comes in
        // on the NDP socket: a probed address needs both kinds.
        for (ip, interfaces) in probe_plan.iter_mut() {
            let v6 = ip.is_ipv6();
            interfaces.retain(|index, name| {
                let Some(mac) = links.iter().find(|l| l.index == *index).and_then(|l| l.mac) else {
                    return false;
                };
                let opened = self.ensure_socket(*index, name, mac, true).and_then(|()| {
                    if v6 {
                        self.ensure_socket(*index, name, mac, false)
                    } else {
                        Ok(())
                    }
                });
                match opened {
                    Ok(()) => true,
                    Err(e) => {
                        self.shared.emit(AnnouncerEvent::InterfaceError {
                            interface: name.clone(),
                            error: e.to_string(),
                        });
                        false
                    }
                }
            });
        }
        self.probes.retain(|(ip, index), (attempt, _)| {
            probing.get(ip) == Some(attempt)
                && probe_plan.get(ip).is_some_and(|m| m.contains_key(index))
                && !replaced.contains(index)
        });
        for (ip, interfaces) in &probe_plan {
            let Some(attempt) = probing.get(ip).copied() else {
                continue;
            };
            for index in interfaces.keys() {
                if !self.probes.contains_key(&(*ip, *index))
                    && let Some(task) = self.spawn_probe(*ip, *index, attempt)
                {
                    self.probes.insert((*ip, *index), (attempt, task));
                }
            }
        }

        // From here on answers follow the new plan.
        let previous = std::mem::replace(&mut *write(&self.shared.plan), plan.clone());

        self.update_groups(&plan);

        let pairs = |p: &Plan| -> BTreeSet<(IpAddr, u32)> {
            p.iter()
                .flat_map(|(ip, m)| m.keys().map(move |i| (*ip, *i)))
                .collect()
        };
        let (now, before) = (pairs(&plan), pairs(&previous));
        self.bursts.retain(|(ip, index), task| {
            now.contains(&(*ip, *index)) && !replaced.contains(index) && !task.0.is_finished()
        });
        // Asked to re-assert: every owned address is "starting" again.
        let reassert = self.shared.reassert.load(Ordering::Relaxed);
        let all = reassert != self.reasserted;
        self.reasserted = reassert;
        let starting = now
            .iter()
            .filter(|(ip, index)| {
                all || !before.contains(&(*ip, *index)) || replaced.contains(index)
            })
            .copied()
            .collect::<Vec<_>>();
        for (ip, index) in starting {
            if let Some(task) = self.spawn_burst(ip, index) {
                self.bursts.insert((ip, index), task);
            }
        }

        let used: BTreeSet<u32> = now
            .iter()
            .map(|(_, i)| *i)
            .chain(probe_plan.values().flat_map(|m| m.keys().copied()))
            .collect();
        self.workers.retain(|index, _| used.contains(index));

        for (ip, interfaces) in &plan {
            let names: Vec<String> = interfaces.values().cloned().collect();
            if names.is_empty() {
                if self.announced.remove(ip).is_some() {
                    self.shared.emit(AnnouncerEvent::Stopped { ip: *ip });
                }
            } else if self.announced.get(ip) != Some(&names) {
                self.announced.insert(*ip, names.clone());
                self.shared.emit(AnnouncerEvent::Announcing {
                    ip: *ip,
                    interfaces: names,
                });
            }
        }
        let gone: Vec<IpAddr> = self
            .announced
            .keys()
            .filter(|ip| !plan.contains_key(*ip))
            .copied()
            .collect();
        for ip in gone {
            self.announced.remove(&ip);
            self.shared.emit(AnnouncerEvent::Stopped { ip });
        }
    }

    fn ensure_socket(
        &mut self,
        index: u32,
        name: &str,
        mac: MacAddr,
        v4: bool,
    ) -> std::io::Result<()> {
        let worker = self.workers.entry(index).or_insert_with(|| Worker {
            name: name.to_owned(),
            mac,
            arp: None,
            ndp: None,
            unicast_ns: None,
            groups: Groups::default(),
        });
        if v4 && worker.arp.is_none() {
            let socket = Arc::new(sys::register(ArpSocket::open(index)?)?);
            let task = tokio::spawn(arp_loop(
                self.shared.clone(),
                socket.clone(),
                index,
                name.to_owned(),
                mac,
            ));
            worker.arp = Some((socket, AbortOnDrop(task)));
        }
        if !v4 && worker.ndp.is_none() {
            let socket = Arc::new(sys::register(NdpSocket::open(name, index)?)?);
            let task = tokio::spawn(ndp_loop(
                self.shared.clone(),
                socket.clone(),
                index,
                name.to_owned(),
                mac,
            ));
            worker.ndp = Some((socket.clone(), AbortOnDrop(task)));
            let unicast = sys::register(UnicastNsSocket::open(index)?)?;
            let task = tokio::spawn(unicast_ns_loop(
                self.shared.clone(),
                unicast,
                socket,
                index,
                name.to_owned(),
                mac,
            ));
            worker.unicast_ns = Some(AbortOnDrop(task));
        }
        Ok(())
    }

    /// Joins the solicited-node group of each IPv6 address planned on a link, leaves the
    /// groups no longer needed. A join that fails is counted and reported with the addresses
    /// it leaves unanswered, and tried again on the next reconcile.
    fn update_groups(&mut self, plan: &Plan) {
        for (index, worker) in &mut self.workers {
            if worker.ndp.is_none() {
                continue;
            }
            let addresses = plan
                .iter()
                .filter(|(_, m)| m.contains_key(index))
                .filter_map(|(ip, _)| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                });
            let index = *index;
            let report = worker.groups.sync(addresses, || GroupSocket::open(index));
            for (group, error) in report.leave_failures {
                tracing::warn!(%group, interface = %worker.name, %error, "leaving solicited-node group");
            }
            for failure in report.join_failures {
                inc(&self.shared.counters.ndp_group_join_failures);
                let addresses = failure
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                self.shared.emit(AnnouncerEvent::InterfaceError {
                    interface: worker.name.clone(),
                    error: format!(
                        "joining solicited-node group {} failed, so solicitations for {addresses} go unanswered: {}",
                        failure.group, failure.error
                    ),
                });
            }
            tracing::debug!(
                interface = %worker.name,
                groups = worker.groups.joined(),
                sockets = worker.groups.sockets(),
                "solicited-node memberships"
            );
        }
    }

    /// Sends the probes of one round for `ip` on interface `index`: ARP probes (sender IP
    /// 0.0.0.0, RFC 5227 §2.1.1) or DAD solicitations (source `::`, to the solicited-node group,
    /// no source link-layer option; RFC 4862 §5.4.2), as whole frames on the packet socket.
    fn spawn_probe(&self, ip: IpAddr, index: u32, attempt: u32) -> Option<AbortOnDrop<()>> {
        let worker = self.workers.get(&index)?;
        let socket = worker.arp.as_ref()?.0.clone();
        let shared = self.shared.clone();
        let name = worker.name.clone();
        let config = self.config.probe;
        let frame = match ip {
            IpAddr::V4(v4) => arp_request(worker.mac, Ipv4Addr::UNSPECIFIED, v4),
            IpAddr::V6(v6) => {
                let group = solicited_node_multicast(v6);
                ipv6_icmp_frame(
                    worker.mac,
                    ipv6_multicast_mac(group),
                    Ipv6Addr::UNSPECIFIED,
                    group,
                    255,
                    &neighbor_solicitation(v6, None),
                )
            }
        };
        tracing::debug!(service = %shared.service_of(ip), %ip, interface = %name, attempt, "probing a newly assigned address");
        let task = tokio::spawn(async move {
            for i in 0..config.count {
                if lock(&shared.claims).probing(&ip) != Some(attempt) {
                    return;
                }
                match sys::send_arp(&socket, &frame).await {
                    Ok(_) => inc(&shared.counters.probes_sent),
                    Err(e) => shared.send_failed("probe", ip, &name, &e),
                }
                if i + 1 < config.count {
                    tokio::time::sleep(config.probe_gap()).await;
                }
            }
        });
        Some(AbortOnDrop(task))
    }

    fn spawn_burst(&self, ip: IpAddr, index: u32) -> Option<AbortOnDrop<()>> {
        let worker = self.workers.get(&index)?;
        let shared = self.shared.clone();
        let count = self.config.gratuitous_count;
        let interval = self.config.gratuitous_interval;
        let name = worker.name.clone();
        let task = match ip {
            IpAddr::V4(v4) => {
                let socket = worker.arp.as_ref()?.0.clone();
                let frame = gratuitous_arp(v4, worker.mac);
                tokio::spawn(async move {
                    for i in 0..count {
                        if !shared.answers(ip, index) {
                            return;
                        }
                        match sys::send_arp(&socket, &frame).await {
                            Ok(_) => inc(&shared.counters.gratuitous_arp_sent),
                            Err(e) => shared.send_failed("gratuitous ARP", ip, &name, &e),
                        }
                        if i + 1 < count {
                            tokio::time::sleep(interval).await;
                        }
                    }
                })
            }
            IpAddr::V6(v6) => {
                let socket = worker.ndp.as_ref()?.0.clone();
                let body = neighbor_advertisement(v6, worker.mac, false, true);
                tokio::spawn(async move {
                    for i in 0..count {
                        if !shared.answers(ip, index) {
                            return;
                        }
                        // From the address itself, as the kernel advertises its own.
                        match sys::send_ndp(&socket, &body, v6, ALL_NODES).await {
                            Ok(_) => inc(&shared.counters.unsolicited_na_sent),
                            Err(e) => shared.send_failed("unsolicited NA", ip, &name, &e),
                        }
                        if i + 1 < count {
                            tokio::time::sleep(interval).await;
                        }
                    }
                })
            }
        };
        Some(AbortOnDrop(task))
    }
}

async fn arp_loop(
    shared: Arc<Shared>,
    socket: Arc<AsyncFd<ArpSocket>>,
    index: u32,
    name: String,
    mac: MacAddr,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = match sys::recv_arp(&socket, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // E.g. ENETDOWN once when the link goes down; the manager retires the
                // socket if the link is no longer usable.
                shared.emit(AnnouncerEvent::InterfaceError {
                    interface: name.clone(),
                    error: format!("receiving ARP: {e}"),
                });
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        inc(&shared.counters.arp_frames_received);
        let Some(Ok(frame)) = buf.get(..n).map(frames::parse_arp) else {
            continue;
        };
        // Looked up once per request: counted here, reused by the decision below.
        let target_owned =
            frame.op == ArpOp::Request && shared.answers(IpAddr::V4(frame.target_ip), index);
        if frame.op == ArpOp::Request {
            inc(&shared.counters.arp_requests_seen);
            // Answered or not (a forged sender is not): what the metric documents.
            if target_owned {
                inc(&shared.counters.arp_requests_owned);
            }
        }
        // While an address is probed, a frame whose sender is that address from another MAC
        // (a reply to the probe, a gratuitous ARP) means a machine uses it. Another host's probe
        // for it (sender 0.0.0.0) is not counted, unlike RFC 5227 §2.1.1: it is most likely
        // another speaker whose view of the cluster has not converged yet, and the election,
        // not a back-off, decides between speakers.
        if usable_sender(&frame)
            && !frame.sender_ip.is_unspecified()
            && !shared.is_local_mac(frame.sender_mac)
        {
            shared.probe_heard(IpAddr::V4(frame.sender_ip), frame.sender_mac, &name);
        }
        let action = arp_action(
            &frame,
            |m| shared.is_local_mac(m),
            |ip| {
                if frame.op == ArpOp::Request && ip == frame.target_ip {
                    target_owned
                } else {
                    shared.answers(IpAddr::V4(ip), index)
                }
            },
        );
        match action {
            ArpAction::Reply => match sys::send_arp(&socket, &arp_reply(&frame, mac)).await {
                Ok(_) => inc(&shared.counters.arp_requests_answered),
                Err(e) => shared.send_failed("ARP reply", IpAddr::V4(frame.target_ip), &name, &e),
            },
            ArpAction::Conflict => {
                let ip = IpAddr::V4(frame.sender_ip);
                if shared.conflict(ip, frame.sender_mac, &name) {
                    // Defend: announce again, so the neighbours that took the claim come back.
                    // Linux ignores a second change of an entry within its ARP lock time (1 s),
                    // so the announcement goes out at once and once more after it.
                    let announcement = gratuitous_arp(frame.sender_ip, mac);
                    match sys::send_arp(&socket, &announcement).await {
                        Ok(_) => inc(&shared.counters.defences_sent),
                        Err(e) => shared.send_failed("defending ARP", ip, &name, &e),
                    }
                    let (shared, socket, name) = (shared.clone(), socket.clone(), name.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(DEFENCE_REPEAT).await;
                        if shared.answers(ip, index)
                            && let Err(e) = sys::send_arp(&socket, &announcement).await
                        {
                            shared.send_failed("defending ARP", ip, &name, &e);
                        }
                    });
                }
            }
            ArpAction::Ignore => {}
        }
    }
}

async fn ndp_loop(
    shared: Arc<Shared>,
    socket: Arc<AsyncFd<NdpSocket>>,
    index: u32,
    name: String,
    mac: MacAddr,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let received = match sys::recv_ndp(&socket, &mut buf).await {
            Ok(r) => r,
            Err(e) => {
                shared.emit(AnnouncerEvent::InterfaceError {
                    interface: name.clone(),
                    error: format!("receiving NDP: {e}"),
                });
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        inc(&shared.counters.ndp_messages_received);
        let Some(Ok(msg)) = buf.get(..received.len).map(frames::parse_ndp) else {
            continue;
        };
        handle_ndp(
            &shared,
            &socket,
            index,
            &name,
            mac,
            &msg,
            received.source,
            received.hop_limit,
        )
        .await;
    }
}

/// Receives Neighbor Solicitations unicast to our MAC (reachability probes for an owned
/// address) and answers them through the interface's raw ICMPv6 socket.
async fn unicast_ns_loop(
    shared: Arc<Shared>,
    unicast: AsyncFd<UnicastNsSocket>,
    ndp: Arc<AsyncFd<NdpSocket>>,
    index: u32,
    name: String,
    mac: MacAddr,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let n = match sys::recv_unicast_ns(&unicast, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                shared.emit(AnnouncerEvent::InterfaceError {
                    interface: name.clone(),
                    error: format!("receiving unicast NDP: {e}"),
                });
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        inc(&shared.counters.ndp_messages_received);
        let Some(Ok(packet)) = buf.get(..n).map(frames::parse_ipv6_icmp_frame) else {
            continue;
        };
        let Ok(msg) = frames::parse_ndp(packet.icmp) else {
            continue;
        };
        handle_ndp(
            &shared,
            &ndp,
            index,
            &name,
            mac,
            &msg,
            packet.source,
            Some(packet.hop_limit),
        )
        .await;
    }
}

/// Counts, decides and acts on one received NDP message.
#[allow(clippy::too_many_arguments)] // the context of one interface, spelled out
async fn handle_ndp(
    shared: &Shared,
    socket: &AsyncFd<NdpSocket>,
    index: u32,
    name: &str,
    mac: MacAddr,
    msg: &NdpMessage,
    source: Ipv6Addr,
    hop_limit: Option<u8>,
) {
    if hop_limit != Some(255) {
        inc(&shared.counters.ndp_dropped_hop_limit);
        return;
    }
    // Looked up once per solicitation: counted here, reused by the decision below.
    let solicited = match msg {
        NdpMessage::Solicitation(ns) => {
            Some((ns.target, shared.answers(IpAddr::V6(ns.target), index)))
        }
        _ => None,
    };
    if let Some((_, owned)) = solicited {
        inc(&shared.counters.ns_seen);
        if owned {
            inc(&shared.counters.ns_owned);
        }
    }
    if let NdpMessage::Advertisement(na) = msg
        && let Some(other) = na.target_mac
        && !shared.is_local_mac(other)
    {
        shared.probe_heard(IpAddr::V6(na.target), other, name);
    }
    let action = ndp_action(
        msg,
        source,
        hop_limit,
        |m| shared.is_local_mac(m),
        |ip| match solicited {
            Some((target, owned)) if target == ip => owned,
            _ => shared.answers(IpAddr::V6(ip), index),
        },
    );
    match action {
        NdpAction::Reply {
            target,
            dst,
            solicited,
        } => {
            let body = neighbor_advertisement(target, mac, solicited, true);
            // Source = target, as the kernel answers for its own addresses: ndisc6 and
            // other tools ignore advertisements from any other source.
            match sys::send_ndp(socket, &body, target, dst).await {
                Ok(_) => inc(&shared.counters.ns_answered),
                // E.g. a solicitation from an off-link source, which no route reaches: one line
                // per interval, not one per packet.
                Err(e) => shared.send_failed("NA", IpAddr::V6(target), name, &e),
            }
        }
        NdpAction::Conflict { target, mac: other } => {
            if shared.conflict(IpAddr::V6(target), other, name) {
                let body = neighbor_advertisement(target, mac, false, true);
                match sys::send_ndp(socket, &body, target, ALL_NODES).await {
                    Ok(_) => inc(&shared.counters.defences_sent),
                    Err(e) => shared.send_failed("defending NA", IpAddr::V6(target), name, &e),
                }
            }
        }
        NdpAction::Ignore => {}
    }
}
