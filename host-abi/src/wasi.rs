//! The WASI preview1 calls Rust filters import, and nothing more: `fd_write` (stdout → Info,
//! stderr → Error), `environ_*` (the plugin's configured environment only), `clock_time_get`,
//! `random_get` (≤ 64 KiB per call), `proc_exit` (a trap), and cheap safe stubs for `args_*`,
//! `fd_close`, `fd_seek`, `fd_fdstat_get`, `sched_yield`, `poll_oneoff`. No filesystem, no sockets.
//!
//! Unlike `proxy_*` calls, a bad pointer here returns errno `FAULT`, which is what WASI callers
//! expect.

use wasmtime::{Caller, Linker};

use crate::error::FailureReason;
use crate::memory::{self, HostTrap};
use crate::state::HostState;
use crate::types::LogLevel;

const M: &str = "wasi_snapshot_preview1";
const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOTSUP: i32 = 58;
const SPIPE: i32 = 70;
/// cpp-host's per-call cap for `random_get`.
const MAX_RANDOM: u32 = 64 << 10;

/// Writes bytes at `ptr`, or reports FAULT.
fn put(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> Result<(), i32> {
    let Some(mem) = caller.data().memory else {
        return Err(FAULT);
    };
    let data = mem.data_mut(caller);
    let r = memory::range(data.len(), ptr, bytes.len() as u64).ok_or(FAULT)?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

fn errno(r: Result<(), i32>) -> i32 {
    r.err().unwrap_or(SUCCESS)
}

fn fd_write(
    caller: &mut Caller<'_, HostState>,
    fd: u32,
    iovs: u32,
    n: u32,
    nwritten: u32,
) -> Result<(), i32> {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Err(BADF),
    };
    let Some(mem) = caller.data().memory else {
        return Err(FAULT);
    };
    let cap = caller.data().plugin.limits.max_copy_bytes;
    let (data, st) = mem.data_and_store_mut(&mut *caller);
    let table = memory::range(data.len(), iovs, u64::from(n) * 8).ok_or(FAULT)?;
    let mut out = Vec::new();
    for iov in data[table].chunks_exact(8) {
        let p = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let l = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let r = memory::range(data.len(), p, u64::from(l)).ok_or(FAULT)?;
        if out.len() + r.len() > cap {
            return Err(INVAL);
        }
        out.extend_from_slice(&data[r]);
    }
    let total = out.len() as u32;
    let text = String::from_utf8_lossy(&out);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if !text.is_empty() {
        st.host.log(level, text);
    }
    put(caller, nwritten, &total.to_le_bytes())
}

fn environ_sizes(caller: &mut Caller<'_, HostState>, count: u32, size: u32) -> Result<(), i32> {
    let env = &caller.data().plugin.environ;
    let n = env.len() as u32;
    let bytes: usize = env.iter().map(|e| e.len() + 1).sum();
    put(caller, count, &n.to_le_bytes())?;
    put(caller, size, &(bytes as u32).to_le_bytes())
}

fn environ_get(caller: &mut Caller<'_, HostState>, ptrs: u32, buf: u32) -> Result<(), i32> {
    let plugin = caller.data().plugin.clone();
    let mut at = u64::from(buf);
    for (i, e) in plugin.environ.iter().enumerate() {
        let p = u32::try_from(at).map_err(|_| FAULT)?;
        put(
            caller,
            ptrs.checked_add(i as u32 * 4).ok_or(FAULT)?,
            &p.to_le_bytes(),
        )?;
        let mut s = e.clone();
        s.push(0);
        put(caller, p, &s)?;
        at += s.len() as u64;
    }
    Ok(())
}

fn clock_time_get(caller: &mut Caller<'_, HostState>, id: u32, out: u32) -> Result<(), i32> {
    let t = match id {
        0 => crate::time::realtime_nanos(caller.data()),
        1 => caller.data().host.monotonic_nanos(),
        _ => return Err(NOTSUP),
    };
    put(caller, out, &t.to_le_bytes())
}

fn random_get(caller: &mut Caller<'_, HostState>, buf: u32, len: u32) -> Result<(), i32> {
    if len > MAX_RANDOM {
        return Err(INVAL);
    }
    let mut bytes = vec![0u8; len as usize];
    getrandom::fill(&mut bytes).map_err(|_| NOTSUP)?;
    put(caller, buf, &bytes)
}

fn fdstat(caller: &mut Caller<'_, HostState>, fd: u32, out: u32) -> Result<(), i32> {
    if fd > 2 {
        return Err(BADF);
    }
    // filetype CHARACTER_DEVICE (2), no flags, rights: fd_write (1 << 6) for stdout/stderr only.
    let mut stat = [0u8; 24];
    stat[0] = 2;
    let rights: u64 = if fd == 0 { 0 } else { 1 << 6 };
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    put(caller, out, &stat)
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        M,
        "fd_write",
        |mut c: Caller<'_, HostState>, fd: u32, iovs: u32, n: u32, nw: u32| -> i32 {
            errno(fd_write(&mut c, fd, iovs, n, nw))
        },
    )?;
    linker.func_wrap(
        M,
        "environ_sizes_get",
        |mut c: Caller<'_, HostState>, count: u32, size: u32| -> i32 {
            errno(environ_sizes(&mut c, count, size))
        },
    )?;
    linker.func_wrap(
        M,
        "environ_get",
        |mut c: Caller<'_, HostState>, ptrs: u32, buf: u32| -> i32 {
            errno(environ_get(&mut c, ptrs, buf))
        },
    )?;
    linker.func_wrap(
        M,
        "args_sizes_get",
        |mut c: Caller<'_, HostState>, count: u32, size: u32| -> i32 {
            errno(
                put(&mut c, count, &0u32.to_le_bytes())
                    .and_then(|()| put(&mut c, size, &0u32.to_le_bytes())),
            )
        },
    )?;
    linker.func_wrap(
        M,
        "args_get",
        |_c: Caller<'_, HostState>, _ptrs: u32, _buf: u32| -> i32 { SUCCESS },
    )?;
    linker.func_wrap(
        M,
        "clock_time_get",
        |mut c: Caller<'_, HostState>, id: u32, _precision: i64, out: u32| -> i32 {
            errno(clock_time_get(&mut c, id, out))
        },
    )?;
    linker.func_wrap(
        M,
        "random_get",
        |mut c: Caller<'_, HostState>, buf: u32, len: u32| -> i32 {
            errno(random_get(&mut c, buf, len))
        },
    )?;
    linker.func_wrap(
        M,
        "proc_exit",
        |_c: Caller<'_, HostState>, code: u32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(HostTrap {
                reason: FailureReason::Trap,
                message: format!("guest called proc_exit({code})"),
            }))
        },
    )?;
    linker.func_wrap(
        M,
        "fd_close",
        |_c: Caller<'_, HostState>, _fd: u32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        M,
        "fd_seek",
        |_c: Caller<'_, HostState>, fd: u32, _off: i64, _whence: u32, _out: u32| -> i32 {
            if fd <= 2 { SPIPE } else { BADF }
        },
    )?;
    linker.func_wrap(
        M,
        "fd_fdstat_get",
        |mut c: Caller<'_, HostState>, fd: u32, out: u32| -> i32 { errno(fdstat(&mut c, fd, out)) },
    )?;
    linker.func_wrap(M, "sched_yield", |_c: Caller<'_, HostState>| -> i32 {
        SUCCESS
    })?;
    linker.func_wrap(
        M,
        "poll_oneoff",
        |mut c: Caller<'_, HostState>, _in: u32, _out: u32, _n: u32, nevents: u32| -> i32 {
            // Filters must not block a worker: report no events and NOTSUP.
            let _ = put(&mut c, nevents, &0u32.to_le_bytes());
            NOTSUP
        },
    )?;
    Ok(())
}
