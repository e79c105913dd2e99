//! What each speaker tells the others about itself beyond "alive": whether it takes part in the
//! election, and whether its view of the cluster is fresh (it hears the API server).
//!
//! The election needs both and no other channel carries them when the API server is the thing
//! that failed: a speaker cut from the API server but alive in the membership must hand its
//! addresses over (its view is stale: new Services, deleted ones), but only if some peer still
//! has a fresh view — when the API server is gone for everybody, everybody keeps announcing.
//! And a speaker that shuts down says so, so that a peer left alone knows the addresses are
//! free rather than wondering whether it is itself the one cut off.
//!
//! The states travel as foca custom broadcasts, inside the authenticated datagrams, piggy-backed
//! on probes and gossip. Each speaker's state carries a random incarnation (one per start) and a
//! sequence number; a newer sequence of the known incarnation replaces the older one. A new
//! incarnation is believed only first-hand (from that speaker itself), so an old incarnation's
//! last words relayed by a third speaker cannot overwrite a restarted speaker's state.
//! Speakers of an older version answer broadcasts with an error foca logs and ignores; they
//! still answer the probe the broadcast rode on.

use std::collections::BTreeMap;

use foca::{BroadcastHandler, Invalidates};
use tokio::sync::watch;

use super::NodeId;

/// Format version of an encoded state.
const VERSION: u8 = 1;
/// Header: version, flags, incarnation, sequence.
const HEADER: usize = 1 + 1 + 8 + 8;
/// Names remembered at most (a key holder inventing names cannot grow this further).
const MAX_KNOWN: usize = 4096;

const ELECTABLE: u8 = 1;
const API_FRESH: u8 = 2;

/// One speaker's own account of itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeakerState {
    /// It takes part in the election: it announces what it owns and may be given more.
    pub electable: bool,
    /// It heard from the API server recently, so its view of the cluster is current.
    pub api_fresh: bool,
}

impl Default for SpeakerState {
    /// What a speaker that said nothing yet is taken to be: electable (as before states
    /// existed), freshness unknown (so it never makes another speaker leave).
    fn default() -> Self {
        SpeakerState {
            electable: true,
            api_fresh: false,
        }
    }
}

/// The last known state of every speaker that told one, by node name (this one included).
pub type States = BTreeMap<String, SpeakerState>;

/// A decoded broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Said {
    name: String,
    incarnation: u64,
    seq: u64,
    state: SpeakerState,
}

/// Why a broadcast could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// Shorter than the header, an unknown version, or a name that is not UTF-8.
    #[error("malformed speaker state broadcast")]
    Malformed,
}

pub(super) fn encode(said: &Said) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + said.name.len());
    out.push(VERSION);
    let mut flags = 0;
    if said.state.electable {
        flags |= ELECTABLE;
    }
    if said.state.api_fresh {
        flags |= API_FRESH;
    }
    out.push(flags);
    out.extend_from_slice(&said.incarnation.to_be_bytes());
    out.extend_from_slice(&said.seq.to_be_bytes());
    out.extend_from_slice(said.name.as_bytes());
    out
}

pub(super) fn decode(data: &[u8]) -> Result<Said, StateError> {
    let (header, name) = data.split_at_checked(HEADER).ok_or(StateError::Malformed)?;
    let [version, flags, rest @ ..] = header else {
        return Err(StateError::Malformed);
    };
    if *version != VERSION || name.is_empty() {
        return Err(StateError::Malformed);
    }
    let word = |i: usize| -> Result<u64, StateError> {
        let bytes: [u8; 8] = rest
            .get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or(StateError::Malformed)?;
        Ok(u64::from_be_bytes(bytes))
    };
    Ok(Said {
        name: std::str::from_utf8(name)
            .map_err(|_| StateError::Malformed)?
            .to_owned(),
        incarnation: word(0)?,
        seq: word(8)?,
        state: SpeakerState {
            electable: flags & ELECTABLE != 0,
            api_fresh: flags & API_FRESH != 0,
        },
    })
}

/// What foca keeps disseminating: the latest state per speaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StateKey {
    name: String,
}

impl Invalidates for StateKey {
    // The handler only hands foca news, so a newer item for the same speaker replaces the one
    // still being disseminated.
    fn invalidates(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Whether `said` is news given what is known of its speaker; `first_hand` when the datagram
/// came from that speaker itself (or is our own state).
fn is_news(known: Option<&(u64, u64, SpeakerState)>, said: &Said, first_hand: bool) -> bool {
    match known {
        None => true,
        Some((incarnation, seq, _)) if *incarnation == said.incarnation => said.seq > *seq,
        Some(_) => first_hand,
    }
}

/// Per speaker: incarnation, sequence, state.
type Known = BTreeMap<String, (u64, u64, SpeakerState)>;

/// The states known here, fed by foca, published on a watch channel. Clones share them, so
/// a renewed foca instance (see [`super::Membership::renew`]) keeps what was learnt.
#[derive(Clone)]
pub(super) struct StateBook {
    me: String,
    known: std::sync::Arc<std::sync::Mutex<Known>>,
    tx: std::sync::Arc<watch::Sender<States>>,
}

/// This speaker's own state and the numbers its broadcasts carry.
pub(super) struct OwnState {
    me: String,
    incarnation: u64,
    seq: u64,
    own: SpeakerState,
}

impl OwnState {
    /// The next broadcast of this speaker's state (`state` if given, else the current one).
    pub(super) fn next(&mut self, state: Option<SpeakerState>) -> Vec<u8> {
        if let Some(state) = state {
            self.own = state;
        }
        self.seq = self.seq.wrapping_add(1);
        encode(&Said {
            name: self.me.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            state: self.own,
        })
    }
}

impl StateBook {
    /// The book (for foca), this speaker's own state, and the published states.
    pub(super) fn new(me: String) -> (StateBook, OwnState, watch::Receiver<States>) {
        let (tx, rx) = watch::channel(States::new());
        (
            StateBook {
                me: me.clone(),
                known: Default::default(),
                tx: std::sync::Arc::new(tx),
            },
            OwnState {
                me,
                incarnation: rand::random(),
                seq: 0,
                own: SpeakerState::default(),
            },
            rx,
        )
    }

    fn publish(&self, known: &Known) {
        let states: States = known
            .iter()
            .map(|(name, (_, _, state))| (name.clone(), *state))
            .collect();
        self.tx.send_if_modified(|current| {
            let changed = *current != states;
            if changed {
                *current = states;
            }
            changed
        });
    }
}

impl BroadcastHandler<NodeId> for StateBook {
    type Key = StateKey;
    type Error = StateError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<StateKey>, StateError> {
        let said = decode(data)?;
        let ours = said.name == self.me;
        // Our own words relayed back are never news; only we speak for ourselves.
        if ours && sender.is_some() {
            return Ok(None);
        }
        let first_hand = sender.is_none_or(|s| s.name == said.name);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !is_news(known.get(&said.name), &said, first_hand) {
            return Ok(None);
        }
        if !known.contains_key(&said.name) && known.len() >= MAX_KNOWN {
            return Ok(None);
        }
        let key = StateKey {
            name: said.name.clone(),
        };
        known.insert(said.name, (said.incarnation, said.seq, said.state));
        self.publish(&known);
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(name: &str) -> NodeId {
        NodeId {
            name: name.into(),
            addr: "192.0.2.1:7946".parse().unwrap(),
            bump: 1,
        }
    }

    fn said(name: &str, incarnation: u64, seq: u64, electable: bool) -> Said {
        Said {
            name: name.into(),
            incarnation,
            seq,
            state: SpeakerState {
                electable,
                api_fresh: !electable,
            },
        }
    }

    #[test]
    fn newer_sequence_wins_and_a_new_incarnation_only_first_hand() {
        let (mut book, mut own, rx) = StateBook::new("a".into());
        let b = id("b");
        let c = id("c");
        assert!(
            book.receive_item(&encode(&said("b", 7, 1, true)), Some(&b))
                .unwrap()
                .is_some()
        );
        assert!(rx.borrow()["b"].electable);
        // Older or equal sequence: not news.
        assert!(
            book.receive_item(&encode(&said("b", 7, 1, false)), Some(&c))
                .unwrap()
                .is_none()
        );
        // Newer, relayed by c: news.
        assert!(
            book.receive_item(&encode(&said("b", 7, 2, false)), Some(&c))
                .unwrap()
                .is_some()
        );
        assert!(!rx.borrow()["b"].electable);
        // Another incarnation relayed by a third party: ignored; from b itself: believed.
        assert!(
            book.receive_item(&encode(&said("b", 9, 1, true)), Some(&c))
                .unwrap()
                .is_none()
        );
        assert!(
            book.receive_item(&encode(&said("b", 9, 1, true)), Some(&b))
                .unwrap()
                .is_some()
        );
        assert!(rx.borrow()["b"].electable);
        // Our own state comes in through `add_broadcast` (no sender) and is published too;
        // relayed back, it is not news.
        let own = own.next(Some(SpeakerState {
            electable: false,
            api_fresh: true,
        }));
        assert!(book.receive_item(&own, None).unwrap().is_some());
        assert!(!rx.borrow()["a"].electable);
        assert!(book.receive_item(&own, Some(&b)).unwrap().is_none());
        assert_eq!(
            book.receive_item(&[1, 2, 3], Some(&b)),
            Err(StateError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn encoding_round_trips(name in "[a-z0-9.-]{1,60}", inc in any::<u64>(), seq in any::<u64>(),
                                electable in any::<bool>(), api_fresh in any::<bool>()) {
            let s = Said { name, incarnation: inc, seq, state: SpeakerState { electable, api_fresh } };
            prop_assert_eq!(decode(&encode(&s)), Ok(s));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&data);
        }
    }
}
