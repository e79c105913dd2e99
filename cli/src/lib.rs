//! lodestonectl's library: the pure parts of its subcommands, testable without a cluster.
//!
//! - [`migrate`]: MetalLB layer-2 configuration → Lodestone resources.

pub mod migrate;
