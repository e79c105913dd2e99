//! BGP mode: `BGPPeer` (a router each selected node opens a session with) and
//! `BGPAdvertisement` (which pools are advertised to which peers, from which nodes, with which
//! attributes). Shaped after MetalLB's `metallb.io/v1beta2.BGPPeer` and
//! `metallb.io/v1beta1.BGPAdvertisement`, so `lodestonectl migrate-metallb` converts them field by
//! field; MetalLB's `BFDProfile` becomes the peer's `spec.bfd`, its `Community` aliases are
//! resolved into `spec.communities`.
//!
//! Every string a CEL rule reads has a `maxLength` and every list a `maxItems`: kube-apiserver
//! estimates a rule's worst-case cost from them and refuses the CRD when the estimate exceeds its
//! budget (`crds/tests/real_apiserver.rs` applies the generated CRDs to a real one).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The TCP port BGP listens on.
pub const BGP_PORT: u16 = 179;
/// Hold time when the peer does not say (RFC 4271 suggests 90 s).
pub const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(90);
/// Longest pause between two connection attempts when `connectTime` is not given.
pub const DEFAULT_CONNECT_TIME: Duration = Duration::from_secs(30);
/// The key of the password in the Secret `passwordSecret` names, as in MetalLB.
pub const DEFAULT_PASSWORD_KEY: &str = "password";

/// A BGP router that the selected nodes peer with: one session per (node, peer).
// kube's derive takes one `printcolumn(...)` attribute per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lodestone.dev",
    version = "v1alpha1",
    kind = "BGPPeer",
    doc = "A BGP router that the selected nodes open a session with, one per node",
    plural = "bgppeers",
    singular = "bgppeer",
    shortname = "bgpp",
    category = "lodestone",
    status = "BGPPeerStatus",
    derive = "PartialEq",
    cel,
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.peerAddress"),
    printcolumn(name = "Peer ASN", type_ = "integer", json_path = ".spec.peerASN"),
    printcolumn(name = "My ASN", type_ = "integer", json_path = ".spec.myASN"),
    printcolumn(name = "Sessions", type_ = "string", json_path = ".status.summary"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("!has(self.keepaliveTime) || duration(self.keepaliveTime) <= duration(has(self.holdTime) ? self.holdTime : '90s')").message("keepaliveTime must not exceed holdTime"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.sourceAddress) || (isIP(self.sourceAddress) && isIP(self.peerAddress) && ip(self.sourceAddress).family() == ip(self.peerAddress).family())").message("sourceAddress must be of the same family as peerAddress"))]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The AS number the nodes use in this session (4-octet AS numbers are supported).
    #[serde(rename = "myASN")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub my_asn: u32,

    /// The AS number the router is expected to have. Equal to `myASN` makes an iBGP session.
    #[serde(rename = "peerASN")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub peer_asn: u32,

    /// The router's address (IPv4 or IPv6).
    #[x_kube(validation = kube::core::Rule::new("isIP(self)").message("peerAddress must be an IP address"))]
    #[schemars(length(max = 45))]
    pub peer_address: String,

    /// The router's TCP port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub peer_port: u16,

    /// The local address sessions start from; it must be on the node. Default: the address the
    /// kernel picks for the route to the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("isIP(self)").message("sourceAddress must be an IP address"))]
    #[schemars(length(max = 45))]
    pub source_address: Option<String>,

    /// Hold time proposed in OPEN (a Go-style duration: `90s`, `3m`). `0s` disables keepalives;
    /// otherwise at least `3s`. The session uses the smaller of this and the router's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("duration(self) == duration('0s') || (duration(self) >= duration('3s') && duration(self) <= duration('65535s'))").message("holdTime must be 0s or between 3s and 65535s"))]
    #[schemars(length(max = 16), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub hold_time: Option<String>,

    /// Interval between KEEPALIVEs. Default: a third of the negotiated hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1s')").message("keepaliveTime must be at least 1s"))]
    #[schemars(length(max = 16), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub keepalive_time: Option<String>,

    /// Longest pause between two connection attempts: retries start after one second and back
    /// off up to this (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("connectTime must be between 1s and 1h"))]
    #[schemars(length(max = 16), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub connect_time: Option<String>,

    /// The BGP identifier (an IPv4 address). Default: the node's IPv4 address on the session,
    /// else one derived from the node's name.
    #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("isIP(self) && ip(self).family() == 4").message("routerID must be an IPv4 address"))]
    #[schemars(length(max = 15))]
    pub router_id: Option<String>,

    /// Label selectors on Nodes that peer with this router (any one matching); none means every
    /// node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub node_selectors: Vec<LabelSelector>,

    /// A Secret in the speaker's namespace holding the TCP MD5 password (RFC 2385) under `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<PasswordSecret>,

    /// Set when the router is more than one hop away: packets leave with TTL 255 instead of 1.
    /// Only meaningful for eBGP (iBGP sessions always use 255).
    #[serde(default, rename = "ebgpMultiHop")]
    pub ebgp_multi_hop: bool,

    /// Never connect; wait for the router to connect to the node's port 179.
    #[serde(default)]
    pub passive: bool,

    /// Bidirectional Forwarding Detection for this session (RFC 5880/5881, single hop): when
    /// set, a lost router or node is noticed in `detectMultiplier` x interval rather than the
    /// hold time. The router must run BFD for the session too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdSettings>,
}

fn default_port() -> u16 {
    BGP_PORT
}

/// A Secret key holding a password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSecret {
    /// The Secret's name (in the speaker's namespace, `lodestone-system`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret's data (default `password`, as a `kubernetes.io/basic-auth`
    /// Secret has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// BFD timers of one session, as MetalLB's `BFDProfile` has them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BfdSettings {
    /// Minimum interval between received control packets, in milliseconds.
    #[serde(default = "default_bfd_interval")]
    #[schemars(range(min = 10, max = 60000))]
    pub receive_interval: u32,
    /// Desired minimum interval between sent control packets, in milliseconds.
    #[serde(default = "default_bfd_interval")]
    #[schemars(range(min = 10, max = 60000))]
    pub transmit_interval: u32,
    /// Packets missed before the session is declared down.
    #[serde(default = "default_detect_multiplier")]
    #[schemars(range(min = 2, max = 255))]
    pub detect_multiplier: u8,
    /// Wait for the router's first packet instead of sending first.
    #[serde(default)]
    pub passive_mode: bool,
}

impl Default for BfdSettings {
    fn default() -> Self {
        BfdSettings {
            receive_interval: default_bfd_interval(),
            transmit_interval: default_bfd_interval(),
            detect_multiplier: default_detect_multiplier(),
            passive_mode: false,
        }
    }
}

fn default_bfd_interval() -> u32 {
    300
}

fn default_detect_multiplier() -> u8 {
    3
}

/// What the speakers report about their sessions with a peer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerStatus {
    /// How many of the nodes' sessions are established, e.g. `2/3 Established` (the
    /// `Sessions` column). Written by one of the peer's nodes, chosen as the owner
    /// of an address is, so that the speakers do not write it in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// One entry per node that peers with this router; each node's speaker writes its own
    /// entry (server-side apply, field manager `lodestone-speaker/<node>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub sessions: Vec<BGPSessionStatus>,
}

/// One node's session with the peer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BGPSessionStatus {
    /// The node.
    pub node: String,
    /// RFC 4271 state: `Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`, `Established`.
    pub state: String,
    /// Prefixes advertised to the peer on this session.
    #[serde(default)]
    pub advertised_prefixes: i64,
    /// BFD state (`Down`, `Init`, `Up`, `AdminDown`) when the peer asks for BFD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
    /// Why the session last went down or could not come up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When `state` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Advertise the addresses of some pools over BGP to some peers from some nodes.
///
/// No pools named and no pool selectors means every pool; no node selectors every node; no
/// peers every peer.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "lodestone.dev",
    version = "v1alpha1",
    kind = "BGPAdvertisement",
    doc = "Advertise the addresses of some pools over BGP to some peers from some nodes",
    plural = "bgpadvertisements",
    singular = "bgpadvertisement",
    shortname = "bgpadv",
    category = "lodestone",
    derive = "PartialEq",
    derive = "Default",
    cel,
    printcolumn(name = "Pools", type_ = "string", json_path = ".spec.ipAddressPools"),
    printcolumn(name = "Peers", type_ = "string", json_path = ".spec.peers"),
    printcolumn(name = "Local Pref", type_ = "integer", json_path = ".spec.localPref"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAdvertisementSpec {
    /// Prefix length of the IPv4 routes: 32 advertises each address alone; shorter advertises
    /// the covering prefix once for all the addresses inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 32))]
    pub aggregation_length: Option<u8>,

    /// Prefix length of the IPv6 routes (default 128).
    #[serde(
        default,
        rename = "aggregationLengthV6",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 128))]
    pub aggregation_length_v6: Option<u8>,

    /// LOCAL_PREF of the routes; sent on iBGP sessions only (RFC 4271 5.1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,

    /// Communities attached to the routes: standard `65000:100` (or a well-known name:
    /// `no-export`, `no-advertise`, `no-export-subconfed`, `no-peer`, `blackhole`,
    /// `graceful-shutdown`) and large `large:65000:1:2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, !c.matches('^[0-9]+:[0-9]+$') || (int(c.split(':')[0]) <= 65535 && int(c.split(':')[1]) <= 65535))").message("a standard community is two 16-bit numbers, such as 65000:100"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, !c.startsWith('large:') || c.split(':').all(p, p == 'large' || int(p) <= 4294967295))").message("a large community is three 32-bit numbers, such as large:65000:1:2"))]
    #[schemars(
        length(max = 32),
        inner(
            length(max = 40),
            regex(
                pattern = r"^([0-9]{1,5}:[0-9]{1,5}|large:[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}|no-export|no-advertise|no-export-subconfed|no-peer|blackhole|graceful-shutdown)$"
            )
        )
    )]
    pub communities: Vec<String>,

    /// Names of the pools whose addresses are advertised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub ip_address_pools: Vec<String>,

    /// Label selectors on pools whose addresses are advertised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ip_address_pool_selectors: Vec<LabelSelector>,

    /// Label selectors on Nodes that advertise (any one matching).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub node_selectors: Vec<LabelSelector>,

    /// Names of the BGPPeers to advertise to. Empty means every peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub peers: Vec<String>,
}

/// A BGP community as the speaker sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Community {
    /// RFC 1997: `asn:value`, or a well-known one.
    Standard(u32),
    /// RFC 8092: `global:local1:local2`.
    Large(u32, u32, u32),
}

/// Why a community string does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("community {0:?} is neither `asn:value`, `large:a:b:c` nor a well-known name")]
pub struct BadCommunity(pub String);

impl std::str::FromStr for Community {
    type Err = BadCommunity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCommunity(s.to_owned());
        let well_known = match s {
            "no-export" => Some(0xFFFF_FF01),
            "no-advertise" => Some(0xFFFF_FF02),
            "no-export-subconfed" => Some(0xFFFF_FF03),
            "no-peer" => Some(0xFFFF_FF04),
            "blackhole" => Some(0xFFFF_029A),
            "graceful-shutdown" => Some(0xFFFF_0000),
            _ => None,
        };
        if let Some(v) = well_known {
            return Ok(Community::Standard(v));
        }
        if let Some(rest) = s.strip_prefix("large:") {
            let parts: Vec<&str> = rest.split(':').collect();
            let [a, b, c] = parts.as_slice() else {
                return Err(bad());
            };
            let n = |p: &str| p.parse::<u32>().map_err(|_| bad());
            return Ok(Community::Large(n(a)?, n(b)?, n(c)?));
        }
        let (hi, lo) = s.split_once(':').ok_or_else(bad)?;
        let n = |p: &str| p.parse::<u16>().map_err(|_| bad());
        Ok(Community::Standard(
            (u32::from(n(hi)?) << 16) | u32::from(n(lo)?),
        ))
    }
}

impl std::fmt::Display for Community {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Community::Standard(v) => write!(f, "{}:{}", v >> 16, v & 0xFFFF),
            Community::Large(a, b, c) => write!(f, "large:{a}:{b}:{c}"),
        }
    }
}

/// Why a duration string does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration such as 90s, 1m30s or 500ms")]
pub struct BadDuration(pub String);

/// Parses the Go-style durations the API uses (`90s`, `1m30s`, `500ms`, `1.5s`, `2h`), the
/// subset the CRD's pattern admits.
pub fn parse_duration(s: &str) -> Result<Duration, BadDuration> {
    let bad = || BadDuration(s.to_owned());
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(bad());
        };
        total += value * unit;
        rest = &rest[len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

impl BGPPeerSpec {
    /// The hold time to propose, whole seconds as OPEN carries them.
    pub fn hold_time(&self) -> Result<Duration, BadDuration> {
        self.hold_time
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map(|d| d.unwrap_or(DEFAULT_HOLD_TIME))
    }

    /// The keepalive interval asked for, if any.
    pub fn keepalive_time(&self) -> Result<Option<Duration>, BadDuration> {
        self.keepalive_time
            .as_deref()
            .map(parse_duration)
            .transpose()
    }

    /// The longest back-off between connection attempts.
    pub fn connect_time(&self) -> Result<Duration, BadDuration> {
        self.connect_time
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map(|d| d.unwrap_or(DEFAULT_CONNECT_TIME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn peer(extra: serde_json::Value) -> BGPPeer {
        let mut spec = json!({"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1"});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        BGPPeer::new("p", serde_json::from_value(spec).unwrap())
    }

    #[test]
    fn defaults_follow_metallb() {
        let p = peer(json!({}));
        assert_eq!(p.spec.peer_port, 179);
        assert_eq!(p.spec.hold_time(), Ok(Duration::from_secs(90)));
        assert_eq!(p.spec.keepalive_time(), Ok(None));
        assert_eq!(p.spec.connect_time(), Ok(Duration::from_secs(30)));
        let b: BfdSettings = serde_json::from_value(json!({})).unwrap();
        assert_eq!(b, BfdSettings::default());
        assert_eq!(
            (b.receive_interval, b.transmit_interval, b.detect_multiplier),
            (300, 300, 3)
        );
    }

    #[test]
    fn cel_accepts_good_peers() {
        for extra in [
            json!({}),
            json!({"peerAddress": "2001:db8::1", "sourceAddress": "2001:db8::2"}),
            json!({"holdTime": "9s", "keepaliveTime": "3s"}),
            json!({"holdTime": "0s"}),
            json!({"routerID": "192.0.2.7", "connectTime": "5s"}),
            json!({"myASN": 4200000000u32, "peerASN": 4200000001u32}),
        ] {
            let p = peer(extra.clone());
            assert!(p.validate_cel().is_ok(), "{extra}: {:?}", p.validate_cel());
        }
    }

    #[test]
    fn cel_rejects_bad_peers() {
        for (extra, message) in [
            (
                json!({"peerAddress": "router"}),
                "peerAddress must be an IP",
            ),
            (json!({"holdTime": "2s"}), "holdTime must be 0s or between"),
            (
                json!({"holdTime": "9s", "keepaliveTime": "10s"}),
                "keepaliveTime must not exceed",
            ),
            (
                json!({"sourceAddress": "2001:db8::2"}),
                "same family as peerAddress",
            ),
            (
                json!({"routerID": "2001:db8::1"}),
                "routerID must be an IPv4",
            ),
        ] {
            let p = peer(extra.clone());
            let err = p.validate_cel().expect_err(&extra.to_string());
            assert!(format!("{err:?}").contains(message), "{extra}: {err:?}");
        }
    }

    #[test]
    fn cel_checks_community_ranges() {
        let adv = |c: &[&str]| {
            BGPAdvertisement::new(
                "a",
                BGPAdvertisementSpec {
                    communities: c.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            )
        };
        assert!(
            adv(&["65000:100", "large:1:2:3", "no-export"])
                .validate_cel()
                .is_ok()
        );
        assert!(adv(&["65536:1"]).validate_cel().is_err());
        assert!(adv(&["large:1:2:4294967296"]).validate_cel().is_err());
    }

    #[test]
    fn communities_parse_and_print() {
        assert_eq!(
            "65000:100".parse(),
            Ok(Community::Standard((65000 << 16) | 100))
        );
        assert_eq!("no-export".parse(), Ok(Community::Standard(0xFFFF_FF01)));
        assert_eq!("large:1:2:3".parse(), Ok(Community::Large(1, 2, 3)));
        for bad in ["65536:1", "1:2:3", "large:1:2", "x", "large:1:2:-3"] {
            assert!(bad.parse::<Community>().is_err(), "{bad}");
        }
        for s in ["65000:100", "large:4200000000:0:7"] {
            assert_eq!(s.parse::<Community>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "90", "s", "1x", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
