//! lodestone-speaker: decides which node answers for each LoadBalancer address, and answers.
//!
//! - [`election`], [`eligibility`]: pure decisions (who owns, who may announce), in the shared
//!   core `lodestone_crds` so `lodestonectl why` runs them too; re-exported here.
//! - [`membership`]: fast liveness of the other speakers over the node network.
//! - [`frames`]: ARP and NDP frames, built and parsed (pure).
//! - [`sys`]: the only module with `unsafe` (the allocator calls are in `lodestone-heap`):
//!   filtered raw sockets.
//! - [`announcer`], [`interfaces`]: answering ARP/NDP on the chosen links.
//! - [`plan`]: pure: from the cluster's objects to what this node announces.
//! - [`trim`]: pure: what the shell keeps of the cached cluster objects.
//! - [`hold`]: pure: pools that vanished while their addresses are served stay in the plan.
//! - [`bgp`], [`bfd`]: BGP mode: sessions with routers, and BFD to notice a dead path fast.
//! - [`run`], [`metrics`]: the I/O shell around it; [`stats`]: how the parts declare the
//!   counters that metrics read.
#![deny(unsafe_code)]

pub mod announcer;
pub mod bfd;
pub mod bgp;
pub mod frames;
pub mod hold;
pub mod interfaces;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod run;
pub mod stats;
pub mod sys;
pub mod trim;

pub use lodestone_crds::{election, eligibility};
