//! The pure IPAM core: which address each LoadBalancer Service gets. No client, no clock, no I/O.
//!
//! # Rules
//!
//! - **Pool choice** follows [`lodestone_crds::allocation`] (MetalLB's rule): a pool serves a
//!   Service whose namespace it lists **or** selects, and whose labels match one of its
//!   `serviceSelectors`, where given. Pools with `autoAssign: false` are used only on explicit
//!   request: the Service names the pool, or asks for an address inside it. Pools with a
//!   `serviceAllocation` are tried before pools without one; then by `priority` ascending, pools
//!   without a priority after all with one; ties by name. The pools with a `serviceAllocation`
//!   are one tier and the others a second: the second is tried only when the first cannot serve
//!   the Service at all, as in MetalLB.
//! - **Families.** One address per family of the Service's [`FamilyPolicy`], all from one pool.
//!   The policy follows `spec.ipFamilies` (see `service::family_policy`): a Service with one
//!   family there is single-stack whatever its `ipFamilyPolicy`. `PreferDualStack` takes, within
//!   a tier, the first pool that can give both families, else the first that can give the primary
//!   family, else the first that can give the other; `RequireDualStack` fails unless one pool
//!   gives both. Addresses are returned in the Service's family order (primary first).
//! - **Requested addresses** are honoured or refused with the reason, never replaced by others,
//!   and never completed: a Service that asks for addresses gets exactly those. A
//!   `RequireDualStack` Service that asks for one family only is refused (MetalLB refuses it too);
//!   a `PreferDualStack` one gets the one address it asked for.
//! - **Sharing.** Services with the same sharing key may hold the same address when their
//!   (port, protocol) pairs are disjoint and, where either has `externalTrafficPolicy: Local`,
//!   their pod selectors are equal. Automatic allocation for a Service with a sharing key first
//!   tries, lowest first, the addresses already shared under its key in the pool.
//! - **Allocation order.** Otherwise the lowest free address of the pool's ranges, the ranges taken
//!   in ascending order (IPv4 before IPv6). Deterministic: the same state gives the same answer.
//! - **Stability.** [`Ipam::assign`] for a Service that already holds addresses returns them
//!   unchanged while they remain valid for its request; nothing another Service or pool does moves
//!   them (only [`Ipam::set_pools`] takes addresses away, when no usable pool contains them any more).
//!   `autoAssign` and a pool's [`PoolConfig::accepts_new`] only govern *new* addresses: existing
//!   holders keep theirs.
//! - **Uniqueness.** An address is held by one Service unless sharing allows more; an address in
//!   two overlapping pools is still one address. `avoidBuggyIPs` addresses are never handed out
//!   from a pool that avoids them.
//! - **Node addresses** ([`Ipam::set_node_addresses`]) are never handed out, nor granted when
//!   asked for; a Service that already holds one keeps it (the caller warns about it).
//! - **Pool of record.** A held address in two pools belongs to the pool it came from while that
//!   pool may still hand out addresses; when that pool stops (being deleted, invalid) and another
//!   pool containing the address may, the holding moves there, address unchanged, so a pool being
//!   deleted waits only for Services nothing else can take over.
//!
//! # Complexity
//!
//! With n assignments: allocate, release and [`Ipam::is_free`] are O(log n) plus a term linear in
//! the number of pools and of ranges per pool, independent of pool sizes (a `/8` or a `/64` costs
//! the same). Used addresses are kept as coalesced runs (module `runs`), so the lowest free address is
//! found by jumping over runs, never by scanning a bitmap.

mod runs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use lodestone_crds::ServiceAllocation;
use lodestone_crds::addresses::{IpFamily, PoolAddresses, ip_from_key, ip_key};
use lodestone_crds::{allocation, selector};

use runs::{Runs, no_filler};

pub use lodestone_crds::ServiceKey;

/// The Service's `spec.ipFamilyPolicy` with its primary family (`spec.ipFamilies[0]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FamilyPolicy {
    /// One address, of this family.
    SingleStack(IpFamily),
    /// Both families when possible, else one; the given family first.
    PreferDualStack(IpFamily),
    /// Both families or nothing; the given family first.
    RequireDualStack(IpFamily),
}

impl FamilyPolicy {
    /// The primary family.
    pub fn primary(&self) -> IpFamily {
        match *self {
            FamilyPolicy::SingleStack(f)
            | FamilyPolicy::PreferDualStack(f)
            | FamilyPolicy::RequireDualStack(f) => f,
        }
    }

    /// The families the Service may hold, primary first.
    pub fn families(&self) -> Vec<IpFamily> {
        match *self {
            FamilyPolicy::SingleStack(f) => vec![f],
            FamilyPolicy::PreferDualStack(f) | FamilyPolicy::RequireDualStack(f) => {
                vec![f, f.other()]
            }
        }
    }

    /// Whether holding addresses of exactly `held` families satisfies the policy.
    fn satisfied_by(&self, held: &[IpFamily]) -> bool {
        let fams = self.families();
        match self {
            FamilyPolicy::RequireDualStack(_) | FamilyPolicy::SingleStack(_) => {
                fams.iter().all(|f| held.contains(f))
            }
            FamilyPolicy::PreferDualStack(_) => !held.is_empty(),
        }
    }
}

/// A port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// What a Service asks of the IPAM; the caller maps the Service object to this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    /// Which Service.
    pub key: ServiceKey,
    /// The Service's labels (for `serviceSelectors`).
    pub labels: BTreeMap<String, String>,
    /// Its namespace's labels (for `namespaceSelectors`), shared by every request of the
    /// namespace: the IPAM keeps each holder's request, and 10,000 copies of one map add up.
    pub namespace_labels: Arc<BTreeMap<String, String>>,
    /// Families wanted.
    pub families: FamilyPolicy,
    /// Requested addresses, at most one per family.
    pub requested: Vec<IpAddr>,
    /// Requested pool by name.
    pub pool: Option<String>,
    /// Sharing key (`allow-shared-ip`), if any.
    pub sharing_key: Option<String>,
    /// Ports with protocol.
    pub ports: Vec<(u16, Protocol)>,
    /// `externalTrafficPolicy: Local`.
    pub traffic_local: bool,
    /// `spec.selector`.
    pub pod_selector: BTreeMap<String, String>,
}

/// One address pool as the IPAM sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// Its (valid) addresses.
    pub addresses: PoolAddresses,
    /// Whether the pool serves Services that do not ask for it.
    pub auto_assign: bool,
    /// Never hand out IPv4 addresses ending in `.0` or `.255`. Has no effect on IPv6 addresses:
    /// the "buggy" clients this works around only mishandle IPv4 network/broadcast-looking
    /// addresses, and IPv6 has no broadcast.
    pub avoid_buggy_ips: bool,
    /// The pool's `serviceAllocation`: which Services it serves, and its place in the order pools
    /// are tried ([`lodestone_crds::allocation`] holds the rule).
    pub allocation: Option<ServiceAllocation>,
    /// Whether the pool may hand out new addresses. False for a pool with invalid entries or
    /// being deleted: Services already holding its addresses keep them, nobody gets new ones.
    pub accepts_new: bool,
}

/// The addresses a Service holds and the pool they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Pool name.
    pub pool: String,
    /// Addresses in the Service's family order (primary first).
    pub addresses: Vec<IpAddr>,
}

/// Why a Service gets no (or not the wanted) address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every candidate pool with addresses of `family` has none free.
    #[error("no free {family} address left in pool(s) {}", pools.join(", "))]
    PoolExhausted {
        /// The pools tried.
        pools: Vec<String>,
        /// The family that ran out.
        family: IpFamily,
    },
    /// No pool may serve the Service; one reason per pool.
    #[error("{}", no_pool_message(reasons))]
    NoPoolMatches {
        /// `(pool, why not)` for every pool.
        reasons: Vec<(String, String)>,
    },
    /// The address is held by a Service that does not share.
    #[error("address {address} is in use by {by}")]
    AddressInUse {
        /// The address.
        address: IpAddr,
        /// Its holder.
        by: ServiceKey,
    },
    /// A requested or held address is in no pool.
    #[error("address {address} is in no address pool")]
    AddressInNoPool {
        /// The address.
        address: IpAddr,
    },
    /// A requested address is not in the requested pool.
    #[error("address {address} is not in pool {pool}")]
    AddressNotInPool {
        /// The address.
        address: IpAddr,
        /// The pool named by the Service.
        pool: String,
    },
    /// A requested address is one the pool avoids.
    #[error("address {address} ends in .0 or .255, which pool {pool} avoids (avoidBuggyIPs)")]
    AvoidedAddress {
        /// The address.
        address: IpAddr,
        /// The pool.
        pool: String,
    },
    /// The requested pool does not exist.
    #[error("pool {pool} does not exist")]
    UnknownPool {
        /// The name asked for.
        pool: String,
    },
    /// The pool exists but may not serve this Service.
    #[error("pool {pool} may not serve this Service: {why}")]
    PoolNotEligible {
        /// The pool.
        pool: String,
        /// Why.
        why: String,
    },
    /// No pool the Service may use has addresses of a family it needs.
    #[error("no pool this Service may use has {family} addresses")]
    FamilyUnavailable {
        /// The missing family.
        family: IpFamily,
    },
    /// The address is a Node's own address.
    #[error("address {address} is the address of Node {node}; it is never given to a Service")]
    NodeAddress {
        /// The address.
        address: IpAddr,
        /// The Node that has it.
        node: String,
    },
    /// The address is held under sharing rules this Service does not meet.
    #[error("address {address} is in use by {with} and cannot be shared: {why}")]
    SharingConflict {
        /// The address.
        address: IpAddr,
        /// The Service holding it.
        with: ServiceKey,
        /// Which rule fails.
        why: String,
    },
    /// The request contradicts itself (e.g. two requested IPv4 addresses).
    #[error("{0}")]
    InvalidRequest(String),
}

impl AllocError {
    /// The reason of the Service's `AddressAssigned` condition: one CamelCase word per kind of
    /// failure. `docs/addresses.md` lists each with an example message, and a test
    /// (`controller/tests/reasons_doc.rs`) holds the two together.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::PoolExhausted { .. } => "PoolExhausted",
            AllocError::NoPoolMatches { .. } => "NoPoolMatches",
            AllocError::AddressInUse { .. } => "AddressInUse",
            AllocError::AddressInNoPool { .. } | AllocError::AddressNotInPool { .. } => {
                "AddressInNoPool"
            }
            AllocError::AvoidedAddress { .. } => "AvoidedAddress",
            AllocError::UnknownPool { .. } => "UnknownPool",
            AllocError::PoolNotEligible { .. } => "PoolNotEligible",
            AllocError::FamilyUnavailable { .. } => "FamilyUnavailable",
            AllocError::SharingConflict { .. } => "SharingConflict",
            AllocError::NodeAddress { .. } => "NodeAddress",
            AllocError::InvalidRequest(_) => "InvalidRequest",
        }
    }
}

fn no_pool_message(reasons: &[(String, String)]) -> String {
    if reasons.is_empty() {
        return "there are no address pools".to_string();
    }
    let parts: Vec<String> = reasons
        .iter()
        .map(|(p, why)| format!("pool {p}: {why}"))
        .collect();
    format!("no pool may serve this Service ({})", parts.join("; "))
}

/// Usage of one pool: counts only, cheap enough to take after every change (the holders
/// themselves are [`Ipam::pool_holders`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Held addresses of the pool, IPv4 and IPv6.
    pub assigned: [u128; 2],
    /// Addresses the pool could still hand out, IPv4 and IPv6 (saturating).
    pub available: [u128; 2],
}

fn fam_index(f: IpFamily) -> usize {
    match f {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

impl PoolStats {
    /// Held addresses of `family`.
    pub fn assigned(&self, family: IpFamily) -> u128 {
        self.assigned[fam_index(family)]
    }

    /// Addresses of `family` still available.
    pub fn available(&self, family: IpFamily) -> u128 {
        self.available[fam_index(family)]
    }

    /// Whether any address of the pool is held.
    pub fn in_use(&self) -> bool {
        self.assigned.iter().any(|n| *n > 0)
    }
}

/// An IPv4 address ending in `.0` or `.255`, by ordering key.
fn buggy_key(k: u128) -> bool {
    matches!(k & 0xff, 0 | 255)
}

fn is_buggy(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
}

/// Number of keys in `a..=b` ending in `.0` or `.255`.
fn count_buggy(a: u128, b: u128) -> u128 {
    // Keys <= n congruent to r mod 256.
    let upto = |n: u128, r: u128| if n < r { 0 } else { (n - r) / 256 + 1 };
    let below = |n: Option<u128>, r| n.map_or(0, |n| upto(n, r));
    [0u128, 255]
        .into_iter()
        .map(|r| upto(b, r) - below(a.checked_sub(1), r))
        .sum()
}

#[derive(Clone, Debug)]
struct Record {
    req: ServiceRequest,
    assignment: Assignment,
}

/// A pool's failure to serve a request, while choosing among candidates.
enum Miss {
    /// A requested address cannot be had from this pool.
    Refused(AllocError),
    /// The pool has addresses of the family but none free.
    Exhausted(IpFamily),
    /// None free, and an address shared under the Service's own sharing key could have been
    /// had but for this conflict ([`AllocError::SharingConflict`]).
    Conflict(AllocError),
    /// The pool has no address of the family.
    NoFamily(IpFamily),
}

/// The allocation state. See the module documentation for the rules.
#[derive(Clone, Debug)]
pub struct Ipam {
    /// Pools in allocation order.
    pools: Vec<PoolConfig>,
    records: BTreeMap<ServiceKey, Record>,
    holders: BTreeMap<IpAddr, Vec<ServiceKey>>,
    used_v4: Runs,
    /// IPv4 used runs padded with `.0`/`.255`, searched for pools with `avoidBuggyIPs`.
    used_v4_avoid: Runs,
    used_v6: Runs,
    /// Addresses held under each sharing key.
    shared: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Addresses of Nodes, with a Node that has each: never handed out.
    node_addresses: BTreeMap<IpAddr, String>,
}

impl Default for Ipam {
    fn default() -> Self {
        Self::new()
    }
}

impl Ipam {
    /// An IPAM with no pools and no assignments.
    pub fn new() -> Self {
        Self {
            pools: Vec::new(),
            records: BTreeMap::new(),
            holders: BTreeMap::new(),
            used_v4: Runs::new(IpFamily::V4.max_key()),
            used_v4_avoid: Runs::new(IpFamily::V4.max_key()),
            used_v6: Runs::new(IpFamily::V6.max_key()),
            shared: BTreeMap::new(),
            node_addresses: BTreeMap::new(),
        }
    }

    /// Replace the set of Node addresses (each with a Node that has it). They are never handed
    /// out from now on; Services already holding one keep it.
    pub fn set_node_addresses(&mut self, addresses: BTreeMap<IpAddr, String>) {
        self.node_addresses = addresses;
    }

    /// The Node that has `ip` as its address, if any.
    pub fn node_of(&self, ip: IpAddr) -> Option<&str> {
        self.node_addresses.get(&ip).map(String::as_str)
    }

    /// The pools in allocation order.
    pub fn pools(&self) -> &[PoolConfig] {
        &self.pools
    }

    /// Replace the pool set. Returns the Services whose held addresses are no longer inside any
    /// pool they may use, with those addresses; they are released here, and the caller re-assigns
    /// them and tells the user why. Every other Service keeps its addresses.
    ///
    /// Robust to bad input: of two pools with the same name the first is kept; a pool with a
    /// malformed selector hands out nothing new (the malformed selector is ignored when judging
    /// whether existing holders may keep their addresses, so fixing it later moves nobody).
    pub fn set_pools(&mut self, pools: Vec<PoolConfig>) -> Vec<(ServiceKey, Vec<IpAddr>)> {
        let mut seen = BTreeSet::new();
        let mut kept: Vec<PoolConfig> = Vec::new();
        for mut pool in pools {
            if !seen.insert(pool.name.clone()) {
                continue;
            }
            let selectors_valid = pool.allocation.as_ref().is_none_or(|a| {
                a.namespace_selectors
                    .iter()
                    .chain(&a.service_selectors)
                    .all(|s| selector::validate(s).is_ok())
            });
            pool.accepts_new = pool.accepts_new && selectors_valid;
            kept.push(pool);
        }
        kept.sort_by(|a, b| {
            allocation::pool_order(
                (a.name.as_str(), a.allocation.as_ref()),
                (b.name.as_str(), b.allocation.as_ref()),
            )
        });
        self.pools = kept;

        let mut displaced = Vec::new();
        let mut moved_pool = Vec::new();
        for (key, rec) in &self.records {
            match self.held_pool(
                &rec.req,
                &rec.assignment.addresses,
                Some(&rec.assignment.pool),
            ) {
                Ok(idx) => {
                    if let Some(p) = self.pools.get(idx)
                        && p.name != rec.assignment.pool
                    {
                        moved_pool.push((key.clone(), p.name.clone()));
                    }
                }
                Err(_) => displaced.push((key.clone(), rec.assignment.addresses.clone())),
            }
        }
        for (key, pool) in moved_pool {
            if let Some(rec) = self.records.get_mut(&key) {
                rec.assignment.pool = pool;
            }
        }
        for (key, _) in &displaced {
            self.release(key);
        }
        displaced
    }

    /// Startup rebuild: record the addresses a Service already holds (from its status), before
    /// any new assignment. Ok when they are valid for its request: inside one pool it may use
    /// (autoAssign and [`PoolConfig::accepts_new`] do not matter for holding), consistent with its
    /// families and requested addresses, and not conflicting with another holder. Otherwise Err
    /// with why, and nothing is recorded; the caller then calls [`Ipam::assign`].
    ///
    /// Never allocates, so the order of `reserve` calls does not matter between Services whose
    /// holdings are compatible; of two conflicting holdings the first reserved wins (use
    /// [`Ipam::reserve_all`] for an order-independent result). A dual-stack Service holding one
    /// family is recorded as it is; its next `assign` adds the other family if it can.
    pub fn reserve(
        &mut self,
        req: &ServiceRequest,
        held: &[IpAddr],
    ) -> Result<Assignment, AllocError> {
        self.release(&req.key);
        validate_request(req)?;
        let idx = self.check_held(req, held, None)?;
        let mut addresses = held.to_vec();
        order_by_family(&mut addresses, &req.families);
        let pool = self.pool_name(idx);
        Ok(self.commit(req, pool, addresses))
    }

    /// [`Ipam::reserve`] for many Services, in Service-key order whatever the input order, so that
    /// conflicting holdings are always resolved the same way.
    pub fn reserve_all(
        &mut self,
        mut held: Vec<(ServiceRequest, Vec<IpAddr>)>,
    ) -> Vec<(ServiceKey, Result<Assignment, AllocError>)> {
        held.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        held.into_iter()
            .map(|(req, addrs)| {
                let r = self.reserve(&req, &addrs);
                (req.key, r)
            })
            .collect()
    }

    /// The addresses for a Service. A Service that holds addresses still valid for its request
    /// keeps them (a dual-stack Service holding one family gets the other added when possible).
    /// Otherwise its old addresses are released and it gets what it now asks for. On `Err` the
    /// Service holds nothing.
    pub fn assign(&mut self, req: &ServiceRequest) -> Result<Assignment, AllocError> {
        if let Err(e) = validate_request(req) {
            self.release(&req.key);
            return Err(e);
        }
        if let Some(kept) = self.keep_or_complete(req) {
            let (idx, addresses) = kept;
            let pool = self.pool_name(idx);
            self.release(&req.key);
            return Ok(self.commit(req, pool, addresses));
        }
        self.release(&req.key);
        let (idx, addresses) = self.allocate(req)?;
        let pool = self.pool_name(idx);
        Ok(self.commit(req, pool, addresses))
    }

    /// Why the Service may not keep what it holds under `req` (None: it may, or holds nothing):
    /// read before [`Ipam::assign`] moves it, so the move can say why.
    pub fn holding_error(&self, req: &ServiceRequest) -> Option<AllocError> {
        let rec = self.records.get(&req.key)?;
        validate_request(req).err().or_else(|| {
            self.check_held(req, &rec.assignment.addresses, Some(&rec.assignment.pool))
                .err()
        })
    }

    /// The request a holder was last given its addresses under (ports and pod selector kept
    /// only for Services with a sharing key): what another Service's sharing is judged against.
    pub fn request(&self, key: &ServiceKey) -> Option<&ServiceRequest> {
        self.records.get(key).map(|r| &r.req)
    }

    /// Release everything the Service holds; returns what it held.
    pub fn release(&mut self, key: &ServiceKey) -> Option<Assignment> {
        let rec = self.records.remove(key)?;
        for ip in &rec.assignment.addresses {
            self.vacate(*ip, key, rec.req.sharing_key.as_deref());
        }
        Some(rec.assignment)
    }

    /// What the Service holds.
    pub fn assignment(&self, key: &ServiceKey) -> Option<&Assignment> {
        self.records.get(key).map(|r| &r.assignment)
    }

    /// Whether nobody holds `ip` (says nothing about whether a pool contains it).
    pub fn is_free(&self, ip: IpAddr) -> bool {
        !self.holders.contains_key(&ip)
    }

    /// The Services holding `ip`, in key order.
    pub fn holders(&self, ip: IpAddr) -> Vec<ServiceKey> {
        self.holders.get(&ip).cloned().unwrap_or_default()
    }

    /// Usage of a pool by name; `None` if there is no such pool. Walks the pool's held
    /// addresses without copying any.
    pub fn pool_stats(&self, pool: &str) -> Option<PoolStats> {
        let p = self.pools.iter().find(|p| p.name == pool)?;
        let mut stats = PoolStats::default();
        for r in p.addresses.ranges() {
            let fi = fam_index(r.family());
            let (a, b) = r.keys();
            let avoid = p.avoid_buggy_ips && r.family() == IpFamily::V4;
            let usable = r.len() - if avoid { count_buggy(a, b) } else { 0 };
            let mut held_usable = 0u128;
            for ip in self.holders.range(r.start()..=r.end()).map(|(ip, _)| ip) {
                stats.assigned[fi] += 1;
                if !(avoid && is_buggy(*ip)) {
                    held_usable += 1;
                }
            }
            // Node addresses are not available either, unless already counted as held or avoided.
            let nodes_unusable = self
                .node_addresses
                .range(r.start()..=r.end())
                .filter(|(ip, _)| !(self.holders.contains_key(*ip) || avoid && is_buggy(**ip)))
                .count() as u128;
            stats.available[fi] = stats.available[fi]
                .saturating_add(usable - held_usable - nodes_unusable.min(usable - held_usable));
        }
        Some(stats)
    }

    /// Every held address of a pool with each holder, ascending by address (empty for an
    /// unknown pool). A copy of each key: for a pool being deleted, whose status lists them.
    pub fn pool_holders(&self, pool: &str) -> Vec<(IpAddr, ServiceKey)> {
        let Some(p) = self.pools.iter().find(|p| p.name == pool) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for r in p.addresses.ranges() {
            for (ip, keys) in self.holders.range(r.start()..=r.end()) {
                out.extend(
                    keys.iter()
                        .filter(|k| self.holds_from(k, pool))
                        .map(|k| (*ip, k.clone())),
                );
            }
        }
        out
    }

    /// Whether any Service holds an address assigned from `pool` (an address it shares with an
    /// overlapping pool, held from that one, does not count): what its finalizer waits for.
    pub fn pool_in_use(&self, pool: &str) -> bool {
        let Some(p) = self.pools.iter().find(|p| p.name == pool) else {
            return false;
        };
        p.addresses.ranges().iter().any(|r| {
            self.holders
                .range(r.start()..=r.end())
                .any(|(_, keys)| keys.iter().any(|k| self.holds_from(k, pool)))
        })
    }

    fn holds_from(&self, k: &ServiceKey, pool: &str) -> bool {
        self.records
            .get(k)
            .is_some_and(|rec| rec.assignment.pool == pool)
    }

    /// Pairs of pools (names in order) that share at least one address.
    pub fn overlaps(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, a) in self.pools.iter().enumerate() {
            for b in self.pools.iter().skip(i + 1) {
                if a.addresses.overlaps(&b.addresses) {
                    let (x, y) = if a.name <= b.name { (a, b) } else { (b, a) };
                    out.push((x.name.clone(), y.name.clone()));
                }
            }
        }
        out.sort();
        out
    }

    /// How many Services hold addresses.
    pub fn assigned_services(&self) -> usize {
        self.records.len()
    }

    /// Every assignment, in Service-key order.
    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, &Assignment)> {
        self.records.iter().map(|(k, r)| (k, &r.assignment))
    }

    // ----- internals -----

    fn pool_name(&self, idx: usize) -> String {
        self.pools
            .get(idx)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    fn commit(&mut self, req: &ServiceRequest, pool: String, addresses: Vec<IpAddr>) -> Assignment {
        for ip in &addresses {
            self.occupy(*ip, &req.key, req.sharing_key.as_deref());
        }
        let assignment = Assignment { pool, addresses };
        // Ports and the pod selector are read only when another Service asks to share the
        // address, which `compatible` refuses before reading them unless both have a sharing
        // key: without one, the record does not keep them.
        let shares = req.sharing_key.is_some();
        let kept = ServiceRequest {
            key: req.key.clone(),
            labels: req.labels.clone(),
            namespace_labels: req.namespace_labels.clone(),
            families: req.families,
            requested: req.requested.clone(),
            pool: req.pool.clone(),
            sharing_key: req.sharing_key.clone(),
            ports: if shares {
                req.ports.clone()
            } else {
                Vec::new()
            },
            traffic_local: req.traffic_local,
            pod_selector: if shares {
                req.pod_selector.clone()
            } else {
                BTreeMap::new()
            },
        };
        self.records.insert(
            req.key.clone(),
            Record {
                req: kept,
                assignment: assignment.clone(),
            },
        );
        assignment
    }

    fn occupy(&mut self, ip: IpAddr, key: &ServiceKey, sharing_key: Option<&str>) {
        let holders = self.holders.entry(ip).or_default();
        let first = holders.is_empty();
        if let Err(pos) = holders.binary_search(key) {
            holders.insert(pos, key.clone());
        }
        if let Some(sk) = sharing_key {
            self.shared.entry(sk.to_string()).or_default().insert(ip);
        }
        if first {
            let k = ip_key(ip);
            match ip {
                IpAddr::V4(_) => {
                    self.used_v4.insert(k, no_filler);
                    self.used_v4_avoid.insert(k, buggy_key);
                }
                IpAddr::V6(_) => self.used_v6.insert(k, no_filler),
            }
        }
    }

    fn vacate(&mut self, ip: IpAddr, key: &ServiceKey, sharing_key: Option<&str>) {
        let Some(holders) = self.holders.get_mut(&ip) else {
            return;
        };
        holders.retain(|k| k != key);
        let now_empty = holders.is_empty();
        if let Some(sk) = sharing_key {
            let still_shared = self.holders.get(&ip).is_some_and(|hs| {
                hs.iter().any(|h| {
                    self.records
                        .get(h)
                        .and_then(|r| r.req.sharing_key.as_deref())
                        == Some(sk)
                })
            });
            if !still_shared && let Some(set) = self.shared.get_mut(sk) {
                set.remove(&ip);
                if set.is_empty() {
                    self.shared.remove(sk);
                }
            }
        }
        if now_empty {
            self.holders.remove(&ip);
            let k = ip_key(ip);
            match ip {
                IpAddr::V4(_) => {
                    self.used_v4.remove(k, no_filler, |_| true);
                    let holders = &self.holders;
                    self.used_v4_avoid.remove(k, buggy_key, |m| {
                        ip_from_key(IpFamily::V4, m).is_some_and(|a| holders.contains_key(&a))
                    });
                }
                IpAddr::V6(_) => self.used_v6.remove(k, no_filler, |_| true),
            }
        }
    }

    /// Why `pool` may not hold addresses for `req` (None: it may). Malformed selectors are
    /// skipped here; [`Ipam::set_pools`] already stops such a pool from handing out new addresses.
    fn holding_refusal(pool: &PoolConfig, req: &ServiceRequest) -> Option<String> {
        let facts = allocation::ServiceFacts {
            namespace: &req.key.namespace,
            labels: &req.labels,
            namespace_labels: &req.namespace_labels,
        };
        allocation::serves(pool.allocation.as_ref(), &facts)
            .err()
            .map(|e| e.to_string())
    }

    /// Why `pool` may not give `req` new addresses (None: it may).
    fn new_refusal(pool: &PoolConfig, req: &ServiceRequest, explicit: bool) -> Option<String> {
        if let Some(why) = Self::holding_refusal(pool, req) {
            return Some(why);
        }
        if !pool.accepts_new {
            return Some(
                "it hands out no new addresses (it has invalid entries or is being deleted)"
                    .to_string(),
            );
        }
        if !pool.auto_assign && !explicit {
            return Some(
                "autoAssign is false and the Service names neither the pool nor one of its addresses"
                    .to_string(),
            );
        }
        None
    }

    /// Whether `req` may hold `ip` alongside its current holders.
    fn check_sharing(&self, req: &ServiceRequest, ip: IpAddr) -> Result<(), AllocError> {
        for h in self.holders.get(&ip).into_iter().flatten() {
            if *h == req.key {
                continue;
            }
            let Some(other) = self.records.get(h).map(|r| &r.req) else {
                continue;
            };
            compatible(req, other, ip)?;
        }
        Ok(())
    }

    /// The pool (index) in which `req` may hold `held`: one pool containing them all that `req`
    /// may use and that does not avoid any of them; `prefer` wins if it qualifies.
    fn held_pool(
        &self,
        req: &ServiceRequest,
        held: &[IpAddr],
        prefer: Option<&str>,
    ) -> Result<usize, AllocError> {
        if let Some(name) = &req.pool {
            let idx = self
                .pools
                .iter()
                .position(|p| &p.name == name)
                .ok_or_else(|| AllocError::UnknownPool { pool: name.clone() })?;
            let pool = &self.pools[idx];
            if let Some(ip) = held.iter().find(|ip| !pool.addresses.contains(**ip)) {
                return Err(AllocError::AddressNotInPool {
                    address: *ip,
                    pool: name.clone(),
                });
            }
            // Moving a holding into a named pool is a new hand-out from that pool: a pool that
            // takes no new Services keeps only the holders it already had (the pool of record;
            // unknown at a startup rebuild, where holding is always allowed).
            if prefer.is_some_and(|p| p != name.as_str())
                && let Some(why) = Self::new_refusal(pool, req, true)
            {
                return Err(AllocError::PoolNotEligible {
                    pool: name.clone(),
                    why,
                });
            }
            return self.holdable(req, held, idx).map(|()| idx);
        }
        if let Some(ip) = held
            .iter()
            .find(|ip| !self.pools.iter().any(|p| p.addresses.contains(**ip)))
        {
            return Err(AllocError::AddressInNoPool { address: *ip });
        }
        let containing: Vec<usize> = (0..self.pools.len())
            .filter(|i| held.iter().all(|ip| self.pools[*i].addresses.contains(*ip)))
            .collect();
        let mut first_err = None;
        let mut ok = Vec::new();
        for idx in containing {
            match self.holdable(req, held, idx) {
                Ok(()) => ok.push(idx),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // The pool of record while it may hand out addresses, else one that may, else the pool
        // of record, else any: a holding leaves a pool being deleted (or invalid) for another
        // pool with the same address, so the deletion need not wait for it.
        let is_prefer = |i: &usize| prefer.is_some_and(|p| self.pools[*i].name == p);
        let accepting = |i: &usize| self.pools[*i].accepts_new;
        if let Some(idx) = ok
            .iter()
            .find(|i| is_prefer(i) && accepting(i))
            .or_else(|| ok.iter().find(|i| accepting(i)))
            .or_else(|| ok.iter().find(|i| is_prefer(i)))
        {
            return Ok(*idx);
        }
        match (ok.first(), first_err) {
            (Some(idx), _) => Ok(*idx),
            (None, Some(e)) => Err(e),
            (None, None) => Err(AllocError::InvalidRequest(format!(
                "addresses {} are not all in one pool",
                join_ips(held)
            ))),
        }
    }

    fn holdable(
        &self,
        req: &ServiceRequest,
        held: &[IpAddr],
        idx: usize,
    ) -> Result<(), AllocError> {
        let pool = &self.pools[idx];
        if let Some(why) = Self::holding_refusal(pool, req) {
            return Err(AllocError::PoolNotEligible {
                pool: pool.name.clone(),
                why,
            });
        }
        if pool.avoid_buggy_ips
            && let Some(ip) = held.iter().find(|ip| is_buggy(**ip))
        {
            return Err(AllocError::AvoidedAddress {
                address: *ip,
                pool: pool.name.clone(),
            });
        }
        Ok(())
    }

    /// Whether `req` may hold `held` as they are; the pool index if so.
    fn check_held(
        &self,
        req: &ServiceRequest,
        held: &[IpAddr],
        prefer: Option<&str>,
    ) -> Result<usize, AllocError> {
        if held.is_empty() {
            return Err(AllocError::InvalidRequest(
                "no addresses to hold".to_string(),
            ));
        }
        check_families(held, &req.families, "holds")?;
        if let Some(r) = req.requested.iter().find(|r| !held.contains(r)) {
            return Err(AllocError::InvalidRequest(format!(
                "the Service asks for {r} but holds {}",
                join_ips(held)
            )));
        }
        let idx = self.held_pool(req, held, prefer)?;
        for ip in held {
            self.check_sharing(req, *ip)?;
        }
        Ok(idx)
    }

    /// For a Service already holding addresses: those addresses, completed with any missing
    /// family the policy wants, if still valid; None if it must be allocated afresh.
    fn keep_or_complete(&self, req: &ServiceRequest) -> Option<(usize, Vec<IpAddr>)> {
        let rec = self.records.get(&req.key)?;
        let held = &rec.assignment.addresses;
        let idx = self
            .check_held(req, held, Some(&rec.assignment.pool))
            .ok()?;
        let mut addresses = held.clone();
        let pool = self.pools.get(idx)?;
        let have: Vec<IpFamily> = held.iter().map(|ip| IpFamily::of(*ip)).collect();
        let missing: Vec<IpFamily> = req
            .families
            .families()
            .into_iter()
            .filter(|f| !have.contains(f))
            .collect();
        // A Service that asks for addresses gets those, never one more.
        if !missing.is_empty() && pool.accepts_new && req.requested.is_empty() {
            for f in missing {
                if let Some(ip) = self.pick(req, pool, f) {
                    addresses.push(ip);
                }
            }
        }
        let fams: Vec<IpFamily> = addresses.iter().map(|ip| IpFamily::of(*ip)).collect();
        if !req.families.satisfied_by(&fams) {
            return None;
        }
        order_by_family(&mut addresses, &req.families);
        Some((idx, addresses))
    }

    /// A fresh allocation for `req` (which holds nothing). Pure: reads state only.
    fn allocate(&self, req: &ServiceRequest) -> Result<(usize, Vec<IpAddr>), AllocError> {
        if let Some((ip, node)) = req
            .requested
            .iter()
            .find_map(|ip| Some((*ip, self.node_of(*ip)?)))
        {
            return Err(AllocError::NodeAddress {
                address: ip,
                node: node.to_string(),
            });
        }
        let explicit = req.pool.is_some() || !req.requested.is_empty();
        let candidates: Vec<usize> = if let Some(name) = &req.pool {
            let idx = self
                .pools
                .iter()
                .position(|p| &p.name == name)
                .ok_or_else(|| AllocError::UnknownPool { pool: name.clone() })?;
            let pool = &self.pools[idx];
            if let Some(why) = Self::new_refusal(pool, req, true) {
                return Err(AllocError::PoolNotEligible {
                    pool: name.clone(),
                    why,
                });
            }
            if let Some(r) = req.requested.iter().find(|r| !pool.addresses.contains(**r)) {
                return Err(AllocError::AddressNotInPool {
                    address: *r,
                    pool: name.clone(),
                });
            }
            vec![idx]
        } else if !req.requested.is_empty() {
            if let Some(r) = req
                .requested
                .iter()
                .find(|r| !self.pools.iter().any(|p| p.addresses.contains(**r)))
            {
                return Err(AllocError::AddressInNoPool { address: *r });
            }
            let containing: Vec<usize> = (0..self.pools.len())
                .filter(|i| {
                    req.requested
                        .iter()
                        .all(|r| self.pools[*i].addresses.contains(*r))
                })
                .collect();
            let Some(first) = containing.first() else {
                return Err(AllocError::InvalidRequest(format!(
                    "requested addresses {} are not all in one pool",
                    join_ips(&req.requested)
                )));
            };
            let eligible: Vec<usize> = containing
                .iter()
                .copied()
                .filter(|i| Self::new_refusal(&self.pools[*i], req, true).is_none())
                .collect();
            if eligible.is_empty() {
                let pool = &self.pools[*first];
                let why = Self::new_refusal(pool, req, true).unwrap_or_default();
                return Err(AllocError::PoolNotEligible {
                    pool: pool.name.clone(),
                    why,
                });
            }
            eligible
        } else {
            let mut reasons = Vec::new();
            let mut ok = Vec::new();
            for (i, p) in self.pools.iter().enumerate() {
                match Self::new_refusal(p, req, explicit) {
                    None => ok.push(i),
                    Some(why) => reasons.push((p.name.clone(), why)),
                }
            }
            if ok.is_empty() {
                return Err(AllocError::NoPoolMatches { reasons });
            }
            ok
        };

        // Requested addresses are the whole answer: only the families asked for are wanted.
        let fams = if req.requested.is_empty() {
            req.families.families()
        } else {
            req.requested.iter().map(|ip| IpFamily::of(*ip)).collect()
        };
        let primary = req.families.primary();
        let mut misses: Vec<(usize, Miss)> = Vec::new();
        // Pools with a serviceAllocation first; the others only if none of those can serve.
        let (pinned, open): (Vec<usize>, Vec<usize>) = candidates
            .into_iter()
            .partition(|i| allocation::is_pinned(self.pools[*i].allocation.as_ref()));
        for tier in [pinned, open] {
            // The first pool with every family; else the first with the primary; else any.
            let mut with_primary: Option<(usize, Vec<IpAddr>)> = None;
            let mut partial: Option<(usize, Vec<IpAddr>)> = None;
            for idx in tier {
                let pool = &self.pools[idx];
                match self.plan_in_pool(req, pool, &fams) {
                    Err(m) => misses.push((idx, m)),
                    Ok((addrs, miss)) => {
                        let got: Vec<IpFamily> = addrs.iter().map(|ip| IpFamily::of(*ip)).collect();
                        if got.len() == fams.len() {
                            return Ok((idx, addrs));
                        }
                        if req.families.satisfied_by(&got) {
                            if with_primary.is_none() && got.contains(&primary) {
                                with_primary = Some((idx, addrs.clone()));
                            }
                            partial.get_or_insert((idx, addrs));
                        }
                        if let Some(m) = miss {
                            misses.push((idx, m));
                        }
                    }
                }
            }
            if let Some(p) = with_primary.or(partial) {
                return Ok(p);
            }
        }
        Err(self.explain(misses))
    }

    /// Addresses `req` can get from `pool`: requested ones (or a refusal) plus one per other
    /// family where available; also the first family that could not be served.
    fn plan_in_pool(
        &self,
        req: &ServiceRequest,
        pool: &PoolConfig,
        fams: &[IpFamily],
    ) -> Result<(Vec<IpAddr>, Option<Miss>), Miss> {
        let mut addrs = Vec::new();
        for r in &req.requested {
            if pool.avoid_buggy_ips && is_buggy(*r) {
                return Err(Miss::Refused(AllocError::AvoidedAddress {
                    address: *r,
                    pool: pool.name.clone(),
                }));
            }
            self.check_sharing(req, *r).map_err(Miss::Refused)?;
            addrs.push(*r);
        }
        let mut miss = None;
        for f in fams {
            if addrs.iter().any(|ip| IpFamily::of(*ip) == *f) {
                continue;
            }
            match self.pick(req, pool, *f) {
                Some(ip) => addrs.push(ip),
                None if miss.is_none() => {
                    miss = Some(if !pool.addresses.has_family(*f) {
                        Miss::NoFamily(*f)
                    } else if let Some(e) = self.sharing_conflict(req, pool, *f) {
                        Miss::Conflict(e)
                    } else {
                        Miss::Exhausted(*f)
                    });
                }
                None => {}
            }
        }
        order_by_family(&mut addrs, &req.families);
        Ok((addrs, miss))
    }

    /// One address of `family` from `pool` for `req`: an address shared under its sharing key
    /// if one fits, else the lowest free one.
    fn pick(&self, req: &ServiceRequest, pool: &PoolConfig, family: IpFamily) -> Option<IpAddr> {
        let avoid = pool.avoid_buggy_ips && family == IpFamily::V4;
        if let Some(set) = req.sharing_key.as_ref().and_then(|k| self.shared.get(k)) {
            let found = set.iter().copied().find(|ip| {
                IpFamily::of(*ip) == family
                    && pool.addresses.contains(*ip)
                    && !(avoid && is_buggy(*ip))
                    && !self.node_addresses.contains_key(ip)
                    && self.check_sharing(req, *ip).is_ok()
            });
            if found.is_some() {
                return found;
            }
        }
        for r in pool
            .addresses
            .ranges()
            .iter()
            .filter(|r| r.family() == family)
        {
            let (mut a, b) = r.keys();
            // Each Node address found free is stepped over; there are few, so this stays cheap.
            while let Some(k) = match family {
                IpFamily::V4 if avoid => self.used_v4_avoid.first_free(a, b, buggy_key),
                IpFamily::V4 => self.used_v4.first_free(a, b, no_filler),
                IpFamily::V6 => self.used_v6.first_free(a, b, no_filler),
            } {
                let ip = ip_from_key(family, k)?;
                if !self.node_addresses.contains_key(&ip) {
                    return Some(ip);
                }
                if k == b {
                    break;
                }
                a = k + 1;
            }
        }
        None
    }

    /// Why none of `pool`'s addresses of `family` shared under `req`'s sharing key can be
    /// shared with it: the first such address with its holder and the rule that fails.
    fn sharing_conflict(
        &self,
        req: &ServiceRequest,
        pool: &PoolConfig,
        family: IpFamily,
    ) -> Option<AllocError> {
        let set = self.shared.get(req.sharing_key.as_ref()?)?;
        set.iter()
            .filter(|ip| IpFamily::of(**ip) == family && pool.addresses.contains(**ip))
            .find_map(|ip| self.check_sharing(req, *ip).err())
    }

    fn explain(&self, misses: Vec<(usize, Miss)>) -> AllocError {
        let mut exhausted: Option<(IpFamily, Vec<String>)> = None;
        let mut no_family = None;
        let mut conflict = None;
        for (idx, m) in misses {
            match m {
                Miss::Refused(e) => return e,
                Miss::Conflict(e) => {
                    conflict.get_or_insert(e);
                }
                Miss::Exhausted(f) => {
                    let entry = exhausted.get_or_insert((f, Vec::new()));
                    if entry.0 == f {
                        entry.1.push(self.pool_name(idx));
                    }
                }
                Miss::NoFamily(f) => {
                    no_family.get_or_insert(f);
                }
            }
        }
        if let Some(e) = conflict {
            return e;
        }
        match (exhausted, no_family) {
            (Some((family, pools)), _) => AllocError::PoolExhausted { pools, family },
            (None, Some(family)) => AllocError::FamilyUnavailable { family },
            (None, None) => AllocError::NoPoolMatches {
                reasons: Vec::new(),
            },
        }
    }
}

/// Whether `req` may share `ip` with `other`, which holds it.
fn compatible(req: &ServiceRequest, other: &ServiceRequest, ip: IpAddr) -> Result<(), AllocError> {
    let conflict = |why: String| AllocError::SharingConflict {
        address: ip,
        with: other.key.clone(),
        why,
    };
    match (&req.sharing_key, &other.sharing_key) {
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => {
            return Err(conflict(format!(
                "its sharing key {b:?} differs from {a:?}"
            )));
        }
        _ => {
            return Err(AllocError::AddressInUse {
                address: ip,
                by: other.key.clone(),
            });
        }
    }
    if let Some((port, proto)) = req.ports.iter().find(|p| other.ports.contains(p)) {
        return Err(conflict(format!("both use port {port}/{proto}")));
    }
    if (req.traffic_local || other.traffic_local) && req.pod_selector != other.pod_selector {
        return Err(conflict(
            "externalTrafficPolicy is Local and the pod selectors differ".to_string(),
        ));
    }
    Ok(())
}

/// At most one address per family, each of a family the policy allows.
fn check_families(ips: &[IpAddr], policy: &FamilyPolicy, verb: &str) -> Result<(), AllocError> {
    let fams = policy.families();
    for (i, ip) in ips.iter().enumerate() {
        let f = IpFamily::of(*ip);
        if !fams.contains(&f) {
            return Err(AllocError::InvalidRequest(format!(
                "the Service {verb} {ip}, an {f} address, but is single-stack {}",
                policy.primary()
            )));
        }
        if let Some(other) = ips.iter().skip(i + 1).find(|o| IpFamily::of(**o) == f) {
            return Err(AllocError::InvalidRequest(format!(
                "the Service {verb} more than one {f} address ({ip}, {other})"
            )));
        }
    }
    Ok(())
}

fn validate_request(req: &ServiceRequest) -> Result<(), AllocError> {
    check_families(&req.requested, &req.families, "requests")?;
    if let FamilyPolicy::RequireDualStack(_) = req.families
        && let [only] = req.requested.as_slice()
    {
        let f = IpFamily::of(*only);
        return Err(AllocError::InvalidRequest(format!(
            "the Service is RequireDualStack but asks only for {only}: ask for an {} address too, or for none",
            f.other()
        )));
    }
    Ok(())
}

fn order_by_family(addrs: &mut [IpAddr], policy: &FamilyPolicy) {
    let fams = policy.families();
    addrs.sort_by_key(|ip| fams.iter().position(|f| *f == IpFamily::of(*ip)));
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
