//! From `IPAddressPool` objects to IPAM pool configurations, and back to pool status.
//!
//! Pure. A pool with a bad entry is reported (`Invalid`, naming the entry) but is not pulled
//! from under the Services that already hold its addresses: its valid entries stay in force for
//! them and it hands out nothing new until it is fixed. The same holds for a pool being deleted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use lodestone_crds::addresses::{self, IpFamily};
use lodestone_crds::{
    AddressUse, IPAddressPool, IPAddressPoolStatus, condition_reasons as reasons,
    condition_types as types, selector,
};

use crate::ipam::{PoolConfig, PoolStats, ServiceKey};

/// What the controller makes of one pool object.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolEval {
    pub name: String,
    /// None when no entry of the pool parses at all.
    pub config: Option<PoolConfig>,
    /// One sentence per problem, naming the entry or selector.
    pub problems: Vec<String>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    pub generation: Option<i64>,
}

impl PoolEval {
    /// The pool may hand out new addresses.
    pub fn accepts_new(&self) -> bool {
        self.problems.is_empty() && !self.terminating
    }
}

/// Evaluate a pool object.
pub fn evaluate(pool: &IPAddressPool) -> PoolEval {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    let parsed = match addresses::parse_pool(&pool.spec.addresses) {
        Ok(p) => Some(p),
        Err(errors) => {
            problems.extend(errors.iter().map(|e| e.to_string()));
            // Keep what does parse, so Services already holding those addresses keep them.
            let good: Vec<String> = pool
                .spec
                .addresses
                .iter()
                .enumerate()
                .filter(|(i, _)| !errors.iter().any(|e| e.index == *i))
                .map(|(_, a)| a.clone())
                .collect();
            if good.is_empty() {
                None
            } else {
                addresses::parse_pool(&good).ok()
            }
        }
    };
    let alloc = pool.spec.service_allocation.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    for (what, list) in [
        ("namespaceSelectors", &alloc.namespace_selectors),
        ("serviceSelectors", &alloc.service_selectors),
    ] {
        for (i, sel) in list.iter().enumerate() {
            if let Err(e) = selector::matches(sel, &empty) {
                problems.push(format!("spec.serviceAllocation.{what}[{i}]: {e}"));
            }
        }
    }
    let terminating = pool.metadata.deletion_timestamp.is_some();
    let config = parsed.map(|addresses| PoolConfig {
        name: name.clone(),
        addresses,
        auto_assign: pool.spec.auto_assign,
        avoid_buggy_ips: pool.spec.avoid_buggy_ips,
        priority: alloc.priority,
        namespaces: alloc.namespaces.clone(),
        namespace_selectors: alloc.namespace_selectors.clone(),
        service_selectors: alloc.service_selectors.clone(),
        accepts_new: false,
    });
    let mut eval = PoolEval {
        name,
        config,
        problems,
        terminating,
        generation: pool.metadata.generation,
    };
    let accepts = eval.accepts_new();
    if let Some(c) = eval.config.as_mut() {
        c.accepts_new = accepts;
    }
    eval
}

fn saturate(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// The status the pool should show. `holders` are its held addresses and their Services (read
/// only while the pool is being deleted); `overlaps_with` names the other pools sharing
/// addresses with it; `existing` keeps condition transition times stable.
pub fn desired_status(
    eval: &PoolEval,
    stats: Option<&PoolStats>,
    holders: &[(IpAddr, ServiceKey)],
    overlaps_with: &[String],
    existing: Option<&IPAddressPoolStatus>,
    now: &Time,
) -> IPAddressPoolStatus {
    let mut st = IPAddressPoolStatus::default();
    if let Some(stats) = stats {
        let a4 = stats.assigned(IpFamily::V4);
        let a6 = stats.assigned(IpFamily::V6);
        let v4 = stats.available(IpFamily::V4);
        let v6 = stats.available(IpFamily::V6);
        st.assigned_ipv4 = saturate(a4);
        st.assigned_ipv6 = saturate(a6);
        st.available_ipv4 = saturate(v4);
        st.available_ipv6 = saturate(v6);
        st.assigned = saturate(a4.saturating_add(a6));
        st.available = saturate(v4.saturating_add(v6));
        if eval.terminating {
            st.in_use = holders
                .iter()
                .map(|(ip, svc)| AddressUse {
                    address: ip.to_string(),
                    service: svc.to_string(),
                })
                .collect();
        }
    }
    let ready = if eval.terminating {
        condition(
            types::READY,
            false,
            reasons::TERMINATING,
            if st.in_use.is_empty() {
                "the pool is being deleted".to_string()
            } else {
                format!(
                    "the pool is being deleted and waits for {} Service address(es) to be released",
                    st.in_use.len()
                )
            },
        )
    } else if eval.problems.is_empty() {
        condition(
            types::READY,
            true,
            reasons::ADDRESSES_VALID,
            "all addresses are valid".to_string(),
        )
    } else {
        condition(
            types::READY,
            false,
            reasons::INVALID_ADDRESSES,
            "the pool has invalid entries and hands out no new addresses".to_string(),
        )
    };
    let invalid = if eval.problems.is_empty() {
        condition(
            types::INVALID,
            false,
            reasons::ADDRESSES_VALID,
            "no invalid entries".to_string(),
        )
    } else {
        let selector_only = eval
            .problems
            .iter()
            .all(|p| p.contains("serviceAllocation"));
        condition(
            types::INVALID,
            true,
            if selector_only {
                reasons::INVALID_SELECTOR
            } else {
                reasons::INVALID_ADDRESSES
            },
            eval.problems.join("; "),
        )
    };
    let overlapping = if overlaps_with.is_empty() {
        condition(
            types::OVERLAPPING,
            false,
            reasons::NO_OVERLAP,
            "no other pool shares addresses with this one".to_string(),
        )
    } else {
        condition(
            types::OVERLAPPING,
            true,
            reasons::OVERLAPS_POOL,
            format!(
                "shares addresses with pool(s) {}; each address is still given out once",
                overlaps_with.join(", ")
            ),
        )
    };
    st.conditions = [ready, invalid, overlapping]
        .into_iter()
        .map(|mut c| {
            c.observed_generation = eval.generation;
            let old = existing
                .and_then(|e| e.conditions.iter().find(|o| o.type_ == c.type_))
                .filter(|o| o.status == c.status);
            c.last_transition_time = old
                .map(|o| o.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            c
        })
        .collect();
    st.observed_generation = eval.generation;
    st
}

/// True when `existing` already says what `desired` says (transition times aside).
pub fn status_is_current(
    existing: Option<&IPAddressPoolStatus>,
    desired: &IPAddressPoolStatus,
) -> bool {
    let Some(e) = existing else {
        return false;
    };
    let strip = |s: &IPAddressPoolStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(e) == strip(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(v: serde_json::Value) -> IPAddressPool {
        serde_json::from_value(v).unwrap()
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    #[test]
    fn valid_pool_is_ready() {
        let p = pool(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "blue", "generation": 2},
            "spec": {"addresses": ["192.0.2.0/30"], "serviceAllocation": {"priority": 5}}}),
        );
        let e = evaluate(&p);
        assert!(e.problems.is_empty());
        assert!(e.accepts_new());
        let c = e.config.as_ref().unwrap();
        assert_eq!(c.priority, Some(5));
        assert!(c.accepts_new);
        let st = desired_status(&e, None, &[], &[], None, &now());
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.observed_generation, Some(2));
        assert!(status_is_current(Some(&st), &st));
    }

    #[test]
    fn bad_entry_is_named_and_good_entries_survive() {
        let p = pool(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "blue"},
            "spec": {"addresses": ["192.0.2.0/30", "192.0.2.1/33"]}}),
        );
        let e = evaluate(&p);
        assert_eq!(e.problems.len(), 1);
        assert!(
            e.problems[0].contains("spec.addresses[1]"),
            "{:?}",
            e.problems
        );
        assert!(!e.accepts_new());
        let c = e
            .config
            .as_ref()
            .expect("the valid entry is kept for existing holders");
        assert!(!c.accepts_new);
        assert!(c.addresses.contains("192.0.2.2".parse().unwrap()));
        let st = desired_status(&e, None, &[], &[], None, &now());
        let invalid = st.conditions.iter().find(|c| c.type_ == "Invalid").unwrap();
        assert_eq!(invalid.status, "True");
        assert!(invalid.message.contains("spec.addresses[1]"));
    }

    #[test]
    fn bad_selector_is_reported() {
        let p = pool(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "blue"},
            "spec": {"addresses": ["192.0.2.0/30"], "serviceAllocation": {"serviceSelectors": [
                {"matchExpressions": [{"key": "a", "operator": "Sometimes", "values": ["x"]}]}]}}}),
        );
        let e = evaluate(&p);
        assert_eq!(e.problems.len(), 1, "{:?}", e.problems);
        let st = desired_status(&e, None, &[], &[], None, &now());
        let invalid = st.conditions.iter().find(|c| c.type_ == "Invalid").unwrap();
        assert_eq!(invalid.reason, reasons::INVALID_SELECTOR);
    }

    #[test]
    fn overlap_and_transition_times() {
        let p = pool(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "blue"}, "spec": {"addresses": ["192.0.2.0/30"]}}),
        );
        let e = evaluate(&p);
        let first = desired_status(&e, None, &[], &[], None, &now());
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
        let second = desired_status(&e, None, &[], &["red".to_string()], Some(&first), &later);
        let ov = second
            .conditions
            .iter()
            .find(|c| c.type_ == "Overlapping")
            .unwrap();
        assert_eq!(ov.status, "True");
        assert!(ov.message.contains("red"));
        assert_eq!(ov.last_transition_time, later);
        let ready = second
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            ready.last_transition_time,
            now(),
            "unchanged condition keeps its time"
        );
        assert!(!status_is_current(Some(&first), &second));
    }
}
