//! How Lodestone names the Events it writes, and how any text it writes is made to fit. The
//! controller and the speaker both write Events and conditions about Services, so the rules live
//! here, once.

use std::borrow::Cow;

/// The name of an Event about the object named `regarding`, created at `unix_nanos`:
/// `<regarding>.<unix nanoseconds in hex>`, as client-go's recorder names them.
///
/// Not `generateName: "<regarding>."`: a generated name is the prefix plus five random
/// characters, but kube-apiserver validates the prefix as a name of its own, and a name may not
/// end in '.', so every such Event is refused with 422.
pub fn event_name(regarding: &str, unix_nanos: i128) -> String {
    format!("{regarding}.{:x}", unix_nanos.max(0))
}

/// The longest `message` of a condition, in bytes: `metav1.Condition` and `Service.status.conditions`
/// allow 32 KiB. A longer one makes the whole status write fail with 422.
pub const CONDITION_MESSAGE_MAX: usize = 32 * 1024;
/// The longest `note` of an events.k8s.io/v1 Event, in bytes (1 KiB); longer ones are refused.
pub const EVENT_NOTE_MAX: usize = 1024;
/// The longest user-influenced text one log line carries, in bytes: enough for any sentence
/// Lodestone writes, and short of what makes a log pipeline drop or split a line.
pub const LOG_TEXT_MAX: usize = 4 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, ending in a marker that says how
/// long it was; unchanged when it fits. Text comes from users (annotations, pool entries), so a
/// message built from it can be any length.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let marker = format!(" ... [truncated: {} bytes in all]", text.len());
    let budget = max.saturating_sub(marker.len());
    let cut = (0..=budget)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let mut out = String::with_capacity(max);
    out.push_str(&text[..cut]);
    if out.len() + marker.len() <= max {
        out.push_str(&marker);
    }
    Cow::Owned(out)
}

/// A condition message that the API server accepts.
pub fn condition_message(text: &str) -> Cow<'_, str> {
    truncate(text, CONDITION_MESSAGE_MAX)
}

/// An Event note that the API server accepts.
pub fn event_note(text: &str) -> Cow<'_, str> {
    truncate(text, EVENT_NOTE_MAX)
}

/// Text for one log line.
pub fn log_text(text: &str) -> Cow<'_, str> {
    truncate(text, LOG_TEXT_MAX)
}

/// An error with every cause behind it, `outer: inner: innermost`, for a log line or a message.
/// kube's errors say only `client error (Connect)` at the top; the reason (an unknown certificate
/// authority, a refused connection) is several sources down.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        // Some layers repeat their source in their own text; say each thing once.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn truncation_marks_the_cut_and_keeps_short_text() {
        assert!(matches!(truncate("short", 10), Cow::Borrowed("short")));
        let long = "x".repeat(200_000);
        let cut = condition_message(&long);
        assert_eq!(cut.len(), CONDITION_MESSAGE_MAX);
        assert!(
            cut.ends_with(" ... [truncated: 200000 bytes in all]"),
            "{}",
            &cut[32_700..]
        );
        let note = event_note(&long);
        assert!(note.len() <= EVENT_NOTE_MAX);
        assert!(note.starts_with("xxxx"));
        // Multi-byte characters are never split.
        let snowmen = "☃".repeat(1000);
        let note = event_note(&snowmen);
        assert!(note.len() <= EVENT_NOTE_MAX);
        assert!(
            note.trim_end_matches(|c| c != '☃')
                .chars()
                .all(|c| c == '☃')
        );
        // A limit shorter than the marker still holds.
        assert!(truncate(&long, 5).len() <= 5);
    }

    #[test]
    fn error_chain_names_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] Middle);
        #[derive(Debug, thiserror::Error)]
        #[error("invalid peer certificate: UnknownIssuer")]
        struct Middle(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("UnknownIssuer")]
        struct Inner;
        assert_eq!(
            error_chain(&Outer(Middle(Inner))),
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        );
    }

    proptest! {
        /// Whatever the text and limit: within the limit, a prefix of the text (plus the marker),
        /// and unchanged when it fits.
        #[test]
        fn truncate_fits_and_keeps_a_prefix(text in any::<String>(), extra in "[a-zé☃]{0,300}", max in 0usize..400) {
            let text = format!("{text}{extra}");
            let out = truncate(&text, max);
            prop_assert!(out.len() <= max);
            if text.len() <= max {
                prop_assert_eq!(out.as_ref(), text.as_str());
            } else {
                let kept = out.split(" ... [truncated: ").next().unwrap_or_default();
                prop_assert!(text.starts_with(kept));
            }
        }
    }

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
