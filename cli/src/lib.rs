//! lodestonectl's library: the pure parts of its subcommands, testable without a cluster.
//!
//! - [`migrate`]: MetalLB layer-2 configuration → Lodestone resources.
//! - [`diagnose`]: the `status` view and the `why` findings, from objects already fetched.
#![forbid(unsafe_code)]

pub mod diagnose;
pub mod migrate;
