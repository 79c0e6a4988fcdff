//! weir-sdk: what a Weir filter author depends on.
//!
//! A Weir filter is an ordinary proxy-wasm 0.2.1 filter (Rust → `wasm32-wasip1`): this crate
//! re-exports the upstream [`proxy_wasm`] crate unchanged, so filters written for Envoy run here and
//! the other way round. On top it adds small, optional helpers:
//!
//! * [`config`]: typed plugin configuration (JSON via serde) for `on_configure`, with the
//!   manifest's grammar for durations and sizes (`10ms`, `1m30s`, `64KiB`).
//! * [`phases`]: declare the HTTP phases the filter handles, so Weir skips the callbacks it
//!   does not need (portable: other hosts ignore it).
//! * [`properties`]: typed reads of Envoy's attributes (`request.path`, `source.address`,
//!   `connection.mtls`, `plugin_name`, …), decoded from their wire encodings.
//! * [`random`]: a per-VM generator seeded from WASI randomness (splits, percentages, ids).
//! * [`route`]: the route decision a filter hands to the proxy (`weir.route.cluster`,
//!   `weir.route.timeout_ms`, `weir.route.path`, `weir.route.retries`,
//!   `weir.route.per_try_timeout_ms`).
//! * [`testing`] (native targets only): load a built `.wasm` through `weir-host-abi` and drive it
//!   in a `cargo test` — requests, responses, bodies, callouts, ticks, logs, local replies.
//!
//! Start from the template in `sdk/template/` and read `sdk/README.md` ("Writing a filter").
//!
//! ```no_run
//! use weir_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize, Default)]
//! struct Config { cluster: String }
//!
//! struct Root { config: Config }
//! impl Context for Root {}
//! impl RootContext for Root {
//!     fn on_configure(&mut self, _size: usize) -> bool {
//!         weir_sdk::config::on_configure(&mut self.config)
//!     }
//! }
//! ```
#![deny(missing_docs)]

pub use log;
pub use proxy_wasm;

/// With the `talc` feature, the guest's global allocator: talc's binned free lists in place of the
/// dlmalloc Rust links into `wasm32-wasip1` by default. A proxy-wasm filter allocates on every
/// hostcall that returns data (the host calls `proxy_on_memory_allocate`), for every property path
/// and header it builds, and for every context; in the stock edge chain that is about 40
/// malloc/free pairs per request, and dlmalloc spent about 270 instructions per pair
/// (`benches/HISTORY.md`). Single-threaded wasm only: a module built with `atomics` keeps dlmalloc.
#[cfg(all(
    feature = "talc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

pub mod config;
pub mod phases;
pub mod properties;
pub mod random;
pub mod route;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// What most filters import: the proxy-wasm traits and types, and the Weir helper modules.
pub mod prelude {
    pub use crate::{config, phases, properties, route};
    pub use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
    pub use proxy_wasm::types::{
        Action, Bytes, ContextType, GrpcStatusCode, LogLevel, MetricType, PeerType, Status,
    };
}
