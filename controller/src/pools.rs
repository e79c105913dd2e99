//! From `IPAddressPool` objects to IPAM pool configurations, and back to pool status.
//!
//! Pure. A pool with a bad entry is reported (`Invalid`, naming the entry) but is not pulled
//! from under the Services that already hold its addresses: its valid entries stay in force for
//! them and it hands out nothing new until it is fixed. The same holds for a pool being deleted,
//! and for a well-formed entry the pool may not hand out (a special-purpose block such as
//! `127.0.0.0/8`, or a block larger than a /8 or a /64): the pool is `Invalid`, nobody gets a new
//! address from it, and a Service that already holds such an address keeps it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use lodestone_crds::addresses::{self, AddressRange, IpFamily, PoolAddresses};
use lodestone_crds::{
    AddressUse, IPAddressPool, IPAddressPoolStatus, condition_reasons as reasons,
    condition_types as types, events, selector,
};

use crate::ipam::{Assignment, PoolConfig, PoolStats, ServiceKey};

/// What the controller makes of one pool object.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolEval {
    pub name: String,
    /// None when no entry of the pool parses at all.
    pub config: Option<PoolConfig>,
    /// One sentence per problem, naming the entry or selector.
    pub problems: Vec<String>,
    /// The well-formed entries the pool may not hand out, each with why (also in `problems`).
    pub refused: Vec<(AddressRange, String)>,
    /// How many of `problems` are such refusals.
    pub refusals: usize,
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
    let refusals = addresses::refused_entries(&pool.spec.addresses, pool.spec.allow_link_local);
    problems.extend(refusals.iter().map(ToString::to_string));
    let mut refused: Vec<(AddressRange, String)> = Vec::new();
    for r in &refusals {
        if let Ok(range) = addresses::parse_entry(&r.entry) {
            match refused.iter_mut().find(|(have, _)| *have == range) {
                Some((_, why)) => {
                    why.push_str("; ");
                    why.push_str(&r.error.to_string());
                }
                None => refused.push((range, format!("{:?} {}", r.entry, r.error))),
            }
        }
    }
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
        allocation: pool.spec.service_allocation.clone(),
        accepts_new: false,
    });
    let mut eval = PoolEval {
        name,
        config,
        refusals: refusals.len(),
        problems,
        refused,
        terminating,
        generation: pool.metadata.generation,
    };
    let accepts = eval.accepts_new();
    if let Some(c) = eval.config.as_mut() {
        c.accepts_new = accepts;
    }
    eval
}

/// A pool that is gone from the API server while Services still hold addresses from it: kept in
/// the controller as it was, shrunk to exactly `held`, handing out nothing. `template` is its
/// last known configuration; without one (found on a restart) it restricts no Service.
///
/// A pool with holders goes away only when its finalizer is bypassed: removed by hand, or the
/// IPAddressPool CRD deleted (an API server that ignores finalizers does the same). Holding on
/// is what keeps every Service's address through a CRD deleted and re-created.
pub fn vanished_pool(
    name: &str,
    held: &BTreeSet<IpAddr>,
    template: Option<&PoolConfig>,
) -> Option<PoolConfig> {
    if held.is_empty() {
        return None;
    }
    let ranges = held
        .iter()
        .filter_map(|ip| AddressRange::new(*ip, *ip).ok())
        .collect();
    let addresses = PoolAddresses::from_ranges(ranges).ok()?;
    let mut config = template.cloned().unwrap_or_else(|| PoolConfig {
        name: name.to_string(),
        addresses: PoolAddresses::default(),
        auto_assign: true,
        avoid_buggy_ips: false,
        allocation: None,
        accepts_new: false,
    });
    config.name = name.to_string();
    config.addresses = addresses;
    config.accepts_new = false;
    Some(config)
}

/// The pools of `previous` (the IPAM's pools, vanished ones included) that are not `present`
/// any more but from which `assignments` still hold addresses, as [`vanished_pool`]s.
pub fn vanished<'a>(
    previous: &[PoolConfig],
    present: &BTreeSet<String>,
    assignments: impl IntoIterator<Item = &'a Assignment>,
) -> Vec<PoolConfig> {
    let mut held: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
    for a in assignments {
        if !present.contains(&a.pool) {
            held.entry(a.pool.as_str())
                .or_default()
                .extend(a.addresses.iter().copied());
        }
    }
    previous
        .iter()
        .filter(|p| !present.contains(&p.name))
        .filter_map(|p| vanished_pool(&p.name, held.get(p.name.as_str())?, Some(p)))
        .collect()
}

/// Why a Service keeps an address that nobody would be given today, for its condition and a
/// Warning Event; `None` when there is nothing to say. `gone` is whether the pool of record has
/// vanished, `node_of` names the Node that has an address, `refused` is the pool's refused
/// entries ([`PoolEval::refused`]).
pub fn hold_warning<'n>(
    a: &Assignment,
    gone: bool,
    node_of: impl Fn(IpAddr) -> Option<&'n str>,
    refused: &[(AddressRange, String)],
) -> Option<String> {
    let mut why = Vec::new();
    if gone {
        why.push(format!(
            "pool {} is gone without releasing it (its finalizer was removed or the IPAddressPool CRD deleted); it is kept until a pool containing it exists again",
            a.pool
        ));
    }
    for ip in &a.addresses {
        if let Some(node) = node_of(*ip) {
            why.push(format!("{ip} is also the address of Node {node}"));
        }
        if let Some((_, entry)) = refused.iter().find(|(r, _)| r.contains(*ip)) {
            why.push(format!("{ip} is in entry {entry}"));
        }
    }
    if why.is_empty() {
        return None;
    }
    let refused_or_node = !gone || why.len() > 1;
    let mut text = format!(
        "keeping {} although {}",
        a.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        why.join("; ")
    );
    if refused_or_node {
        text.push_str(
            "; it is given to no other Service: ask for another address (or remove the entry) to move this one",
        );
    }
    Some(text)
}

fn saturate(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A condition; the message is cut to what the API server accepts (a pool of 1,024 entries,
/// each refused, says far more than 32 KiB).
fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: events::condition_message(&message).into_owned(),
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
    } else if eval.refusals == eval.problems.len() {
        condition(
            types::READY,
            false,
            reasons::REFUSED_ADDRESSES,
            "the pool has entries no pool may hand out, and hands out no new addresses".to_string(),
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
            } else if eval.refusals == eval.problems.len() {
                reasons::REFUSED_ADDRESSES
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
        .map(|c| {
            let previous =
                existing.and_then(|e| lodestone_crds::conditions::find(&e.conditions, &c.type_));
            lodestone_crds::conditions::build(
                &c.type_,
                c.status == "True",
                &c.reason,
                &c.message,
                eval.generation,
                previous,
                now,
            )
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
        assert_eq!(c.allocation.as_ref().and_then(|a| a.priority), Some(5));
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

    fn condition_of<'a>(st: &'a IPAddressPoolStatus, type_: &str) -> &'a Condition {
        st.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    /// `0.0.0.0/0` used to be Ready with 4,294,967,292 addresses; now the pool is Invalid with
    /// one sentence per reason, naming the entry, and hands out nothing. Its entries still count
    /// for Services that already hold one of its addresses.
    #[test]
    fn refused_entries_make_the_pool_invalid_and_are_named() {
        let p = pool(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "everything"}, "spec": {"addresses": ["0.0.0.0/0"]}}),
        );
        let e = evaluate(&p);
        assert!(!e.accepts_new());
        let c = e.config.as_ref().expect("kept for existing holders");
        assert!(!c.accepts_new);
        assert!(c.addresses.contains("127.0.0.1".parse().unwrap()));
        assert_eq!(e.refusals, 6);
        assert_eq!(e.refused.len(), 1, "one range, every reason");
        let st = desired_status(&e, None, &[], &[], None, &now());
        let invalid = condition_of(&st, "Invalid");
        assert_eq!(invalid.reason, reasons::REFUSED_ADDRESSES);
        assert!(
            invalid.message.starts_with(
                r#"spec.addresses[0] "0.0.0.0/0": spans more addresses than a /8, the largest IPv4 entry a pool may have; spec.addresses[0] "0.0.0.0/0": overlaps 0.0.0.0/8"#
            ),
            "{}",
            invalid.message
        );
        assert!(invalid.message.contains("overlaps 127.0.0.0/8: loopback"));
        let ready = condition_of(&st, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::REFUSED_ADDRESSES)
        );

        // allowLinkLocal lets 169.254.0.0/16 in; a malformed entry beside a refused one gives
        // the general reason.
        let ll = pool(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "ll"}, "spec": {"addresses": ["169.254.10.0/24"], "allowLinkLocal": true}}),
        );
        assert!(evaluate(&ll).accepts_new());
        let mixed = pool(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "mixed"}, "spec": {"addresses": ["127.0.0.1/32", "192.0.2.1/24"]}}),
        );
        let e = evaluate(&mixed);
        assert_eq!((e.refusals, e.problems.len()), (1, 2));
        let st = desired_status(&e, None, &[], &[], None, &now());
        assert_eq!(
            condition_of(&st, "Invalid").reason,
            reasons::INVALID_ADDRESSES
        );
    }

    /// 1,024 refused entries say far more than a condition may hold: the message is cut to the
    /// API's limit, so the status write cannot fail for its size.
    #[test]
    fn condition_messages_fit_the_api() {
        let entries: Vec<String> = (0..1024)
            .map(|i| format!("127.0.{}.{}/32", i / 256, i % 256))
            .collect();
        let p = pool(
            json!({"apiVersion": "lodestone.dev/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "loop"}, "spec": {"addresses": entries}}),
        );
        let e = evaluate(&p);
        assert_eq!(e.problems.len(), 1024);
        let st = desired_status(&e, None, &[], &[], None, &now());
        let invalid = condition_of(&st, "Invalid");
        assert!(invalid.message.len() <= events::CONDITION_MESSAGE_MAX);
        assert!(
            invalid.message.ends_with("bytes in all]"),
            "{}",
            &invalid.message[32_000..]
        );
        assert!(status_is_current(
            Some(&st),
            &desired_status(&e, None, &[], &[], Some(&st), &now())
        ));
    }

    fn config(name: &str, entries: &[&str]) -> PoolConfig {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        PoolConfig {
            name: name.into(),
            addresses: addresses::parse_pool(&entries).unwrap(),
            auto_assign: true,
            avoid_buggy_ips: false,
            allocation: Some(lodestone_crds::ServiceAllocation {
                priority: Some(3),
                namespaces: vec!["shop".into()],
                ..Default::default()
            }),
            accepts_new: true,
        }
    }

    fn assignment(pool: &str, ips: &[&str]) -> Assignment {
        Assignment {
            pool: pool.into(),
            addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn vanished_pools_keep_exactly_what_is_held_and_hand_out_nothing() {
        let previous = [
            config("blue", &["192.0.2.0/24"]),
            config("red", &["198.51.100.0/24"]),
            config("green", &["203.0.113.0/24"]),
        ];
        let present = BTreeSet::from(["green".to_string()]);
        let held = [
            assignment("blue", &["192.0.2.7"]),
            assignment("blue", &["192.0.2.3"]),
            assignment("blue", &["192.0.2.3"]),
            assignment("green", &["203.0.113.1"]),
        ];
        let v = vanished(&previous, &present, &held);
        assert_eq!(v.len(), 1, "red held nothing, green is present: {v:?}");
        let blue = &v[0];
        assert_eq!(blue.name, "blue");
        assert!(!blue.accepts_new);
        assert_eq!(
            blue.addresses
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>(),
            ["192.0.2.3", "192.0.2.7"]
        );
        assert_eq!(
            blue.allocation.as_ref().map(|a| a.namespaces.clone()),
            Some(vec!["shop".to_string()]),
            "its restrictions stay, so holders stay eligible"
        );
        // Without a template (a restart), it restricts nobody.
        let anon = vanished_pool(
            "gone",
            &BTreeSet::from(["192.0.2.9".parse().unwrap()]),
            None,
        )
        .unwrap();
        assert!(anon.allocation.is_none() && !anon.accepts_new);
        assert!(vanished_pool("gone", &BTreeSet::new(), None).is_none());
    }

    #[test]
    fn hold_warnings_say_why_an_address_is_kept() {
        let a = assignment("blue", &["192.0.2.1"]);
        let none = |_| None;
        assert_eq!(hold_warning(&a, false, none, &[]), None);
        assert_eq!(
            hold_warning(&a, true, none, &[]).unwrap(),
            "keeping 192.0.2.1 although pool blue is gone without releasing it (its finalizer was removed or the IPAddressPool CRD deleted); it is kept until a pool containing it exists again"
        );
        let node = |ip: IpAddr| (ip.to_string() == "192.0.2.1").then_some("node-a");
        assert_eq!(
            hold_warning(&a, false, node, &[]).unwrap(),
            "keeping 192.0.2.1 although 192.0.2.1 is also the address of Node node-a; it is given to no other Service: ask for another address (or remove the entry) to move this one"
        );
        let lo = assignment("blue", &["127.0.0.1"]);
        let refused = [(
            addresses::parse_entry("127.0.0.0/8").unwrap(),
            r#""127.0.0.0/8" overlaps 127.0.0.0/8: loopback addresses never leave a host"#
                .to_string(),
        )];
        assert_eq!(
            hold_warning(&lo, false, none, &refused).unwrap(),
            r#"keeping 127.0.0.1 although 127.0.0.1 is in entry "127.0.0.0/8" overlaps 127.0.0.0/8: loopback addresses never leave a host; it is given to no other Service: ask for another address (or remove the entry) to move this one"#
        );
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
