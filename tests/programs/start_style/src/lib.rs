//! `start_style`: a minimal header filter that exports `_start` by hand instead of using
//! `proxy_wasm::main!` (which exports `_initialize`), the way filters for SDK versions before
//! 0.2 were written. A host must call `_start` when `_initialize` is absent.
//!
//! Behaviour: request headers get `x-start-style: 1`; response headers get `x-start-style: 1`;
//! both return Continue. `_start` logs `start_style: _start` at INFO.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

/// The module's entry point, run once by the host after instantiation.
// Exporting a symbol by name is the one `unsafe` attribute this program needs: it is how old
// filters registered their contexts before `proxy_wasm::main!` existed.
#[unsafe(no_mangle)]
pub extern "C" fn _start() {
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_http_context(|_context_id, _root_context_id| Box::new(StartStyle));
    log::info!("start_style: _start");
}

struct StartStyle;

impl Context for StartStyle {}

impl HttpContext for StartStyle {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_request_header("x-start-style", "1");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-start-style", "1");
        Action::Continue
    }
}
