//! `lodestonectl status`: pools, Services and BGP sessions in, rows and tables out.

use super::*;

use k8s_openapi::api::core::v1::Service;
use lodestone_crds::addresses::{self, IpFamily};
use lodestone_crds::announced::AnnouncedBy;
use lodestone_crds::conditions::{ADDRESS_ASSIGNED, ANNOUNCED, AssignedFrom};
use lodestone_crds::{BGPPeer, IPAddressPool};
use serde::Serialize;

/// One pool's line in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolRow {
    /// Pool name.
    pub name: String,
    /// `spec.addresses`.
    pub addresses: Vec<String>,
    /// IPv4 addresses assigned.
    #[serde(rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    /// IPv4 addresses free.
    #[serde(rename = "availableIPv4")]
    pub available_ipv4: i64,
    /// IPv6 addresses assigned.
    #[serde(rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    /// IPv6 addresses free.
    #[serde(rename = "availableIPv6")]
    pub available_ipv6: i64,
    /// Condition types that are `True` (`Ready`, `Invalid`, `Overlapping`).
    pub conditions: Vec<String>,
}

/// One LoadBalancer Service's line in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `status.loadBalancer.ingress[].ip`.
    pub addresses: Vec<String>,
    /// Pool, from the controller's condition message `ADDR from pool NAME`.
    pub pool: Option<String>,
    /// Announcing node, from the speaker's condition message `announced from NODE on IFACES`.
    pub node: Option<String>,
    /// The reason of the Announced condition when it is not `True` (or of AddressAssigned when
    /// there is no address), so the table says why a line is empty.
    pub problem: Option<String>,
}

/// One node's BGP session with one peer in `status`, from the peer's `status.sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpSessionRow {
    /// The BGPPeer.
    pub peer: String,
    /// `spec.peerAddress`.
    pub address: String,
    /// The node.
    pub node: String,
    /// RFC 4271 state.
    pub state: String,
    /// Prefixes advertised on the session.
    pub advertised_prefixes: i64,
    /// BFD state, when the peer asks for BFD.
    pub bfd: Option<String>,
    /// Why it last failed.
    pub last_error: Option<String>,
}

/// What `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Every pool, by name.
    pub pools: Vec<PoolRow>,
    /// Every Service of `type: LoadBalancer`, by namespace and name.
    pub services: Vec<ServiceRow>,
    /// Every BGP session, by peer and node (empty without BGPPeers).
    #[serde(rename = "bgpSessions", skip_serializing_if = "Vec::is_empty")]
    pub bgp_sessions: Vec<BgpSessionRow>,
}

/// The BGP sessions the speakers report on the peers, by peer and node.
pub fn bgp_sessions(peers: &[BGPPeer]) -> Vec<BgpSessionRow> {
    let mut rows: Vec<BgpSessionRow> = peers
        .iter()
        .flat_map(|p| {
            let peer = p.metadata.name.clone().unwrap_or_default();
            let address = p.spec.peer_address.clone();
            p.status
                .iter()
                .flat_map(|s| s.sessions.iter())
                .map(move |s| BgpSessionRow {
                    peer: peer.clone(),
                    address: address.clone(),
                    node: s.node.clone(),
                    state: s.state.clone(),
                    advertised_prefixes: s.advertised_prefixes,
                    bfd: s.bfd.clone(),
                    last_error: s.last_error.clone(),
                })
        })
        .collect();
    rows.sort_by(|a, b| (&a.peer, &a.node).cmp(&(&b.peer, &b.node)));
    rows
}

/// The `status` view of pools and Services.
pub fn status(pools: &[IPAddressPool], services: &[Service]) -> Status {
    let mut pools: Vec<PoolRow> = pools
        .iter()
        .map(|p| {
            let st = p.status.clone().unwrap_or_default();
            PoolRow {
                name: p.metadata.name.clone().unwrap_or_default(),
                addresses: p.spec.addresses.clone(),
                assigned_ipv4: st.assigned_ipv4,
                available_ipv4: st.available_ipv4,
                assigned_ipv6: st.assigned_ipv6,
                available_ipv6: st.available_ipv6,
                conditions: st
                    .conditions
                    .iter()
                    .filter(|c| c.status == "True")
                    .map(|c| c.type_.clone())
                    .collect(),
            }
        })
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let mut services: Vec<ServiceRow> = services
        .iter()
        .filter(|s| is_load_balancer(s))
        .map(|s| {
            let assigned = condition(s, ADDRESS_ASSIGNED);
            let announced = condition(s, ANNOUNCED);
            let addresses = ingress_texts(s);
            let problem = match (assigned, announced) {
                (Some(c), _) if c.status != "True" && addresses.is_empty() => {
                    Some(c.reason.clone())
                }
                (None, _) if addresses.is_empty() => Some("NotAssigned".into()),
                (_, Some(a)) if a.status != "True" => Some(a.reason.clone()),
                (_, None) => Some("NotAnnounced".into()),
                _ => None,
            };
            ServiceRow {
                namespace: s.metadata.namespace.clone().unwrap_or_default(),
                name: s.metadata.name.clone().unwrap_or_default(),
                addresses,
                pool: AssignedFrom::of_service(s).map(|a| a.pool),
                node: AnnouncedBy::of_service(s).map(|b| b.node),
                problem,
            }
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Status {
        pools,
        services,
        bgp_sessions: Vec::new(),
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(w - c.chars().count() + 3));
            }
        }
        // An empty last cell must not leave padding behind.
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn or_none(v: &[String]) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.join(",")
    }
}

/// `used/total` for one family of a pool. The status counts saturate at 2^63-1 (a /64 has
/// 2^64 addresses), so the total is summed in 128 bits, and once `available` is saturated it is
/// the size of the pool's own `entries` instead, exact whatever the pool.
pub fn usage(assigned: i64, available: i64, entries: &[String], family: IpFamily) -> String {
    let summed = i128::from(assigned) + i128::from(available);
    if available == i64::MAX
        && let Ok(pool) = addresses::parse_pool(entries)
        && pool.has_family(family)
    {
        return format!("{assigned}/{}", pool.len(family));
    }
    format!("{assigned}/{summed}")
}

/// The `status` tables.
pub fn render_status(s: &Status) -> String {
    let pools: Vec<Vec<String>> = s
        .pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.addresses.join(","),
                usage(
                    p.assigned_ipv4,
                    p.available_ipv4,
                    &p.addresses,
                    IpFamily::V4,
                ),
                usage(
                    p.assigned_ipv6,
                    p.available_ipv6,
                    &p.addresses,
                    IpFamily::V6,
                ),
                or_none(&p.conditions),
            ]
        })
        .collect();
    let services: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|r| {
            vec![
                r.namespace.clone(),
                r.name.clone(),
                or_none(&r.addresses),
                r.pool.clone().unwrap_or_else(|| "<none>".into()),
                r.node.clone().unwrap_or_else(|| "<none>".into()),
                r.problem.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut bgp = String::new();
    if !s.bgp_sessions.is_empty() {
        let rows: Vec<Vec<String>> = s
            .bgp_sessions
            .iter()
            .map(|r| {
                vec![
                    r.peer.clone(),
                    r.address.clone(),
                    r.node.clone(),
                    r.state.clone(),
                    r.advertised_prefixes.to_string(),
                    r.bfd.clone().unwrap_or_else(|| "<none>".into()),
                    r.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        bgp = format!(
            "\n{}",
            table(
                &[
                    "BGP PEER",
                    "ADDRESS",
                    "NODE",
                    "STATE",
                    "PREFIXES",
                    "BFD",
                    "LAST ERROR"
                ],
                &rows
            )
        );
    }
    format!(
        "{}\n{}{bgp}",
        table(
            &[
                "POOL",
                "ADDRESSES",
                "IPV4 USED/TOTAL",
                "IPV6 USED/TOTAL",
                "CONDITIONS"
            ],
            &pools
        ),
        table(
            &[
                "NAMESPACE",
                "SERVICE",
                "ADDRESSES",
                "POOL",
                "NODE",
                "PROBLEM"
            ],
            &services
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::fixtures::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn status_rows() {
        let pools = [pool(
            "blue",
            json!({"addresses": ["192.0.2.0/30"]}),
            json!({
            "assigned": 1, "available": 3, "assignedIPv4": 1, "availableIPv4": 3,
            "conditions": [cond("Ready", "True", "Ready", ""), cond("Overlapping", "False", "None", "")]}),
        )];
        let mut other = svc(json!({}), json!({}), json!({}));
        other.metadata.name = Some("api".into());
        let mut cluster_ip = svc(json!({}), json!({"type": "ClusterIP"}), json!({}));
        cluster_ip.metadata.name = Some("internal".into());
        let s = status(
            &pools,
            &[
                svc(
                    json!({}),
                    json!({}),
                    served("192.0.2.1", "blue", Some("node-b")),
                ),
                other,
                cluster_ip,
            ],
        );
        assert_eq!(s.pools[0].conditions, vec!["Ready".to_string()]);
        assert_eq!(s.services.len(), 2, "only LoadBalancer Services");
        assert_eq!(s.services[0].name, "api");
        assert_eq!(s.services[0].problem.as_deref(), Some("NotAssigned"));
        let web = &s.services[1];
        assert_eq!(web.addresses, vec!["192.0.2.1".to_string()]);
        assert_eq!(web.pool.as_deref(), Some("blue"));
        assert_eq!(web.node.as_deref(), Some("node-b"));
        assert_eq!(web.problem, None);
        let text = render_status(&s);
        assert!(text.contains("blue   192.0.2.0/30   1/4"), "{text}");
        assert!(text.contains("node-b"), "{text}");
        assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
    }

    /// A /64 used to show `1/-9223372036854775808`: the saturated count plus one wrapped.
    #[test]
    fn huge_pools_count_without_overflow() {
        let v6 = ["2001:db8::/64".to_string()];
        assert_eq!(
            usage(1, i64::MAX, &v6, IpFamily::V6),
            "1/18446744073709551616"
        );
        assert_eq!(
            usage(i64::MAX, i64::MAX, &[], IpFamily::V6),
            format!("{}/{}", i64::MAX, 2 * i128::from(i64::MAX))
        );
        assert_eq!(usage(1, 3, &["192.0.2.0/30".into()], IpFamily::V4), "1/4");
        let pools = [pool(
            "big",
            json!({"addresses": ["2001:db8::/64"]}),
            json!({"assigned": 1, "available": i64::MAX, "assignedIPv6": 1, "availableIPv6": i64::MAX}),
        )];
        let text = render_status(&status(&pools, &[]));
        assert!(text.contains("1/18446744073709551616"), "{text}");
        assert!(!text.contains("/-"), "{text}");
    }

    proptest! {
        /// Every table line has the header's column starts, whatever the cell contents.
        #[test]
        fn table_columns_align(cells in proptest::collection::vec(("[a-z0-9./-]{0,12}", "[a-z ]{0,12}"), 0..6)) {
            let rows: Vec<Vec<String>> = cells.iter().map(|(a, b)| vec![a.clone(), b.clone(), "x".into()]).collect();
            let t = table(&["AAA", "B", "C"], &rows);
            let lines: Vec<&str> = t.lines().collect();
            prop_assert_eq!(lines.len(), rows.len() + 1);
            let col = lines[0].find('B').unwrap();
            for (line, row) in lines[1..].iter().zip(&rows) {
                prop_assert_eq!(&line[..row[0].len()], row[0].as_str());
                prop_assert!(line[row[0].len()..col].chars().all(|c| c == ' '));
                prop_assert_eq!(&line[col..col + row[1].len()], row[1].as_str());
            }
        }

        /// The Service line names the pool and node the conditions name, for any names.
        #[test]
        fn status_reads_pool_and_node(p in "[a-z][a-z0-9-]{0,10}", n in "[a-z][a-z0-9.-]{0,10}") {
            let s = status(&[], &[svc(json!({}), json!({}), served("192.0.2.1", &p, Some(&n)))]);
            prop_assert_eq!(s.services[0].pool.as_deref(), Some(p.as_str()));
            prop_assert_eq!(s.services[0].node.as_deref(), Some(n.as_str()));
        }
    }

    #[test]
    fn bgp_sessions_are_listed_by_peer_and_node() {
        let peer: BGPPeer = serde_json::from_value(json!({
            "metadata": {"name": "tor"},
            "spec": {"myASN": 64512, "peerASN": 64500, "peerAddress": "192.0.2.1"},
            "status": {"sessions": [
                {"node": "node-b", "state": "Active", "advertisedPrefixes": 0,
                 "lastError": "connecting to 192.0.2.1:179: Connection refused"},
                {"node": "node-a", "state": "Established", "advertisedPrefixes": 2, "bfd": "Up"},
            ]},
        }))
        .unwrap();
        let mut s = status(&[], &[]);
        s.bgp_sessions = bgp_sessions(&[peer]);
        let nodes: Vec<&str> = s.bgp_sessions.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["node-a", "node-b"]);
        let text = render_status(&s);
        assert!(text.contains("BGP PEER"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("tor")
                && l.contains("node-a")
                && l.contains("Established")
                && l.contains("Up")),
            "{text}"
        );
        assert!(text.contains("Connection refused"), "{text}");
        // Without peers the BGP table is left out.
        assert!(!render_status(&status(&[], &[])).contains("BGP PEER"));
    }
}
