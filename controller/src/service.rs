//! From a Kubernetes Service to an IPAM request: which Services are ours, and what they ask for.
//!
//! Pure: no client, no clock. Everything a user can get wrong here (annotations, requested
//! addresses) comes back as a [`RequestError`] whose `Display` is the sentence put in the Event.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use lodestone_crds::addresses::IpFamily;

use crate::ipam::{FamilyPolicy, Protocol, ServiceKey, ServiceRequest};

/// The class rule, shared with the speaker so both binaries agree on which Services are ours.
pub use lodestone_crds::class::{ClassFilter, DEFAULT_CLASS};

/// Annotations with their MetalLB aliases, most specific first, defined once in the shared
/// core so `lodestonectl why` reads the same ones.
pub use lodestone_crds::service::annotations;

/// Why a Service's request cannot even be put to the IPAM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("annotation {annotation}: {value:?} is not an IP address")]
    NotAnAddress { annotation: String, value: String },
    #[error(
        "annotation {annotation} asks for two {family} addresses ({first} and {second}); at most one per family"
    )]
    TwoOfOneFamily {
        annotation: String,
        family: &'static str,
        first: IpAddr,
        second: IpAddr,
    },
    #[error(
        "spec.loadBalancerIP {field} and annotation {annotation} ask for different {family} addresses"
    )]
    Contradicting {
        field: IpAddr,
        annotation: String,
        family: &'static str,
    },
    #[error("annotation {annotation} is empty")]
    Empty { annotation: String },
    #[error("spec.loadBalancerIP {value:?} is not an IP address")]
    BadLoadBalancerIp { value: String },
    #[error("spec.ipFamilies has {value:?}, which is neither IPv4 nor IPv6")]
    UnknownFamily { value: String },
    #[error(
        "spec.ipFamilyPolicy {value:?} is not SingleStack, PreferDualStack or RequireDualStack"
    )]
    UnknownFamilyPolicy { value: String },
    #[error(
        "spec.ipFamilyPolicy is RequireDualStack but spec.ipFamilies lists only {family}: the cluster cannot serve a second family"
    )]
    RequireDualStackOneFamily { family: &'static str },
    #[error(
        "requested address {address} is {found}, but the Service is single-stack {wanted} (spec.ipFamilies)"
    )]
    FamilyMismatch {
        address: IpAddr,
        found: &'static str,
        wanted: &'static str,
    },
}

impl RequestError {
    /// The condition reason of every request error (the IPAM's are [`AllocError::reason`]).
    ///
    /// [`AllocError::reason`]: crate::ipam::AllocError::reason
    pub fn reason(&self) -> &'static str {
        "InvalidRequest"
    }
}

/// The Service's `namespace/name` key.
pub fn key_of(svc: &Service) -> ServiceKey {
    ServiceKey {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
    }
}

fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

fn family_of(ip: IpAddr) -> IpFamily {
    match ip {
        IpAddr::V4(_) => IpFamily::V4,
        IpAddr::V6(_) => IpFamily::V6,
    }
}

/// The first of `names` present in the annotations, with its value.
fn first_annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    names: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    annotations::first(Some(annotations), names)
}

/// Addresses requested by annotation: comma-separated, at most one per family.
fn annotated_ips(annotation: &str, value: &str) -> Result<Vec<IpAddr>, RequestError> {
    let mut out: Vec<IpAddr> = Vec::new();
    let parts: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(RequestError::Empty {
            annotation: annotation.to_string(),
        });
    }
    for part in parts {
        let ip: IpAddr = part.parse().map_err(|_| RequestError::NotAnAddress {
            annotation: annotation.to_string(),
            value: part.to_string(),
        })?;
        if let Some(prev) = out.iter().find(|p| family_of(**p) == family_of(ip)) {
            return Err(RequestError::TwoOfOneFamily {
                annotation: annotation.to_string(),
                family: family_name(family_of(ip)),
                first: *prev,
                second: ip,
            });
        }
        out.push(ip);
    }
    Ok(out)
}

/// Every requested address: `spec.loadBalancerIP` and the loadBalancerIPs annotation together.
pub fn requested_addresses(svc: &Service) -> Result<Vec<IpAddr>, RequestError> {
    let empty = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut ips = match first_annotation(annotations, &annotations::LOAD_BALANCER_IPS) {
        Some((name, value)) => annotated_ips(name, value)?,
        None => Vec::new(),
    };
    let field = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if let Some(field) = field {
        let ip: IpAddr = field.parse().map_err(|_| RequestError::BadLoadBalancerIp {
            value: field.to_string(),
        })?;
        match ips.iter().find(|p| family_of(**p) == family_of(ip)) {
            Some(p) if *p == ip => {}
            Some(_) => {
                let annotation = first_annotation(annotations, &annotations::LOAD_BALANCER_IPS)
                    .map(|(n, _)| n.to_string())
                    .unwrap_or_default();
                return Err(RequestError::Contradicting {
                    field: ip,
                    annotation,
                    family: family_name(family_of(ip)),
                });
            }
            None => ips.push(ip),
        }
    }
    Ok(ips)
}

/// The family policy from `spec.ipFamilyPolicy` and `spec.ipFamilies` (the API server fills both;
/// a Service without them is single-stack, in the family of its requested address if any).
pub fn family_policy(svc: &Service, requested: &[IpAddr]) -> Result<FamilyPolicy, RequestError> {
    let spec = svc.spec.as_ref();
    let families = spec.and_then(|s| s.ip_families.as_ref());
    let primary = match families.and_then(|f| f.first()) {
        Some(f) if f == "IPv4" => IpFamily::V4,
        Some(f) if f == "IPv6" => IpFamily::V6,
        Some(other) => {
            return Err(RequestError::UnknownFamily {
                value: other.clone(),
            });
        }
        None => requested
            .first()
            .map(|ip| family_of(*ip))
            .unwrap_or(IpFamily::V4),
    };
    // kube-proxy serves a load-balancer address only in a family the Service has in
    // spec.ipFamilies: with one family there (a single-stack cluster), PreferDualStack is one
    // address of that family, as MetalLB (ipfamily.ForService) decides.
    let one_family = families.is_some_and(|f| f.len() == 1);
    let policy = spec.and_then(|s| s.ip_family_policy.as_deref());
    let policy = match policy {
        None | Some("SingleStack") => FamilyPolicy::SingleStack(primary),
        Some("PreferDualStack") if one_family => FamilyPolicy::SingleStack(primary),
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack(primary),
        Some("RequireDualStack") if one_family => {
            return Err(RequestError::RequireDualStackOneFamily {
                family: family_name(primary),
            });
        }
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack(primary),
        Some(other) => {
            return Err(RequestError::UnknownFamilyPolicy {
                value: other.to_string(),
            });
        }
    };
    if let FamilyPolicy::SingleStack(f) = policy
        && let Some(ip) = requested.iter().find(|ip| family_of(**ip) != f)
    {
        return Err(RequestError::FamilyMismatch {
            address: *ip,
            found: family_name(family_of(*ip)),
            wanted: family_name(f),
        });
    }
    Ok(policy)
}

fn protocol(p: Option<&str>) -> Protocol {
    match p {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

/// Build the IPAM request for a Service that [`ClassFilter::is_ours`].
pub fn request_for(
    svc: &Service,
    namespace_labels: &Arc<BTreeMap<String, String>>,
) -> Result<ServiceRequest, RequestError> {
    let empty = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let requested = requested_addresses(svc)?;
    let families = family_policy(svc, &requested)?;
    let spec = svc.spec.as_ref();
    let pool = first_annotation(annotations, &annotations::ADDRESS_POOL)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let sharing_key = first_annotation(annotations, &annotations::ALLOW_SHARED_IP)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    u16::try_from(p.port)
                        .ok()
                        .map(|port| (port, protocol(p.protocol.as_deref())))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ServiceRequest {
        key: key_of(svc),
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        namespace_labels: namespace_labels.clone(),
        families,
        requested,
        pool,
        sharing_key,
        ports,
        traffic_local: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
        pod_selector: spec.and_then(|s| s.selector.clone()).unwrap_or_default(),
    })
}

/// The request used to *keep* addresses a Service already holds (startup rebuild): it describes
/// the Service for pool eligibility and sharing, but asks for nothing, so a malformed or changed
/// annotation cannot make the controller drop an address it could keep. The next ordinary
/// [`request_for`] then decides whether the Service's wishes changed.
pub fn hold_request(
    svc: &Service,
    namespace_labels: &Arc<BTreeMap<String, String>>,
    held: &[IpAddr],
) -> ServiceRequest {
    let families = family_policy(svc, held).unwrap_or_else(|_| {
        let primary = held
            .first()
            .map(|ip| family_of(*ip))
            .unwrap_or(IpFamily::V4);
        if held.iter().any(|ip| family_of(*ip) != primary) {
            FamilyPolicy::PreferDualStack(primary)
        } else {
            FamilyPolicy::SingleStack(primary)
        }
    });
    let mut stripped = svc.clone();
    if let Some(spec) = stripped.spec.as_mut() {
        spec.load_balancer_ip = None;
    }
    if let Some(a) = stripped.metadata.annotations.as_mut() {
        for name in annotations::LOAD_BALANCER_IPS
            .iter()
            .chain(&annotations::ADDRESS_POOL)
        {
            a.remove(*name);
        }
    }
    let mut req = match request_for(&stripped, namespace_labels) {
        Ok(r) => r,
        Err(_) => ServiceRequest {
            key: key_of(svc),
            labels: svc.metadata.labels.clone().unwrap_or_default(),
            namespace_labels: namespace_labels.clone(),
            families,
            requested: Vec::new(),
            pool: None,
            sharing_key: None,
            ports: Vec::new(),
            traffic_local: false,
            pod_selector: BTreeMap::new(),
        },
    };
    req.families = families;
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn lb(annotations: serde_json::Value, spec: serde_json::Value) -> Service {
        let mut s = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
        if let (Some(base), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        svc(
            json!({"metadata": {"name": "web", "namespace": "default", "annotations": annotations}, "spec": s}),
        )
    }

    #[test]
    fn class_filter() {
        let f = ClassFilter::default();
        assert!(f.is_ours(&lb(json!({}), json!({}))));
        assert!(f.is_ours(&lb(json!({}), json!({"loadBalancerClass": DEFAULT_CLASS}))));
        assert!(!f.is_ours(&lb(json!({}), json!({"loadBalancerClass": "other.io/lb"}))));
        assert!(!f.is_ours(&lb(json!({}), json!({"type": "ClusterIP"}))));
        let not_default = ClassFilter {
            default_class: false,
            ..ClassFilter::default()
        };
        assert!(!not_default.is_ours(&lb(json!({}), json!({}))));
        assert!(not_default.is_ours(&lb(json!({}), json!({"loadBalancerClass": DEFAULT_CLASS}))));
    }

    #[test]
    fn annotations_in_order_of_precedence() {
        let s = lb(
            json!({"metallb.universe.tf/loadBalancerIPs": "192.0.2.9", "lodestone.dev/loadBalancerIPs": "192.0.2.1, 2001:db8::1"}),
            json!({}),
        );
        assert_eq!(
            requested_addresses(&s).unwrap(),
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        let s = lb(
            json!({"metallb.io/loadBalancerIPs": "192.0.2.7"}),
            json!({}),
        );
        assert_eq!(
            requested_addresses(&s).unwrap(),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn malformed_annotations_say_what_is_wrong() {
        let cases = [
            (
                json!({"lodestone.dev/loadBalancerIPs": "banana"}),
                "\"banana\" is not an IP address",
            ),
            (
                json!({"lodestone.dev/loadBalancerIPs": "192.0.2.1,192.0.2.2"}),
                "two IPv4 addresses",
            ),
            (json!({"lodestone.dev/loadBalancerIPs": " , "}), "is empty"),
            (
                json!({"lodestone.dev/loadBalancerIPs": "192.0.2.1%eth0"}),
                "not an IP address",
            ),
        ];
        for (ann, want) in cases {
            let err = requested_addresses(&lb(ann.clone(), json!({}))).unwrap_err();
            assert!(err.to_string().contains(want), "{ann}: {err}");
        }
        let err = requested_addresses(&lb(
            json!({"lodestone.dev/loadBalancerIPs": "192.0.2.1"}),
            json!({"loadBalancerIP": "192.0.2.2"}),
        ))
        .unwrap_err();
        assert!(matches!(err, RequestError::Contradicting { .. }), "{err}");
        let err = requested_addresses(&lb(json!({}), json!({"loadBalancerIP": "x"}))).unwrap_err();
        assert!(err.to_string().contains("spec.loadBalancerIP"), "{err}");
    }

    #[test]
    fn load_balancer_ip_field_and_matching_annotation_agree() {
        let s = lb(
            json!({"lodestone.dev/loadBalancerIPs": "192.0.2.1"}),
            json!({"loadBalancerIP": "192.0.2.1"}),
        );
        assert_eq!(requested_addresses(&s).unwrap().len(), 1);
    }

    #[test]
    fn families_and_policies() {
        let s = lb(
            json!({}),
            json!({"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack"}),
        );
        assert_eq!(
            family_policy(&s, &[]).unwrap(),
            FamilyPolicy::RequireDualStack(IpFamily::V6)
        );
        // One family in spec.ipFamilies (a single-stack cluster): kube-proxy serves no
        // second family, so PreferDualStack is single-stack there, as in MetalLB.
        let s = lb(
            json!({}),
            json!({"ipFamilies": ["IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert_eq!(
            family_policy(&s, &[]).unwrap(),
            FamilyPolicy::SingleStack(IpFamily::V4)
        );
        let s = lb(
            json!({}),
            json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        let err = family_policy(&s, &["192.0.2.1".parse().unwrap()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "requested address 192.0.2.1 is IPv4, but the Service is single-stack IPv6 (spec.ipFamilies)"
        );
        let s = lb(
            json!({}),
            json!({"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert_eq!(
            family_policy(&s, &[]).unwrap(),
            FamilyPolicy::PreferDualStack(IpFamily::V6)
        );
        let s = lb(
            json!({}),
            json!({"ipFamilies": ["IPv4"], "ipFamilyPolicy": "RequireDualStack"}),
        );
        assert_eq!(
            family_policy(&s, &[]).unwrap_err().to_string(),
            "spec.ipFamilyPolicy is RequireDualStack but spec.ipFamilies lists only IPv4: the cluster cannot serve a second family"
        );
        let s = lb(json!({}), json!({}));
        assert_eq!(
            family_policy(&s, &[]).unwrap(),
            FamilyPolicy::SingleStack(IpFamily::V4)
        );
        let s = lb(
            json!({}),
            json!({"ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}),
        );
        let err = family_policy(&s, &["2001:db8::1".parse().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("single-stack IPv4"), "{err}");
        let s = lb(json!({}), json!({"ipFamilyPolicy": "Whatever"}));
        assert!(family_policy(&s, &[]).is_err());
    }

    #[test]
    fn hold_request_ignores_broken_wishes() {
        let s = lb(
            json!({"lodestone.dev/loadBalancerIPs": "garbage", "lodestone.dev/address-pool": "red"}),
            json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert!(request_for(&s, &Default::default()).is_err());
        let held: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let r = hold_request(&s, &Default::default(), &held);
        assert!(r.requested.is_empty());
        assert_eq!(r.pool, None);
        assert_eq!(r.families, FamilyPolicy::PreferDualStack(IpFamily::V4));
    }

    #[test]
    fn full_request() {
        let s = lb(
            json!({"lodestone.dev/address-pool": "blue", "metallb.io/allow-shared-ip": "k1"}),
            json!({"externalTrafficPolicy": "Local", "selector": {"app": "web"},
                   "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}),
        );
        let r = request_for(&s, &Default::default()).unwrap();
        assert_eq!(r.key.to_string(), "default/web");
        assert_eq!(r.pool.as_deref(), Some("blue"));
        assert_eq!(r.sharing_key.as_deref(), Some("k1"));
        assert!(r.traffic_local);
        assert_eq!(r.ports, vec![(53, Protocol::Udp), (53, Protocol::Tcp)]);
        assert_eq!(r.pod_selector.get("app").map(String::as_str), Some("web"));
    }
}
