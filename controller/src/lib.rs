//! lodestone-controller: gives LoadBalancer Services addresses from IPAddressPools.
//!
//! - [`ipam`]: the pure allocation core (plain data in, decisions out).

pub mod ipam;
