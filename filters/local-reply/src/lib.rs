//! `builtin:local-reply`: answers requests locally instead of forwarding them, optionally only
//! when a request header is present.
//!
//! Configuration (JSON plugin configuration; unknown fields are rejected):
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `status` | integer 200–599 | required | the reply's HTTP status |
//! | `body` | string | `""` | the reply body (Envoy adds `content-type: text/plain` when it is non-empty and no `content-type` is configured) |
//! | `headers` | object `{name: value}` | `{}` | extra reply headers (names lower-cased, added in name order) |
//! | `when_header` | string | absent | reply only to requests carrying this header (any value, even empty); others pass through untouched |
//!
//! Example: `{"status": 403, "body": "denied\n", "headers": {"x-denied-by": "weir"},
//! "when_header": "x-deny"}`.
//!
//! Behaviour (Envoy-compatible): the reply is sent with `proxy_send_local_response` from the
//! request-headers phase, which then returns `Pause`; the host answers downstream after the
//! callback returns, and the request never reaches the upstream or later filters. The reply still
//! passes through the response phase of earlier filters. A bad configuration is logged at error
//! level and fails `on_configure`, so the plugin does not load.

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
    proxy_wasm::set_root_context(|_root_context_id| Box::new(LocalReplyRoot { config: None }));
}}

/// The configuration as written by the operator.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    status: u32,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    when_header: Option<String>,
}

/// The validated configuration.
struct Config {
    status: u32,
    body: String,
    /// Lower-cased names, checked values.
    headers: Vec<(String, String)>,
    /// Lower-cased; may be a pseudo-header.
    when_header: Option<String>,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        if !(200..=599).contains(&raw.status) {
            return Err(format!(
                "status {} is not a final HTTP status (200-599)",
                raw.status
            ));
        }
        let headers = raw
            .headers
            .into_iter()
            .map(|(name, value)| {
                let name =
                    header_name(&name, false).map_err(|e| format!("header {name:?}: {e}"))?;
                header_value(&value).map_err(|e| format!("header {name:?}: {e}"))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let when_header = raw
            .when_header
            .map(|name| header_name(&name, true).map_err(|e| format!("when_header {name:?}: {e}")))
            .transpose()?;
        Ok(Self {
            status: raw.status,
            body: raw.body,
            headers,
            when_header,
        })
    }
}

struct LocalReplyRoot {
    /// `None` until `on_configure` succeeds (a host never creates streams before that).
    config: Option<Rc<Config>>,
}

impl Context for LocalReplyRoot {}

impl RootContext for LocalReplyRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                weir_sdk::phases::declare(&[Phase::RequestHeaders]);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("local-reply: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(LocalReply {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct LocalReply {
    config: Option<Rc<Config>>,
}

impl Context for LocalReply {}

impl HttpContext for LocalReply {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Unconfigured (the host ignored a failed on_configure): pass through rather than trap.
        let Some(config) = &self.config else {
            return Action::Continue;
        };
        if let Some(name) = &config.when_header
            && self.get_http_request_header_bytes(name).is_none()
        {
            return Action::Continue;
        }
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let body = (!config.body.is_empty()).then_some(config.body.as_bytes());
        self.send_http_response(config.status, headers, body);
        Action::Pause
    }
}
