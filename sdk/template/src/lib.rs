//! The Weir filter template: a small, real filter to copy and change.
//!
//! * Requests missing the configured `required_header` get a local `401` reply (and never reach an
//!   upstream).
//! * Requests carrying `x-canary: 1` are routed to the configured `canary_cluster` (a route
//!   decision the proxy reads after the request-header phase).
//! * Every response gets the configured header (`x-filtered: 1` by default).
//!
//! Configuration (the manifest's `config:`), every field optional:
//! ```json
//! {"required_header": "x-user", "canary_cluster": "v2",
//!  "response_header": "x-filtered", "response_value": "1"}
//! ```

use std::rc::Rc;

use serde::Deserialize;
use weir_sdk::log::{info, warn};
use weir_sdk::phases::Phase;
use weir_sdk::prelude::*;
// The upstream proxy-wasm crate, re-exported (for `main!` and anything the prelude leaves out).
use weir_sdk::proxy_wasm;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// The plugin configuration. Unknown fields are an error, so a typo in the manifest is reported
/// instead of silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Requests without this header are answered with 401 (`None`: no check).
    required_header: Option<String>,
    /// Requests with `x-canary: 1` go to this cluster (`None`: no canary routing).
    canary_cluster: Option<String>,
    /// The header added to every response.
    response_header: String,
    /// Its value.
    response_value: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            required_header: None,
            canary_cluster: None,
            response_header: "x-filtered".to_owned(),
            response_value: "1".to_owned(),
        }
    }
}

/// The root context: parses the configuration once and hands it to every request.
#[derive(Default)]
struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let mut config = Config::default();
        // Logs the parse error and returns false, so the proxy refuses the bad configuration.
        let ok = weir_sdk::config::on_configure(&mut config);
        self.config = Rc::new(config);
        // The phases this filter overrides: Weir skips its other callbacks (other hosts ignore
        // the declaration). Keep this list in step with the `HttpContext` methods below.
        weir_sdk::phases::declare(&[Phase::RequestHeaders, Phase::ResponseHeaders]);
        ok
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request/response.
struct Request {
    config: Rc<Config>,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(name) = &self.config.required_header
            && self.get_http_request_header(name).is_none()
        {
            let path = properties::request_path().unwrap_or_default();
            warn!("denied {path}: missing header {name}");
            self.send_http_response(
                401,
                vec![("x-missing-header", name.as_str())],
                Some(b"missing header\n"),
            );
            // A local reply ends the request; Pause keeps it from going upstream meanwhile.
            return Action::Pause;
        }
        if let Some(cluster) = &self.config.canary_cluster
            && self.get_http_request_header("x-canary").as_deref() == Some("1")
        {
            match route::set_cluster(cluster) {
                Ok(()) => info!(
                    "canary: {} → {cluster}",
                    properties::request_path().unwrap_or_default()
                ),
                Err(status) => warn!("canary: could not route to {cluster}: {status:?}"),
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header(&self.config.response_header, &self.config.response_value);
        Action::Continue
    }
}
