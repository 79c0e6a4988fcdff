//! `proxy_log` and `proxy_get_log_level`: guest log lines go to the embedder's `PluginHost::log`.

use wasmtime::{Caller, Linker};

use crate::memory;
use crate::state::HostState;
use crate::types::{LogLevel, Status};

/// Longest log line passed on; longer lines are truncated rather than refused (logging must not fail).
const MAX_LOG_LINE: usize = 64 << 10;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Allowed from inside the allocator, as in cpp-host.
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut caller: Caller<'_, HostState>,
         level: u32,
         ptr: u32,
         len: u32|
         -> wasmtime::Result<i32> {
            let level = LogLevel::from_raw(level).unwrap_or(LogLevel::Critical);
            let take = len.min(MAX_LOG_LINE as u32);
            memory::with_bytes(&mut caller, "proxy_log", ptr, take, |msg, st| {
                st.host.log(level, &String::from_utf8_lossy(msg));
            })?;
            Ok(Status::Ok.raw())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut caller: Caller<'_, HostState>, out: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_log_level";
            memory::not_in_allocator(&caller, F)?;
            let level = caller.data().host.log_level() as u32;
            memory::write_u32(&mut caller, F, out, level)?;
            Ok(Status::Ok.raw())
        },
    )?;
    Ok(())
}
