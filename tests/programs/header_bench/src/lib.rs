//! `header_bench`: the smallest useful header filter, for benchmarks (host-abi's callback cost and
//! the proxy's chain benchmark).
//!
//! Behaviour: request headers read `:path` and `user-agent` (missing = empty) and add
//! `x-bench: <len(:path) + len(user-agent)>`; returns Continue. Nothing else is overridden.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_context_id, _root_context_id| Box::new(HeaderBench));
}}

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
