//! Stream control: `proxy_continue_stream`, `proxy_close_stream`, `proxy_send_local_response`.
//! None of them acts immediately: each is recorded as a deferred effect and handed to the embedder
//! in the callback's `Outcome` (Envoy's "after VM call" actions; no re-entrant callbacks).

use wasmtime::{Caller, Linker};

use crate::memory;
use crate::pairs;
use crate::state::{ContextKind, HostState};
use crate::types::{Status, StreamType};
use crate::vm::LocalReply;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for (name, close) in [
        ("proxy_continue_stream", false),
        ("proxy_close_stream", true),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |caller: Caller<'_, HostState>, kind: u32| -> wasmtime::Result<i32> {
                memory::not_in_allocator(&caller, name)?;
                let Some(kind) = StreamType::from_raw(kind) else {
                    return Ok(Status::BadArgument.raw());
                };
                let mut caller = caller;
                caller.data_mut().defer_stream(close, kind);
                Ok(Status::Ok.raw())
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Caller<'_, HostState>,
         status: u32,
         dp: u32,
         dl: u32,
         bp: u32,
         bl: u32,
         hp: u32,
         hl: u32,
         grpc: i32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_send_local_response";
            memory::not_in_allocator(&caller, F)?;
            let limits = caller.data().plugin.limits;
            if !(100..=999).contains(&status) {
                return Ok(Status::BadArgument.raw());
            }
            let details = memory::read(&mut caller, F, dp, dl, 64 << 10)?;
            let body = memory::read(&mut caller, F, bp, bl, limits.max_copy_bytes)?;
            let headers = memory::read(&mut caller, F, hp, hl, limits.max_map_bytes)?;
            let st = caller.data_mut();
            let Ok(mut headers) = pairs::deserialize(&headers, crate::headers::caps(st)) else {
                return Ok(Status::BadArgument.raw());
            };
            for (k, _) in &mut headers {
                k.make_ascii_lowercase();
            }
            if st.contexts.get(&st.acting_context()) != Some(&ContextKind::Http) {
                // Only an HTTP stream can be answered (the root must set_effective_context first).
                return Ok(Status::BadArgument.raw());
            }
            st.defer_local_reply(LocalReply {
                status,
                headers,
                body,
                grpc_status: (grpc >= 0).then_some(grpc),
                // Envoy replaces spaces in details so they stay one token in access logs.
                details: String::from_utf8_lossy(&details).replace(' ', "_"),
            });
            Ok(Status::Ok.raw())
        },
    )?;
    Ok(())
}
