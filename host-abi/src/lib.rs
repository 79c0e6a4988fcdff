//! weir-host-abi: a proxy-wasm ABI 0.2.1 host on wasmtime.
//! It owns the Wasm side of a filter; the embedder (the proxy, or the sdk's test harness) supplies
//! the stream through a trait, so this crate never depends on the proxy.
