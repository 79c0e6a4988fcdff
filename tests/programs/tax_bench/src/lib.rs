//! `tax_bench`: the third-party filter of the Wasm-tax benchmark (issue 27), written as an author
//! would write it for any proxy-wasm host, with the upstream SDK only.
//!
//! Per request: reads the `request.path` property and the `:path` header, adds one request
//! header (`x-tax-<config>: <len(path)>`); on the response, adds two headers (`x-tax-<config>`
//! with the same length and `x-tax-seen: <config>`). The plugin configuration is a word naming
//! the instance (`one`, `two`, …), so three instances in a chain add three distinct headers each
//! way, as `ENVOY_WASM_CONFIGS="one two three"` does for Envoy.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_context_id| Box::new(Root { word: String::new() }));
}}

struct Root {
    word: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        // A bare word, or a JSON string (quotes dropped).
        self.word = String::from_utf8_lossy(&config)
            .trim()
            .trim_matches('"')
            .to_owned();
        if self.word.is_empty() {
            self.word = "one".to_owned();
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Tax {
            name: format!("x-tax-{}", self.word),
            word: self.word.clone(),
            len: 0,
        }))
    }
}

struct Tax {
    name: String,
    word: String,
    len: usize,
}

impl Context for Tax {}

impl HttpContext for Tax {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let property = self
            .get_property(vec!["request", "path"])
            .map_or(0, |p| p.len());
        let header = self.get_http_request_header(":path").map_or(0, |p| p.len());
        self.len = property.max(header);
        self.add_http_request_header(&self.name, &self.len.to_string());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header(&self.name, &self.len.to_string());
        self.add_http_response_header("x-tax-seen", &self.word);
        Action::Continue
    }
}
