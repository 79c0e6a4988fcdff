//! HTTP callouts: `proxy_http_call` (validated here, dispatched by the embedder, answered later via
//! `Vm::on_http_call_response`) and `proxy_get_status`.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use crate::embedder::HttpCallRequest;
use crate::memory;
use crate::pairs;
use crate::state::HostState;
use crate::types::{Pairs, Status};

/// Envoy requires these pseudo-headers on a callout.
const REQUIRED: [&[u8]; 3] = [b":method", b":path", b":authority"];

pub(crate) fn has_required_headers(headers: &Pairs) -> bool {
    REQUIRED.iter().all(|r| {
        headers
            .iter()
            .any(|(k, v)| k.as_slice() == *r && !v.is_empty())
    })
}

/// Envoy reads the timeout as a signed 32-bit value: ≥ 2^31 is invalid; 0 means none.
pub(crate) fn timeout(ms: u32) -> Result<Option<Duration>, Status> {
    if ms > i32::MAX as u32 {
        return Err(Status::BadArgument);
    }
    Ok((ms != 0).then(|| Duration::from_millis(u64::from(ms))))
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         up: u32,
         ul: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         tp: u32,
         tl: u32,
         timeout_ms: u32,
         tokp: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_http_call";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[tokp])?;
            let limits = caller.data().plugin.limits;
            let upstream = memory::read(&mut caller, F, up, ul, 64 << 10)?;
            let headers = memory::read(&mut caller, F, hp, hl, limits.max_map_bytes)?;
            let body = memory::read(&mut caller, F, bp, bl, limits.max_copy_bytes)?;
            let trailers = memory::read(&mut caller, F, tp, tl, limits.max_map_bytes)?;
            let st = caller.data_mut();
            let caps = crate::headers::caps(st);
            let (Ok(mut headers), Ok(trailers)) = (
                pairs::deserialize(&headers, caps),
                pairs::deserialize(&trailers, caps),
            ) else {
                return Ok(Status::BadArgument.raw());
            };
            for (k, _) in &mut headers {
                k.make_ascii_lowercase();
            }
            if !has_required_headers(&headers) {
                return Ok(Status::BadArgument.raw());
            }
            let timeout = match timeout(timeout_ms) {
                Ok(t) => t,
                Err(s) => return Ok(s.raw()),
            };
            let Ok(upstream) = String::from_utf8(upstream) else {
                return Ok(Status::BadArgument.raw());
            };
            let token = st.next_token(0);
            let context = st.acting_context();
            let request = HttpCallRequest {
                token,
                context,
                upstream,
                headers,
                body,
                trailers,
                timeout,
            };
            match st.host.dispatch_http_call(request) {
                Ok(()) => {
                    st.http_calls.insert(token, context);
                    memory::write_u32(&mut caller, F, tokp, token)?;
                    Ok(Status::Ok.raw())
                }
                Err(Status::BadArgument) => Ok(Status::BadArgument.raw()),
                Err(_) => Ok(Status::InternalFailure.raw()),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut caller: Caller<'_, HostState>, cp: u32, mp: u32, ml: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_status";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[cp, mp, ml])?;
            let (code, message) = caller
                .data()
                .call
                .status
                .as_deref()
                .cloned()
                .unwrap_or((0, String::new()));
            memory::write_u32(&mut caller, F, cp, code)?;
            memory::return_bytes(&mut caller, F, message.as_bytes(), mp, ml)?;
            Ok(Status::Ok.raw())
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok: Pairs = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/".to_vec()),
            (b":authority".to_vec(), b"a".to_vec()),
        ];
        assert!(has_required_headers(&ok));
        assert!(!has_required_headers(&ok[..2].to_vec()));
        assert_eq!(timeout(0), Ok(None));
        assert_eq!(timeout(5), Ok(Some(Duration::from_millis(5))));
        assert_eq!(timeout(u32::MAX), Err(Status::BadArgument));
    }
}
