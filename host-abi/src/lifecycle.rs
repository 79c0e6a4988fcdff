//! Context and VM lifecycle host functions: `proxy_set_effective_context`, `proxy_done`, and the
//! foreign-function escape hatch `proxy_call_foreign_function`. (The lifecycle *callbacks* are
//! driven by `Vm`.)

use wasmtime::{Caller, Linker};

use crate::memory;
use crate::phases::{DECLARE_HTTP_PHASES, HttpPhases};
use crate::state::HostState;
use crate::types::Status;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut caller: Caller<'_, HostState>, ctx: u32| -> wasmtime::Result<i32> {
            memory::not_in_allocator(&caller, "proxy_set_effective_context")?;
            let st = caller.data_mut();
            if !st.contexts.contains_key(&ctx) {
                return Ok(Status::BadArgument.raw());
            }
            st.call.effective = Some(ctx);
            Ok(Status::Ok.raw())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_done",
        |mut caller: Caller<'_, HostState>| -> wasmtime::Result<i32> {
            memory::not_in_allocator(&caller, "proxy_done")?;
            let st = caller.data_mut();
            if !st.root_done_pending {
                return Ok(Status::NotFound.raw());
            }
            st.root_done_pending = false;
            st.root_done_called = true;
            Ok(Status::Ok.raw())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut caller: Caller<'_, HostState>,
         np: u32,
         nl: u32,
         ap: u32,
         al: u32,
         rp: u32,
         rl: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_call_foreign_function";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[rp, rl])?;
            let cap = caller.data().plugin.limits.max_copy_bytes;
            if nl as usize > 64 << 10 || al as usize > cap {
                return Ok(Status::BadArgument.raw());
            }
            let result = memory::with_two(&mut caller, F, (np, nl), (ap, al), |name, args, st| {
                if name == DECLARE_HTTP_PHASES.as_bytes() {
                    return declare_http_phases(st, args);
                }
                let name = String::from_utf8_lossy(name);
                st.host.call_foreign_function(&name, args)
            })?;
            match result {
                Ok(bytes) => {
                    memory::return_bytes(&mut caller, F, &bytes, rp, rl)?;
                    Ok(Status::Ok.raw())
                }
                Err(
                    s @ (Status::NotFound
                    | Status::BadArgument
                    | Status::SerializationFailure
                    | Status::InternalFailure),
                ) => Ok(s.raw()),
                Err(_) => Ok(Status::InternalFailure.raw()),
            }
        },
    )?;
    Ok(())
}

/// `weir.declare_http_phases` (see [`crate::phases`]): from a root-context callback only; the
/// phases a module does not export stay skipped whatever it declares.
fn declare_http_phases(st: &mut HostState, args: &[u8]) -> Result<Vec<u8>, Status> {
    if st.acting_context() != st.root {
        return Err(Status::BadArgument);
    }
    let text = std::str::from_utf8(args).map_err(|_| Status::BadArgument)?;
    let declared = HttpPhases::parse(text).map_err(|name| {
        tracing::warn!(plugin = %st.plugin.name, phase = %name, known = %HttpPhases::ALL.names(), "{DECLARE_HTTP_PHASES}: unknown phase");
        Status::BadArgument
    })?;
    st.http_phases = HttpPhases::from_bits(declared.bits() & st.exported_phases.bits());
    Ok(Vec::new())
}
