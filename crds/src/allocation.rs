//! Which Services a pool serves, and in which order pools are tried: the one home of the rule the
//! controller allocates by and `lodestonectl why` explains with.
//!
//! The rule is MetalLB's (`internal/allocator`, `isPoolCompatibleWithService` and
//! `pinnedPoolsForService`, with `internal/config`'s namespace set), so a migrated cluster keeps
//! every address:
//!
//! - **Namespace.** A pool restricts namespaces when it lists `namespaces` or has
//!   `namespaceSelectors`; it then serves a namespace that is listed **or** whose labels match one
//!   of the selectors. MetalLB builds one set of namespaces from both fields; this is that set.
//! - **Service.** A pool with `serviceSelectors` serves a Service whose labels match one of them.
//! - Both restrictions, where given, must hold.
//! - **Order.** Pools that have a `serviceAllocation` (and serve the Service) are tried before
//!   pools without one; among them, by `priority` ascending, pools without a priority after those
//!   with one; ties by name. MetalLB tries the same tiers; within a tier it leaves ties to Go's map
//!   order, Lodestone to the name, so the choice is deterministic.
//!
//! A malformed selector (an unknown operator, `In` without values) is ignored here, as if it were
//! absent: a pool with one hands out nothing new (it is `Invalid`), and ignoring it keeps the
//! Services that hold its addresses where they are, so fixing the selector moves nobody.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{ServiceAllocation, selector};

/// What the rule reads of a Service.
#[derive(Clone, Copy, Debug)]
pub struct ServiceFacts<'a> {
    /// The Service's namespace.
    pub namespace: &'a str,
    /// The Service's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The labels of the Service's namespace.
    pub namespace_labels: &'a BTreeMap<String, String>,
}

/// Why a pool does not serve a Service; the `Display` is the sentence users read (after
/// "pool NAME: " or "pool NAME may not serve this Service: ").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotServed {
    /// The namespace is neither listed nor selected.
    #[error("namespace {namespace} is {}", namespace_why(.namespaces, .selectors))]
    Namespace {
        /// The Service's namespace.
        namespace: String,
        /// The pool's `namespaces`.
        namespaces: Vec<String>,
        /// How many (well-formed) `namespaceSelectors` the pool has.
        selectors: usize,
    },
    /// No service selector matches.
    #[error("the Service's labels match none of its serviceSelectors")]
    ServiceLabels,
}

fn namespace_why(namespaces: &[String], selectors: &usize) -> String {
    match (namespaces.is_empty(), *selectors) {
        (false, 0) => format!("not among its namespaces ({})", namespaces.join(", ")),
        (true, _) => "matched by none of its namespaceSelectors".to_string(),
        (false, _) => format!(
            "neither among its namespaces ({}) nor matched by its namespaceSelectors",
            namespaces.join(", ")
        ),
    }
}

fn well_formed(sels: &[LabelSelector]) -> impl Iterator<Item = &LabelSelector> {
    sels.iter().filter(|s| selector::validate(s).is_ok())
}

/// Whether a pool with this `serviceAllocation` serves the Service (see the module rules).
pub fn serves(alloc: Option<&ServiceAllocation>, svc: &ServiceFacts<'_>) -> Result<(), NotServed> {
    let Some(a) = alloc else {
        return Ok(());
    };
    let ns_selectors: Vec<&LabelSelector> = well_formed(&a.namespace_selectors).collect();
    if !a.namespaces.is_empty() || !ns_selectors.is_empty() {
        let listed = a.namespaces.iter().any(|n| n == svc.namespace);
        let selected = ns_selectors
            .iter()
            .any(|s| selector::matches(s, svc.namespace_labels) == Ok(true));
        if !listed && !selected {
            return Err(NotServed::Namespace {
                namespace: svc.namespace.to_string(),
                namespaces: a.namespaces.clone(),
                selectors: ns_selectors.len(),
            });
        }
    }
    let mut svc_selectors = well_formed(&a.service_selectors).peekable();
    if svc_selectors.peek().is_some()
        && !svc_selectors.any(|s| selector::matches(s, svc.labels) == Ok(true))
    {
        return Err(NotServed::ServiceLabels);
    }
    Ok(())
}

/// The order in which pools that serve a Service are tried (see the module rules): `Less` when
/// the pool `(a_name, a_alloc)` comes first.
pub fn pool_order(
    (a_name, a_alloc): (&str, Option<&ServiceAllocation>),
    (b_name, b_alloc): (&str, Option<&ServiceAllocation>),
) -> Ordering {
    fn key<'a>(
        name: &'a str,
        alloc: Option<&ServiceAllocation>,
    ) -> (bool, bool, Option<i32>, &'a str) {
        let priority = alloc.and_then(|a| a.priority);
        (alloc.is_none(), priority.is_none(), priority, name)
    }
    key(a_name, a_alloc).cmp(&key(b_name, b_alloc))
}

/// Whether the pool is tried before unrestricted pools (it has a `serviceAllocation`).
pub fn is_pinned(alloc: Option<&ServiceAllocation>) -> bool {
    alloc.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        }
    }

    fn facts<'a>(
        ns: &'a str,
        svc: &'a BTreeMap<String, String>,
        nsl: &'a BTreeMap<String, String>,
    ) -> ServiceFacts<'a> {
        ServiceFacts {
            namespace: ns,
            labels: svc,
            namespace_labels: nsl,
        }
    }

    #[test]
    fn no_service_allocation_serves_everyone() {
        let none = labels(&[]);
        assert_eq!(serves(None, &facts("any", &none, &none)), Ok(()));
        let empty = ServiceAllocation::default();
        assert_eq!(serves(Some(&empty), &facts("any", &none, &none)), Ok(()));
    }

    /// MetalLB's namespace set is `namespaces` plus every namespace a selector matches: a listed
    /// namespace is served even when its labels match no selector, and the other way round.
    #[test]
    fn a_namespace_listed_or_selected_is_served() {
        let a = ServiceAllocation {
            namespaces: vec!["team-a".into()],
            namespace_selectors: vec![sel(&[("tier", "gold")])],
            ..Default::default()
        };
        let none = labels(&[]);
        let gold = labels(&[("tier", "gold")]);
        assert_eq!(serves(Some(&a), &facts("team-a", &none, &none)), Ok(()));
        assert_eq!(serves(Some(&a), &facts("team-b", &none, &gold)), Ok(()));
        let err = serves(Some(&a), &facts("team-c", &none, &none)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "namespace team-c is neither among its namespaces (team-a) nor matched by its namespaceSelectors"
        );
        let only_list = ServiceAllocation {
            namespaces: vec!["team-a".into(), "team-b".into()],
            ..Default::default()
        };
        assert_eq!(
            serves(Some(&only_list), &facts("x", &none, &gold))
                .unwrap_err()
                .to_string(),
            "namespace x is not among its namespaces (team-a, team-b)"
        );
        let only_sel = ServiceAllocation {
            namespace_selectors: vec![sel(&[("tier", "silver")]), sel(&[("tier", "gold")])],
            ..Default::default()
        };
        assert_eq!(serves(Some(&only_sel), &facts("x", &none, &gold)), Ok(()));
        assert_eq!(
            serves(Some(&only_sel), &facts("x", &none, &none))
                .unwrap_err()
                .to_string(),
            "namespace x is matched by none of its namespaceSelectors"
        );
    }

    #[test]
    fn namespace_and_service_restrictions_both_hold() {
        let a = ServiceAllocation {
            namespaces: vec!["shop".into()],
            service_selectors: vec![sel(&[("expose", "yes")]), sel(&[("public", "true")])],
            ..Default::default()
        };
        let yes = labels(&[("expose", "yes")]);
        let public = labels(&[("public", "true")]);
        let none = labels(&[]);
        assert_eq!(serves(Some(&a), &facts("shop", &yes, &none)), Ok(()));
        assert_eq!(serves(Some(&a), &facts("shop", &public, &none)), Ok(()));
        assert_eq!(
            serves(Some(&a), &facts("shop", &none, &none)),
            Err(NotServed::ServiceLabels)
        );
        assert!(matches!(
            serves(Some(&a), &facts("other", &yes, &none)),
            Err(NotServed::Namespace { .. })
        ));
    }

    #[test]
    fn malformed_selectors_are_ignored() {
        let bad = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
        };
        let a = ServiceAllocation {
            namespace_selectors: vec![bad.clone()],
            service_selectors: vec![bad],
            ..Default::default()
        };
        let none = labels(&[]);
        assert_eq!(serves(Some(&a), &facts("x", &none, &none)), Ok(()));
    }

    #[test]
    fn pinned_pools_first_then_priority_then_name() {
        let with = |p: Option<i32>| ServiceAllocation {
            priority: p,
            ..Default::default()
        };
        let (p5, p1, none) = (with(Some(5)), with(Some(1)), with(None));
        let mut pools: Vec<(&str, Option<&ServiceAllocation>)> = vec![
            ("a-default", None),
            ("z-pinned", Some(&none)),
            ("b-five", Some(&p5)),
            ("c-one", Some(&p1)),
            ("a-pinned", Some(&none)),
            ("0-default", None),
            ("a-one", Some(&p1)),
        ];
        pools.sort_by(|a, b| pool_order(*a, *b));
        let names: Vec<&str> = pools.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "a-one",
                "c-one",
                "b-five",
                "a-pinned",
                "z-pinned",
                "0-default",
                "a-default"
            ]
        );
        assert!(is_pinned(Some(&none)) && !is_pinned(None));
    }
}
