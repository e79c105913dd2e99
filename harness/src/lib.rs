//! Lodestone's test harness: what the end-to-end tests and the sandbox stand on.
//!
//! - [`apiserver`]: an embedded, in-memory Kubernetes API server (HTTPS, bearer token,
//!   kubeconfig) that the real binaries and kubectl talk to as if it were a cluster.
//! - [`cluster`]: one entry point for tests: the embedded server, or a real kube-apiserver + etcd
//!   when `TEST_ASSET_KUBE_APISERVER` and `TEST_ASSET_ETCD` name binaries (the envtest convention).
//! - [`clusterlab`]: a real multi-node Kubernetes cluster (control plane, nodes with containerd,
//!   kubelet and kube-proxy, a client) in network namespaces, from a directory of Kubernetes
//!   binaries: the judge of the real-cluster suite.
//! - [`docs`]: the commands the user documentation shows, read from the Markdown for tests.
//! - [`tls`]: the CA and serving certificate both API servers present.
//! - [`netns`]: network namespaces, veth pairs and bridges for layer-2 topologies on one machine.
//! - [`e2e`]: running the real binaries in that topology: API access from inside a namespace,
//!   a traffic responder on each node, and process management shared by tests and the sandbox.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod cluster;
pub mod clusterlab;
pub mod docs;
pub mod e2e;
pub mod netns;
pub mod signal;
pub mod tls;
