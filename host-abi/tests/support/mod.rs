//! The in-memory embedder host-abi's integration tests drive filters with. It lives in
//! `weir_sdk::testing` (the filter authors' harness is built on it), so there is one copy: these
//! tests use it from there. Integration tests link the same `weir-host-abi` build the sdk uses,
//! so the types are the same.

#![allow(dead_code, unused_imports)] // Each test module uses a different part of the embedder.

pub use weir_sdk::testing::embedder::*;

/// Envoy's stream sequences over the in-memory embedder.
pub mod driver {
    pub use weir_sdk::testing::driver::*;
}
