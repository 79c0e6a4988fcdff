//! Paths of the guest test programs built by build.rs.
