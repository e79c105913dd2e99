//! The reasons table of `docs/addresses.md` against the code: every reason the controller gives a
//! Service has a row, every row's example message is what the code writes for that case, and no
//! row names a reason the code does not use. Adding an [`AllocError`] variant does not compile
//! here until it has an example, and its row is then missing from the page.

use std::collections::BTreeSet;
use std::net::IpAddr;

use lodestone_controller::ipam::{AllocError, ServiceKey};
use lodestone_controller::service::RequestError;
use lodestone_crds::addresses::IpFamily;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Which variant, by an exhaustive match: a new variant stops this file compiling until it is
/// given an example below.
fn variant(e: &AllocError) -> usize {
    match e {
        AllocError::PoolExhausted { .. } => 0,
        AllocError::NoPoolMatches { .. } => 1,
        AllocError::AddressInUse { .. } => 2,
        AllocError::AddressInNoPool { .. } => 3,
        AllocError::AddressNotInPool { .. } => 4,
        AllocError::AvoidedAddress { .. } => 5,
        AllocError::UnknownPool { .. } => 6,
        AllocError::PoolNotEligible { .. } => 7,
        AllocError::FamilyUnavailable { .. } => 8,
        AllocError::NodeAddress { .. } => 9,
        AllocError::SharingConflict { .. } => 10,
        AllocError::InvalidRequest(_) => 11,
    }
}
const VARIANTS: usize = 12;

/// One example of every allocation failure, as the IPAM words it.
fn examples() -> Vec<AllocError> {
    vec![
        AllocError::PoolExhausted {
            pools: vec!["blue".into()],
            family: IpFamily::V4,
        },
        AllocError::NoPoolMatches {
            reasons: vec![
                (
                    "prod".into(),
                    "namespace shop is matched by none of its namespaceSelectors".into(),
                ),
                (
                    "manual".into(),
                    "autoAssign is false and the Service names neither the pool nor one of its addresses".into(),
                ),
            ],
        },
        AllocError::AddressInUse {
            address: ip("192.0.2.10"),
            by: ServiceKey::new("shop", "web"),
        },
        AllocError::AddressInNoPool {
            address: ip("203.0.113.7"),
        },
        AllocError::AddressNotInPool {
            address: ip("203.0.113.7"),
            pool: "blue".into(),
        },
        AllocError::AvoidedAddress {
            address: ip("192.0.2.255"),
            pool: "blue".into(),
        },
        AllocError::UnknownPool {
            pool: "bleu".into(),
        },
        AllocError::PoolNotEligible {
            pool: "red".into(),
            why: "namespace shop is not among its namespaces (team-a)".into(),
        },
        AllocError::FamilyUnavailable {
            family: IpFamily::V6,
        },
        AllocError::NodeAddress {
            address: ip("192.0.2.2"),
            node: "node-b".into(),
        },
        AllocError::SharingConflict {
            address: ip("192.0.2.10"),
            with: ServiceKey::new("shop", "dns"),
            why: "both use port 53/UDP".into(),
        },
        AllocError::InvalidRequest(
            "the Service is RequireDualStack but asks only for 192.0.2.10: ask for an IPv6 address too, or for none".into(),
        ),
    ]
}

/// Every `(reason, message)` the code gives for the examples.
fn code_rows() -> Vec<(String, String)> {
    let alloc = examples();
    let seen: BTreeSet<usize> = alloc.iter().map(variant).collect();
    assert_eq!(seen.len(), VARIANTS, "one example per AllocError variant");
    let mut rows: Vec<(String, String)> = alloc
        .iter()
        .map(|e| (e.reason().to_string(), e.to_string()))
        .collect();
    let request = RequestError::NotAnAddress {
        annotation: "lodestone.dev/loadBalancerIPs".into(),
        value: "banana".into(),
    };
    rows.push((request.reason().to_string(), request.to_string()));
    rows
}

/// The rows of the table that follows `heading` in the page: first two cells, backticks removed.
fn doc_rows(page: &str, heading: &str) -> Vec<(String, String)> {
    let start = page
        .find(heading)
        .unwrap_or_else(|| panic!("docs/addresses.md has no {heading:?}"));
    page[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let unquote = |s: &str| s.trim_matches('`').to_string();
            (
                unquote(cells[0]),
                unquote(cells.get(1).copied().unwrap_or("")),
            )
        })
        .collect()
}

fn page() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/addresses.md");
    std::fs::read_to_string(path).expect("docs/addresses.md")
}

/// The table, as the docs should have it: printed when the test fails, to paste into the page.
fn render(rows: &[(String, String)]) -> String {
    let mut out = String::from("| condition reason | example message |\n|---|---|\n");
    for (r, m) in rows {
        out.push_str(&format!("| `{r}` | `{m}` |\n"));
    }
    out
}

#[test]
fn every_reason_has_a_row_with_the_codes_message() {
    let page = page();
    let docs = doc_rows(&page, "The reasons `AllocationFailed` gives");
    let code = code_rows();
    for row in &code {
        assert!(
            docs.contains(row),
            "docs/addresses.md lacks the row {row:?}; the table should read:\n{}",
            render(&code)
        );
    }
    for row in &docs {
        assert!(
            code.contains(row),
            "docs/addresses.md has a row the code does not write: {row:?}; the table should read:\n{}",
            render(&code)
        );
    }
}
