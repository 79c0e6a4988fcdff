//! Clocks and timers: `proxy_get_current_time_nanoseconds` (the embedder's clock, so tests can
//! freeze time) and `proxy_set_tick_period_milliseconds` (a timer on the root context).

use std::sync::OnceLock;
use std::time::{Duration, Instant, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use crate::memory;
use crate::state::HostState;
use crate::types::Status;

/// Nanoseconds since the first call in this process (a monotonic clock for WASI).
pub fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Wall-clock nanoseconds since the Unix epoch of the embedder's clock.
pub(crate) fn realtime_nanos(st: &HostState) -> u64 {
    st.host
        .now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, HostState>, out: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_current_time_nanoseconds";
            let now = realtime_nanos(caller.data());
            memory::write_u64(&mut caller, F, out, now)?;
            Ok(Status::Ok.raw())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut caller: Caller<'_, HostState>, ms: u32| -> wasmtime::Result<i32> {
            memory::not_in_allocator(&caller, "proxy_set_tick_period_milliseconds")?;
            let period = (ms != 0).then(|| Duration::from_millis(u64::from(ms)));
            let st = caller.data_mut();
            st.tick_period = period;
            st.host.set_tick_period(period);
            Ok(Status::Ok.raw())
        },
    )?;
    Ok(())
}
