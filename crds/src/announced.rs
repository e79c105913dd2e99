//! The `lodestone.dev/Announced` condition the speakers write on a Service: its type, and the
//! "announced by" its `True` message carries, which names the node answering for the Service
//! and the interfaces it answers on.
//!
//! The message is read back by more than people: the speakers take the node it names as the
//! Service's current owner (an owner keeps its addresses while it stays eligible, see
//! `docs/announcing.md`), `lodestonectl` and the sandbox show it. So the format lives here,
//! once: [`AnnouncedBy`] writes it and parses it.

use std::fmt;

use k8s_openapi::api::core::v1::Service;

/// The condition type.
pub const CONDITION_TYPE: &str = "lodestone.dev/Announced";

/// Reason of the `True` condition.
pub const REASON_ANNOUNCED: &str = "Announced";

/// Who answers for a Service: the `True` message `announced from NODE on IFACE[, IFACE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncedBy {
    /// The node whose speaker answers.
    pub node: String,
    /// The interfaces it answers on.
    pub interfaces: Vec<String>,
}

impl fmt::Display for AnnouncedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "announced from {} on {}",
            self.node,
            self.interfaces.join(", ")
        )
    }
}

impl AnnouncedBy {
    /// Read a message written by [`Display`](fmt::Display); `None` for any other text.
    pub fn parse(message: &str) -> Option<Self> {
        let rest = message.strip_prefix("announced from ")?;
        let (node, interfaces) = rest.split_once(" on ")?;
        // Node names are DNS subdomains: no spaces, never empty.
        if node.is_empty() || node.contains(char::is_whitespace) {
            return None;
        }
        Some(Self {
            node: node.to_owned(),
            interfaces: interfaces
                .split(", ")
                .filter(|i| !i.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// What the Service's `True` condition says, if it says it in this format.
    pub fn of_service(svc: &Service) -> Option<Self> {
        crate::conditions::of_service(svc, CONDITION_TYPE)
            .filter(|c| c.status == "True")
            .and_then(|c| Self::parse(&c.message))
    }
}

/// The `False` message: `not announced: WHY`, with the reason's sentence.
pub fn not_announced_message(why: impl fmt::Display) -> String {
    format!("not announced: {why}")
}

/// The sentence of a `False` message (see [`not_announced_message`]); other text as it is.
pub fn not_announced_why(message: &str) -> &str {
    message.strip_prefix("not announced: ").unwrap_or(message)
}

/// The `True` message: `announced from NODE on IFACE, IFACE`.
pub fn announced_message(node: &str, interfaces: &[String]) -> String {
    AnnouncedBy {
        node: node.to_owned(),
        interfaces: interfaces.to_vec(),
    }
    .to_string()
}

/// The node a `True` message names (see [`AnnouncedBy`]); `None` for any other text.
pub fn announcer_of(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("announced from ")?;
    let (node, _) = rest.split_once(" on ")?;
    (!node.is_empty() && !node.contains(char::is_whitespace)).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn message_names_the_node() {
        let m = announced_message("node-b", &["eth0".into(), "eth1".into()]);
        assert_eq!(m, "announced from node-b on eth0, eth1");
        assert_eq!(announcer_of(&m), Some("node-b"));
        assert_eq!(
            AnnouncedBy::parse(&m),
            Some(AnnouncedBy {
                node: "node-b".into(),
                interfaces: vec!["eth0".into(), "eth1".into()]
            })
        );
        for bad in [
            "not announced: no ready endpoint",
            "announced from  on eth0",
            "announced from node-b",
        ] {
            assert_eq!(announcer_of(bad), None, "{bad}");
            assert_eq!(AnnouncedBy::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn not_announced_round_trips() {
        let m = not_announced_message("no ready endpoint");
        assert_eq!(m, "not announced: no ready endpoint");
        assert_eq!(not_announced_why(&m), "no ready endpoint");
        assert_eq!(not_announced_why("something else"), "something else");
        assert_eq!(AnnouncedBy::parse(&m), None);
    }

    proptest! {
        #[test]
        fn round_trip(node in "[a-z0-9][a-z0-9.-]{0,40}", ifs in prop::collection::vec("[a-z0-9]{1,8}", 1..3)) {
            let by = AnnouncedBy { node: node.clone(), interfaces: ifs };
            let message = by.to_string();
            prop_assert_eq!(announcer_of(&message), Some(node.as_str()));
            prop_assert_eq!(AnnouncedBy::parse(&message), Some(by));
        }
    }
}
