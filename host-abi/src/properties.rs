//! `proxy_get_property` / `proxy_set_property`. Lookup order for reads: the lent stream (if it
//! belongs to the acting context), then the plugin host, then host-abi's own `plugin_name`,
//! `plugin_root_id`, `plugin_vm_id`. Writes go to the stream, or to the plugin host outside one.

use wasmtime::{Caller, Linker};

use crate::memory;
use crate::pairs;
use crate::state::HostState;
use crate::types::Status;

/// Longest property path accepted.
const MAX_PATH: usize = 64 << 10;

fn lookup(st: &mut HostState, path: &[&[u8]]) -> Option<Vec<u8>> {
    if let Some(v) = st.acting_stream().and_then(|s| s.get_property(path)) {
        return Some(v);
    }
    if let Some(v) = st.host.get_property(path) {
        return Some(v);
    }
    match path {
        [b"plugin_name"] => Some(st.plugin.name.as_bytes().to_vec()),
        [b"plugin_root_id"] => Some(st.plugin.root_id.as_bytes().to_vec()),
        [b"plugin_vm_id"] => Some(st.plugin.vm_id.as_bytes().to_vec()),
        _ => None,
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: Caller<'_, HostState>,
         pp: u32,
         pl: u32,
         vp: u32,
         vl: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_property";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[vp, vl])?;
            if pl as usize > MAX_PATH {
                return Err(memory::abi_trap(format!(
                    "{F}: guest passed {pl} bytes, more than the copy cap of {MAX_PATH}"
                )));
            }
            // The path is read in place (no copy), split on the stack.
            let found = memory::with_bytes(&mut caller, F, pp, pl, |path, st| {
                pairs::with_segments(path, |segments| lookup(st, segments))
            })?;
            let cap = caller.data().plugin.limits.max_copy_bytes;
            match found {
                Some(v) if v.len() > cap => Ok(Status::SerializationFailure.raw()),
                Some(v) => {
                    memory::return_bytes(&mut caller, F, &v, vp, vl)?;
                    Ok(Status::Ok.raw())
                }
                None => Ok(Status::NotFound.raw()),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Caller<'_, HostState>,
         pp: u32,
         pl: u32,
         vp: u32,
         vl: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_set_property";
            memory::not_in_allocator(&caller, F)?;
            if pl as usize > MAX_PATH || vl as usize > caller.data().plugin.limits.max_copy_bytes {
                return Ok(Status::BadArgument.raw());
            }
            memory::with_two(&mut caller, F, (pp, pl), (vp, vl), |path, value, st| {
                pairs::with_segments(path, |segments| {
                    let r = match st.acting_stream() {
                        Some(s) => s.set_property(segments, value),
                        None => st.host.set_property(segments, value),
                    };
                    Status::code(r)
                })
            })
        },
    )?;
    Ok(())
}
