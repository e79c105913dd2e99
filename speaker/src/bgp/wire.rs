//! BGP messages on the wire: what the speaker sends, and what it makes of what it receives.
//!
//! OPEN and UPDATE are built and parsed by `netgauze-bgp-pkt` (maintained, Apache-2.0, a small
//! dependency tree): its types cover 4-octet AS paths, multiprotocol reach/unreach, standard and
//! large communities, and its parser validates received OPENs and UPDATEs in detail. Written
//! here by hand, and why:
//!
//! - the header checks (marker, length, type, per-type length, RFC 4271 6.1): they decide the
//!   NOTIFICATION we answer a malformed message with, and netgauze's errors do not carry the
//!   RFC's codes; doing them first gives every error its exact code and data;
//! - KEEPALIVE, NOTIFICATION and ROUTE-REFRESH bodies (0, 2 + data and 4 bytes): a peer's
//!   NOTIFICATION with a subcode netgauze does not know must still be read and logged;
//! - packing NLRI into UPDATEs of at most 4096 bytes: netgauze writes one message as given.
//!
//! Nothing here panics on input: every length is checked before it is used, and every error
//! becomes the [`Notification`] to send back.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use lodestone_crds::bgp::Community;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, Communities,
    LargeCommunities, LocalPreference, MpReach, MpUnreach, NextHop, Origin, PathAttribute,
    PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::open::{
    BgpOpenMessageParsingError, BgpParameterParsingError,
};
use netgauze_bgp_pkt::wire::deserializer::update::BgpUpdateMessageParsingError;
use netgauze_bgp_pkt::wire::deserializer::{BgpMessageParsingError, BgpParsingContext};
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::WritablePdu;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;

/// Largest message without the extended-message capability (RFC 4271 4.1).
pub const MAX_MESSAGE: usize = 4096;
/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
/// The 2-octet stand-in for a 4-octet AS number (RFC 6793).
pub const AS_TRANS: u16 = 23456;

const TYPE_OPEN: u8 = 1;
const TYPE_UPDATE: u8 = 2;
const TYPE_NOTIFICATION: u8 = 3;
const TYPE_KEEPALIVE: u8 = 4;
const TYPE_ROUTE_REFRESH: u8 = 5;

/// The address families the speaker advertises: unicast only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// AFI 1, SAFI 1.
    Ipv4,
    /// AFI 2, SAFI 1.
    Ipv6,
}

impl Family {
    /// The family of an address or prefix.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4),
            (2, 1) => Some(Family::Ipv6),
            _ => None,
        }
    }

    fn address_type(self) -> AddressType {
        match self {
            Family::Ipv4 => AddressType::Ipv4Unicast,
            Family::Ipv6 => AddressType::Ipv6Unicast,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4-unicast",
            Family::Ipv6 => "ipv6-unicast",
        })
    }
}

/// A NOTIFICATION message: error code, subcode, data (RFC 4271 4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data, as the RFC defines it per error.
    pub data: Vec<u8>,
}

/// Error codes and the subcodes the speaker sends.
pub mod codes {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// Connection Not Synchronized.
    pub const HEADER_NOT_SYNCHRONIZED: u8 = 1;
    /// Bad Message Length.
    pub const HEADER_BAD_LENGTH: u8 = 2;
    /// Bad Message Type.
    pub const HEADER_BAD_TYPE: u8 = 3;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// Unsupported Version Number.
    pub const OPEN_BAD_VERSION: u8 = 1;
    /// Bad Peer AS.
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    /// Bad BGP Identifier.
    pub const OPEN_BAD_BGP_ID: u8 = 3;
    /// Unsupported Optional Parameter.
    pub const OPEN_UNSUPPORTED_PARAMETER: u8 = 4;
    /// Unacceptable Hold Time.
    pub const OPEN_BAD_HOLD_TIME: u8 = 6;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Malformed Attribute List.
    pub const UPDATE_MALFORMED_ATTRIBUTES: u8 = 1;
    /// Invalid Network Field.
    pub const UPDATE_BAD_NETWORK: u8 = 10;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error (RFC 6608 subcodes: 1 OpenSent, 2 OpenConfirm, 3 Established).
    pub const FSM: u8 = 5;
    /// Cease (RFC 4486 subcodes).
    pub const CEASE: u8 = 6;
    /// Administrative Shutdown.
    pub const CEASE_ADMIN_SHUTDOWN: u8 = 2;
    /// Peer De-configured.
    pub const CEASE_PEER_DECONFIGURED: u8 = 3;
    /// BFD Down (RFC 9384).
    pub const CEASE_BFD_DOWN: u8 = 10;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
    /// Invalid Message Length.
    pub const ROUTE_REFRESH_BAD_LENGTH: u8 = 1;
}

impl Notification {
    /// A notification without data.
    pub fn new(code: u8, subcode: u8) -> Notification {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    /// Cease with a subcode.
    pub fn cease(subcode: u8) -> Notification {
        Notification::new(codes::CEASE, subcode)
    }

    fn bad_length(length: u16) -> Notification {
        Notification {
            code: codes::HEADER,
            subcode: codes::HEADER_BAD_LENGTH,
            data: length.to_be_bytes().to_vec(),
        }
    }

    /// Its name as the RFCs give it, for logs, Events and status.
    pub fn describe(&self) -> String {
        use codes::*;
        let name = match (self.code, self.subcode) {
            (HEADER, HEADER_NOT_SYNCHRONIZED) => {
                "message header error: connection not synchronized"
            }
            (HEADER, HEADER_BAD_LENGTH) => "message header error: bad message length",
            (HEADER, HEADER_BAD_TYPE) => "message header error: bad message type",
            (HEADER, _) => "message header error",
            (OPEN, OPEN_BAD_VERSION) => "OPEN error: unsupported version number",
            (OPEN, OPEN_BAD_PEER_AS) => "OPEN error: bad peer AS",
            (OPEN, OPEN_BAD_BGP_ID) => "OPEN error: bad BGP identifier",
            (OPEN, OPEN_UNSUPPORTED_PARAMETER) => "OPEN error: unsupported optional parameter",
            (OPEN, OPEN_BAD_HOLD_TIME) => "OPEN error: unacceptable hold time",
            (OPEN, 7) => "OPEN error: unsupported capability",
            (OPEN, _) => "OPEN error",
            (UPDATE, _) => "UPDATE error",
            (HOLD_TIMER_EXPIRED, _) => "hold timer expired",
            (FSM, _) => "finite state machine error",
            (CEASE, 1) => "cease: maximum number of prefixes reached",
            (CEASE, CEASE_ADMIN_SHUTDOWN) => "cease: administrative shutdown",
            (CEASE, CEASE_PEER_DECONFIGURED) => "cease: peer de-configured",
            (CEASE, 4) => "cease: administrative reset",
            (CEASE, 5) => "cease: connection rejected",
            (CEASE, 6) => "cease: other configuration change",
            (CEASE, 7) => "cease: connection collision resolution",
            (CEASE, 8) => "cease: out of resources",
            (CEASE, 9) => "cease: hard reset",
            (CEASE, CEASE_BFD_DOWN) => "cease: BFD down",
            (CEASE, _) => "cease",
            (ROUTE_REFRESH, _) => "ROUTE-REFRESH error",
            _ => "unknown error",
        };
        format!("{name} ({}/{})", self.code, self.subcode)
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What a received OPEN says, as the session needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenInfo {
    /// The peer's AS: from the 4-octet AS capability when present, else the 2-octet field.
    pub asn: u32,
    /// Proposed hold time, seconds.
    pub hold_time: u16,
    /// BGP identifier.
    pub bgp_id: Ipv4Addr,
    /// Families from the multiprotocol capabilities; `None` when there is none at all, which
    /// means IPv4 unicast only (RFC 4760 8).
    pub families: Option<BTreeSet<Family>>,
    /// 4-octet AS capability present.
    pub asn4: bool,
    /// Route refresh capability (RFC 2918) present.
    pub route_refresh: bool,
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(OpenInfo),
    /// UPDATE: the speaker only advertises; what the peer sends is validated and dropped.
    Update,
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH for a family (`None`: a family we do not speak, to be ignored).
    RouteRefresh(Option<Family>),
}

impl Message {
    /// Name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }
}

/// Splits a byte stream into messages and decodes them.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Whether both sides sent the 4-octet AS capability: AS_PATH carries 4-octet numbers.
    pub asn4: bool,
}

impl Decoder {
    /// Takes one whole message off the front of `buf`, if one is there. `Err` is the
    /// NOTIFICATION to send before closing: after a header error the stream cannot be
    /// resynchronised, and after any other the session is reset as RFC 4271 6 says.
    pub fn decode(&self, buf: &mut Vec<u8>) -> Result<Option<Message>, Notification> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        if buf[..16].iter().any(|b| *b != 0xFF) {
            return Err(Notification::new(
                codes::HEADER,
                codes::HEADER_NOT_SYNCHRONIZED,
            ));
        }
        let length = u16::from_be_bytes([buf[16], buf[17]]);
        let kind = buf[18];
        let len = usize::from(length);
        if !(HEADER_LEN..=MAX_MESSAGE).contains(&len) {
            return Err(Notification::bad_length(length));
        }
        let length_ok = match kind {
            TYPE_OPEN => len >= 29,
            TYPE_UPDATE => len >= 23,
            TYPE_NOTIFICATION => len >= 21,
            TYPE_KEEPALIVE => len == HEADER_LEN,
            TYPE_ROUTE_REFRESH => len == 23,
            _ => {
                return Err(Notification {
                    code: codes::HEADER,
                    subcode: codes::HEADER_BAD_TYPE,
                    data: vec![kind],
                });
            }
        };
        if !length_ok {
            return Err(Notification::bad_length(length));
        }
        if buf.len() < len {
            return Ok(None);
        }
        let frame: Vec<u8> = buf.drain(..len).collect();
        let body = &frame[HEADER_LEN..];
        match kind {
            TYPE_KEEPALIVE => Ok(Some(Message::Keepalive)),
            TYPE_NOTIFICATION => Ok(Some(Message::Notification(Notification {
                code: body[0],
                subcode: body[1],
                data: body[2..].to_vec(),
            }))),
            TYPE_ROUTE_REFRESH => {
                let afi = u16::from_be_bytes([body[0], body[1]]);
                Ok(Some(Message::RouteRefresh(Family::from_afi_safi(
                    afi, body[3],
                ))))
            }
            _ => self.parse_open_or_update(&frame),
        }
    }

    fn parse_open_or_update(&self, frame: &[u8]) -> Result<Option<Message>, Notification> {
        // Lenient as RFC 7606 asks: attribute errors are collected, not fatal; the speaker
        // drops received routes anyway.
        let mut ctx = BgpParsingContext::new(
            self.asn4,
            HashMap::new(),
            HashMap::new(),
            false,
            false,
            false,
            false,
        );
        let mut reader = SliceReader::new(frame);
        match BgpMessage::parse(&mut reader, &mut ctx) {
            Ok(BgpMessage::Open(open)) => Ok(Some(Message::Open(open_info(&open)))),
            Ok(BgpMessage::Update(_)) => Ok(Some(Message::Update)),
            // The header said OPEN or UPDATE; netgauze agrees or fails.
            Ok(other) => Err(Notification::new(codes::HEADER, codes::HEADER_BAD_TYPE))
                .inspect_err(|_| tracing::debug!(message = ?other.get_type(), "unexpected parse")),
            Err(error) => Err(notification_for(frame[18], &error)),
        }
    }
}

fn open_info(open: &BgpOpenMessage) -> OpenInfo {
    let caps = open.capabilities();
    let mut families: Option<BTreeSet<Family>> = None;
    let mut asn4 = false;
    let mut route_refresh = false;
    for cap in caps {
        match cap {
            BgpCapability::MultiProtocolExtensions(mp) => {
                let set = families.get_or_insert_with(BTreeSet::new);
                match mp.address_type() {
                    AddressType::Ipv4Unicast => {
                        set.insert(Family::Ipv4);
                    }
                    AddressType::Ipv6Unicast => {
                        set.insert(Family::Ipv6);
                    }
                    _ => {}
                }
            }
            BgpCapability::FourOctetAs(_) => asn4 = true,
            BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh => {
                route_refresh = true
            }
            _ => {}
        }
    }
    OpenInfo {
        asn: open.my_asn4(),
        hold_time: open.hold_time(),
        bgp_id: open.bgp_id(),
        families,
        asn4,
        route_refresh,
    }
}

/// The NOTIFICATION RFC 4271 6.2/6.3 asks for when netgauze refuses a message of type `kind`.
fn notification_for(kind: u8, error: &BgpMessageParsingError) -> Notification {
    use BgpMessageParsingError as E;
    match error {
        E::ConnectionNotSynchronized { .. } => {
            Notification::new(codes::HEADER, codes::HEADER_NOT_SYNCHRONIZED)
        }
        E::BadMessageLength { length, .. } => Notification::bad_length(*length),
        E::UndefinedBgpMessageType { code, .. } => Notification {
            code: codes::HEADER,
            subcode: codes::HEADER_BAD_TYPE,
            data: vec![*code],
        },
        E::BgpOpenMessageParsingError(open) => match open {
            BgpOpenMessageParsingError::UnsupportedVersionNumber { .. } => Notification {
                code: codes::OPEN,
                subcode: codes::OPEN_BAD_VERSION,
                // The largest version we support.
                data: 4u16.to_be_bytes().to_vec(),
            },
            BgpOpenMessageParsingError::UnacceptableHoldTime { .. } => {
                Notification::new(codes::OPEN, codes::OPEN_BAD_HOLD_TIME)
            }
            BgpOpenMessageParsingError::InvalidBgpId { .. } => {
                Notification::new(codes::OPEN, codes::OPEN_BAD_BGP_ID)
            }
            BgpOpenMessageParsingError::ParameterError(
                BgpParameterParsingError::UndefinedParameterType { .. },
            ) => Notification::new(codes::OPEN, codes::OPEN_UNSUPPORTED_PARAMETER),
            _ => Notification::new(codes::OPEN, 0),
        },
        E::BgpUpdateMessageParsingError(update) => match update {
            BgpUpdateMessageParsingError::Ipv4PrefixError(_)
            | BgpUpdateMessageParsingError::InvalidIpv4UnicastNetwork { .. } => {
                Notification::new(codes::UPDATE, codes::UPDATE_BAD_NETWORK)
            }
            _ => Notification::new(codes::UPDATE, codes::UPDATE_MALFORMED_ATTRIBUTES),
        },
        // Truncated fields and trailing bytes: the message's own error, unspecific subcode.
        _ => match kind {
            TYPE_OPEN => Notification::new(codes::OPEN, 0),
            TYPE_UPDATE => Notification::new(codes::UPDATE, codes::UPDATE_MALFORMED_ATTRIBUTES),
            _ => Notification::new(codes::HEADER, 0),
        },
    }
}

/// What the speaker puts in its OPEN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenParams {
    /// Our AS (4-octet capable).
    pub asn: u32,
    /// Proposed hold time, seconds.
    pub hold_time: u16,
    /// Our BGP identifier.
    pub bgp_id: Ipv4Addr,
    /// Families offered.
    pub families: Vec<Family>,
}

/// Why a message could not be built (only for inputs the speaker never produces: a bug).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a BGP message: {0}")]
pub struct EncodeError(String);

fn write(msg: &BgpMessage) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(msg.len());
    msg.write(&mut out)
        .map_err(|e| EncodeError(format!("{e:?}")))?;
    Ok(out)
}

/// OPEN with the multiprotocol, route refresh and 4-octet AS capabilities.
pub fn open(p: &OpenParams) -> Result<Vec<u8>, EncodeError> {
    let mut caps: Vec<BgpCapability> = p
        .families
        .iter()
        .map(|f| {
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                f.address_type(),
            ))
        })
        .collect();
    caps.push(BgpCapability::RouteRefresh);
    caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
        p.asn,
    )));
    let my_as = u16::try_from(p.asn).unwrap_or(AS_TRANS);
    write(&BgpMessage::Open(BgpOpenMessage::new(
        my_as,
        p.hold_time,
        p.bgp_id,
        vec![BgpOpenMessageParameter::Capabilities(caps.into())],
    )))
}

/// KEEPALIVE.
pub fn keepalive() -> Vec<u8> {
    let mut out = vec![0xFF; 16];
    out.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
    out.push(TYPE_KEEPALIVE);
    out
}

/// NOTIFICATION (data cut to what fits in one message).
pub fn notification(n: &Notification) -> Vec<u8> {
    let data = &n.data[..n.data.len().min(MAX_MESSAGE - HEADER_LEN - 2)];
    let len = HEADER_LEN + 2 + data.len();
    let mut out = vec![0xFF; 16];
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.push(TYPE_NOTIFICATION);
    out.push(n.code);
    out.push(n.subcode);
    out.extend_from_slice(data);
    out
}

/// ROUTE-REFRESH asking for a family (used by tests playing the router).
pub fn route_refresh(family: Family) -> Vec<u8> {
    let mut out = vec![0xFF; 16];
    out.extend_from_slice(&23u16.to_be_bytes());
    out.push(TYPE_ROUTE_REFRESH);
    out.extend_from_slice(match family {
        Family::Ipv4 => &[0, 1, 0, 1],
        Family::Ipv6 => &[0, 2, 0, 1],
    });
    out
}

/// Attributes of advertised routes besides the path and next hop.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteAttrs {
    /// LOCAL_PREF (sent on iBGP only).
    pub local_pref: Option<u32>,
    /// Communities, standard and large.
    pub communities: BTreeSet<Community>,
}

/// Per-session facts that shape an UPDATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateContext {
    /// Our AS.
    pub local_asn: u32,
    /// External session: our AS is prepended, LOCAL_PREF is not sent.
    pub ebgp: bool,
    /// Both sides sent the 4-octet AS capability.
    pub asn4: bool,
    /// Next hop of IPv4 routes (this node's address towards the peer).
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop of IPv6 routes.
    pub next_hop_v6: Option<Ipv6Addr>,
}

fn attr(
    optional: bool,
    transitive: bool,
    value: PathAttributeValue,
) -> Result<PathAttribute, EncodeError> {
    // The extended-length bit may be set on any attribute (RFC 4271 4.3); always setting it on
    // the ones whose size varies means a long list of prefixes or communities always fits.
    let extended = matches!(
        value,
        PathAttributeValue::MpReach(_)
            | PathAttributeValue::MpUnreach(_)
            | PathAttributeValue::Communities(_)
            | PathAttributeValue::LargeCommunities(_)
    );
    PathAttribute::from(optional, transitive, false, extended, value)
        .map_err(|(_, e)| EncodeError(format!("{e:?}")))
}

/// The path attributes of a route (without MP_REACH_NLRI).
fn path_attributes(
    ctx: &UpdateContext,
    family: Family,
    attrs: &RouteAttrs,
) -> Result<Vec<PathAttribute>, EncodeError> {
    let mut out = vec![attr(false, true, PathAttributeValue::Origin(Origin::IGP))?];
    let path = if !ctx.ebgp {
        if ctx.asn4 {
            AsPath::As4PathSegments(Box::new([]))
        } else {
            AsPath::As2PathSegments(Box::new([]))
        }
    } else if ctx.asn4 {
        AsPath::As4PathSegments(Box::new([As4PathSegment::new(
            AsPathSegmentType::AsSequence,
            vec![ctx.local_asn],
        )]))
    } else {
        AsPath::As2PathSegments(Box::new([As2PathSegment::new(
            AsPathSegmentType::AsSequence,
            vec![u16::try_from(ctx.local_asn).unwrap_or(AS_TRANS)],
        )]))
    };
    out.push(attr(false, true, PathAttributeValue::AsPath(path))?);
    if ctx.ebgp && !ctx.asn4 && ctx.local_asn > u32::from(u16::MAX) {
        // RFC 6793 4.2.2: a new speaker talking to an old one carries the real path here.
        out.push(attr(
            true,
            true,
            PathAttributeValue::As4Path(As4Path::new(vec![As4PathSegment::new(
                AsPathSegmentType::AsSequence,
                vec![ctx.local_asn],
            )])),
        )?);
    }
    if family == Family::Ipv4 {
        let nh = ctx
            .next_hop_v4
            .ok_or_else(|| EncodeError("no IPv4 next hop".into()))?;
        out.push(attr(
            false,
            true,
            PathAttributeValue::NextHop(NextHop::new(nh)),
        )?);
    }
    if !ctx.ebgp {
        out.push(attr(
            false,
            true,
            PathAttributeValue::LocalPreference(LocalPreference::new(
                attrs.local_pref.unwrap_or(100),
            )),
        )?);
    }
    let standard: Vec<netgauze_bgp_pkt::community::Community> = attrs
        .communities
        .iter()
        .filter_map(|c| match c {
            Community::Standard(v) => Some(netgauze_bgp_pkt::community::Community::new(*v)),
            Community::Large(..) => None,
        })
        .collect();
    if !standard.is_empty() {
        out.push(attr(
            true,
            true,
            PathAttributeValue::Communities(Communities::new(standard)),
        )?);
    }
    let large: Vec<netgauze_bgp_pkt::community::LargeCommunity> = attrs
        .communities
        .iter()
        .filter_map(|c| match c {
            Community::Large(a, b, c) => {
                Some(netgauze_bgp_pkt::community::LargeCommunity::new(*a, *b, *c))
            }
            Community::Standard(_) => None,
        })
        .collect();
    if !large.is_empty() {
        out.push(attr(
            true,
            true,
            PathAttributeValue::LargeCommunities(LargeCommunities::new(large)),
        )?);
    }
    Ok(out)
}

fn nlri_len(net: &IpNet) -> usize {
    1 + usize::from(net.prefix_len()).div_ceil(8)
}

/// Splits `prefixes` into runs whose NLRI fit in `budget` bytes.
fn chunks(prefixes: &[IpNet], budget: usize) -> Vec<&[IpNet]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, p) in prefixes.iter().enumerate() {
        let n = nlri_len(p);
        if used + n > budget && i > start {
            out.push(&prefixes[start..i]);
            start = i;
            used = 0;
        }
        used += n;
    }
    if start < prefixes.len() {
        out.push(&prefixes[start..]);
    }
    out
}

/// Whether `p` can be carried as unicast NLRI: netgauze (rightly) refuses multicast ranges.
pub fn is_unicast(p: &IpNet) -> bool {
    match p {
        IpNet::V4(n) => Ipv4Unicast::from_net(*n).is_ok(),
        IpNet::V6(n) => Ipv6Unicast::from_net(*n).is_ok(),
    }
}

fn v4_nlri(prefixes: &[IpNet]) -> Result<Vec<Ipv4UnicastAddress>, EncodeError> {
    prefixes
        .iter()
        .map(|p| match p {
            IpNet::V4(n) => Ipv4Unicast::from_net(*n)
                .map(Ipv4UnicastAddress::new_no_path_id)
                .map_err(|e| EncodeError(format!("{e:?}"))),
            IpNet::V6(n) => Err(EncodeError(format!("{n} in an IPv4 update"))),
        })
        .collect()
}

fn v6_nlri(prefixes: &[IpNet]) -> Result<Vec<Ipv6UnicastAddress>, EncodeError> {
    prefixes
        .iter()
        .map(|p| match p {
            IpNet::V6(n) => Ipv6Unicast::from_net(*n)
                .map(|u| Ipv6UnicastAddress::new(None, u))
                .map_err(|e| EncodeError(format!("{e:?}"))),
            IpNet::V4(n) => Err(EncodeError(format!("{n} in an IPv6 update"))),
        })
        .collect()
}

/// Room for NLRI in one UPDATE after the header, the two length fields, the attributes and
/// (IPv6) the MP_REACH/MP_UNREACH header: flags, type, 2-byte length, AFI, SAFI, next-hop
/// length, a 16-byte next hop, reserved.
fn nlri_budget(attrs_len: usize, family: Family) -> usize {
    let mp = match family {
        Family::Ipv4 => 0,
        Family::Ipv6 => 4 + 3 + 1 + 16 + 1,
    };
    MAX_MESSAGE.saturating_sub(HEADER_LEN + 4 + attrs_len + mp)
}

/// UPDATEs announcing `prefixes` (all of `family`) with `attrs`, each at most 4096 bytes.
pub fn announce(
    ctx: &UpdateContext,
    family: Family,
    attrs: &RouteAttrs,
    prefixes: &[IpNet],
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let base = path_attributes(ctx, family, attrs)?;
    let base_len: usize = base.iter().map(|a| a.len()).sum();
    let mut out = Vec::new();
    for chunk in chunks(prefixes, nlri_budget(base_len, family)) {
        let msg = match family {
            Family::Ipv4 => BgpUpdateMessage::new(vec![], base.clone(), v4_nlri(chunk)?),
            Family::Ipv6 => {
                let next_hop_global = ctx
                    .next_hop_v6
                    .ok_or_else(|| EncodeError("no IPv6 next hop".into()))?;
                let mut attrs = base.clone();
                attrs.push(attr(
                    true,
                    false,
                    PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                        next_hop_global,
                        next_hop_local: None,
                        nlri: v6_nlri(chunk)?.into(),
                    }),
                )?);
                BgpUpdateMessage::new(vec![], attrs, vec![])
            }
        };
        out.push(write(&BgpMessage::Update(msg))?);
    }
    Ok(out)
}

/// UPDATEs withdrawing `prefixes` (all of `family`).
pub fn withdraw(family: Family, prefixes: &[IpNet]) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut out = Vec::new();
    for chunk in chunks(prefixes, nlri_budget(0, family)) {
        let msg = match family {
            Family::Ipv4 => BgpUpdateMessage::new(v4_nlri(chunk)?, vec![], vec![]),
            Family::Ipv6 => BgpUpdateMessage::new(
                vec![],
                vec![attr(
                    true,
                    false,
                    PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
                        nlri: v6_nlri(chunk)?.into(),
                    }),
                )?],
                vec![],
            ),
        };
        out.push(write(&BgpMessage::Update(msg))?);
    }
    Ok(out)
}

/// The End-of-RIB marker of a family (RFC 4724 2).
pub fn end_of_rib(family: Family) -> Result<Vec<u8>, EncodeError> {
    let msg = match family {
        Family::Ipv4 => BgpUpdateMessage::new(vec![], vec![], vec![]),
        Family::Ipv6 => BgpUpdateMessage::new(
            vec![],
            vec![attr(
                true,
                false,
                PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: Box::new([]) }),
            )?],
            vec![],
        ),
    };
    write(&BgpMessage::Update(msg))
}

/// A prefix of `len` bits covering `ip` (host bits cleared).
pub fn prefix_of(ip: IpAddr, len: u8) -> Option<IpNet> {
    match ip {
        IpAddr::V4(a) => Ipv4Net::new(a, len).ok().map(|n| IpNet::V4(n.trunc())),
        IpAddr::V6(a) => Ipv6Net::new(a, len).ok().map(|n| IpNet::V6(n.trunc())),
    }
}

/// Decodes a whole UPDATE we built back into its prefixes (tests, and the benches' router).
pub fn parse_update_prefixes(
    frame: &[u8],
    asn4: bool,
) -> Result<(Vec<IpNet>, Vec<IpNet>), Notification> {
    let mut ctx = BgpParsingContext::new(
        asn4,
        HashMap::new(),
        HashMap::new(),
        false,
        false,
        false,
        false,
    );
    let mut reader = SliceReader::new(frame);
    let msg = BgpMessage::parse(&mut reader, &mut ctx)
        .map_err(|e| notification_for(frame.get(18).copied().unwrap_or(0), &e))?;
    let BgpMessage::Update(u) = msg else {
        return Err(Notification::new(codes::HEADER, codes::HEADER_BAD_TYPE));
    };
    let mut announced: Vec<IpNet> = u
        .nlri()
        .iter()
        .map(|a| IpNet::V4(a.network().address()))
        .collect();
    let mut withdrawn: Vec<IpNet> = u
        .withdraw_routes()
        .iter()
        .map(|a| IpNet::V4(a.network().address()))
        .collect();
    for a in u.path_attributes() {
        match a.value() {
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast { nlri, .. }) => {
                announced.extend(nlri.iter().map(|n| IpNet::V6(n.network().address())));
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => {
                withdrawn.extend(nlri.iter().map(|n| IpNet::V6(n.network().address())));
            }
            _ => {}
        }
    }
    Ok((announced, withdrawn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(ebgp: bool, asn4: bool) -> UpdateContext {
        UpdateContext {
            local_asn: 4_200_000_001,
            ebgp,
            asn4,
            next_hop_v4: Some("192.0.2.11".parse().unwrap()),
            next_hop_v6: Some("2001:db8::11".parse().unwrap()),
        }
    }

    fn decode_all(mut bytes: Vec<u8>, asn4: bool) -> Vec<Result<Message, Notification>> {
        let d = Decoder { asn4 };
        let mut out = Vec::new();
        loop {
            match d.decode(&mut bytes) {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => break,
                Err(n) => {
                    out.push(Err(n));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn open_round_trips_with_capabilities() {
        let bytes = open(&OpenParams {
            asn: 4_200_000_001,
            hold_time: 9,
            bgp_id: "192.0.2.11".parse().unwrap(),
            families: vec![Family::Ipv4, Family::Ipv6],
        })
        .unwrap();
        // The 2-octet field carries AS_TRANS.
        assert_eq!(u16::from_be_bytes([bytes[20], bytes[21]]), AS_TRANS);
        let got = decode_all(bytes, false);
        assert_eq!(
            got,
            vec![Ok(Message::Open(OpenInfo {
                asn: 4_200_000_001,
                hold_time: 9,
                bgp_id: "192.0.2.11".parse().unwrap(),
                families: Some(BTreeSet::from([Family::Ipv4, Family::Ipv6])),
                asn4: true,
                route_refresh: true,
            }))]
        );
    }

    #[test]
    fn small_messages_round_trip() {
        let mut stream = keepalive();
        stream.extend(notification(&Notification::cease(
            codes::CEASE_ADMIN_SHUTDOWN,
        )));
        stream.extend(route_refresh(Family::Ipv6));
        stream.extend(end_of_rib(Family::Ipv4).unwrap());
        stream.extend(end_of_rib(Family::Ipv6).unwrap());
        assert_eq!(
            decode_all(stream, true),
            vec![
                Ok(Message::Keepalive),
                Ok(Message::Notification(Notification::cease(2))),
                Ok(Message::RouteRefresh(Some(Family::Ipv6))),
                Ok(Message::Update),
                Ok(Message::Update),
            ]
        );
    }

    #[test]
    fn a_partial_message_waits_for_the_rest() {
        let whole = keepalive();
        let mut part = whole[..10].to_vec();
        assert_eq!(Decoder::default().decode(&mut part), Ok(None));
        assert_eq!(part.len(), 10);
    }

    #[test]
    fn malformed_headers_get_the_rfc_codes() {
        let mut bad_marker = keepalive();
        bad_marker[3] = 0;
        let mut bad_len = keepalive();
        bad_len[17] = 18;
        let mut long_keepalive = keepalive();
        long_keepalive[17] = 20;
        long_keepalive.push(0);
        let mut bad_type = keepalive();
        bad_type[18] = 9;
        let mut huge = keepalive();
        huge[16..18].copy_from_slice(&5000u16.to_be_bytes());
        for (bytes, want) in [
            (bad_marker, Notification::new(1, 1)),
            (
                bad_len,
                Notification {
                    code: 1,
                    subcode: 2,
                    data: vec![0, 18],
                },
            ),
            (
                long_keepalive,
                Notification {
                    code: 1,
                    subcode: 2,
                    data: vec![0, 20],
                },
            ),
            (
                bad_type,
                Notification {
                    code: 1,
                    subcode: 3,
                    data: vec![9],
                },
            ),
            (
                huge,
                Notification {
                    code: 1,
                    subcode: 2,
                    data: 5000u16.to_be_bytes().to_vec(),
                },
            ),
        ] {
            assert_eq!(decode_all(bytes, true), vec![Err(want)]);
        }
    }

    #[test]
    fn malformed_open_and_update_get_their_codes() {
        let mut v3 = open(&OpenParams {
            asn: 64512,
            hold_time: 90,
            bgp_id: "192.0.2.11".parse().unwrap(),
            families: vec![Family::Ipv4],
        })
        .unwrap();
        v3[19] = 3;
        assert_eq!(
            decode_all(v3, true),
            vec![Err(Notification {
                code: 2,
                subcode: 1,
                data: vec![0, 4]
            })]
        );
        // An UPDATE whose attribute length runs past the message.
        let mut update = announce(
            &ctx(true, true),
            Family::Ipv4,
            &RouteAttrs::default(),
            &["198.51.100.1/32".parse().unwrap()],
        )
        .unwrap()
        .remove(0);
        update[22] = 0xF0;
        let got = decode_all(update, true);
        assert!(
            matches!(got.as_slice(), [Err(Notification { code: 3, .. })]),
            "{got:?}"
        );
    }

    #[test]
    fn updates_round_trip_both_families() {
        let attrs = RouteAttrs {
            local_pref: Some(150),
            communities: BTreeSet::from([
                Community::Standard(0xFDE8_0064),
                Community::Large(1, 2, 3),
            ]),
        };
        for (ebgp, asn4) in [(true, true), (false, true), (true, false)] {
            for (family, p) in [
                (Family::Ipv4, "198.51.100.7/32"),
                (Family::Ipv6, "2001:db8:1::7/128"),
            ] {
                let prefixes: Vec<IpNet> = vec![p.parse().unwrap()];
                let msgs = announce(&ctx(ebgp, asn4), family, &attrs, &prefixes).unwrap();
                assert_eq!(msgs.len(), 1);
                let (a, w) = parse_update_prefixes(&msgs[0], asn4).unwrap();
                assert_eq!((a, w), (prefixes.clone(), vec![]));
                let msgs = withdraw(family, &prefixes).unwrap();
                let (a, w) = parse_update_prefixes(&msgs[0], asn4).unwrap();
                assert_eq!((a, w), (vec![], prefixes.clone()));
            }
        }
    }

    proptest! {
        /// However many prefixes, every UPDATE fits in 4096 bytes, decodes, and together they
        /// carry exactly the prefixes asked for, in order.
        #[test]
        fn updates_are_packed_within_the_size_limit(
            v4 in proptest::collection::vec((any::<u32>(), 8u8..=32), 0..1500),
            v6 in proptest::collection::vec((any::<u128>(), 16u8..=128), 0..600),
            communities in proptest::collection::btree_set(any::<u32>(), 0..40),
        ) {
            let attrs = RouteAttrs {
                local_pref: None,
                communities: communities.into_iter().map(Community::Standard).collect(),
            };
            for (family, prefixes) in [
                (Family::Ipv4, v4.iter().map(|(a, l)| prefix_of(IpAddr::V4((*a).into()), *l).unwrap()).filter(is_unicast).collect::<Vec<_>>()),
                (Family::Ipv6, v6.iter().map(|(a, l)| prefix_of(IpAddr::V6((*a).into()), *l).unwrap()).filter(is_unicast).collect::<Vec<_>>()),
            ] {
                for msgs in [
                    announce(&ctx(true, true), family, &attrs, &prefixes).unwrap(),
                    withdraw(family, &prefixes).unwrap(),
                ] {
                    let mut seen = Vec::new();
                    for m in &msgs {
                        prop_assert!(m.len() <= MAX_MESSAGE, "{} bytes", m.len());
                        let (a, w) = parse_update_prefixes(m, true).unwrap();
                        seen.extend(a);
                        seen.extend(w);
                    }
                    prop_assert_eq!(&seen, &prefixes);
                }
            }
        }

        /// Arbitrary bytes never panic the decoder; it returns a message, waits, or names the
        /// NOTIFICATION to send.
        #[test]
        fn arbitrary_bytes_never_panic(mut tail in proptest::collection::vec(any::<u8>(), 0..300), kind in 1u8..=6, len in 0u16..400) {
            let mut bytes = vec![0xFF; 16];
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.push(kind);
            bytes.append(&mut tail);
            let _ = decode_all(bytes, true);
        }
    }
}
