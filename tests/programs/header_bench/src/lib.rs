//! `header_bench`: the smallest useful header filter, for benchmarks (host-abi's callback cost and
//! the proxy's chain benchmark).
//!
//! Behaviour: request headers read `:path` and `user-agent` (missing = empty) and add
//! `x-bench: <len(:path) + len(user-agent)>`; returns Continue. Nothing else is overridden. With
//! the plugin configuration `declare`, `on_configure` declares that only the request-header phase
//! is handled (`weir.declare_http_phases`), so Weir skips the other HTTP callbacks.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_context_id| Box::new(Root));
    proxy_wasm::set_http_context(|_context_id, _root_context_id| Box::new(HeaderBench));
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if self.get_plugin_configuration().as_deref() == Some(b"declare") {
            let _ = hostcalls::call_foreign_function(
                "weir.declare_http_phases",
                Some(b"request_headers"),
            );
        }
        true
    }
}

struct HeaderBench;

impl Context for HeaderBench {}

impl HttpContext for HeaderBench {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let agent = self
            .get_http_request_header("user-agent")
            .unwrap_or_default();
        self.add_http_request_header("x-bench", &(path.len() + agent.len()).to_string());
        Action::Continue
    }
}
