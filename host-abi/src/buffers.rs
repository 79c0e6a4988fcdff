//! `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes` (and the spec's `proxy_get_buffer_status`).
//!
//! Body and L4 data buffers (types 0–3) come from the lent `StreamHost`; host-abi itself serves the
//! callout body (4), gRPC message (5), VM configuration (6, any time), plugin configuration (7,
//! only inside `on_configure`) and foreign-function arguments (8).

use wasmtime::{Caller, Linker};

use crate::memory;
use crate::state::HostState;
use crate::types::{BufferType, Status};

/// Runs `f` over the current contents of `buffer`, or returns `NotFound` when it is not available.
fn with_buffer<R>(
    st: &mut HostState,
    buffer: BufferType,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, Status> {
    match buffer {
        BufferType::HttpRequestBody
        | BufferType::HttpResponseBody
        | BufferType::DownstreamData
        | BufferType::UpstreamData => {
            let stream = st.acting_stream().ok_or(Status::NotFound)?;
            stream.buffer(buffer).map(f).ok_or(Status::NotFound)
        }
        BufferType::HttpCallResponseBody => st
            .call
            .callout
            .as_ref()
            .map(|c| f(&c.body))
            .ok_or(Status::NotFound),
        BufferType::GrpcReceiveBuffer => st
            .call
            .grpc
            .as_ref()
            .and_then(|g| g.message.as_deref())
            .map(f)
            .ok_or(Status::NotFound),
        BufferType::VmConfiguration => Ok(f(&st.plugin.vm_configuration)),
        BufferType::PluginConfiguration => {
            if st.call.in_configure {
                Ok(f(&st.plugin.configuration))
            } else {
                Err(Status::NotFound)
            }
        }
        BufferType::CallData => st.call.call_data.as_deref().map(f).ok_or(Status::NotFound),
    }
}

/// `[start, start + max)` clamped to `len`, in u64 so `max = u32::MAX` cannot overflow.
pub(crate) fn clamp(len: usize, start: u32, max: u32) -> std::ops::Range<usize> {
    let start = u64::from(start).min(len as u64);
    let end = (start + u64::from(max)).min(len as u64);
    start as usize..end as usize
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         kind: u32,
         start: u32,
         max: u32,
         dp: u32,
         sp: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_buffer_bytes";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[dp, sp])?;
            let Some(kind) = BufferType::from_raw(kind) else {
                return Ok(Status::BadArgument.raw());
            };
            let cap = caller.data().plugin.limits.max_copy_bytes;
            let bytes = with_buffer(caller.data_mut(), kind, |b| {
                let r = clamp(b.len(), start, max);
                b[r].to_vec()
            });
            match bytes {
                Ok(bytes) if bytes.len() > cap => Ok(Status::BadArgument.raw()),
                Ok(bytes) => {
                    memory::return_bytes(&mut caller, F, &bytes, dp, sp)?;
                    Ok(Status::Ok.raw())
                }
                Err(s) => Ok(s.raw()),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         kind: u32,
         start: u32,
         size: u32,
         dp: u32,
         dl: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_set_buffer_bytes";
            memory::not_in_allocator(&caller, F)?;
            let Some(kind) = BufferType::from_raw(kind) else {
                return Ok(Status::BadArgument.raw());
            };
            if dl as usize > caller.data().plugin.limits.max_copy_bytes {
                return Ok(Status::BadArgument.raw());
            }
            memory::with_bytes(&mut caller, F, dp, dl, |data, st| {
                let r = match kind {
                    BufferType::HttpRequestBody
                    | BufferType::HttpResponseBody
                    | BufferType::DownstreamData
                    | BufferType::UpstreamData => match st.acting_stream() {
                        Some(stream) => {
                            stream.set_buffer(kind, start as usize, size as usize, data)
                        }
                        None => Err(Status::NotFound),
                    },
                    // Host-owned buffers are read-only.
                    _ => Err(Status::BadArgument),
                };
                Status::code(r)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: Caller<'_, HostState>, kind: u32, lp: u32, fp: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_buffer_status";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[lp, fp])?;
            let Some(kind) = BufferType::from_raw(kind) else {
                return Ok(Status::BadArgument.raw());
            };
            match with_buffer(caller.data_mut(), kind, |b| b.len()) {
                Ok(len) => {
                    memory::write_u32(&mut caller, F, lp, len.min(u32::MAX as usize) as u32)?;
                    memory::write_u32(&mut caller, F, fp, 0)?;
                    Ok(Status::Ok.raw())
                }
                Err(s) => Ok(s.raw()),
            }
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::clamp;
    use crate::embedder::edit_buffer;
    use crate::types::Status;

    #[test]
    fn ranges_clamp_without_overflow() {
        assert_eq!(clamp(5, 0, u32::MAX), 0..5);
        assert_eq!(clamp(5, 2, 2), 2..4);
        assert_eq!(clamp(5, 7, 2), 5..5);
        assert_eq!(clamp(5, u32::MAX, u32::MAX), 5..5);
    }

    #[test]
    fn envoy_buffer_edits() {
        let mut b = b"hello".to_vec();
        edit_buffer(&mut b, 0, 0, b"prepend.").unwrap();
        edit_buffer(&mut b, usize::MAX, 0, b".append").unwrap();
        assert_eq!(b, b"prepend.hello.append");
        let mut b = b"hello".to_vec();
        edit_buffer(&mut b, 0, usize::MAX, b"replace").unwrap();
        assert_eq!(b, b"replace");
        let mut b = b"hello".to_vec();
        edit_buffer(&mut b, 0, 1, b"partial.replace.").unwrap();
        assert_eq!(b, b"partial.replace.ello");
        let mut b = b"hello".to_vec();
        edit_buffer(&mut b, 0, 1, b"").unwrap();
        assert_eq!(b, b"ello");
        let mut b = b"hello".to_vec();
        assert_eq!(edit_buffer(&mut b, 2, 1, b"x"), Err(Status::BadArgument));
    }
}
