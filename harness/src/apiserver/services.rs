//! Service defaulting and allocation (cluster IPs, node ports), as kube-apiserver's service
//! REST storage does it. Pure: the caller passes what other Services already hold.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::errors::Cause;

/// Address ranges the allocator draws from.
#[derive(Debug, Clone)]
pub struct ServiceRanges {
    /// IPv4 service CIDR.
    pub v4: IpNet,
    /// IPv6 service CIDR.
    pub v6: IpNet,
    /// Node port range (inclusive).
    pub node_ports: (u16, u16),
}

/// The service address ranges (IPv4, IPv6) of both test API servers: the embedded one, and a
/// real kube-apiserver started by the harness (`--service-cluster-ip-range`), so IPv6 and
/// dual-stack Services behave alike on either. The IPv6 range is a documentation prefix away
/// from the 2001:db8::/64 the network labs use; kube-apiserver's default allocator takes at most
/// a /108 for IPv6.
pub const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/12", "2001:db8:10:96::/108"];

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges {
            v4: SERVICE_CIDRS[0].parse().unwrap_or_else(|_| unreachable!()),
            v6: SERVICE_CIDRS[1].parse().unwrap_or_else(|_| unreachable!()),
            node_ports: (30000, 32767),
        }
    }
}

/// The first host address of `range` (`10.96.0.1` for `10.96.0.0/12`): kube-apiserver's own
/// `kubernetes` Service takes it.
pub fn first_address(range: &IpNet) -> String {
    match range.network() {
        IpAddr::V4(a) => std::net::Ipv4Addr::from(u32::from(a).wrapping_add(1)).to_string(),
        IpAddr::V6(a) => std::net::Ipv6Addr::from(u128::from(a).wrapping_add(1)).to_string(),
    }
}

/// What the other Services already hold.
#[derive(Debug, Clone, Default)]
pub struct Used {
    /// Cluster IPs in use.
    pub ips: BTreeSet<IpAddr>,
    /// Node ports (and health-check node ports) in use.
    pub ports: BTreeSet<u16>,
}

impl Used {
    /// Record what a stored Service holds.
    pub fn add_service(&mut self, svc: &Value) {
        for ip in svc
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                self.ips.insert(ip);
            }
        }
        for p in node_ports(svc) {
            self.ports.insert(p);
        }
    }
}

fn node_ports(svc: &Value) -> Vec<u16> {
    let mut out: Vec<u16> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    if let Some(h) = svc
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
    {
        out.push(h);
    }
    out
}

fn cause(field: String, message: String, reason: &str) -> Cause {
    Cause {
        reason: reason.into(),
        message,
        field,
    }
}

fn family_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn pick_ip(range: &IpNet, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    // Skip the network address and the first host (kube reserves .1 for `kubernetes`);
    // random start then linear probing, like kube's bitmap allocator.
    let hosts: u128 = match range {
        IpNet::V4(n) => 1u128 << (32 - n.prefix_len()),
        IpNet::V6(n) => 1u128 << (128 - n.prefix_len()).min(64),
    };
    if hosts < 4 {
        return None;
    }
    let base: u128 = match range.network() {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    };
    let usable = hosts - 3;
    let start = rand::rng().random_range(0..usable);
    for i in 0..usable.min(1 << 20) {
        let off = 2 + (start + i) % usable;
        let ip = match range {
            IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from((base + off) as u32)),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(base + off)),
        };
        if !used.contains(&ip) {
            return Some(ip);
        }
    }
    None
}

fn pick_port(range: (u16, u16), used: &BTreeSet<u16>) -> Option<u16> {
    let n = u32::from(range.1 - range.0) + 1;
    let start = rand::rng().random_range(0..n);
    (0..n)
        .map(|i| range.0 + ((start + i) % n) as u16)
        .find(|p| !used.contains(p))
}

fn str_field<'a>(spec: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    spec.get(k).and_then(Value::as_str)
}

/// Apply defaults, carry over allocations from `old` (an update that omits them keeps them),
/// validate and allocate. `used` must not include this Service itself.
pub fn prepare(
    svc: &mut Value,
    old: Option<&Value>,
    used: &Used,
    ranges: &ServiceRanges,
) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(vec![cause(
            "spec".into(),
            "Required value".into(),
            "FieldValueRequired",
        )]);
    };
    let old_spec = old.and_then(|o| o.get("spec")).and_then(Value::as_object);

    let ty = str_field(spec, "type").unwrap_or("ClusterIP").to_string();
    if !matches!(
        ty.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(cause(
            "spec.type".into(),
            format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
            "FieldValueNotSupported",
        ));
        return Err(causes);
    }
    spec.insert("type".into(), json!(ty));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let cfg = spec
            .entry("sessionAffinityConfig")
            .or_insert_with(|| json!({}));
        if let Some(c) = cfg.as_object_mut() {
            let ip = c.entry("clientIP").or_insert_with(|| json!({}));
            if let Some(ip) = ip.as_object_mut() {
                ip.entry("timeoutSeconds").or_insert(json!(10800));
            }
        }
    } else {
        spec.remove("sessionAffinityConfig");
    }

    // Fields kube-apiserver refuses to change once set.
    if let Some(os) = old_spec {
        let old_ip = str_field(os, "clusterIP").filter(|s| !s.is_empty());
        let new_ip = str_field(spec, "clusterIP").filter(|s| !s.is_empty());
        if ty != "ExternalName"
            && os.get("type").and_then(Value::as_str) != Some("ExternalName")
            && let (Some(o), Some(n)) = (old_ip, new_ip)
            && o != n
        {
            return Err(vec![cause(
                "spec.clusterIPs[0]".into(),
                format!("Invalid value: []string{{{n:?}}}: may not change once set"),
                "FieldValueInvalid",
            )]);
        }
        let old_class = str_field(os, "loadBalancerClass");
        if old_class.is_some()
            && os.get("type").and_then(Value::as_str) == Some("LoadBalancer")
            && ty == "LoadBalancer"
            && str_field(spec, "loadBalancerClass") != old_class
        {
            let n = str_field(spec, "loadBalancerClass").unwrap_or("");
            return Err(vec![cause(
                "spec.loadBalancerClass".into(),
                format!("Invalid value: {n:?}: may not change once set"),
                "FieldValueInvalid",
            )]);
        }
    }

    // Allocations an update leaves out are kept (kube's PatchAllocatedValues).
    if let Some(os) = old_spec {
        if ty != "ExternalName" {
            for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if spec.get(k).is_none_or(|v| v.is_null() || v == "")
                    && let Some(v) = os.get(k)
                {
                    spec.insert(k.into(), v.clone());
                }
            }
        }
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            let old_ports = os
                .get("ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // kube's patchAllocatedValues: node ports are carried over by port *name*, unless
            // the new spec already uses that node port elsewhere.
            let node_port = |p: &Value| {
                p.get("nodePort")
                    .and_then(Value::as_u64)
                    .filter(|n| *n != 0)
            };
            let name = |p: &Value| {
                p.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                let in_new: BTreeSet<u64> = ports.iter().filter_map(node_port).collect();
                for p in ports.iter_mut() {
                    if node_port(p).is_some() {
                        continue;
                    }
                    let carried = old_ports
                        .iter()
                        .find(|op| name(op) == name(p))
                        .and_then(node_port)
                        .filter(|n| !in_new.contains(n));
                    if let (Some(np), Some(obj)) = (carried, p.as_object_mut()) {
                        obj.insert("nodePort".into(), json!(np));
                    }
                }
            }
            if spec.get("healthCheckNodePort").is_none()
                && let Some(h) = os.get("healthCheckNodePort")
            {
                spec.insert("healthCheckNodePort".into(), h.clone());
            }
        }
    }

    if ty == "ExternalName" {
        if str_field(spec, "externalName").is_none_or(str::is_empty) {
            causes.push(cause(
                "spec.externalName".into(),
                "Required value".into(),
                "FieldValueRequired",
            ));
        }
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            spec.remove(k);
        }
        return if causes.is_empty() {
            Ok(())
        } else {
            Err(causes)
        };
    }

    let headless = str_field(spec, "clusterIP") == Some("None");

    // Ports.
    let ports_len = spec
        .get("ports")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if ports_len == 0 && !headless {
        causes.push(cause(
            "spec.ports".into(),
            "Required value".into(),
            "FieldValueRequired",
        ));
    }
    let mut seen_names = BTreeSet::new();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(po) = p.as_object_mut() else {
                causes.push(cause(
                    format!("spec.ports[{i}]"),
                    "Invalid value: must be an object".into(),
                    "FieldValueInvalid",
                ));
                continue;
            };
            po.entry("protocol").or_insert(json!("TCP"));
            let proto = po.get("protocol").and_then(Value::as_str).unwrap_or("");
            if !matches!(proto, "TCP" | "UDP" | "SCTP") {
                causes.push(cause(
                    format!("spec.ports[{i}].protocol"),
                    format!(
                        "Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                    ),
                    "FieldValueNotSupported",
                ));
            }
            match po.get("port").and_then(Value::as_u64) {
                Some(n) if (1..=65535).contains(&n) => {
                    po.entry("targetPort").or_insert(json!(n));
                }
                other => causes.push(cause(
                    format!("spec.ports[{i}].port"),
                    format!(
                        "Invalid value: {}: must be between 1 and 65535, inclusive",
                        other.map_or("0".into(), |n| n.to_string())
                    ),
                    "FieldValueInvalid",
                )),
            }
            let name = po
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if ports_len > 1 && name.is_empty() {
                causes.push(cause(
                    format!("spec.ports[{i}].name"),
                    "Required value".into(),
                    "FieldValueRequired",
                ));
            } else if !name.is_empty() && !seen_names.insert(name.clone()) {
                causes.push(cause(
                    format!("spec.ports[{i}].name"),
                    format!("Duplicate value: {name:?}"),
                    "FieldValueDuplicate",
                ));
            }
        }
    }

    spec.entry("internalTrafficPolicy")
        .or_insert(json!("Cluster"));
    let external = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
    if external {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    } else {
        spec.remove("externalTrafficPolicy");
    }
    if ty == "LoadBalancer" {
        spec.entry("allocateLoadBalancerNodePorts")
            .or_insert(json!(true));
    } else {
        spec.remove("allocateLoadBalancerNodePorts");
    }

    // IP families.
    let given_ips: Vec<String> = match spec.get("clusterIPs").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => str_field(spec, "clusterIP")
            .filter(|s| !s.is_empty())
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
    };
    if let (Some(ip), Some(first)) = (
        str_field(spec, "clusterIP").filter(|s| !s.is_empty()),
        given_ips.first(),
    ) && ip != first
    {
        causes.push(cause("spec.clusterIPs".into(), format!("Invalid value: {given_ips:?}: must have the same value as spec.clusterIP")/* kube's wording */, "FieldValueInvalid"));
    }
    let mut parsed = Vec::new();
    if !headless {
        for (i, s) in given_ips.iter().enumerate() {
            match s.parse::<IpAddr>() {
                Ok(ip) => parsed.push(ip),
                Err(_) => causes.push(cause(
                    format!("spec.clusterIPs[{i}]"),
                    format!("Invalid value: {s:?}: must be a valid IP address"),
                    "FieldValueInvalid",
                )),
            }
        }
    }
    let mut families: Vec<String> = spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if families.is_empty() {
        families = parsed.iter().map(|ip| family_of(ip).to_string()).collect();
    }
    if families.is_empty() {
        families.push("IPv4".into());
    }
    let policy = str_field(spec, "ipFamilyPolicy")
        .map(String::from)
        .unwrap_or_else(|| {
            if families.len() > 1 || parsed.len() > 1 {
                "RequireDualStack".into()
            } else {
                "SingleStack".into()
            }
        });
    if !matches!(
        policy.as_str(),
        "SingleStack" | "PreferDualStack" | "RequireDualStack"
    ) {
        causes.push(cause("spec.ipFamilyPolicy".into(), format!("Unsupported value: {policy:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""), "FieldValueNotSupported"));
    }
    if policy != "SingleStack" && families.len() == 1 {
        let other = if families[0] == "IPv4" {
            "IPv6"
        } else {
            "IPv4"
        };
        families.push(other.into());
    }
    if policy == "SingleStack" && families.len() > 1 {
        causes.push(cause("spec.ipFamilies".into(), format!("Invalid value: {families:?}: when spec.ipFamilyPolicy is SingleStack, may have at most one ipFamily"), "FieldValueInvalid"));
    }
    for (i, f) in families.iter().enumerate() {
        if !matches!(f.as_str(), "IPv4" | "IPv6") {
            causes.push(cause(
                format!("spec.ipFamilies[{i}]"),
                format!("Unsupported value: {f:?}: supported values: \"IPv4\", \"IPv6\""),
                "FieldValueNotSupported",
            ));
        }
    }
    if families.len() == 2 && families[0] == families[1] {
        causes.push(cause(
            "spec.ipFamilies[1]".into(),
            format!("Duplicate value: {:?}", families[1]),
            "FieldValueDuplicate",
        ));
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    spec.insert("ipFamilyPolicy".into(), json!(policy));
    spec.insert("ipFamilies".into(), json!(families));

    // Cluster IPs.
    if headless {
        spec.insert("clusterIP".into(), json!("None"));
        spec.insert("clusterIPs".into(), json!(["None"]));
    } else {
        let mut ips: Vec<String> = Vec::new();
        let old_ips: BTreeSet<IpAddr> = old
            .map(|o| {
                let mut u = Used::default();
                u.add_service(o);
                u.ips
            })
            .unwrap_or_default();
        for (i, fam) in families.iter().enumerate() {
            let range = if fam == "IPv4" {
                &ranges.v4
            } else {
                &ranges.v6
            };
            if let Some(ip) = parsed.get(i) {
                if family_of(ip) != fam {
                    causes.push(cause(format!("spec.clusterIPs[{i}]"), format!("Invalid value: {:?}: expected an {fam} value as indicated by `ipFamilies[{i}]`", ip.to_string()), "FieldValueInvalid"));
                } else if !range.contains(ip) {
                    causes.push(cause(format!("spec.clusterIPs[{i}]"), format!("Invalid value: {:?}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}", ip.to_string()), "FieldValueInvalid"));
                } else if used.ips.contains(ip) && !old_ips.contains(ip) {
                    causes.push(cause(format!("spec.clusterIPs[{i}]"), format!("Invalid value: {:?}: failed to allocate IP {ip}: provided IP is already allocated", ip.to_string()), "FieldValueInvalid"));
                } else {
                    ips.push(ip.to_string());
                }
            } else {
                match pick_ip(range, &used.ips) {
                    Some(ip) => ips.push(ip.to_string()),
                    None => causes.push(cause(
                        format!("spec.clusterIPs[{i}]"),
                        format!("Invalid value: failed to allocate IP: range {range} is full"),
                        "FieldValueInvalid",
                    )),
                }
            }
        }
        if let Some(first) = ips.first() {
            spec.insert("clusterIP".into(), json!(first));
        }
        spec.insert("clusterIPs".into(), json!(ips));
    }

    // Node ports.
    let want_node_ports = ty == "NodePort"
        || (ty == "LoadBalancer"
            && spec
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false));
    let mut taken = used.ports.clone();
    let own_old: BTreeSet<u16> = old
        .map(node_ports)
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(po) = p.as_object_mut() else {
                continue;
            };
            if !external {
                po.remove("nodePort");
                continue;
            }
            match po
                .get("nodePort")
                .and_then(Value::as_u64)
                .filter(|n| *n != 0)
            {
                Some(n) => {
                    let valid = u16::try_from(n)
                        .ok()
                        .filter(|n| (ranges.node_ports.0..=ranges.node_ports.1).contains(n));
                    match valid {
                        None => causes.push(cause(format!("spec.ports[{i}].nodePort"), format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}", ranges.node_ports.0, ranges.node_ports.1), "FieldValueInvalid")),
                        Some(n) if taken.contains(&n) && !own_old.contains(&n) => causes.push(cause(format!("spec.ports[{i}].nodePort"), format!("Invalid value: {n}: provided port is already allocated"), "FieldValueInvalid")),
                        Some(n) => {
                            taken.insert(n);
                        }
                    }
                }
                None if want_node_ports => match pick_port(ranges.node_ports, &taken) {
                    Some(n) => {
                        taken.insert(n);
                        po.insert("nodePort".into(), json!(n));
                    }
                    None => causes.push(cause(
                        format!("spec.ports[{i}].nodePort"),
                        "Invalid value: range is full".into(),
                        "FieldValueInvalid",
                    )),
                },
                None => {
                    po.remove("nodePort");
                }
            }
        }
    }
    let local = str_field(spec, "externalTrafficPolicy") == Some("Local");
    if ty == "LoadBalancer" && local {
        if spec
            .get("healthCheckNodePort")
            .and_then(Value::as_u64)
            .is_none_or(|n| n == 0)
        {
            match pick_port(ranges.node_ports, &taken) {
                Some(n) => {
                    spec.insert("healthCheckNodePort".into(), json!(n));
                }
                None => causes.push(cause(
                    "spec.healthCheckNodePort".into(),
                    "Invalid value: range is full".into(),
                    "FieldValueInvalid",
                )),
            }
        }
    } else {
        spec.remove("healthCheckNodePort");
    }

    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s"}, "spec": spec})
    }

    #[test]
    fn defaults_like_kube_apiserver() {
        let mut s = svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
        prepare(&mut s, None, &Used::default(), &ServiceRanges::default()).unwrap();
        let sp = &s["spec"];
        assert_eq!(sp["sessionAffinity"], "None");
        assert_eq!(sp["ports"][0]["protocol"], "TCP");
        assert_eq!(sp["ports"][0]["targetPort"], 80);
        assert_eq!(sp["externalTrafficPolicy"], "Cluster");
        assert_eq!(sp["internalTrafficPolicy"], "Cluster");
        assert_eq!(sp["allocateLoadBalancerNodePorts"], true);
        assert_eq!(sp["ipFamilyPolicy"], "SingleStack");
        assert_eq!(sp["ipFamilies"], json!(["IPv4"]));
        let ip: IpAddr = sp["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(ServiceRanges::default().v4.contains(&ip));
        assert_eq!(sp["clusterIPs"], json!([ip.to_string()]));
        let np = sp["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&np));
    }

    #[test]
    fn client_ip_affinity_gets_its_default_timeout() {
        let mut s = svc(json!({"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}));
        prepare(&mut s, None, &Used::default(), &ServiceRanges::default()).unwrap();
        assert_eq!(
            s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
    }

    #[test]
    fn clusterip_type_is_default_and_has_no_node_ports() {
        let mut s = svc(json!({"ports": [{"port": 80, "nodePort": 30001}]}));
        prepare(&mut s, None, &Used::default(), &ServiceRanges::default()).unwrap();
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert!(s["spec"]["ports"][0].get("nodePort").is_none());
        assert!(s["spec"].get("externalTrafficPolicy").is_none());
    }

    #[test]
    fn dual_stack_gets_both_families() {
        let mut s = svc(
            json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
        );
        prepare(&mut s, None, &Used::default(), &ServiceRanges::default()).unwrap();
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
        let ips = s["spec"]["clusterIPs"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        assert!(
            ips[0]
                .as_str()
                .unwrap()
                .parse::<IpAddr>()
                .unwrap()
                .is_ipv6()
        );
    }

    #[test]
    fn taken_ip_and_port_are_rejected() {
        let mut used = Used::default();
        used.ips.insert("10.96.0.50".parse().unwrap());
        used.ports.insert(30080);
        let mut s = svc(json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}));
        let e = prepare(&mut s, None, &used, &ServiceRanges::default()).unwrap_err();
        assert_eq!(e[0].field, "spec.clusterIPs[0]");
        let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}));
        let e = prepare(&mut s, None, &used, &ServiceRanges::default()).unwrap_err();
        assert!(e[0].message.contains("already allocated"));
    }

    #[test]
    fn update_keeps_allocations() {
        let mut s = svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
        prepare(&mut s, None, &Used::default(), &ServiceRanges::default()).unwrap();
        let mut upd = svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
        prepare(
            &mut upd,
            Some(&s),
            &Used::default(),
            &ServiceRanges::default(),
        )
        .unwrap();
        assert_eq!(upd["spec"]["clusterIP"], s["spec"]["clusterIP"]);
        assert_eq!(
            upd["spec"]["ports"][0]["nodePort"],
            s["spec"]["ports"][0]["nodePort"]
        );
    }

    #[test]
    fn cluster_ip_and_class_are_immutable() {
        let r = ServiceRanges::default();
        let mut s = svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "a/b", "ports": [{"port": 80}]}),
        );
        prepare(&mut s, None, &Used::default(), &r).unwrap();
        let mut other_ip = s.clone();
        other_ip["spec"]["clusterIP"] = json!("10.96.0.77");
        other_ip["spec"]["clusterIPs"] = json!(["10.96.0.77"]);
        let e = prepare(&mut other_ip, Some(&s), &Used::default(), &r).unwrap_err();
        assert_eq!(e[0].field, "spec.clusterIPs[0]");
        let mut other_class = s.clone();
        other_class["spec"]["loadBalancerClass"] = json!("c/d");
        let e = prepare(&mut other_class, Some(&s), &Used::default(), &r).unwrap_err();
        assert_eq!(e[0].field, "spec.loadBalancerClass");
        // Leaving LoadBalancer drops the class constraint; the same class is fine.
        let mut same = s.clone();
        prepare(&mut same, Some(&s), &Used::default(), &r).unwrap();
    }

    #[test]
    fn node_port_follows_the_port_name() {
        let r = ServiceRanges::default();
        let mut s = svc(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        );
        prepare(&mut s, None, &Used::default(), &r).unwrap();
        let mut upd = svc(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 8080}, {"name": "other", "port": 53, "protocol": "UDP"}]}),
        );
        prepare(&mut upd, Some(&s), &Used::default(), &r).unwrap();
        assert_eq!(
            upd["spec"]["ports"][0]["nodePort"],
            s["spec"]["ports"][0]["nodePort"]
        );
        assert_ne!(
            upd["spec"]["ports"][1]["nodePort"],
            s["spec"]["ports"][1]["nodePort"]
        );
    }

    #[test]
    fn invalid_ports_are_reported() {
        let mut s = svc(json!({"ports": [{"port": 0}, {"port": 80}]}));
        let e = prepare(&mut s, None, &Used::default(), &ServiceRanges::default()).unwrap_err();
        let fields: Vec<_> = e.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.ports[0].port"));
        assert!(fields.contains(&"spec.ports[0].name"));
        let mut s = svc(json!({}));
        assert!(prepare(&mut s, None, &Used::default(), &ServiceRanges::default()).is_err());
    }

    proptest! {
        #[test]
        fn allocations_never_collide(n in 1usize..40) {
            let ranges = ServiceRanges { v4: "10.96.0.0/26".parse().unwrap(), v6: "fd00::/120".parse().unwrap(), node_ports: (30000, 30063) };
            let mut used = Used::default();
            for _ in 0..n {
                let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
                prepare(&mut s, None, &used, &ranges).unwrap();
                let mut mine = Used::default();
                mine.add_service(&s);
                prop_assert!(mine.ips.is_disjoint(&used.ips));
                prop_assert!(mine.ports.is_disjoint(&used.ports));
                used.add_service(&s);
            }
        }
    }
}
