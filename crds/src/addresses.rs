//! Parsing of `IPAddressPool.spec.addresses` into address ranges, with errors precise enough to
//! put in a pool's status condition.
//!
//! An entry is either a CIDR (`192.0.2.0/28`, `2001:db8::/120`) or an inclusive range
//! (`192.0.2.10-192.0.2.20`). A CIDR includes its network and broadcast addresses (a `/30` is four
//! addresses, as in MetalLB); `avoidBuggyIPs` is what keeps `.0` and `.255` out of use.
//!
//! Parsing says whether an entry is well-formed. Whether a well-formed entry may be handed out is
//! a separate question ([`refusals`], [`refused_entries`]): a pool must not reach into
//! special-purpose blocks (unspecified, loopback, link-local unless allowed, multicast, broadcast)
//! nor be larger than a /8 (IPv4) or a /64 (IPv6). The two are kept apart so that a pool refused
//! for what it holds still parses: Services that already hold its addresses keep them.
//!
//! Addresses are also given an ordering key, a `u128` per family ([`ip_key`], [`ip_from_key`]),
//! which the IPAM and the speaker use for range arithmetic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The largest ordering key of the family (the all-ones address).
    pub fn max_key(self) -> u128 {
        match self {
            IpFamily::V4 => u128::from(u32::MAX),
            IpFamily::V6 => u128::MAX,
        }
    }

    /// Address length in bits.
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }

    /// The other family.
    pub fn other(self) -> Self {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// The ordering key of an address within its family: the address as an integer.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of a family with ordering key `key`; `None` when `key` is beyond the family.
pub fn ip_from_key(family: IpFamily, key: u128) -> Option<IpAddr> {
    match family {
        IpFamily::V4 => u32::try_from(key)
            .ok()
            .map(|k| IpAddr::V4(Ipv4Addr::from(k))),
        IpFamily::V6 => Some(IpAddr::V6(Ipv6Addr::from(key))),
    }
}

/// Why an address entry (or a set of them) is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The entry is empty or only whitespace.
    #[error("entry is empty")]
    Empty,
    /// Leading or trailing whitespace.
    #[error("entry has leading or trailing whitespace")]
    SurroundingWhitespace,
    /// Whitespace inside the entry.
    #[error("entry contains whitespace; write it without spaces, e.g. 192.0.2.10-192.0.2.20")]
    InnerWhitespace,
    /// An IPv6 zone index such as `%eth0`.
    #[error("zone index {zone:?} is not allowed: pool addresses are not tied to an interface")]
    ZoneId {
        /// The zone part, including `%`.
        zone: String,
    },
    /// The prefix length exceeds the family's address length.
    #[error("prefix length {prefix} is longer than {max} for {family}")]
    PrefixTooLong {
        /// The prefix as written.
        prefix: String,
        /// The family's address length.
        max: u8,
        /// The family of the address.
        family: IpFamily,
    },
    /// The part after `/` is not a plain decimal number.
    #[error("prefix length {prefix:?} is not a plain decimal number")]
    PrefixNotANumber {
        /// The prefix as written.
        prefix: String,
    },
    /// A CIDR whose address has bits set beyond the prefix.
    #[error("host bits are set; did you mean {suggestion}?")]
    HostBitsSet {
        /// The network CIDR the user probably meant.
        suggestion: String,
    },
    /// A range whose end is lower than its start.
    #[error("range end {end} is before its start {start}")]
    EndBeforeStart {
        /// First address as written.
        start: IpAddr,
        /// Last address as written.
        end: IpAddr,
    },
    /// A range from one family to the other.
    #[error("range mixes families: {start} is {}, {end} is {}", IpFamily::of(*start), IpFamily::of(*end))]
    MixedFamilies {
        /// First address.
        start: IpAddr,
        /// Last address.
        end: IpAddr,
    },
    /// Text that is not an IP address.
    #[error("{text:?} is not an IP address")]
    NotAnAddress {
        /// The offending text.
        text: String,
    },
    /// A bare address without a prefix.
    #[error("a single address needs a prefix length: did you mean {suggestion}?")]
    BareAddress {
        /// The address with a host prefix.
        suggestion: String,
    },
    /// A range with a side missing (`192.0.2.1-`).
    #[error("range is missing its {side} address; a range is written start-end")]
    MissingRangeBound {
        /// `"first"` or `"last"`.
        side: &'static str,
    },
    /// More than one `-`.
    #[error("more than one '-'; a range is written start-end, e.g. 192.0.2.10-192.0.2.20")]
    TooManyDashes,
    /// Both `/` and `-` in one entry.
    #[error("an entry is either a CIDR or a range, not both")]
    CidrAndRange,
    /// The entry covers IPv4-mapped IPv6 addresses (`::ffff:0:0/96`), which clients and
    /// Kubernetes treat as IPv4 addresses: the same address would exist twice.
    #[error(
        "covers IPv4-mapped IPv6 addresses (::ffff:0:0/96), which clients treat as IPv4; write IPv4 addresses instead"
    )]
    Ipv4Mapped,
    /// Two entries of the same pool overlap.
    #[error("overlaps spec.addresses[{other_index}] {other_entry:?}")]
    OverlapsEntry {
        /// Index of the other entry.
        other_index: usize,
        /// The other entry as written.
        other_entry: String,
    },
    /// The entry reaches into a block of special-purpose addresses no pool may hand out.
    #[error("overlaps {block}: {}", kind.why())]
    SpecialPurpose {
        /// What the block is.
        kind: SpecialKind,
        /// The whole block, not only the part the entry covers.
        block: AddressRange,
    },
    /// The entry holds more addresses than the largest block a pool may have.
    #[error(
        "spans more addresses than a /{max_prefix}, the largest {family} entry a pool may have"
    )]
    TooLarge {
        /// The family of the entry.
        family: IpFamily,
        /// The shortest prefix allowed for the family.
        max_prefix: u8,
    },
}

/// A kind of special-purpose addresses (RFC 6890) that must never be a Service's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecialKind {
    /// `0.0.0.0/8`: "this host on this network" (RFC 1122), only ever a source.
    ThisNetwork,
    /// `::`: the unspecified address.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`: valid on one link only, and where cloud metadata services
    /// live (169.254.169.254). Allowed by a pool's `allowLinkLocal`.
    LinkLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`: the limited broadcast address.
    Broadcast,
}

impl SpecialKind {
    /// Why such an address cannot be a Service's, in words for a pool condition.
    pub fn why(self) -> &'static str {
        match self {
            SpecialKind::ThisNetwork => {
                "\"this network\" addresses, 0.0.0.0 among them, are never a destination"
            }
            SpecialKind::Unspecified => "the unspecified address is never a destination",
            SpecialKind::Loopback => "loopback addresses never leave a host",
            SpecialKind::LinkLocal => {
                "link-local addresses are refused unless the pool sets allowLinkLocal: true"
            }
            SpecialKind::Multicast => "multicast addresses name groups of hosts, not one",
            SpecialKind::Broadcast => {
                "the limited broadcast address reaches every host on the link"
            }
        }
    }
}

/// The shortest IPv4 prefix a pool entry may have: a /8 (16,777,216 addresses) is the largest
/// block ever run as one network (10.0.0.0/8); anything larger spans special-purpose blocks and
/// the public Internet, and is a typo or `0.0.0.0/0`.
pub const MAX_PREFIX_V4: u8 = 8;
/// The shortest IPv6 prefix a pool entry may have: a /64 is one IPv6 subnet (RFC 4291), the most
/// one link can hold, and 2^64 addresses are more than any cluster needs.
pub const MAX_PREFIX_V6: u8 = 64;

impl IpFamily {
    /// The shortest prefix a pool entry of this family may have.
    pub fn max_entry_prefix(self) -> u8 {
        match self {
            IpFamily::V4 => MAX_PREFIX_V4,
            IpFamily::V6 => MAX_PREFIX_V6,
        }
    }
}

/// Every special-purpose block, IPv4 first, each in ascending order.
fn special_blocks() -> [(SpecialKind, AddressRange); 9] {
    let v4 = |a: [u8; 4], b: [u8; 4]| AddressRange {
        start: IpAddr::V4(Ipv4Addr::from(a)),
        end: IpAddr::V4(Ipv4Addr::from(b)),
    };
    let v6 = |a: u128, b: u128| AddressRange {
        start: IpAddr::V6(Ipv6Addr::from(a)),
        end: IpAddr::V6(Ipv6Addr::from(b)),
    };
    [
        (
            SpecialKind::ThisNetwork,
            v4([0, 0, 0, 0], [0, 255, 255, 255]),
        ),
        (
            SpecialKind::Loopback,
            v4([127, 0, 0, 0], [127, 255, 255, 255]),
        ),
        (
            SpecialKind::LinkLocal,
            v4([169, 254, 0, 0], [169, 254, 255, 255]),
        ),
        (
            SpecialKind::Multicast,
            v4([224, 0, 0, 0], [239, 255, 255, 255]),
        ),
        (SpecialKind::Broadcast, v4([255; 4], [255; 4])),
        (SpecialKind::Unspecified, v6(0, 0)),
        (SpecialKind::Loopback, v6(1, 1)),
        (
            SpecialKind::LinkLocal,
            v6(0xfe80 << 112, (0xfebf << 112) | ((1u128 << 112) - 1)),
        ),
        (SpecialKind::Multicast, v6(0xff << 120, u128::MAX)),
    ]
}

/// The special-purpose block `ip` lies in, if any.
pub fn special_block_of(ip: IpAddr) -> Option<(SpecialKind, AddressRange)> {
    special_blocks().into_iter().find(|(_, b)| b.contains(ip))
}

/// Whether a range holds more addresses than a pool entry of its family may.
fn too_large(family: IpFamily, start_key: u128, end_key: u128) -> bool {
    let host_bits = family.bits() - family.max_entry_prefix();
    // More than 2^host_bits addresses: the span (count - 1) is at least 2^host_bits.
    end_key - start_key >= 1u128 << host_bits
}

/// Why a well-formed range must not be in a pool: too large, or overlapping special-purpose
/// blocks (link-local ones allowed when `allow_link_local`). Empty when it may.
pub fn refusals(range: &AddressRange, allow_link_local: bool) -> Vec<AddressError> {
    let mut out = Vec::new();
    let (s, e) = range.keys();
    if too_large(range.family(), s, e) {
        out.push(AddressError::TooLarge {
            family: range.family(),
            max_prefix: range.family().max_entry_prefix(),
        });
    }
    for (kind, block) in special_blocks() {
        if kind == SpecialKind::LinkLocal && allow_link_local {
            continue;
        }
        if block.overlaps(range) {
            out.push(AddressError::SpecialPurpose { kind, block });
        }
    }
    out
}

/// Every refusal of every well-formed entry of a pool (entries that do not parse are
/// [`parse_pool`]'s to report), in entry order.
pub fn refused_entries(entries: &[String], allow_link_local: bool) -> Vec<EntryError> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| Some((index, entry, parse_entry(entry).ok()?)))
        .flat_map(|(index, entry, range)| {
            refusals(&range, allow_link_local)
                .into_iter()
                .map(move |error| EntryError {
                    index,
                    entry: entry.clone(),
                    error,
                })
        })
        .collect()
}

/// An inclusive range of addresses of one family, `start <= end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressRange {
    start: IpAddr,
    end: IpAddr,
}

/// The IPv4-mapped block `::ffff:0:0/96` as ordering keys.
const MAPPED_START: u128 = 0xffff_0000_0000;
const MAPPED_END: u128 = 0xffff_ffff_ffff;

impl AddressRange {
    /// The inclusive range `start..=end`; both of one family, `start <= end`, no IPv4-mapped
    /// IPv6 addresses.
    pub fn new(start: IpAddr, end: IpAddr) -> Result<Self, AddressError> {
        if IpFamily::of(start) != IpFamily::of(end) {
            return Err(AddressError::MixedFamilies { start, end });
        }
        if ip_key(end) < ip_key(start) {
            return Err(AddressError::EndBeforeStart { start, end });
        }
        if IpFamily::of(start) == IpFamily::V6
            && ip_key(start) <= MAPPED_END
            && MAPPED_START <= ip_key(end)
        {
            return Err(AddressError::Ipv4Mapped);
        }
        Ok(Self { start, end })
    }

    /// First address.
    pub fn start(&self) -> IpAddr {
        self.start
    }

    /// Last address (inclusive).
    pub fn end(&self) -> IpAddr {
        self.end
    }

    /// Number of addresses. Saturates at `u128::MAX` for `::/0`, the only range larger.
    pub fn len(&self) -> u128 {
        (ip_key(self.end) - ip_key(self.start)).saturating_add(1)
    }

    /// Always false: a range holds at least one address. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `ip` lies in the range (an address of the other family never does).
    pub fn contains(&self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self.family()
            && ip_key(self.start) <= ip_key(ip)
            && ip_key(ip) <= ip_key(self.end)
    }

    /// The family of the range.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.start)
    }

    /// First and last ordering keys.
    pub fn keys(&self) -> (u128, u128) {
        (ip_key(self.start), ip_key(self.end))
    }

    /// Every address, ascending.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + use<> {
        let family = self.family();
        let (s, e) = self.keys();
        // Every key in s..=e is within the family, so the filter never drops anything.
        (s..=e).filter_map(move |k| ip_from_key(family, k))
    }

    /// Whether the two ranges have an address in common.
    pub fn overlaps(&self, other: &AddressRange) -> bool {
        self.family() == other.family()
            && ip_key(self.start) <= ip_key(other.end)
            && ip_key(other.start) <= ip_key(self.end)
    }

    /// The prefix length if the range is exactly one CIDR block.
    fn as_prefix(&self) -> Option<u8> {
        let (s, e) = self.keys();
        let span = e - s;
        // A CIDR block spans 2^k - 1 and starts on a multiple of 2^k.
        if span.checked_add(1).is_some_and(|n| !n.is_power_of_two()) || s & span != 0 {
            return None;
        }
        let host_bits = 128 - span.leading_zeros();
        Some(self.family().bits() - host_bits as u8)
    }
}

impl fmt::Display for AddressRange {
    /// A CIDR when the range is exactly one block, `start-end` otherwise; both parse back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_prefix() {
            Some(prefix) => write!(f, "{}/{prefix}", self.start),
            None => write!(f, "{}-{}", self.start, self.end),
        }
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, AddressError> {
    text.parse::<IpAddr>()
        .map_err(|_| AddressError::NotAnAddress {
            text: text.to_owned(),
        })
}

/// Parse one entry of `spec.addresses`.
pub fn parse_entry(entry: &str) -> Result<AddressRange, AddressError> {
    if entry.trim().is_empty() {
        return Err(AddressError::Empty);
    }
    if entry.trim() != entry {
        return Err(AddressError::SurroundingWhitespace);
    }
    if entry.chars().any(char::is_whitespace) {
        return Err(AddressError::InnerWhitespace);
    }
    if let Some(pos) = entry.find('%') {
        let zone: String = entry[pos..]
            .chars()
            .take_while(|c| *c != '/' && *c != '-')
            .collect();
        return Err(AddressError::ZoneId { zone });
    }
    let dashes = entry.matches('-').count();
    if dashes > 1 {
        return Err(AddressError::TooManyDashes);
    }
    if dashes == 1 {
        if entry.contains('/') {
            return Err(AddressError::CidrAndRange);
        }
        let (a, b) = entry.split_once('-').ok_or(AddressError::TooManyDashes)?;
        if a.is_empty() {
            return Err(AddressError::MissingRangeBound { side: "first" });
        }
        if b.is_empty() {
            return Err(AddressError::MissingRangeBound { side: "last" });
        }
        return entry_range(parse_ip(a)?, parse_ip(b)?);
    }
    let Some((addr, prefix)) = entry.split_once('/') else {
        let ip = parse_ip(entry)?;
        return Err(AddressError::BareAddress {
            suggestion: format!("{ip}/{}", IpFamily::of(ip).bits()),
        });
    };
    let ip = parse_ip(addr)?;
    let family = IpFamily::of(ip);
    let plain_decimal = !prefix.is_empty()
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && (prefix == "0" || !prefix.starts_with('0'));
    if !plain_decimal {
        return Err(AddressError::PrefixNotANumber {
            prefix: prefix.to_owned(),
        });
    }
    let bits = match prefix.parse::<u8>() {
        Ok(bits) if bits <= family.bits() => bits,
        _ => {
            return Err(AddressError::PrefixTooLong {
                prefix: prefix.to_owned(),
                max: family.bits(),
                family,
            });
        }
    };
    let host_bits = u32::from(family.bits() - bits);
    let host_mask: u128 = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let key = ip_key(ip);
    if key & host_mask != 0 {
        let network = ip_from_key(family, key & !host_mask).unwrap_or(ip);
        return Err(AddressError::HostBitsSet {
            suggestion: format!("{network}/{bits}"),
        });
    }
    let end = ip_from_key(family, key | host_mask).ok_or_else(|| AddressError::NotAnAddress {
        text: entry.to_owned(),
    })?;
    entry_range(ip, end)
}

/// [`AddressRange::new`] for an entry: a giant such as `::/0` also covers the IPv4-mapped block,
/// but its size is what is wrong with it, so that is what it is told.
fn entry_range(start: IpAddr, end: IpAddr) -> Result<AddressRange, AddressError> {
    AddressRange::new(start, end).map_err(|e| {
        let family = IpFamily::of(start);
        if e == AddressError::Ipv4Mapped && too_large(family, ip_key(start), ip_key(end)) {
            AddressError::TooLarge {
                family,
                max_prefix: family.max_entry_prefix(),
            }
        } else {
            e
        }
    })
}

/// A bad entry of `spec.addresses`, with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spec.addresses[{index}] {entry:?}: {error}")]
pub struct EntryError {
    /// Index of the entry in `spec.addresses`.
    pub index: usize,
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub error: AddressError,
}

/// The validated addresses of one pool: ranges sorted ascending (IPv4 before IPv6), pairwise
/// disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PoolAddresses {
    ranges: Vec<AddressRange>,
}

impl PoolAddresses {
    /// Build from ranges in any order; `Err` names the first two ranges that overlap.
    pub fn from_ranges(
        mut ranges: Vec<AddressRange>,
    ) -> Result<Self, (AddressRange, AddressRange)> {
        ranges.sort();
        for pair in ranges.windows(2) {
            if let [a, b] = pair
                && a.overlaps(b)
            {
                return Err((*a, *b));
            }
        }
        Ok(Self { ranges })
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[AddressRange] {
        &self.ranges
    }

    /// Whether `ip` is in the pool; O(log ranges).
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Ranges are disjoint and sorted, so only the last range starting at or before `ip`
        // can hold it. `IpAddr`'s order (all IPv4 before IPv6) matches the range order.
        let after = self.ranges.partition_point(|r| r.start <= ip);
        after
            .checked_sub(1)
            .and_then(|i| self.ranges.get(i))
            .is_some_and(|r| r.contains(ip))
    }

    /// Number of addresses of `family` (saturating).
    pub fn len(&self, family: IpFamily) -> u128 {
        self.ranges
            .iter()
            .filter(|r| r.family() == family)
            .fold(0u128, |acc, r| acc.saturating_add(r.len()))
    }

    /// Whether the pool has no addresses at all.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether the pool has at least one address of `family`.
    pub fn has_family(&self, family: IpFamily) -> bool {
        self.ranges.iter().any(|r| r.family() == family)
    }

    /// Every address, ascending.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ranges.iter().flat_map(|r| r.iter())
    }

    /// Whether the two pools have an address in common.
    pub fn overlaps(&self, other: &PoolAddresses) -> bool {
        self.ranges
            .iter()
            .any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }
}

/// Parse every entry of a pool. `Ok` holds the ranges sorted by start; `Err` lists every bad
/// entry with its index, including entries that overlap an earlier entry of the same pool.
pub fn parse_pool(entries: &[String]) -> Result<PoolAddresses, Vec<EntryError>> {
    let mut errors = Vec::new();
    let mut parsed: Vec<(usize, AddressRange)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match parse_entry(entry) {
            Ok(range) => parsed.push((index, range)),
            Err(error) => errors.push(EntryError {
                index,
                entry: entry.clone(),
                error,
            }),
        }
    }
    // Sorting by range makes overlaps adjacent-or-near; compare each to the furthest-reaching
    // earlier range so an overlap with any earlier range is found.
    let mut by_start = parsed.clone();
    by_start.sort_by_key(|(i, r)| (*r, *i));
    let mut reach: Option<(usize, AddressRange)> = None;
    let mut overlaps: Vec<(usize, usize)> = Vec::new();
    for (i, r) in &by_start {
        if let Some((ri, rr)) = reach {
            if rr.overlaps(r) {
                overlaps.push(((*i).max(ri), (*i).min(ri)));
            }
            if rr.family() != r.family() || ip_key(r.end) > ip_key(rr.end) {
                reach = Some((*i, *r));
            }
        } else {
            reach = Some((*i, *r));
        }
    }
    overlaps.sort();
    overlaps.dedup_by_key(|(later, _)| *later);
    for (later, earlier) in overlaps {
        let (Some(entry), Some(other)) = (entries.get(later), entries.get(earlier)) else {
            continue;
        };
        errors.push(EntryError {
            index: later,
            entry: entry.clone(),
            error: AddressError::OverlapsEntry {
                other_index: earlier,
                other_entry: other.clone(),
            },
        });
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.index);
        return Err(errors);
    }
    let ranges = parsed.into_iter().map(|(_, r)| r).collect();
    // Overlaps were rejected above, so this cannot fail; map defensively rather than panic.
    PoolAddresses::from_ranges(ranges).map_err(|(a, b)| {
        vec![EntryError {
            index: 0,
            entry: a.to_string(),
            error: AddressError::OverlapsEntry {
                other_index: 0,
                other_entry: b.to_string(),
            },
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(a: &str, b: &str) -> AddressRange {
        AddressRange::new(ip(a), ip(b)).unwrap()
    }

    #[test]
    fn good_entries() {
        let cases = [
            ("192.0.2.0/28", "192.0.2.0", "192.0.2.15", 16),
            ("192.0.2.0/30", "192.0.2.0", "192.0.2.3", 4),
            ("192.0.2.7/32", "192.0.2.7", "192.0.2.7", 1),
            ("0.0.0.0/0", "0.0.0.0", "255.255.255.255", 1 << 32),
            ("10.0.0.0/8", "10.0.0.0", "10.255.255.255", 1 << 24),
            ("192.0.2.10-192.0.2.20", "192.0.2.10", "192.0.2.20", 11),
            ("192.0.2.10-192.0.2.10", "192.0.2.10", "192.0.2.10", 1),
            ("2001:db8::/120", "2001:db8::", "2001:db8::ff", 256),
            (
                "2001:db8::/64",
                "2001:db8::",
                "2001:db8::ffff:ffff:ffff:ffff",
                1 << 64,
            ),
            (
                "2001:db8::10-2001:db8::1f",
                "2001:db8::10",
                "2001:db8::1f",
                16,
            ),
            ("2001:db8::1/128", "2001:db8::1", "2001:db8::1", 1),
        ];
        for (entry, start, end, len) in cases {
            let r = parse_entry(entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
            assert_eq!(
                (r.start(), r.end(), r.len()),
                (ip(start), ip(end), len),
                "{entry}"
            );
        }
    }

    #[test]
    fn bad_entries_each_get_their_own_error() {
        use AddressError as E;
        let v4 = IpFamily::V4;
        let cases: Vec<(&str, E)> = vec![
            ("", E::Empty),
            ("   ", E::Empty),
            (" 192.0.2.0/24", E::SurroundingWhitespace),
            ("192.0.2.0/24\n", E::SurroundingWhitespace),
            ("192.0.2.1 - 192.0.2.5", E::InnerWhitespace),
            ("192.0.2.0/ 24", E::InnerWhitespace),
            (
                "fe80::1%eth0/128",
                E::ZoneId {
                    zone: "%eth0".into(),
                },
            ),
            (
                "fe80::1%eth0-fe80::5",
                E::ZoneId {
                    zone: "%eth0".into(),
                },
            ),
            (
                "192.0.2.0/33",
                E::PrefixTooLong {
                    prefix: "33".into(),
                    max: 32,
                    family: v4,
                },
            ),
            (
                "192.0.2.0/4294967296",
                E::PrefixTooLong {
                    prefix: "4294967296".into(),
                    max: 32,
                    family: v4,
                },
            ),
            (
                "2001:db8::/129",
                E::PrefixTooLong {
                    prefix: "129".into(),
                    max: 128,
                    family: IpFamily::V6,
                },
            ),
            (
                "192.0.2.0/abc",
                E::PrefixNotANumber {
                    prefix: "abc".into(),
                },
            ),
            ("192.0.2.0/", E::PrefixNotANumber { prefix: "".into() }),
            (
                "192.0.2.0/+24",
                E::PrefixNotANumber {
                    prefix: "+24".into(),
                },
            ),
            (
                "192.0.2.0/024",
                E::PrefixNotANumber {
                    prefix: "024".into(),
                },
            ),
            (
                "192.0.2.0/24/1",
                E::PrefixNotANumber {
                    prefix: "24/1".into(),
                },
            ),
            (
                "192.0.2.1/24",
                E::HostBitsSet {
                    suggestion: "192.0.2.0/24".into(),
                },
            ),
            (
                "2001:db8::1/64",
                E::HostBitsSet {
                    suggestion: "2001:db8::/64".into(),
                },
            ),
            (
                "192.0.2.20-192.0.2.10",
                E::EndBeforeStart {
                    start: ip("192.0.2.20"),
                    end: ip("192.0.2.10"),
                },
            ),
            (
                "192.0.2.1-2001:db8::1",
                E::MixedFamilies {
                    start: ip("192.0.2.1"),
                    end: ip("2001:db8::1"),
                },
            ),
            (
                "banana",
                E::NotAnAddress {
                    text: "banana".into(),
                },
            ),
            (
                "192.0.2.256/32",
                E::NotAnAddress {
                    text: "192.0.2.256".into(),
                },
            ),
            (
                "192.0.2.01/32",
                E::NotAnAddress {
                    text: "192.0.2.01".into(),
                },
            ),
            (
                "192.0.2.1-banana",
                E::NotAnAddress {
                    text: "banana".into(),
                },
            ),
            (
                "192.0.2.1",
                E::BareAddress {
                    suggestion: "192.0.2.1/32".into(),
                },
            ),
            (
                "2001:db8::1",
                E::BareAddress {
                    suggestion: "2001:db8::1/128".into(),
                },
            ),
            ("192.0.2.1-", E::MissingRangeBound { side: "last" }),
            ("-192.0.2.1", E::MissingRangeBound { side: "first" }),
            ("192.0.2.1-192.0.2.2-192.0.2.3", E::TooManyDashes),
            ("1-2-3", E::TooManyDashes),
            ("192.0.2.0/24-192.0.2.5", E::CidrAndRange),
            ("::ffff:192.0.2.1/128", E::Ipv4Mapped),
            ("::ffff:0:0/96", E::Ipv4Mapped),
            (
                "::/0",
                E::TooLarge {
                    family: IpFamily::V6,
                    max_prefix: 64,
                },
            ),
            ("::/64", E::Ipv4Mapped),
            ("::ffff:192.0.2.1-::ffff:192.0.2.9", E::Ipv4Mapped),
        ];
        for (entry, want) in cases {
            let got = parse_entry(entry).expect_err(entry);
            assert_eq!(got, want, "{entry}");
        }
    }

    #[test]
    fn messages_read_well() {
        let err = parse_pool(&[
            "192.0.2.0/28".into(),
            "198.51.100.0/24".into(),
            "192.0.2.0/33".into(),
        ])
        .unwrap_err();
        assert_eq!(
            err.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [r#"spec.addresses[2] "192.0.2.0/33": prefix length 33 is longer than 32 for IPv4"#]
        );
        assert_eq!(
            parse_entry("192.0.2.1/24").unwrap_err().to_string(),
            "host bits are set; did you mean 192.0.2.0/24?"
        );
        assert_eq!(
            parse_entry("192.0.2.9-192.0.2.1").unwrap_err().to_string(),
            "range end 192.0.2.1 is before its start 192.0.2.9"
        );
        assert_eq!(
            parse_entry("192.0.2.1-2001:db8::1")
                .unwrap_err()
                .to_string(),
            "range mixes families: 192.0.2.1 is IPv4, 2001:db8::1 is IPv6"
        );
    }

    #[test]
    fn pool_reports_every_bad_entry_and_overlaps() {
        let entries: Vec<String> = [
            "192.0.2.0/28",
            "nope",
            "192.0.2.8-192.0.2.20",
            "2001:db8::/120",
            "2001:db8::ff-2001:db8::1ff",
            "198.51.100.0/24",
            "192.0.2.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let errs = parse_pool(&entries).unwrap_err();
        let summary: Vec<(usize, String)> = errs
            .iter()
            .map(|e| (e.index, e.error.to_string()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, r#""nope" is not an IP address"#.to_string()),
                (
                    2,
                    r#"overlaps spec.addresses[0] "192.0.2.0/28""#.to_string()
                ),
                (
                    4,
                    r#"overlaps spec.addresses[3] "2001:db8::/120""#.to_string()
                ),
                (
                    6,
                    "a single address needs a prefix length: did you mean 192.0.2.1/32?"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn overlap_found_with_a_far_earlier_range() {
        // The middle range is contained in the first, the last overlaps only the first.
        let entries: Vec<String> = ["192.0.2.0/24", "192.0.2.10/32", "192.0.2.200-198.51.100.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let errs = parse_pool(&entries).unwrap_err();
        assert_eq!(errs.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn pool_sorted_mixed_and_contains() {
        let entries: Vec<String> = ["2001:db8::/126", "198.51.100.0/30", "192.0.2.5-192.0.2.6"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = parse_pool(&entries).unwrap();
        assert_eq!(
            p.ranges(),
            &[
                range("192.0.2.5", "192.0.2.6"),
                range("198.51.100.0", "198.51.100.3"),
                range("2001:db8::", "2001:db8::3")
            ]
        );
        assert_eq!(p.len(IpFamily::V4), 6);
        assert_eq!(p.len(IpFamily::V6), 4);
        for yes in [
            "192.0.2.5",
            "192.0.2.6",
            "198.51.100.3",
            "2001:db8::",
            "2001:db8::3",
        ] {
            assert!(p.contains(ip(yes)), "{yes}");
        }
        for no in [
            "192.0.2.4",
            "192.0.2.7",
            "198.51.100.4",
            "2001:db8::4",
            "0.0.0.0",
            "::",
        ] {
            assert!(!p.contains(ip(no)), "{no}");
        }
        assert_eq!(p.iter().count(), 10);
    }

    #[test]
    fn display_prefers_cidr() {
        assert_eq!(
            range("192.0.2.0", "192.0.2.255").to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(range("192.0.2.1", "192.0.2.1").to_string(), "192.0.2.1/32");
        assert_eq!(
            range("192.0.2.1", "192.0.2.2").to_string(),
            "192.0.2.1-192.0.2.2"
        );
        assert_eq!(range("0.0.0.0", "255.255.255.255").to_string(), "0.0.0.0/0");
        assert_eq!(
            range("2001:db8::", "2001:db8::ff").to_string(),
            "2001:db8::/120"
        );
    }

    #[test]
    fn keys_round_trip_and_bound() {
        assert_eq!(ip_from_key(IpFamily::V4, 1 << 32), None);
        assert_eq!(
            ip_from_key(IpFamily::V4, 0xc000_0201),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            ip_key(ip("2001:db8::1")),
            0x2001_0db8_0000_0000_0000_0000_0000_0001
        );
    }

    /// Every dangerous kind of entry, with the exact sentences the pool condition shows.
    #[test]
    fn dangerous_entries_are_refused_with_exact_messages() {
        const THIS_NET: &str = "overlaps 0.0.0.0/8: \"this network\" addresses, 0.0.0.0 among them, are never a destination";
        const LOOP4: &str = "overlaps 127.0.0.0/8: loopback addresses never leave a host";
        const LL4: &str = "overlaps 169.254.0.0/16: link-local addresses are refused unless the pool sets allowLinkLocal: true";
        const MC4: &str = "overlaps 224.0.0.0/4: multicast addresses name groups of hosts, not one";
        const BC: &str = "overlaps 255.255.255.255/32: the limited broadcast address reaches every host on the link";
        const BIG4: &str = "spans more addresses than a /8, the largest IPv4 entry a pool may have";
        const UNSPEC6: &str = "overlaps ::/128: the unspecified address is never a destination";
        const LOOP6: &str = "overlaps ::1/128: loopback addresses never leave a host";
        const LL6: &str = "overlaps fe80::/10: link-local addresses are refused unless the pool sets allowLinkLocal: true";
        const MC6: &str = "overlaps ff00::/8: multicast addresses name groups of hosts, not one";
        const BIG6: &str =
            "spans more addresses than a /64, the largest IPv6 entry a pool may have";
        let cases: &[(&str, bool, &[&str])] = &[
            ("0.0.0.0/0", false, &[BIG4, THIS_NET, LOOP4, LL4, MC4, BC]),
            ("0.0.0.0/0", true, &[BIG4, THIS_NET, LOOP4, MC4, BC]),
            ("0.0.0.0/32", false, &[THIS_NET]),
            ("0.1.2.0/24", false, &[THIS_NET]),
            ("127.0.0.1/32", false, &[LOOP4]),
            ("126.255.255.250-127.0.0.3", false, &[LOOP4]),
            ("169.254.169.254/32", false, &[LL4]),
            ("169.254.169.254/32", true, &[]),
            ("224.0.0.1/32", false, &[MC4]),
            ("239.255.255.255/32", false, &[MC4]),
            ("255.255.255.255/32", false, &[BC]),
            ("255.255.255.0/24", false, &[BC]),
            ("128.0.0.0/2", false, &[BIG4, LL4]),
            ("2.0.0.0/7", false, &[BIG4]),
            ("10.0.0.0-11.0.0.0", false, &[BIG4]),
            ("::/128", false, &[UNSPEC6]),
            ("::1/128", false, &[LOOP6]),
            ("::/127", false, &[UNSPEC6, LOOP6]),
            ("fe80::/64", false, &[LL6]),
            ("fe80::/64", true, &[]),
            ("febf:ffff::1/128", false, &[LL6]),
            ("ff02::1/128", false, &[MC6]),
            ("2001:db8::/63", false, &[BIG6]),
            // What stays allowed: the largest blocks, neighbours of the refused ones, and the
            // blocks this list does not refuse (240.0.0.0/4 below broadcast, fec0::/10).
            ("10.0.0.0/8", false, &[]),
            ("1.0.0.0-1.255.255.255", false, &[]),
            ("126.255.255.255/32", false, &[]),
            ("128.0.0.0/32", false, &[]),
            ("169.253.255.255/32", false, &[]),
            ("169.255.0.0/16", false, &[]),
            ("223.255.255.255/32", false, &[]),
            ("240.0.0.1/32", false, &[]),
            ("255.255.255.254/32", false, &[]),
            ("::2/128", false, &[]),
            ("fe7f::1/128", false, &[]),
            ("fec0::1/128", false, &[]),
            ("feff::1/128", false, &[]),
            ("2001:db8::/64", false, &[]),
            ("192.0.2.0/24", false, &[]),
        ];
        for (entry, allow_ll, want) in cases {
            let range = parse_entry(entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
            let got: Vec<String> = refusals(&range, *allow_ll)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(got, *want, "{entry} (allowLinkLocal: {allow_ll})");
        }
    }

    #[test]
    fn refused_entries_name_the_entry_and_skip_malformed_ones() {
        let entries: Vec<String> = ["192.0.2.0/28", "banana", "127.0.0.1/32", "ff02::1/128"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got: Vec<String> = refused_entries(&entries, false)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                r#"spec.addresses[2] "127.0.0.1/32": overlaps 127.0.0.0/8: loopback addresses never leave a host"#,
                r#"spec.addresses[3] "ff02::1/128": overlaps ff00::/8: multicast addresses name groups of hosts, not one"#,
            ]
        );
        // ::/0 does not parse (it covers the IPv4-mapped block) and says why in plain words.
        assert_eq!(
            parse_entry("::/0").unwrap_err().to_string(),
            "spans more addresses than a /64, the largest IPv6 entry a pool may have"
        );
    }

    /// Ranges near the edges of the special-purpose blocks.
    fn arb_edge_range() -> impl Strategy<Value = AddressRange> {
        let edges: Vec<AddressRange> = special_blocks().iter().map(|(_, b)| *b).collect();
        (
            proptest::sample::select(edges),
            any::<bool>(),
            -40i64..40,
            0u64..80,
        )
            .prop_filter_map("inside the family", |(b, at_end, off, len)| {
                let family = b.family();
                let edge = if at_end { b.keys().1 } else { b.keys().0 } as i128;
                let s = u128::try_from(edge + i128::from(off)).ok()?;
                let e = s.checked_add(u128::from(len))?;
                AddressRange::new(ip_from_key(family, s)?, ip_from_key(family, e)?).ok()
            })
    }

    proptest! {
        /// A range is refused for a special-purpose block exactly when one of its addresses
        /// lies in one.
        #[test]
        fn refused_exactly_when_an_address_is_special(r in prop_oneof![arb_edge_range(), arb_range()], allow_ll in any::<bool>()) {
            let refused = refusals(&r, allow_ll)
                .iter()
                .any(|e| matches!(e, AddressError::SpecialPurpose { .. }));
            let special = r.iter().any(|ip| {
                special_block_of(ip).is_some_and(|(k, _)| !(allow_ll && k == SpecialKind::LinkLocal))
            });
            prop_assert_eq!(refused, special, "{}", r);
        }
    }

    fn arb_range() -> impl Strategy<Value = AddressRange> {
        prop_oneof![
            (any::<u32>(), 0u32..300).prop_map(|(s, n)| {
                let e = s.saturating_add(n);
                AddressRange::new(IpAddr::V4(s.into()), IpAddr::V4(e.into())).unwrap()
            }),
            // Within 2001:db8::/32 so the IPv4-mapped block is never hit.
            (any::<u64>(), 0u64..300).prop_map(|(s, n)| {
                let base: u128 = 0x2001_0db8 << 96;
                let s = base | u128::from(s);
                let e = s + u128::from(n);
                AddressRange::new(IpAddr::V6(s.into()), IpAddr::V6(e.into())).unwrap()
            }),
            // Exact CIDR blocks, so the CIDR form of Display is exercised.
            (any::<u32>(), 22u8..=32).prop_map(|(s, p)| {
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                parse_entry(&format!("{}/{p}", Ipv4Addr::from(s & mask))).unwrap()
            }),
        ]
    }

    proptest! {
        #[test]
        fn display_round_trips(r in arb_range()) {
            prop_assert_eq!(parse_entry(&r.to_string()), Ok(r));
        }

        #[test]
        fn pool_size_is_sum_and_iteration_stays_inside(
            ranges in proptest::collection::vec(arb_range(), 1..6)
        ) {
            let entries: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            let overlapping = ranges.iter().enumerate().any(|(i, a)| {
                ranges.iter().skip(i + 1).any(|b| a.overlaps(b))
            });
            match parse_pool(&entries) {
                Err(errs) => {
                    prop_assert!(overlapping);
                    for e in errs {
                        let is_overlap = matches!(e.error, AddressError::OverlapsEntry { .. });
                        prop_assert!(is_overlap);
                    }
                }
                Ok(pool) => {
                    prop_assert!(!overlapping);
                    for family in [IpFamily::V4, IpFamily::V6] {
                        let sum: u128 = ranges.iter().filter(|r| r.family() == family).map(|r| r.len()).sum();
                        prop_assert_eq!(pool.len(family), sum);
                    }
                    let total = pool.len(IpFamily::V4) + pool.len(IpFamily::V6);
                    // Cap the walk: /22 blocks are 1024 addresses each.
                    let mut n = 0u128;
                    let mut prev: Option<IpAddr> = None;
                    for a in pool.iter() {
                        prop_assert!(pool.contains(a));
                        prop_assert!(ranges.iter().any(|r| r.contains(a)));
                        prop_assert!(prev.is_none_or(|p| p < a), "ascending and unique");
                        prev = Some(a);
                        n += 1;
                    }
                    prop_assert_eq!(n, total);
                }
            }
        }

        #[test]
        fn contains_agrees_with_ranges(ranges in proptest::collection::vec(arb_range(), 1..5), probe in any::<u32>(), near in 0usize..5, off in -2i64..3) {
            let Ok(pool) = PoolAddresses::from_ranges(ranges.clone()) else { return Ok(()) };
            let mut probes = vec![IpAddr::V4(probe.into())];
            if let Some(r) = ranges.get(near % ranges.len()) {
                let k = ip_key(r.start()) as i128 + i128::from(off);
                if let Ok(k) = u128::try_from(k) && let Some(a) = ip_from_key(r.family(), k) {
                    probes.push(a);
                }
                let k = ip_key(r.end()) as i128 + i128::from(off);
                if let Ok(k) = u128::try_from(k) && let Some(a) = ip_from_key(r.family(), k) {
                    probes.push(a);
                }
            }
            for p in probes {
                prop_assert_eq!(pool.contains(p), ranges.iter().any(|r| r.contains(p)));
            }
        }
    }
}
