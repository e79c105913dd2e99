//! The `lodestone.dev/Announced` condition the speakers write on a Service: its type, and the
//! spelling of its `True` message, which names the node answering for the Service.
//!
//! The message is read back by more than people: the speakers take the node it names as the
//! Service's current owner (an owner keeps its addresses while it stays eligible, see
//! `docs/announcing.md`), and `lodestonectl` shows it. So the format lives here, once.

/// The condition type.
pub const CONDITION_TYPE: &str = "lodestone.dev/Announced";

/// Reason of the `True` condition.
pub const REASON_ANNOUNCED: &str = "Announced";

/// The `True` message: `announced from NODE on IFACE, IFACE`.
pub fn announced_message(node: &str, interfaces: &[String]) -> String {
    format!("announced from {node} on {}", interfaces.join(", "))
}

/// The node a `True` message names (see [`announced_message`]); `None` for any other text.
pub fn announcer_of(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("announced from ")?;
    let (node, _) = rest.split_once(" on ")?;
    // Node names are DNS subdomains: no spaces, never empty.
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
        assert_eq!(announcer_of("not announced: no ready endpoint"), None);
        assert_eq!(announcer_of("announced from  on eth0"), None);
        assert_eq!(announcer_of("announced from node-b"), None);
    }

    proptest! {
        #[test]
        fn round_trip(node in "[a-z0-9][a-z0-9.-]{0,40}", ifs in prop::collection::vec("[a-z0-9]{1,8}", 1..3)) {
            let message = announced_message(&node, &ifs);
            prop_assert_eq!(announcer_of(&message), Some(node.as_str()));
        }
    }
}
