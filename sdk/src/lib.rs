//! weir-sdk: what a Weir filter author depends on.
//! Re-exports the upstream `proxy-wasm` crate so filters written for any proxy-wasm host run here.
#![deny(missing_docs)]

pub use proxy_wasm;
