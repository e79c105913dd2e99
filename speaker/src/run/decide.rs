//! The shell's decisions, pure: who is alive through an own-link outage, membership seeds,
//! takeovers, withdrawal from the election, and the condition a Service should carry.

use super::*;

/// Adds to `alive` the peers that were alive before this node's own link went down (not this
/// node itself: whether it stands is decided elsewhere), as long as their Node still exists.
/// Pure so the link-flap interleaving can be replayed in a test.
pub(super) fn keep_alive_over_own_outage(
    alive: &mut BTreeSet<String>,
    before: &BTreeSet<String>,
    me: &str,
    nodes: &[Arc<Node>],
) {
    for name in before {
        if name != me
            && nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(name.as_str()))
        {
            alive.insert(name.clone());
        }
    }
}

/// Membership seeds: every other Node's InternalIP with the membership port.
pub fn seeds(nodes: &[Arc<Node>], me: &str, port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| plan::internal_ip(n))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Address → owner, as the plan decided (the first Service by text wins, as in the plan: see
/// [`plan::by_text`]).
pub fn address_owners(p: &Plan) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for (_, sp) in plan::in_text_order(&p.services) {
        if let Ok(owner) = &sp.owner {
            for ip in &sp.addresses {
                out.entry(*ip).or_insert_with(|| owner.clone());
            }
        }
    }
    out
}

/// Addresses newly owned by `me` whose previous owner is another node that is no longer
/// alive: takeovers caused by a failure (what `failover_detections_total` counts).
pub fn failovers(
    me: &str,
    before: &BTreeMap<IpAddr, String>,
    after: &BTreeMap<IpAddr, String>,
    alive: &BTreeSet<String>,
) -> Vec<(IpAddr, String)> {
    after
        .iter()
        .filter(|(_, o)| o.as_str() == me)
        .filter_map(|(ip, _)| {
            let prev = before.get(ip)?;
            (prev != me && !alive.contains(prev)).then(|| (*ip, prev.clone()))
        })
        .collect()
}

/// Why this speaker is out of the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// The API server has been silent this long while a peer still hears it.
    ApiLost {
        /// Since the last answer.
        silent: Duration,
    },
    /// Datagrams from the other speakers arrive but none authenticates: this speaker's key
    /// does not match theirs, so it sees everyone as gone.
    KeyringMismatch,
    /// Its own link was down long enough for the others to take its addresses over; it waits
    /// until it hears them again and has re-read the cluster.
    LinkReturned,
    /// It hears neither another speaker nor the API server.
    CutOff,
    /// It was cut off from the other speakers and its view of the cluster is not fresh yet,
    /// while a peer's is: what it would announce may contradict what happened meanwhile.
    StaleAfterIsolation,
}

impl std::fmt::Display for Withdrawal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Withdrawal::ApiLost { silent } => write!(
                f,
                "the API server has been unreachable for {} s while other speakers reach it; \
                 this node's view of the cluster is stale",
                silent.as_secs()
            ),
            Withdrawal::KeyringMismatch => f.write_str(
                "no other speaker's membership datagram authenticates with this node's key \
                 (check the lodestone-memberlist Secret)",
            ),
            Withdrawal::LinkReturned => f.write_str(
                "this node's link was down long enough for the other speakers to serve its \
                 addresses; it announces again once it hears them and has re-read the cluster",
            ),
            Withdrawal::CutOff => f.write_str(
                "this node hears neither another speaker nor the API server: it is most likely \
                 the one cut off, and the others serve its addresses",
            ),
            Withdrawal::StaleAfterIsolation => f.write_str(
                "this node was cut off (from the other speakers or the API server) and its view \
                 of the cluster is not fresh yet; it announces again once it has re-read the \
                 cluster",
            ),
        }
    }
}

/// What [`withdrawal`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct WithdrawalInput {
    /// How long since the API server last answered this speaker.
    pub api_silent_for: Duration,
    /// The configured bound ([`SpeakerConfig::api_loss_timeout`]).
    pub api_loss_timeout: Duration,
    /// How long some alive peer has been reporting a fresh view, continuously.
    pub fresh_peer_for: Option<Duration>,
    /// The membership reports that no peer's datagram authenticates.
    pub keyring_failing: bool,
    /// This speaker hears no other speaker, while other Nodes exist.
    pub alone: bool,
    /// Its view follows the cluster: the API server answers and the caches are current.
    pub view_fresh: bool,
    /// It heard no peer at some point since its view was last fresh.
    pub isolated: bool,
    /// Its own link came back after being down long enough for the others to notice, and it
    /// has not heard them again (or re-read the cluster) since.
    pub link_returned: bool,
}

/// Whether `view` was made after the renewal that asked for generation `renewed_to`. One made
/// before shows the peers the previous membership instance knew; taken as current, it would
/// mark them "seen" since the renewal, and the joining grace (see [`plan::alive_set`]) would
/// no longer count them alive while the renewed instance has not heard them yet: this node
/// took a peer's address, answered beside it (the link-flap scenario under load).
pub fn view_is_current(view: &MembershipView, renewed_to: u64) -> bool {
    view.generation >= renewed_to
}

/// Whether this speaker stands as a candidate in its own plan: not while `withdrawn`, nor
/// within [`REENTRY_HOLD`] of coming back (`back_for`: how long it has been back, if it came
/// back from a withdrawal and has not announced since), nor while it is still joining with
/// only Node readiness to go by (`joining_without_peers`).
pub fn stands(withdrawn: bool, back_for: Option<Duration>, joining_without_peers: bool) -> bool {
    !withdrawn && back_for.is_none_or(|d| d >= REENTRY_HOLD) && !joining_without_peers
}

/// Whether this speaker must leave the election, and why.
///
/// Losing the API server alone is no reason: when it is gone for everybody (a control-plane
/// upgrade), every speaker keeps announcing what it last knew. Only a speaker that lost it while
/// a peer kept it steps aside, after the configured bound, so that the peer, whose view is
/// current, serves the new Services and drops the deleted ones.
pub fn withdrawal(input: WithdrawalInput) -> Option<Withdrawal> {
    if input.keyring_failing {
        return Some(Withdrawal::KeyringMismatch);
    }
    // The others declared this node down while its link was down and took its addresses
    // over; until it has caught up with them, announcing would make two owners.
    if input.link_returned {
        return Some(Withdrawal::LinkReturned);
    }
    // Hearing neither another speaker nor the API server: most likely this node is the one
    // cut off, and the others have taken its addresses over. Its announcements would reach
    // nobody, or collide with theirs once the network comes back.
    if input.alone && !input.view_fresh {
        return Some(Withdrawal::CutOff);
    }
    let peer_fresh = input.fresh_peer_for.is_some_and(|d| d >= FRESH_PEER_SETTLE);
    if input.api_silent_for > input.api_loss_timeout && peer_fresh {
        return Some(Withdrawal::ApiLost {
            silent: input.api_silent_for,
        });
    }
    // Back among peers after an isolation (or an API outage it withdrew for), with a view
    // that may predate what they did meanwhile (they took its addresses over, Services came
    // and went): theirs wins at once, until it has re-read the cluster.
    (input.isolated && !input.view_fresh && input.fresh_peer_for.is_some())
        .then_some(Withdrawal::StaleAfterIsolation)
}

/// The condition a speaker wants on a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// `True` or `False`.
    pub status: bool,
    /// The reason.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

impl Desired {
    /// Whether the Service already carries it.
    pub fn is_observed(&self, o: &Observed) -> bool {
        o.status == Some(self.status) && o.reason == self.reason && o.message == self.message
    }
}

/// `Announced=False` with [`REASON_ADDRESS_IN_USE`] when this node owns the Service but another
/// machine answered the probes for its first address.
pub fn in_use_condition(
    me: &str,
    sp: &plan::ServicePlan,
    in_use: &BTreeMap<IpAddr, crate::frames::MacAddr>,
) -> Option<Desired> {
    if !matches!(&sp.owner, Ok(owner) if owner == me) {
        return None;
    }
    let (ip, mac) = sp
        .addresses
        .iter()
        .find_map(|ip| in_use.get(ip).map(|mac| (ip, mac)))?;
    Some(Desired {
        status: false,
        reason: REASON_ADDRESS_IN_USE,
        message: lodestone_crds::events::condition_message(&format!(
            "not announced: {ip} is in use by another machine ({mac} answered the probes from {me}); it is probed again later"
        ))
        .into_owned(),
    })
}

/// The addresses of `next` to probe before announcing: owned by this node now and not before,
/// and served by no node of the cluster (no other node owned them in the previous plan, and no
/// Service holding them carries `Announced=True`). A failover or a restart is never probed: it
/// must stay fast, and the address is the cluster's already.
pub fn new_to_cluster(
    me: &str,
    previous: &Plan,
    owners: &BTreeMap<IpAddr, String>,
    next: &Plan,
) -> BTreeSet<IpAddr> {
    let served: BTreeSet<IpAddr> = next
        .services
        .values()
        .filter(|sp| sp.observed.status == Some(true))
        .flat_map(|sp| sp.addresses.iter().copied())
        .collect();
    next.owned
        .keys()
        .filter(|ip| !previous.owned.contains_key(*ip))
        .filter(|ip| owners.get(*ip).is_none_or(|o| o == me))
        .filter(|ip| !served.contains(*ip))
        .copied()
        .collect()
}

/// The condition this node should write on a Service, if it is the one to write it.
///
/// One writer per Service at a time:
/// - The owner writes `True` once its announcer reports the first address on some interface.
/// - A Service nobody owns gets `False` with the reason, written by the node whose `True` the
///   Service still carries if that node is alive (it retracts its own claim), else by the
///   election winner for the Service's key among the alive speakers. Every speaker computes
///   the same writer from the same Service and alive set, so exactly one writes; non-owners
///   never write over an owner.
pub fn desired_condition(
    me: &str,
    key: &ServiceKey,
    sp: &plan::ServicePlan,
    announced: &BTreeMap<IpAddr, Vec<String>>,
    alive: &BTreeSet<String>,
) -> Option<Desired> {
    match &sp.owner {
        Ok(owner) if owner == me => {
            let first = sp.addresses.first()?;
            let ifaces = announced.get(first).filter(|i| !i.is_empty())?;
            Some(Desired {
                status: true,
                reason: announced::REASON_ANNOUNCED,
                message: lodestone_crds::events::condition_message(&announced::announced_message(
                    me, ifaces,
                ))
                .into_owned(),
            })
        }
        Ok(_) => None,
        Err(NoOwner::NoAddress) => None,
        Err(reason) => {
            let desired = Desired {
                status: false,
                reason: reason_name(reason),
                message: announced::not_announced_message(reason),
            };
            // Cheap path first: nothing to write, nobody needs to be elected.
            if desired.is_observed(&sp.observed) {
                return Some(desired);
            }
            let writer = match sp.observed.owner.as_deref() {
                Some(previous) if alive.contains(previous) => previous,
                // Elected by the key's text, as every speaker version does.
                _ => election::owner(&key.to_string(), alive.iter().map(String::as_str))?,
            };
            (writer == me).then_some(desired)
        }
    }
}

pub(super) fn reason_name(r: &NoOwner) -> &'static str {
    match r {
        NoOwner::NoAddress => "NoAddress",
        NoOwner::NotInPool => "NotInPool",
        NoOwner::NotAdvertised => "NotAdvertised",
        NoOwner::NoReadyEndpoints => "NoReadyEndpoints",
        NoOwner::NoEligibleNode => "NoEligibleNode",
    }
}
