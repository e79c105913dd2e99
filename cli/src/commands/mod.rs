//! The subcommands, one module each: the I/O shell around the library's pure functions.

pub mod migrate_metallb;
