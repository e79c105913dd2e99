//! lodestone-controller: gives LoadBalancer Services addresses from IPAddressPools.
//!
//! - [`ipam`]: the pure allocation core (plain data in, decisions out).
//! - [`service`], [`pools`], [`status`]: pure translations between Kubernetes objects and the
//!   IPAM's plain data (requests, pool configurations, the status to show).
//! - [`reconciler`]: the I/O shell: watches in, server-side applies and Events out; [`trim`]
//!   decides what its caches keep of each object.
//! - [`nodes`]: the Nodes' own addresses, which are never handed out.
//! - [`metrics`]: Prometheus metrics and the probe endpoints.
#![forbid(unsafe_code)]

pub mod ipam;
pub mod metrics;
pub mod nodes;
pub mod pools;
pub mod reconciler;
pub mod service;
pub mod status;
pub mod trim;
