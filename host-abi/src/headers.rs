//! Header/trailer/metadata map host functions. Maps 0–3 come from the lent `StreamHost`; host-abi
//! serves gRPC metadata (4, 5) and callout response headers/trailers (6, 7) itself, read-only.
//! Keys are lower-cased on the way in (add/replace/set), as Envoy does.

use wasmtime::{Caller, Linker};

use crate::memory;
use crate::pairs::{self, PairsCaps};
use crate::state::HostState;
use crate::types::{MapType, Pairs, Status};

pub(crate) fn caps(st: &HostState) -> PairsCaps {
    PairsCaps {
        max_entries: st.plugin.limits.max_map_entries,
        max_bytes: st.plugin.limits.max_map_bytes,
    }
}

/// A host-owned map available in the running callback.
fn host_map(st: &HostState, map: MapType) -> Option<&Pairs> {
    match map {
        MapType::HttpCallResponseHeaders => st.call.callout.as_ref().map(|c| &c.headers),
        MapType::HttpCallResponseTrailers => st.call.callout.as_ref().map(|c| &c.trailers),
        MapType::GrpcReceiveInitialMetadata => st
            .call
            .grpc
            .as_ref()
            .and_then(|g| g.initial_metadata.as_ref()),
        MapType::GrpcReceiveTrailingMetadata => st
            .call
            .grpc
            .as_ref()
            .and_then(|g| g.trailing_metadata.as_ref()),
        _ => None,
    }
}

fn is_stream_map(map: MapType) -> bool {
    matches!(
        map,
        MapType::HttpRequestHeaders
            | MapType::HttpRequestTrailers
            | MapType::HttpResponseHeaders
            | MapType::HttpResponseTrailers
    )
}

/// All pairs of `map`; an unavailable map is empty (Envoy: OK + empty).
fn get_pairs(st: &mut HostState, map: MapType) -> Pairs {
    if is_stream_map(map) {
        st.acting_stream()
            .and_then(|s| s.header_map(map).ok())
            .unwrap_or_default()
    } else {
        host_map(st, map).cloned().unwrap_or_default()
    }
}

fn get_value(st: &mut HostState, map: MapType, key: &[u8]) -> Option<Vec<u8>> {
    if is_stream_map(map) {
        st.acting_stream()
            .and_then(|s| s.header_value(map, key).ok().flatten())
    } else {
        host_map(st, map).and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        })
    }
}

/// Runs a mutation on the acting stream's map; host maps are read-only.
fn mutate(
    st: &mut HostState,
    map: MapType,
    f: impl FnOnce(&mut crate::StreamBox) -> Result<(), Status>,
) -> i32 {
    if !is_stream_map(map) {
        return Status::BadArgument.raw();
    }
    match st.acting_stream() {
        Some(s) => Status::code(f(s)),
        None => Status::NotFound.raw(),
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map: u32, dp: u32, sp: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_header_map_pairs";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[dp, sp])?;
            let Some(map) = MapType::from_raw(map) else {
                return Ok(Status::BadArgument.raw());
            };
            let st = caller.data_mut();
            let pairs = get_pairs(st, map);
            if pairs.is_empty() {
                memory::return_bytes(&mut caller, F, &[], dp, sp)?;
                return Ok(Status::Ok.raw());
            }
            match pairs::serialize(&pairs, caps(caller.data())) {
                Ok(bytes) => {
                    memory::return_bytes(&mut caller, F, &bytes, dp, sp)?;
                    Ok(Status::Ok.raw())
                }
                Err(_) => Ok(Status::BadArgument.raw()),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map: u32, dp: u32, dl: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_set_header_map_pairs";
            memory::not_in_allocator(&caller, F)?;
            let Some(map) = MapType::from_raw(map) else {
                return Ok(Status::BadArgument.raw());
            };
            memory::with_bytes(&mut caller, F, dp, dl, |data, st| match pairs::deserialize(
                data,
                caps(st),
            ) {
                Ok(mut pairs) => {
                    for (k, _) in &mut pairs {
                        k.make_ascii_lowercase();
                    }
                    mutate(st, map, |s| s.set_header_map(map, pairs))
                }
                Err(_) => Status::BadArgument.raw(),
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, HostState>,
         map: u32,
         kp: u32,
         kl: u32,
         vp: u32,
         vl: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_header_map_value";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[vp, vl])?;
            let Some(map) = MapType::from_raw(map) else {
                return Ok(Status::BadArgument.raw());
            };
            if kl as usize > caller.data().plugin.limits.max_map_bytes {
                return Ok(Status::BadArgument.raw());
            }
            let value =
                memory::with_bytes(&mut caller, F, kp, kl, |key, st| get_value(st, map, key))?;
            match value {
                Some(v) if v.len() > caller.data().plugin.limits.max_map_bytes => {
                    Ok(Status::BadArgument.raw())
                }
                Some(v) => {
                    memory::return_bytes(&mut caller, F, &v, vp, vl)?;
                    Ok(Status::Ok.raw())
                }
                None => Ok(Status::NotFound.raw()),
            }
        },
    )?;
    for (name, replace) in [
        ("proxy_add_header_map_value", false),
        ("proxy_replace_header_map_value", true),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Caller<'_, HostState>,
                  map: u32,
                  kp: u32,
                  kl: u32,
                  vp: u32,
                  vl: u32|
                  -> wasmtime::Result<i32> {
                memory::not_in_allocator(&caller, name)?;
                let Some(map) = MapType::from_raw(map) else {
                    return Ok(Status::BadArgument.raw());
                };
                if u64::from(kl) + u64::from(vl) > caller.data().plugin.limits.max_map_bytes as u64
                {
                    return Ok(Status::BadArgument.raw());
                }
                memory::with_two(&mut caller, name, (kp, kl), (vp, vl), |key, value, st| {
                    // Names nearly always arrive lowercase: copied only when they are not.
                    let key: std::borrow::Cow<'_, [u8]> = if key.iter().any(u8::is_ascii_uppercase)
                    {
                        key.to_ascii_lowercase().into()
                    } else {
                        key.into()
                    };
                    mutate(st, map, |s| {
                        if replace {
                            s.replace_header(map, &key, value)
                        } else {
                            s.add_header(map, &key, value)
                        }
                    })
                })
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, HostState>, map: u32, kp: u32, kl: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_remove_header_map_value";
            memory::not_in_allocator(&caller, F)?;
            let Some(map) = MapType::from_raw(map) else {
                return Ok(Status::BadArgument.raw());
            };
            memory::with_bytes(&mut caller, F, kp, kl, |key, st| {
                mutate(st, map, |s| s.remove_header(map, key))
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: Caller<'_, HostState>, map: u32, sp: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_header_map_size";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[sp])?;
            let Some(map) = MapType::from_raw(map) else {
                return Ok(Status::BadArgument.raw());
            };
            let pairs = get_pairs(caller.data_mut(), map);
            let size = pairs::serialized_len(&pairs).min(u64::from(u32::MAX)) as u32;
            memory::write_u32(&mut caller, F, sp, size)?;
            Ok(Status::Ok.raw())
        },
    )?;
    Ok(())
}
