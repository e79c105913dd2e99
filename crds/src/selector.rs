//! Kubernetes label-selector matching, pure, over k8s-openapi's [`LabelSelector`].
//!
//! Semantics follow `k8s.io/apimachinery/pkg/labels`: all `matchLabels` pairs and all
//! `matchExpressions` must hold; an empty selector matches everything. A selector is checked as a
//! whole before it is evaluated, so a malformed selector is an error whatever the labels are.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Why a selector cannot be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// An operator other than In, NotIn, Exists, DoesNotExist.
    #[error(
        "matchExpressions key {key:?}: operator {operator:?} is not one of In, NotIn, Exists, DoesNotExist"
    )]
    UnknownOperator {
        /// The requirement's key.
        key: String,
        /// The operator as written.
        operator: String,
    },
    /// In or NotIn without values.
    #[error("matchExpressions key {key:?}: operator {operator} needs at least one value")]
    MissingValues {
        /// The requirement's key.
        key: String,
        /// `In` or `NotIn`.
        operator: String,
    },
    /// Exists or DoesNotExist with values.
    #[error("matchExpressions key {key:?}: operator {operator} takes no values")]
    UnexpectedValues {
        /// The requirement's key.
        key: String,
        /// `Exists` or `DoesNotExist`.
        operator: String,
    },
}

enum Op<'a> {
    In(&'a [String]),
    NotIn(&'a [String]),
    Exists,
    DoesNotExist,
}

fn op_of(req: &LabelSelectorRequirement) -> Result<Op<'_>, SelectorError> {
    let values = req.values.as_deref().unwrap_or_default();
    let missing = || SelectorError::MissingValues {
        key: req.key.clone(),
        operator: req.operator.clone(),
    };
    let unexpected = || SelectorError::UnexpectedValues {
        key: req.key.clone(),
        operator: req.operator.clone(),
    };
    match req.operator.as_str() {
        "In" if values.is_empty() => Err(missing()),
        "In" => Ok(Op::In(values)),
        "NotIn" if values.is_empty() => Err(missing()),
        "NotIn" => Ok(Op::NotIn(values)),
        "Exists" if !values.is_empty() => Err(unexpected()),
        "Exists" => Ok(Op::Exists),
        "DoesNotExist" if !values.is_empty() => Err(unexpected()),
        "DoesNotExist" => Ok(Op::DoesNotExist),
        _ => Err(SelectorError::UnknownOperator {
            key: req.key.clone(),
            operator: req.operator.clone(),
        }),
    }
}

/// Check a selector without evaluating it.
pub fn validate(sel: &LabelSelector) -> Result<(), SelectorError> {
    for req in sel.match_expressions.iter().flatten() {
        op_of(req)?;
    }
    Ok(())
}

/// Whether `labels` satisfy `sel`. `Err` when the selector is malformed, whatever the labels.
pub fn matches(
    sel: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let mut ops = Vec::new();
    for req in sel.match_expressions.iter().flatten() {
        ops.push((req.key.as_str(), op_of(req)?));
    }
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = ops.iter().all(|(key, op)| {
        let value = labels.get(*key);
        match op {
            Op::In(values) => value.is_some_and(|v| values.contains(v)),
            // As in Kubernetes: NotIn also matches when the label is absent.
            Op::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    });
    Ok(labels_ok && exprs_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|vs| vs.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: if ml.is_empty() {
                None
            } else {
                Some(labels(ml))
            },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert_eq!(matches(&LabelSelector::default(), &labels(&[])), Ok(true));
        assert_eq!(
            matches(&LabelSelector::default(), &labels(&[("a", "b")])),
            Ok(true)
        );
        let explicit_empty = LabelSelector {
            match_labels: Some(BTreeMap::new()),
            match_expressions: Some(vec![]),
        };
        assert_eq!(matches(&explicit_empty, &labels(&[])), Ok(true));
    }

    #[test]
    fn match_labels_all_must_hold() {
        let s = sel(&[("app", "web"), ("tier", "front")], vec![]);
        assert_eq!(
            matches(
                &s,
                &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
            ),
            Ok(true)
        );
        assert_eq!(matches(&s, &labels(&[("app", "web")])), Ok(false));
        assert_eq!(
            matches(&s, &labels(&[("app", "web"), ("tier", "back")])),
            Ok(false)
        );
    }

    #[test]
    fn operators() {
        type Case = (
            LabelSelectorRequirement,
            &'static [(&'static str, &'static str)],
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                expr("env", "In", Some(&["prod", "stage"])),
                &[("env", "prod")],
                true,
            ),
            (
                expr("env", "In", Some(&["prod", "stage"])),
                &[("env", "dev")],
                false,
            ),
            (expr("env", "In", Some(&["prod"])), &[], false),
            (
                expr("env", "NotIn", Some(&["prod"])),
                &[("env", "dev")],
                true,
            ),
            (
                expr("env", "NotIn", Some(&["prod"])),
                &[("env", "prod")],
                false,
            ),
            (expr("env", "NotIn", Some(&["prod"])), &[], true),
            (expr("env", "Exists", None), &[("env", "")], true),
            (expr("env", "Exists", Some(&[])), &[], false),
            (expr("env", "DoesNotExist", None), &[], true),
            (expr("env", "DoesNotExist", None), &[("env", "x")], false),
        ];
        for (e, l, want) in cases {
            let s = sel(&[], vec![e.clone()]);
            assert_eq!(matches(&s, &labels(l)), Ok(want), "{e:?} on {l:?}");
        }
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = sel(&[("app", "web")], vec![expr("env", "In", Some(&["prod"]))]);
        assert_eq!(
            matches(&s, &labels(&[("app", "web"), ("env", "prod")])),
            Ok(true)
        );
        assert_eq!(
            matches(&s, &labels(&[("app", "web"), ("env", "dev")])),
            Ok(false)
        );
        assert_eq!(
            matches(&s, &labels(&[("app", "db"), ("env", "prod")])),
            Ok(false)
        );
    }

    #[test]
    fn malformed_selectors_are_errors_whatever_the_labels() {
        let cases = [
            (
                expr("a", "Sometimes", Some(&["x"])),
                SelectorError::UnknownOperator {
                    key: "a".into(),
                    operator: "Sometimes".into(),
                },
            ),
            (
                expr("a", "in", Some(&["x"])),
                SelectorError::UnknownOperator {
                    key: "a".into(),
                    operator: "in".into(),
                },
            ),
            (
                expr("a", "In", None),
                SelectorError::MissingValues {
                    key: "a".into(),
                    operator: "In".into(),
                },
            ),
            (
                expr("a", "NotIn", Some(&[])),
                SelectorError::MissingValues {
                    key: "a".into(),
                    operator: "NotIn".into(),
                },
            ),
            (
                expr("a", "Exists", Some(&["x"])),
                SelectorError::UnexpectedValues {
                    key: "a".into(),
                    operator: "Exists".into(),
                },
            ),
            (
                expr("a", "DoesNotExist", Some(&["x"])),
                SelectorError::UnexpectedValues {
                    key: "a".into(),
                    operator: "DoesNotExist".into(),
                },
            ),
        ];
        for (e, want) in cases {
            // A failing matchLabels must not hide the malformed expression.
            let s = sel(&[("nope", "nope")], vec![expr("b", "Exists", None), e]);
            assert_eq!(matches(&s, &labels(&[])), Err(want.clone()));
            assert_eq!(
                matches(&s, &labels(&[("a", "x"), ("b", "y")])),
                Err(want.clone())
            );
            assert_eq!(validate(&s), Err(want));
        }
        assert_eq!(
            SelectorError::MissingValues {
                key: "a".into(),
                operator: "In".into()
            }
            .to_string(),
            r#"matchExpressions key "a": operator In needs at least one value"#
        );
    }

    proptest! {
        /// matchLabels {k: v} is equivalent to the expression `k In [v]`.
        #[test]
        fn match_labels_equals_in(
            sel_pairs in proptest::collection::btree_map("[ab]", "[xy]", 0..3),
            have in proptest::collection::btree_map("[abc]", "[xyz]", 0..4),
        ) {
            let by_labels = LabelSelector { match_labels: Some(sel_pairs.clone()), match_expressions: None };
            let by_exprs = LabelSelector {
                match_labels: None,
                match_expressions: Some(sel_pairs.iter().map(|(k, v)| LabelSelectorRequirement {
                    key: k.clone(), operator: "In".into(), values: Some(vec![v.clone()]),
                }).collect()),
            };
            let a = matches(&by_labels, &have);
            prop_assert_eq!(&a, &matches(&by_exprs, &have));
            // NotIn is the negation of In for a present key.
            for (k, v) in &sel_pairs {
                let not_in = sel(&[], vec![LabelSelectorRequirement {
                    key: k.clone(), operator: "NotIn".into(), values: Some(vec![v.clone()]),
                }]);
                let is_in = have.get(k) == Some(v);
                prop_assert_eq!(matches(&not_in, &have), Ok(!is_in));
            }
        }
    }
}
