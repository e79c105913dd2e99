//! One way to declare a set of counters (and gauges) that several threads write and metrics
//! and tests read: `stats!` generates the shared struct of atomics and the plain snapshot
//! struct with its field-by-field copy, from one list of fields. The announcer's frame
//! counters and the membership's statistics are declared with it.
//!
//! Hand-written, not a crate: what is needed is a struct of plain atomics written lock-free on
//! the data plane's hot path and copied at a scrape; the metrics crates keep their own
//! registries and label sets instead, and a plain struct is what tests compare.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// A plain value with an atomic form that `stats!` can hold.
pub trait Plain: Copy {
    /// The atomic that holds it.
    type Atomic: Default + std::fmt::Debug;
    /// Reads it (relaxed: each counter stands alone, a snapshot is not a consistent cut).
    fn load(atomic: &Self::Atomic) -> Self;
}

macro_rules! plain {
    ($($plain:ty => $atomic:ty),* $(,)?) => {
        $(impl Plain for $plain {
            type Atomic = $atomic;
            fn load(atomic: &$atomic) -> $plain {
                atomic.load(Ordering::Relaxed)
            }
        })*
    };
}

plain! {
    u64 => AtomicU64,
    u32 => AtomicU32,
    usize => AtomicUsize,
    bool => AtomicBool,
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Declares a shared struct of atomics and its plain snapshot from one list of fields:
///
/// ```text
/// stats! {
///     /// Docs of the shared struct, written through its atomics.
///     pub struct Counters;
///     /// Docs of the snapshot.
///     pub struct CountersSnapshot {
///         /// Docs of the field.
///         frames: u64,
///     }
/// }
/// ```
///
/// generates `Counters { frames: AtomicU64 }` (`Debug, Default`; fields private to the
/// declaring module and its children, which write them), `CountersSnapshot { pub frames: u64 }`
/// (`Clone, Copy, Debug, Default, PartialEq, Eq`) and `Counters::snapshot()`. Field types are
/// those that implement [`Plain`]: `u64`, `u32`, `usize`, `bool`.
macro_rules! stats {
    (
        $(#[$shared_meta:meta])*
        $shared_vis:vis struct $shared:ident;
        $(#[$snapshot_meta:meta])*
        $snapshot_vis:vis struct $snapshot:ident {
            $( $(#[$field_meta:meta])* $name:ident : $plain:ty ),* $(,)?
        }
    ) => {
        $(#[$shared_meta])*
        #[derive(Debug, Default)]
        $shared_vis struct $shared {
            $( $name: <$plain as $crate::stats::Plain>::Atomic, )*
        }

        $(#[$snapshot_meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $snapshot_vis struct $snapshot {
            $( $(#[$field_meta])* pub $name: $plain, )*
        }

        impl $shared {
            /// Reads every field.
            $shared_vis fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $( $name: <$plain as $crate::stats::Plain>::load(&self.$name), )*
                }
            }
        }
    };
}
pub(crate) use stats;

#[cfg(test)]
mod tests {
    use super::inc;
    use std::sync::atomic::Ordering;

    super::stats! {
        /// Test counters.
        struct Shared;
        /// Their snapshot.
        struct Snapshot {
            /// A counter.
            frames: u64,
            /// A gauge.
            members: usize,
            /// A flag.
            formed: bool,
        }
    }

    #[test]
    fn the_snapshot_reads_each_field() {
        let s = Shared::default();
        inc(&s.frames);
        inc(&s.frames);
        s.members.store(3, Ordering::Relaxed);
        s.formed.store(true, Ordering::Relaxed);
        assert_eq!(
            s.snapshot(),
            Snapshot {
                frames: 2,
                members: 3,
                formed: true
            }
        );
        assert_eq!(Shared::default().snapshot(), Snapshot::default());
    }
}
