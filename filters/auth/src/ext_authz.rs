//! The external authorization callout: the request's method, path and chosen headers go to the
//! authorization cluster, and its answer (or its failure) becomes the decision.

use std::cell::RefCell;

use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::types::{LogLevel, MapType};

use crate::config::ExtAuthz;
use crate::{Metrics, Outcome, Reason, State, deny, request_header};

pub(crate) fn start_ext_authz(ext: &ExtAuthz, state: &RefCell<State>) -> Outcome {
    let method = request_header(":method").unwrap_or_else(|| "GET".into());
    let path = format!(
        "{}{}",
        ext.path,
        request_header(":path").unwrap_or_else(|| "/".into())
    );
    let forwarded: Vec<(String, String)> = ext
        .forward_headers
        .iter()
        .filter_map(|h| Some((h.clone(), request_header(h)?)))
        .collect();
    let mut headers = vec![
        (":method", method.as_str()),
        (":path", path.as_str()),
        (":authority", ext.authority.as_str()),
    ];
    headers.extend(forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match hostcalls::dispatch_http_call(&ext.cluster, headers, None, vec![], ext.timeout) {
        Ok(_token) => Outcome::WaitAuthz,
        Err(e) => {
            let _ = hostcalls::log(
                LogLevel::Warn,
                &format!("auth: ext_authz callout to {} failed: {e:?}", ext.cluster),
            );
            ext_authz_failed(ext, state)
        }
    }
}

fn ext_authz_failed(ext: &ExtAuthz, state: &RefCell<State>) -> Outcome {
    if ext.failure_mode_allow {
        Metrics::add(state.borrow().metrics.allowed);
        Outcome::Allow
    } else {
        deny(state, 403, Reason::ExtAuthzUnavailable)
    }
}

/// Handles the ext_authz answer (the callout response being delivered now).
pub(crate) fn finish_ext_authz(ext: &ExtAuthz, state: &RefCell<State>) -> Outcome {
    let answer = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let status = answer
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u32>().ok());
    match status {
        Some(200..=299) => {
            for name in &ext.allow_headers {
                if let Some((_, v)) = answer.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))
                    && let Ok(v) = std::str::from_utf8(v)
                {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(v));
                }
            }
            Metrics::add(state.borrow().metrics.allowed);
            Outcome::Allow
        }
        Some(s @ (401 | 403)) => deny(state, s, Reason::Forbidden),
        Some(400..=499) => deny(state, 403, Reason::Forbidden),
        _ => ext_authz_failed(ext, state),
    }
}
