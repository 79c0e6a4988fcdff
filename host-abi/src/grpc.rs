//! gRPC callouts: `proxy_grpc_call`, `proxy_grpc_stream`, `proxy_grpc_send`, `proxy_grpc_cancel`,
//! `proxy_grpc_close`. Tokens carry the kind in their low 2 bits (1 = call, 2 = stream); answers
//! come back through `Vm::on_grpc_*`.

use wasmtime::{Caller, Linker};

use crate::embedder::GrpcCallRequest;
use crate::memory;
use crate::pairs;
use crate::state::HostState;
use crate::types::Status;

#[allow(clippy::too_many_arguments)]
fn dispatch(
    caller: &mut Caller<'_, HostState>,
    f: &'static str,
    (up, ul): (u32, u32),
    (sp, sl): (u32, u32),
    (mp, ml): (u32, u32),
    (mdp, mdl): (u32, u32),
    message: Option<(u32, u32)>,
    timeout_ms: u32,
    tokp: u32,
) -> wasmtime::Result<i32> {
    memory::not_in_allocator(caller, f)?;
    memory::check_out(caller, f, &[tokp])?;
    let limits = caller.data().plugin.limits;
    let upstream = memory::read(caller, f, up, ul, limits.max_copy_bytes)?;
    let service = memory::read(caller, f, sp, sl, 64 << 10)?;
    let method = memory::read(caller, f, mp, ml, 64 << 10)?;
    let metadata = memory::read(caller, f, mdp, mdl, limits.max_map_bytes)?;
    let msg = match message {
        Some((p, l)) => memory::read(caller, f, p, l, limits.max_copy_bytes)?,
        None => Vec::new(),
    };
    let st = caller.data_mut();
    let Ok(initial_metadata) = pairs::deserialize(&metadata, crate::headers::caps(st)) else {
        return Ok(Status::ParseFailure.raw());
    };
    let (Ok(service), Ok(method)) = (String::from_utf8(service), String::from_utf8(method)) else {
        return Ok(Status::ParseFailure.raw());
    };
    let timeout = match crate::http_call::timeout(timeout_ms) {
        Ok(t) => t,
        Err(_) => return Ok(Status::ParseFailure.raw()),
    };
    let streaming = message.is_none();
    let token = st.next_token(if streaming { 2 } else { 1 });
    let context = st.acting_context();
    let request = GrpcCallRequest {
        token,
        context,
        upstream,
        service,
        method,
        initial_metadata,
        message: msg,
        timeout,
        streaming,
    };
    match st.host.dispatch_grpc(request) {
        Ok(()) => {
            st.grpc_calls.insert(token, context);
            memory::write_u32(caller, f, tokp, token)?;
            Ok(Status::Ok.raw())
        }
        Err(Status::ParseFailure) => Ok(Status::ParseFailure.raw()),
        Err(_) => Ok(Status::InternalFailure.raw()),
    }
}

fn code(r: Result<(), Status>, allowed: &[Status]) -> i32 {
    match r {
        Ok(()) => Status::Ok.raw(),
        Err(s) if allowed.contains(&s) => s.raw(),
        Err(_) => allowed[0].raw(),
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Caller<'_, HostState>,
         up: u32,
         ul: u32,
         sp: u32,
         sl: u32,
         mp: u32,
         ml: u32,
         mdp: u32,
         mdl: u32,
         msgp: u32,
         msgl: u32,
         timeout: u32,
         tokp: u32|
         -> wasmtime::Result<i32> {
            dispatch(
                &mut caller,
                "proxy_grpc_call",
                (up, ul),
                (sp, sl),
                (mp, ml),
                (mdp, mdl),
                Some((msgp, msgl)),
                timeout,
                tokp,
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut caller: Caller<'_, HostState>,
         up: u32,
         ul: u32,
         sp: u32,
         sl: u32,
         mp: u32,
         ml: u32,
         mdp: u32,
         mdl: u32,
         tokp: u32|
         -> wasmtime::Result<i32> {
            dispatch(
                &mut caller,
                "proxy_grpc_stream",
                (up, ul),
                (sp, sl),
                (mp, ml),
                (mdp, mdl),
                None,
                0,
                tokp,
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut caller: Caller<'_, HostState>,
         token: u32,
         p: u32,
         l: u32,
         end: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_grpc_send";
            memory::not_in_allocator(&caller, F)?;
            let cap = caller.data().plugin.limits.max_copy_bytes;
            let msg = memory::read(&mut caller, F, p, l, cap)?;
            let st = caller.data_mut();
            if !st.grpc_calls.contains_key(&token) {
                return Ok(Status::NotFound.raw());
            }
            Ok(code(
                st.host.grpc_send(token, &msg, end != 0),
                &[Status::BadArgument, Status::NotFound],
            ))
        },
    )?;
    for (name, close) in [("proxy_grpc_cancel", false), ("proxy_grpc_close", true)] {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Caller<'_, HostState>, token: u32| -> wasmtime::Result<i32> {
                memory::not_in_allocator(&caller, name)?;
                let st = caller.data_mut();
                if !st.grpc_calls.contains_key(&token) {
                    return Ok(Status::NotFound.raw());
                }
                let r = if close {
                    st.host.grpc_close(token)
                } else {
                    st.grpc_calls.remove(&token);
                    st.host.grpc_cancel(token)
                };
                Ok(code(r, &[Status::NotFound]))
            },
        )?;
    }
    Ok(())
}
