//! How Lodestone names the Events it writes. The controller and the speaker both write Events
//! about Services, so the rule lives here, once.

/// The name of an Event about the object named `regarding`, created at `unix_nanos`:
/// `<regarding>.<unix nanoseconds in hex>`, as client-go's recorder names them.
///
/// Not `generateName: "<regarding>."`: a generated name is the prefix plus five random
/// characters, but kube-apiserver validates the prefix as a name of its own, and a name may not
/// end in '.', so every such Event is refused with 422.
pub fn event_name(regarding: &str, unix_nanos: i128) -> String {
    format!("{regarding}.{:x}", unix_nanos.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn named_like_client_go() {
        assert_eq!(event_name("web", 0), "web.0");
        assert_eq!(
            event_name("web", 1_764_720_000_123_456_789),
            "web.187d8b7d7f62cd15"
        );
    }

    proptest! {
        /// A Service name (a DNS-1035 label) gives a valid Event name (a DNS-1123 subdomain):
        /// lowercase alphanumerics, '-' and '.', alphanumeric at both ends, at most 253 bytes.
        #[test]
        fn service_names_give_valid_event_names(
            name in "[a-z]([-a-z0-9]{0,61}[a-z0-9])?",
            nanos in 0i128..=i128::from(i64::MAX),
        ) {
            let n = event_name(&name, nanos);
            prop_assert!(n.len() <= 253);
            prop_assert!(!n.ends_with('.') && !n.starts_with('.'));
            prop_assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
            prop_assert!(n.split('.').all(|label| !label.is_empty()
                && !label.starts_with('-') && !label.ends_with('-')));
        }
    }
}
