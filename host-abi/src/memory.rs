//! All guest linear-memory access goes through here: bounds checks in u64, copies into host
//! buffers, and writes of host data into guest memory through the guest's own allocator.
//!
//! Rules (proxy-wasm-abi.md §3): `len == 0` is empty whatever the pointer; results are allocated
//! with the exact size via `proxy_on_memory_allocate` (or `malloc`), empty results are `(0, 0)`;
//! no memory slice is kept across the allocator call because the guest may grow (move) memory.

use wasmtime::{Caller, Memory};

use crate::error::FailureReason;
use crate::state::HostState;

/// A host-detected guest fault that ends the VM (returned as the host function's error, which
/// wasmtime turns into a trap; `Vm` recovers the reason by downcasting).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct HostTrap {
    pub(crate) reason: FailureReason,
    pub(crate) message: String,
}

/// Builds the trap for an ABI violation.
pub(crate) fn abi_trap(message: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(HostTrap {
        reason: FailureReason::AbiViolation,
        message: message.into(),
    })
}

/// Builds the trap for a pointer/length outside guest memory.
pub(crate) fn bad_pointer(func: &str, ptr: u32, len: u64) -> wasmtime::Error {
    wasmtime::Error::new(HostTrap {
        reason: FailureReason::Trap,
        message: format!("{func}: guest passed an out-of-bounds pointer {ptr:#x} (len {len})"),
    })
}

/// The byte range `[ptr, ptr + len)` if it lies within a memory of `mem_len` bytes.
pub(crate) fn range(mem_len: usize, ptr: u32, len: u64) -> Option<std::ops::Range<usize>> {
    let end = u64::from(ptr).checked_add(len)?;
    if end > mem_len as u64 {
        return None;
    }
    Some(ptr as usize..end as usize)
}

fn memory(caller: &Caller<'_, HostState>) -> wasmtime::Result<Memory> {
    caller
        .data()
        .memory
        .ok_or_else(|| abi_trap("module has no exported memory"))
}

/// Copies `[ptr, ptr+len)` out of guest memory. Traps on a bad range or a copy above `cap`.
pub(crate) fn read(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    ptr: u32,
    len: u32,
    cap: usize,
) -> wasmtime::Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if len as usize > cap {
        return Err(abi_trap(format!(
            "{func}: guest passed {len} bytes, more than the copy cap of {cap}"
        )));
    }
    let mem = memory(caller)?;
    let data = mem.data(&*caller);
    let r = range(data.len(), ptr, u64::from(len))
        .ok_or_else(|| bad_pointer(func, ptr, u64::from(len)))?;
    Ok(data[r].to_vec())
}

/// Runs `f` over the guest bytes `[ptr, ptr+len)` and the host state without copying.
pub(crate) fn with_bytes<R>(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    ptr: u32,
    len: u32,
    f: impl FnOnce(&[u8], &mut HostState) -> R,
) -> wasmtime::Result<R> {
    let mem = memory(caller)?;
    let (data, state) = mem.data_and_store_mut(caller);
    if len == 0 {
        return Ok(f(&[], state));
    }
    let r = range(data.len(), ptr, u64::from(len))
        .ok_or_else(|| bad_pointer(func, ptr, u64::from(len)))?;
    Ok(f(&data[r], state))
}

/// Like [`with_bytes`] for two guest ranges (e.g. key and value).
pub(crate) fn with_two<R>(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    (p1, l1): (u32, u32),
    (p2, l2): (u32, u32),
    f: impl FnOnce(&[u8], &[u8], &mut HostState) -> R,
) -> wasmtime::Result<R> {
    let mem = memory(caller)?;
    let (data, state) = mem.data_and_store_mut(caller);
    let a = if l1 == 0 {
        0..0
    } else {
        range(data.len(), p1, u64::from(l1)).ok_or_else(|| bad_pointer(func, p1, u64::from(l1)))?
    };
    let b = if l2 == 0 {
        0..0
    } else {
        range(data.len(), p2, u64::from(l2)).ok_or_else(|| bad_pointer(func, p2, u64::from(l2)))?
    };
    Ok(f(&data[a], &data[b], state))
}

/// Writes raw bytes at `ptr` (used for out-params and WASI buffers).
pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    ptr: u32,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    let data = mem.data_mut(caller);
    let r = range(data.len(), ptr, bytes.len() as u64)
        .ok_or_else(|| bad_pointer(func, ptr, bytes.len() as u64))?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian u32 out-param.
pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    ptr: u32,
    v: u32,
) -> wasmtime::Result<()> {
    write(caller, func, ptr, &v.to_le_bytes())
}

/// Writes a little-endian u64 out-param.
pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    ptr: u32,
    v: u64,
) -> wasmtime::Result<()> {
    write(caller, func, ptr, &v.to_le_bytes())
}

/// Checks that out-params can be written before doing any work with side effects.
pub(crate) fn check_out(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    ptrs: &[u32],
) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    let len = mem.data_size(&*caller);
    for &p in ptrs {
        range(len, p, 4).ok_or_else(|| bad_pointer(func, p, 4))?;
    }
    Ok(())
}

/// Hands `bytes` to the guest: allocates exactly `bytes.len()` with the guest allocator, copies,
/// and writes `(ptr, len)` to the out-params. Empty data → `(0, 0)` without calling the allocator.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    bytes: &[u8],
    ptr_out: u32,
    size_out: u32,
) -> wasmtime::Result<()> {
    check_out(caller, func, &[ptr_out, size_out])?;
    if bytes.is_empty() {
        write_u32(caller, func, ptr_out, 0)?;
        return write_u32(caller, func, size_out, 0);
    }
    let cap = caller
        .data()
        .plugin
        .limits
        .max_copy_bytes
        .max(caller.data().plugin.limits.max_map_bytes);
    if bytes.len() > cap || bytes.len() > u32::MAX as usize {
        return Err(abi_trap(format!(
            "{func}: result of {} bytes exceeds the copy cap of {cap}",
            bytes.len()
        )));
    }
    let ptr = allocate(caller, func, bytes.len() as u32)?;
    write(caller, func, ptr, bytes)?;
    write_u32(caller, func, ptr_out, ptr)?;
    write_u32(caller, func, size_out, bytes.len() as u32)
}

/// Calls the guest allocator (re-entrantly). A null or out-of-bounds result is an ABI violation.
pub(crate) fn allocate(
    caller: &mut Caller<'_, HostState>,
    func: &str,
    size: u32,
) -> wasmtime::Result<u32> {
    let alloc = caller
        .data()
        .alloc
        .clone()
        .ok_or_else(|| abi_trap("module has no allocator"))?;
    caller.data_mut().in_allocator = true;
    let result = alloc.call(&mut *caller, size);
    caller.data_mut().in_allocator = false;
    let ptr = result?;
    if ptr == 0 {
        return Err(abi_trap(format!(
            "{func}: guest allocator returned null for {size} bytes"
        )));
    }
    let mem = memory(caller)?;
    if range(mem.data_size(&*caller), ptr, u64::from(size)).is_none() {
        return Err(abi_trap(format!(
            "{func}: guest allocator returned {ptr:#x}, outside memory, for {size} bytes"
        )));
    }
    Ok(ptr)
}

/// Traps if a host call other than the few cpp-host allows is made from inside the allocator.
pub(crate) fn not_in_allocator(caller: &Caller<'_, HostState>, func: &str) -> wasmtime::Result<()> {
    if caller.data().in_allocator {
        return Err(abi_trap(format!(
            "{func} called from inside the guest allocator"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn range_checks_in_u64() {
        assert_eq!(range(100, 0, 100), Some(0..100));
        assert_eq!(range(100, 99, 1), Some(99..100));
        assert_eq!(range(100, 100, 0), Some(100..100));
        assert_eq!(range(100, 100, 1), None);
        assert_eq!(range(100, u32::MAX, u64::from(u32::MAX)), None);
        assert_eq!(
            range(usize::MAX, u32::MAX, 1),
            Some(u32::MAX as usize..u32::MAX as usize + 1)
        );
    }
}
