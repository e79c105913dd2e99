//! Embedded Kubernetes API server.
pub mod merge;
