//! Declaring the HTTP phases a filter handles, so Weir skips the rest.
//!
//! The proxy-wasm SDK exports every callback, so the host delivers all of them: a filter that
//! only edits request headers still pays, per request, for `on_http_response_headers`,
//! `on_http_response_body`, `on_log` and `on_done` calls that do nothing. Declaring the phases
//! once, from `on_vm_start` or `on_configure`, tells Weir to skip the others (they count as
//! `Continue`); stream contexts are still created and deleted, and callouts, ticks and queues are
//! unaffected. The declaration may depend on the configuration (declare `ResponseHeaders` only
//! when there are response headers to add).
//!
//! It goes through the standard `proxy_call_foreign_function` (`weir.declare_http_phases`), so
//! the filter stays portable: another host answers "not found" and delivers every callback, and
//! [`declare`] returns `false`.
//!
//! ```no_run
//! use weir_sdk::phases::{self, Phase};
//! // in RootContext::on_configure:
//! phases::declare(&[Phase::RequestHeaders, Phase::Log]);
//! ```
//!
//! Declare every phase the filter overrides: an undeclared one is never called on Weir.

use proxy_wasm::hostcalls;

/// One HTTP stream phase (callback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `on_http_request_headers`.
    RequestHeaders,
    /// `on_http_request_body`.
    RequestBody,
    /// `on_http_request_trailers`.
    RequestTrailers,
    /// `on_http_response_headers`.
    ResponseHeaders,
    /// `on_http_response_body`.
    ResponseBody,
    /// `on_http_response_trailers`.
    ResponseTrailers,
    /// `on_log`.
    Log,
    /// `on_done`.
    Done,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 8] = [
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::RequestTrailers,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::ResponseTrailers,
        Phase::Log,
        Phase::Done,
    ];

    /// The name the declaration uses.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::RequestTrailers => "request_trailers",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
            Phase::Log => "log",
            Phase::Done => "done",
        }
    }
}

/// The foreign function Weir answers.
pub const DECLARE_HTTP_PHASES: &str = "weir.declare_http_phases";

/// The declaration's argument: the phase names, comma-separated.
pub fn declaration(phases: &[Phase]) -> String {
    let mut out = String::new();
    for p in phases {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(p.name());
    }
    out
}

/// Declares the phases this filter handles (call it from `on_vm_start` or `on_configure`).
/// `true` when the host honours it (Weir); `false` on a host without the extension, which then
/// delivers every phase as usual.
pub fn declare(phases: &[Phase]) -> bool {
    hostcalls::call_foreign_function(DECLARE_HTTP_PHASES, Some(declaration(phases).as_bytes()))
        .is_ok()
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn the_declaration_is_what_the_host_parses() {
        let all = declaration(&Phase::ALL);
        assert_eq!(
            weir_host_abi::HttpPhases::parse(&all),
            Ok(weir_host_abi::HttpPhases::ALL)
        );
        assert_eq!(
            DECLARE_HTTP_PHASES,
            weir_host_abi::phases::DECLARE_HTTP_PHASES
        );
        assert_eq!(
            declaration(&[Phase::RequestHeaders, Phase::Log]),
            "request_headers,log"
        );
    }
}
