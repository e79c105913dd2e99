//! The conditions Lodestone writes on Services, who writes them, and how one is built.
//!
//! The controller owns [`ADDRESS_ASSIGNED`] (field manager [`CONTROLLER_FIELD_MANAGER`]), the
//! speakers own [`ANNOUNCED`] ([`SPEAKER_FIELD_MANAGER`]). Both messages are read back by
//! programs (the speakers take the node an `Announced` message names as the current owner,
//! `lodestonectl` shows pool and node), so their formats live here with their parsers:
//! [`AssignedFrom`] and [`crate::announced::AnnouncedBy`].

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::events;

/// The controller's condition on a Service: an address is assigned (or why not).
pub const ADDRESS_ASSIGNED: &str = "lodestone.dev/AddressAssigned";
/// The speakers' condition on a Service: a node answers for its addresses (or why none does).
pub const ANNOUNCED: &str = crate::announced::CONDITION_TYPE;

/// Field manager of every controller write (status, pool status, finalizer).
pub const CONTROLLER_FIELD_MANAGER: &str = "lodestone-controller";
/// Field manager of every speaker write (the `Announced` condition, BGP session status).
pub const SPEAKER_FIELD_MANAGER: &str = "lodestone-speaker";

/// Reasons of [`ADDRESS_ASSIGNED`] that the controller writes and readers compare against.
pub mod assigned_reasons {
    /// An address is assigned.
    pub const ASSIGNED: &str = "Assigned";
}

/// `"True"` or `"False"`.
pub fn status_word(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// The condition of `type_` among `conditions`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The Service's condition of `type_`.
pub fn of_service<'a>(svc: &'a Service, type_: &str) -> Option<&'a Condition> {
    find(svc.status.as_ref()?.conditions.as_deref()?, type_)
}

/// `lastTransitionTime` for a condition about to say `status`: the previous time while the
/// status stays what it was (`previous` = its status and time), `now` when it flips or is new.
/// This is the API conventions' rule; a writer that stamped `now` on every write would make
/// every reader think the condition just changed.
pub fn transition_time(previous: Option<(bool, &Time)>, status: bool, now: &Time) -> Time {
    match previous {
        Some((was, at)) if was == status => at.clone(),
        _ => now.clone(),
    }
}

/// One condition as a writer wants it: the message cut to what the API server accepts, the
/// transition time kept from `previous` (the condition of the same type on the live object)
/// per [`transition_time`].
pub fn build(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    previous: Option<&Condition>,
    now: &Time,
) -> Condition {
    let previous = previous
        .filter(|p| p.type_ == type_)
        .map(|p| (p.status == "True", &p.last_transition_time));
    Condition {
        type_: type_.to_owned(),
        status: status_word(status).to_owned(),
        reason: reason.to_owned(),
        message: events::condition_message(message).into_owned(),
        last_transition_time: transition_time(previous, status, now),
        observed_generation,
    }
}

/// The `True` [`ADDRESS_ASSIGNED`] message: `ADDR[, ADDR] from pool NAME`, optionally followed
/// by `; warning: TEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignedFrom {
    /// The addresses, in the Service's order.
    pub addresses: Vec<IpAddr>,
    /// The pool they come from.
    pub pool: String,
    /// Something the user should know (an address kept outside its pool, ...).
    pub warning: Option<String>,
}

impl fmt::Display for AssignedFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ip) in self.addresses.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{ip}")?;
        }
        write!(f, " from pool {}", self.pool)?;
        if let Some(w) = &self.warning {
            write!(f, "; warning: {w}")?;
        }
        Ok(())
    }
}

impl AssignedFrom {
    /// Read a message written by [`Display`](fmt::Display); `None` for any other text.
    pub fn parse(message: &str) -> Option<Self> {
        let (ips, rest) = message.split_once(" from pool ")?;
        let (pool, warning) = match rest.split_once("; warning: ") {
            Some((p, w)) => (p, Some(w.to_owned())),
            None => (rest, None),
        };
        // Pool names are DNS subdomains: never empty, no spaces, no `;`.
        if pool.is_empty() || pool.contains(|c: char| c.is_whitespace() || c == ';') {
            return None;
        }
        let addresses = ips
            .split(", ")
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<IpAddr>>>()?;
        Some(Self {
            addresses,
            pool: pool.to_owned(),
            warning,
        })
    }

    /// What the Service's `True` [`ADDRESS_ASSIGNED`] condition says, if it says it in this
    /// format.
    pub fn of_service(svc: &Service) -> Option<Self> {
        of_service(svc, ADDRESS_ASSIGNED)
            .filter(|c| c.status == "True")
            .and_then(|c| Self::parse(&c.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use proptest::prelude::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let old = build("T", true, "A", "m", Some(1), None, &at(10));
        assert_eq!(old.last_transition_time, at(10));
        let same = build("T", true, "B", "other", Some(2), Some(&old), &at(20));
        assert_eq!(
            same.last_transition_time,
            at(10),
            "reason and message do not count"
        );
        let flipped = build("T", false, "B", "m", Some(2), Some(&same), &at(30));
        assert_eq!(flipped.last_transition_time, at(30));
        let other_type = build("U", false, "B", "m", None, Some(&flipped), &at(40));
        assert_eq!(other_type.last_transition_time, at(40));
        assert_eq!(flipped.status, "False");
        assert_eq!(flipped.observed_generation, Some(2));
    }

    #[test]
    fn long_messages_are_cut() {
        let c = build("T", true, "A", &"x".repeat(100_000), None, None, &at(0));
        assert_eq!(c.message.len(), events::CONDITION_MESSAGE_MAX);
    }

    #[test]
    fn assigned_messages() {
        let m = AssignedFrom {
            addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            pool: "dual-1".into(),
            warning: None,
        };
        assert_eq!(m.to_string(), "192.0.2.1, 2001:db8::1 from pool dual-1");
        let w =
            AssignedFrom::parse("192.0.2.1 from pool blue; warning: pool blue is gone").unwrap();
        assert_eq!(w.pool, "blue");
        assert_eq!(w.warning.as_deref(), Some("pool blue is gone"));
        for bad in [
            "no address",
            "banana from pool blue",
            "192.0.2.1 from pool ",
            "192.0.2.1 from pool a b",
        ] {
            assert_eq!(AssignedFrom::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn assigned_round_trips(
            ips in prop::collection::vec(any::<IpAddr>(), 1..3),
            pool in "[a-z0-9][a-z0-9.-]{0,30}",
            warning in prop::option::of("[ -~]{0,40}"),
        ) {
            let m = AssignedFrom { addresses: ips, pool, warning };
            prop_assert_eq!(AssignedFrom::parse(&m.to_string()), Some(m));
        }
    }
}
