//! The subcommands, one module each: the I/O shell around the library's pure functions.

pub mod cluster;
pub mod migrate_metallb;
pub mod status;
pub mod why;
