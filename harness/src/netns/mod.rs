//! Network-namespace topologies.
