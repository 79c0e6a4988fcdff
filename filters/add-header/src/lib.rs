//! `builtin:add-header`: adds request and/or response headers, and copies request headers.
//!
//! Configuration (JSON plugin configuration; every field optional, unknown fields are rejected):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `request` | object `{name: value}` | headers appended to every request (before it goes upstream) |
//! | `response` | object `{name: value}` | headers appended to every response (also to local replies) |
//! | `copy` | array of `{"from": name, "to": name}` | for each entry whose `from` request header is present, append its (first) value as request header `to` |
//!
//! Example: `{"request": {"x-env": "prod"}, "response": {"x-served-by": "weir"},
//! "copy": [{"from": ":authority", "to": "x-original-host"}]}`.
//!
//! Behaviour (Envoy-compatible):
//! * Headers are *appended* (`proxy_add_header_map_value`): an existing header of the same name
//!   keeps its value and gains another one. Names are lower-cased at configuration time, as Envoy
//!   does on add; pairs of one object are added in name order.
//! * Copies run before the request additions, so they read the request as it reached this filter.
//!   `from` may be a pseudo-header (`:path`, `:authority`, …); `to` may not. Values are copied as
//!   bytes, so a non-UTF-8 value is copied intact rather than trapping the filter.
//! * Copies happen in the request-headers phase only: Envoy no longer exposes request headers in
//!   the response phase.
//! * Every phase returns `Continue`.
//! * It declares the phases it uses (`weir_sdk::phases`): request headers, and response headers
//!   only when `response` has entries; Weir skips its other callbacks.
//! * A bad configuration (unparseable JSON, an invalid header name or value, a pseudo-header as a
//!   target) is logged at error level and fails `on_configure`, so the plugin does not load.
//!
//! Cost: the configuration is parsed once in `on_configure` and shared with every stream through an
//! `Rc`; per request the only allocations are the ones the SDK forces (the boxed stream context
//! and the value buffer of each copied header).

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Deserialize;
use weir_sdk::config::{header_name, header_value};
use weir_sdk::phases::Phase;
use weir_sdk::proxy_wasm;
use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use weir_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_root_context_id| Box::new(AddHeaderRoot {
        config: Rc::new(Config::default()),
    }));
}}

/// The configuration as written by the operator.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    request: BTreeMap<String, String>,
    #[serde(default)]
    response: BTreeMap<String, String>,
    #[serde(default)]
    copy: Vec<RawCopy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    from: String,
    to: String,
}

/// The validated configuration: lower-cased names, checked values.
#[derive(Default)]
struct Config {
    request: Vec<(String, String)>,
    response: Vec<(String, String)>,
    /// `(from, to)` pairs.
    copy: Vec<(String, String)>,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))?
        };
        let added = |map: BTreeMap<String, String>, what: &str| {
            map.into_iter()
                .map(|(name, value)| {
                    let name = header_name(&name, false)
                        .map_err(|e| format!("{what} header {name:?}: {e}"))?;
                    header_value(&value).map_err(|e| format!("{what} header {name:?}: {e}"))?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let copy = raw
            .copy
            .into_iter()
            .map(|c| {
                let from = header_name(&c.from, true)
                    .map_err(|e| format!("copy from {:?}: {e}", c.from))?;
                let to =
                    header_name(&c.to, false).map_err(|e| format!("copy to {:?}: {e}", c.to))?;
                Ok((from, to))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            request: added(raw.request, "request")?,
            response: added(raw.response, "response")?,
            copy,
        })
    }
}

struct AddHeaderRoot {
    config: Rc<Config>,
}

impl Context for AddHeaderRoot {}

impl RootContext for AddHeaderRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                // Only the phases this configuration uses: the others are never called on Weir.
                let mut phases = vec![Phase::RequestHeaders];
                if !config.response.is_empty() {
                    phases.push(Phase::ResponseHeaders);
                }
                weir_sdk::phases::declare(&phases);
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("add-header: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeader {
            config: Rc::clone(&self.config),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AddHeader {
    config: Rc<Config>,
}

impl Context for AddHeader {}

impl HttpContext for AddHeader {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (from, to) in &self.config.copy {
            if let Some(value) = self.get_http_request_header_bytes(from) {
                self.add_http_request_header_bytes(to, &value);
            }
        }
        for (name, value) in &self.config.request {
            self.add_http_request_header(name, value);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.config.response {
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }
}
