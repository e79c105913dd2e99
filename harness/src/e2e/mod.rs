//! Running the real binaries in a namespace topology, shared by the e2e tests and the sandbox.
//!
//! - [`forward`]: reach the API server (root namespace loopback) from inside a node namespace.
//! - [`traffic`]: a responder on each node answering with the node's name, and a prober on the
//!   client recording who answered when.
//! - [`process`]: a binary running in a namespace, with its log, signals and cleanup.
//! - [`lab`]: all of the above assembled: API server, bridge, nodes, client, speakers.
//! - [`objects`]: Nodes, Services with status, EndpointSlices created by hand.
//! - [`controller`]: the real controller binary in the root namespace.
//! - [`metrics`]: a speaker's Prometheus metrics and probes, read inside its namespace.
//! - [`flood`]: unauthenticated UDP at a fixed rate, as a hostile host would send.
//! - [`router`]: FRR and BIRD as BGP peers in a namespace, their FIB, flows over ECMP.
//! - [`logs`]: checking `--log-json` output: every line about an object names it.
//! - [`neigh_prober`]: an independent ARP/NDP prober on the client's LAN recording who claims
//!   each address, and when.
//! - [`stress`]: CPU load from `stress-ng`, stopped on drop.

pub mod controller;
pub mod flood;
pub mod forward;
pub mod lab;
pub mod logs;
pub mod metrics;
pub mod neigh_prober;
pub mod objects;
pub mod process;
pub mod router;
pub mod stress;
pub mod traffic;

pub use controller::ControllerProcess;
pub use forward::{Forwarder, forward_into, forward_out_of, kubeconfig_via};
pub use neigh_prober::{AddressReport, Claim, NeighProber};
pub use process::SpeakerProcess;
pub use traffic::{Answer, Prober, Responder, longest_gap, runs};
