//! Endpoint discovery: where a cluster's addresses come from when the manifest names a host
//! rather than listing addresses (Envoy's `STRICT_DNS` and `LOGICAL_DNS`).
//!
//! [`dns`] owns the one question discovery asks the network: "which addresses does this host
//! have now, and for how long?" It is a [`Resolver`] (hickory's, configured to cache nothing, so
//! every call sees the nameserver's current answer) that returns every A and AAAA record of a
//! host with the soonest TTL expiry ([`Resolved`]), or a [`DnsError`] that names the host.
//!
//! Discovery runs on the control thread's runtime, never on a worker: a resolution is a few
//! datagrams every refresh interval, and workers only ever see its result (a new endpoint set
//! published to them). This layer knows nothing of clusters, pools or requests; it sits below
//! `upstream`, which schedules refreshes from [`Resolved::valid_for`] and applies the answers.

pub mod dns;

pub use dns::{DnsError, Nameservers, Resolved, Resolver};
