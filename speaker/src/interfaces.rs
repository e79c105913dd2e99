//! Which links an address is announced on, and a live view of the links.
//!
//! The choice is a pure function, [`choose_interfaces`], over a snapshot of [`LinkInfo`]s.
//! [`watch_links`] keeps such a snapshot current from rtnetlink: it subscribes to the link and
//! address multicast groups on one connection and re-reads the full state over another (a
//! change made through a watching connection is not reported on it, and a full re-read after
//! each burst of notifications is simpler and sturdier than patching the view event by event).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, InfoPortKind, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use regex::Regex;
use rtnetlink::MulticastGroup;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::frames::MacAddr;

/// Interfaces never chosen automatically: loopback and the virtual links that container
/// networking, tunnels and kube-proxy create.
pub const DEFAULT_EXCLUDE: &str =
    "^(lo|veth.*|cni.*|flannel.*|cali.*|cilium.*|kube-ipvs.*|docker.*|vxlan.*|tun.*|tap.*)$";

/// What the announcer needs to know about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Hardware address, if the link has an Ethernet-like one.
    pub mac: Option<MacAddr>,
    /// Administratively up *and* with carrier: frames can flow.
    pub up: bool,
    /// Broadcast-capable (ARP needs it).
    pub broadcast: bool,
    /// Enslaved to a bridge: the bridge, not the port, is where addresses live.
    pub master_is_bridge: bool,
    /// Addresses with prefix length configured on the link.
    pub addrs: Vec<IpNet>,
}

/// The interface-name exclusion pattern of the automatic choice.
#[derive(Debug, Clone)]
pub struct InterfaceFilter {
    exclude: Regex,
}

impl InterfaceFilter {
    /// Compiles an exclusion pattern (matched against the whole name only if anchored).
    pub fn new(exclude: &str) -> Result<InterfaceFilter, regex::Error> {
        Ok(InterfaceFilter {
            exclude: Regex::new(exclude)?,
        })
    }

    /// Whether automatic choice skips `name`.
    pub fn excludes(&self, name: &str) -> bool {
        self.exclude.is_match(name)
    }
}

impl Default for InterfaceFilter {
    fn default() -> Self {
        InterfaceFilter {
            // A constant pattern covered by a unit test, not input.
            exclude: Regex::new(DEFAULT_EXCLUDE).expect("default pattern compiles"),
        }
    }
}

/// Chooses the links to announce `ip` on, ordered by index.
///
/// - With `requested` (an L2Advertisement's interface list): those of the named links that
///   exist, are up and have a MAC.
/// - Otherwise: links that are up, broadcast-capable, have a MAC, are not excluded by
///   `filter` and are not bridge ports; among those, the ones with a subnet containing `ip`
///   if there is any such link, else all of them.
pub fn choose_interfaces<'a>(
    ip: IpAddr,
    requested: Option<&[String]>,
    links: &'a [LinkInfo],
    filter: &InterfaceFilter,
) -> Vec<&'a LinkInfo> {
    let usable = |l: &&LinkInfo| l.up && l.mac.is_some();
    let mut chosen: Vec<&LinkInfo> = match requested {
        Some(names) => links
            .iter()
            .filter(usable)
            .filter(|l| names.contains(&l.name))
            .collect(),
        None => {
            let eligible: Vec<&LinkInfo> = links
                .iter()
                .filter(usable)
                .filter(|l| l.broadcast && !l.master_is_bridge && !filter.excludes(&l.name))
                .collect();
            let on_link: Vec<&LinkInfo> = eligible
                .iter()
                .copied()
                .filter(|l| l.addrs.iter().any(|net| net.contains(&ip)))
                .collect();
            if on_link.is_empty() {
                eligible
            } else {
                on_link
            }
        }
    };
    chosen.sort_by_key(|l| l.index);
    chosen
}

/// A link as read from netlink, before bridge membership is resolved across links.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawLink {
    info: LinkInfo,
    controller: Option<u32>,
    is_bridge: bool,
    port_of_bridge: bool,
}

fn raw_link(msg: &LinkMessage) -> Option<RawLink> {
    let mut name = None;
    let mut mac = None;
    let mut controller = None;
    let mut is_bridge = false;
    let mut port_of_bridge = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => {
                if let [a0, a1, a2, a3, a4, a5] = a.as_slice() {
                    let m = MacAddr::new(*a0, *a1, *a2, *a3, *a4, *a5);
                    if m != MacAddr::zero() {
                        mac = Some(m);
                    }
                }
            }
            LinkAttribute::Controller(c) => controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(InfoKind::Bridge) => is_bridge = true,
                        NlLinkInfo::PortKind(InfoPortKind::Bridge) => port_of_bridge = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let flags = msg.header.flags;
    Some(RawLink {
        info: LinkInfo {
            name: name?,
            index: msg.header.index,
            mac,
            up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
            broadcast: flags.contains(LinkFlags::Broadcast),
            master_is_bridge: false,
            addrs: Vec::new(),
        },
        controller,
        is_bridge,
        port_of_bridge,
    })
}

fn address(msg: &AddressMessage) -> Option<(u32, IpNet)> {
    // IFA_LOCAL is the local address on point-to-point links, where IFA_ADDRESS is the peer.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let net = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some((msg.header.index, net))
}

/// Builds a snapshot (ordered by index) from netlink link and address dumps.
pub fn build_snapshot(links: &[LinkMessage], addrs: &[AddressMessage]) -> Vec<LinkInfo> {
    let raw: BTreeMap<u32, RawLink> = links
        .iter()
        .filter_map(raw_link)
        .map(|r| (r.info.index, r))
        .collect();
    let mut out: BTreeMap<u32, LinkInfo> = raw
        .values()
        .map(|r| {
            let mut info = r.info.clone();
            info.master_is_bridge = r.port_of_bridge
                || r.controller
                    .and_then(|c| raw.get(&c))
                    .is_some_and(|m| m.is_bridge);
            (info.index, info)
        })
        .collect();
    for (index, net) in addrs.iter().filter_map(address) {
        if let Some(link) = out.get_mut(&index) {
            link.addrs.push(net);
        }
    }
    out.into_values().collect()
}

/// Errors of the link watcher.
#[derive(Debug, thiserror::Error)]
pub enum InterfacesError {
    /// A netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// A dump request failed.
    #[error("netlink dump failed: {0}")]
    Dump(#[from] rtnetlink::Error),
}

async fn dump(handle: &rtnetlink::Handle) -> Result<Vec<LinkInfo>, InterfacesError> {
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    let addrs: Vec<AddressMessage> = handle.address().get().execute().try_collect().await?;
    Ok(build_snapshot(&links, &addrs))
}

/// One reading of the links and their addresses (no watching).
pub async fn snapshot() -> Result<Vec<LinkInfo>, InterfacesError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let _conn = AbortOnDrop(tokio::spawn(conn));
    dump(&handle).await
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A live view of the links of the current network namespace.
#[derive(Debug)]
pub struct LinkWatcher {
    rx: watch::Receiver<Arc<Vec<LinkInfo>>>,
    _task: AbortOnDrop<()>,
}

impl LinkWatcher {
    /// A receiver of snapshots; `changed()` fires when links or their addresses change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<LinkInfo>>> {
        self.rx.clone()
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Vec<LinkInfo>> {
        self.rx.borrow().clone()
    }
}

/// Starts watching links: subscribes first, then dumps, so no change falls in between.
/// `resync` bounds how stale the view gets if notifications are lost (socket overrun).
/// The watching stops when the returned [`LinkWatcher`] is dropped.
pub async fn watch_links(resync: Duration) -> Result<LinkWatcher, InterfacesError> {
    let (mconn, _mhandle, mut events) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])?;
    let mconn = AbortOnDrop(tokio::spawn(mconn));
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let conn = AbortOnDrop(tokio::spawn(conn));
    let initial = dump(&handle).await?;
    let (tx, rx) = watch::channel(Arc::new(initial));
    let task = tokio::spawn(async move {
        let _connections = (mconn, conn);
        let mut ticker = tokio::time::interval(resync);
        ticker.tick().await;
        loop {
            tokio::select! {
                ev = events.next() => {
                    if ev.is_none() {
                        tracing::warn!("netlink notification stream ended; relying on periodic resync");
                        ticker.tick().await;
                    }
                    // Coalesce a burst of notifications into one re-read.
                    while let Some(Some(_)) = events.next().now_or_never() {}
                }
                _ = ticker.tick() => {}
            }
            match dump(&handle).await {
                Ok(snapshot) => {
                    tx.send_if_modified(|cur| {
                        if **cur == snapshot {
                            false
                        } else {
                            *cur = Arc::new(snapshot);
                            true
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "re-reading links failed"),
            }
            if tx.is_closed() {
                break;
            }
        }
    });
    Ok(LinkWatcher {
        rx,
        _task: AbortOnDrop(task),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn link(name: &str, index: u32, addrs: &[&str]) -> LinkInfo {
        LinkInfo {
            name: name.into(),
            index,
            mac: Some(MacAddr::new(2, 0, 0, 0, 0, index as u8)),
            up: true,
            broadcast: true,
            master_is_bridge: false,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn names(v: &[&LinkInfo]) -> Vec<String> {
        v.iter().map(|l| l.name.clone()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_pattern_excludes_virtual_links() {
        let f = InterfaceFilter::default();
        for n in [
            "lo",
            "veth12ab",
            "cni0",
            "flannel.1",
            "cali123",
            "cilium_host",
            "kube-ipvs0",
            "docker0",
            "vxlan.calico",
            "tun0",
            "tap3",
        ] {
            assert!(f.excludes(n), "{n}");
        }
        for n in [
            "eth0",
            "ens3",
            "enp0s31f6",
            "bond0",
            "br0",
            "eno1.100",
            "lobby",
        ] {
            assert!(!f.excludes(n), "{n}");
        }
    }

    #[test]
    fn subnet_match_wins() {
        let links = vec![
            link("eth0", 2, &["192.0.2.10/24", "2001:db8:1::10/64"]),
            link("eth1", 3, &["198.51.100.10/24"]),
        ];
        let f = InterfaceFilter::default();
        assert_eq!(
            names(&choose_interfaces(ip("198.51.100.7"), None, &links, &f)),
            ["eth1"]
        );
        assert_eq!(
            names(&choose_interfaces(ip("2001:db8:1::7"), None, &links, &f)),
            ["eth0"]
        );
        // No subnet contains it: every eligible link.
        assert_eq!(
            names(&choose_interfaces(ip("203.0.113.7"), None, &links, &f)),
            ["eth0", "eth1"]
        );
    }

    #[test]
    fn ineligible_links_are_skipped() {
        let mut down = link("eth1", 3, &["192.0.2.11/24"]);
        down.up = false;
        let mut no_mac = link("wg0", 4, &["192.0.2.12/24"]);
        no_mac.mac = None;
        let mut p2p = link("ppp0", 5, &["192.0.2.13/24"]);
        p2p.broadcast = false;
        let mut port = link("eth2", 6, &["192.0.2.14/24"]);
        port.master_is_bridge = true;
        let links = vec![
            link("lo", 1, &["127.0.0.1/8"]),
            link("veth0", 7, &["192.0.2.15/24"]),
            down,
            no_mac,
            p2p,
            port,
            link("br0", 8, &["192.0.2.1/24"]),
        ];
        let f = InterfaceFilter::default();
        assert_eq!(
            names(&choose_interfaces(ip("192.0.2.100"), None, &links, &f)),
            ["br0"]
        );
    }

    #[test]
    fn requested_list_overrides_automatic_choice() {
        let mut down = link("eth2", 4, &[]);
        down.up = false;
        let links = vec![
            link("eth0", 2, &["192.0.2.10/24"]),
            link("veth1", 3, &[]),
            down,
        ];
        let f = InterfaceFilter::default();
        let req = vec!["veth1".to_string(), "eth2".to_string(), "nope".to_string()];
        assert_eq!(
            names(&choose_interfaces(
                ip("192.0.2.100"),
                Some(&req),
                &links,
                &f
            )),
            ["veth1"]
        );
        assert!(choose_interfaces(ip("192.0.2.100"), Some(&[]), &links, &f).is_empty());
    }

    #[test]
    fn custom_pattern() {
        let f = InterfaceFilter::new("^eth1$").unwrap();
        let links = vec![link("eth0", 2, &[]), link("eth1", 3, &[])];
        assert_eq!(
            names(&choose_interfaces(ip("192.0.2.1"), None, &links, &f)),
            ["eth0"]
        );
        assert!(InterfaceFilter::new("(").is_err());
    }

    #[test]
    fn snapshot_from_netlink_messages() {
        use netlink_packet_route::address::AddressMessage;
        use netlink_packet_route::link::LinkMessage;

        let mut br = LinkMessage::default();
        br.header.index = 3;
        br.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Broadcast;
        br.attributes = vec![
            LinkAttribute::IfName("br0".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 3]),
            LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Bridge)]),
        ];
        let mut port = LinkMessage::default();
        port.header.index = 2;
        port.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        port.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 2]),
            LinkAttribute::Controller(3),
        ];
        let mut lo = LinkMessage::default();
        lo.header.index = 1;
        lo.attributes = vec![
            LinkAttribute::IfName("lo".into()),
            LinkAttribute::Address(vec![0; 6]),
        ];
        let mut nameless = LinkMessage::default();
        nameless.header.index = 9;
        let mut a = AddressMessage::default();
        a.header.index = 3;
        a.header.prefix_len = 24;
        a.attributes = vec![AddressAttribute::Address(ip("192.0.2.1"))];
        let mut bad_prefix = AddressMessage::default();
        bad_prefix.header.index = 3;
        bad_prefix.header.prefix_len = 99;
        bad_prefix.attributes = vec![AddressAttribute::Address(ip("192.0.2.2"))];
        let mut orphan = AddressMessage::default();
        orphan.header.index = 42;
        orphan.header.prefix_len = 64;
        orphan.attributes = vec![AddressAttribute::Local(ip("2001:db8::1"))];

        let snap = build_snapshot(&[br, port, lo, nameless], &[a, bad_prefix, orphan]);
        assert_eq!(snap.len(), 3);
        assert_eq!(snap[0].name, "lo");
        assert_eq!(snap[0].mac, None);
        assert!(!snap[0].up);
        assert_eq!(snap[1].name, "eth0");
        assert!(snap[1].master_is_bridge);
        // Up but no carrier.
        assert!(!snap[1].up);
        assert_eq!(snap[2].name, "br0");
        assert!(snap[2].up && snap[2].broadcast && !snap[2].master_is_bridge);
        assert_eq!(
            snap[2].addrs,
            vec!["192.0.2.1/24".parse::<IpNet>().unwrap()]
        );
    }

    fn arb_link() -> impl Strategy<Value = LinkInfo> {
        (
            "[a-z]{2,5}[0-9]?",
            1u32..64,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec((any::<u32>(), 8u8..=32), 0..3),
        )
            .prop_map(|(name, index, mac, up, broadcast, port, nets)| LinkInfo {
                name,
                index,
                mac: mac.then(|| MacAddr::new(2, 0, 0, 0, 0, index as u8)),
                up,
                broadcast,
                master_is_bridge: port,
                addrs: nets
                    .into_iter()
                    .map(|(a, p)| {
                        IpNet::new(IpAddr::from(std::net::Ipv4Addr::from(a)), p)
                            .unwrap()
                            .trunc()
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn automatic_choice_is_eligible_and_prefers_on_link(
            links in proptest::collection::vec(arb_link(), 0..8), a in any::<u32>()
        ) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(a));
            let f = InterfaceFilter::default();
            let chosen = choose_interfaces(ip, None, &links, &f);
            for l in &chosen {
                prop_assert!(l.up && l.broadcast && l.mac.is_some() && !l.master_is_bridge);
                prop_assert!(!f.excludes(&l.name));
            }
            let eligible = links.iter().filter(|l| {
                l.up && l.broadcast && l.mac.is_some() && !l.master_is_bridge && !f.excludes(&l.name)
            });
            let any_on_link = eligible.clone().any(|l| l.addrs.iter().any(|n| n.contains(&ip)));
            if any_on_link {
                prop_assert!(chosen.iter().all(|l| l.addrs.iter().any(|n| n.contains(&ip))));
                prop_assert!(!chosen.is_empty());
            } else {
                prop_assert_eq!(chosen.len(), eligible.count());
            }
            prop_assert!(chosen.windows(2).all(|w| w[0].index <= w[1].index));
        }
    }
}
