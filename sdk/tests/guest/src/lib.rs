//! A guest filter for weir-sdk's tests: every guest-side helper (typed config, typed properties,
//! route setters) is called from inside wasm and its result written where the harness can see it.
//!
//! * `on_configure`: `config::on_configure` into `Config`; logs `config: prefix=<prefix>`.
//! * Request headers: for each typed property accessor adds request header
//!   `<prefix>-<name>: <value>` (ints in decimal, bools `true`/`false`, `none` when `None`); then
//!   sets the route decision from request headers `x-set-cluster`, `x-set-timeout-ms`,
//!   `x-set-path`, `x-set-retries` and adds `<prefix>-route-cluster: <route::cluster()>`.
//! * Response headers: adds `<prefix>-response-code: <properties::response_code()>`.

use serde::Deserialize;
use std::time::Duration;
use weir_sdk::prelude::*;
use weir_sdk::proxy_wasm;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
struct Config {
    prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix: "x-p".to_owned(),
        }
    }
}

#[derive(Default)]
struct Root {
    config: Config,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let ok = config::on_configure(&mut self.config);
        if ok {
            weir_sdk::log::info!("config: prefix={}", self.config.prefix);
        }
        ok
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            prefix: self.config.prefix.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    prefix: String,
}

fn show<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let found = [
            ("request-path", show(properties::request_path())),
            ("request-url-path", show(properties::request_url_path())),
            ("request-method", show(properties::request_method())),
            ("request-host", show(properties::request_host())),
            ("request-scheme", show(properties::request_scheme())),
            ("request-id", show(properties::request_id())),
            ("request-protocol", show(properties::request_protocol())),
            ("source-address", show(properties::source_address())),
            ("source-ip", show(properties::source_ip())),
            ("source-port", show(properties::source_port())),
            (
                "destination-address",
                show(properties::destination_address()),
            ),
            ("connection-mtls", show(properties::connection_mtls())),
            ("sni", show(properties::requested_server_name())),
            ("uri-san", show(properties::uri_san_peer_certificate())),
            ("dns-san", show(properties::dns_san_peer_certificate())),
            ("subject", show(properties::subject_peer_certificate())),
            ("plugin-name", show(properties::plugin_name())),
            ("plugin-root-id", show(properties::plugin_root_id())),
            ("plugin-vm-id", show(properties::plugin_vm_id())),
            ("node-id", show(properties::string(&["xds", "node", "id"]))),
        ];
        for (name, value) in found {
            self.add_http_request_header(&format!("{}-{name}", self.prefix), &value);
        }
        let header = |s: &Self, name: &str| s.get_http_request_header(name);
        let mut results = Vec::new();
        if let Some(c) = header(self, "x-set-cluster") {
            results.push(route::set_cluster(&c));
        }
        if let Some(ms) = header(self, "x-set-timeout-ms").and_then(|v| v.parse().ok()) {
            results.push(route::set_timeout(Duration::from_millis(ms)));
        }
        if let Some(p) = header(self, "x-set-path") {
            results.push(route::set_path(&p));
        }
        if let Some(n) = header(self, "x-set-retries").and_then(|v| v.parse().ok()) {
            results.push(route::set_retries(n));
        }
        // Wire-form paths: written raw, read back raw and through the segment API; an unknown
        // one reads as absent.
        if let Some(v) = header(self, "x-set-raw") {
            let set = properties::set_raw(b"weir\0guest\0raw", v.as_bytes());
            let raw = properties::get_raw(b"weir\0guest\0raw").map(String::from_utf8);
            let seg = properties::string(&["weir", "guest", "raw"]);
            let missing = properties::get_raw(b"weir\0guest\0nothing");
            let summary = format!("set={set:?} raw={raw:?} seg={seg:?} missing={missing:?}");
            self.add_http_request_header(&format!("{}-raw", self.prefix), &summary);
        }
        let ok = results.iter().all(Result::is_ok);
        self.add_http_request_header(&format!("{}-route-set", self.prefix), &ok.to_string());
        self.add_http_request_header(
            &format!("{}-route-cluster", self.prefix),
            &show(route::cluster()),
        );
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.add_http_response_header(
            &format!("{}-response-code", self.prefix),
            &show(properties::response_code()),
        );
        Action::Continue
    }
}
