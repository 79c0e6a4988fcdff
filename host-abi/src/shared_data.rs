//! Shared key-value data (proxy-wasm-abi.md §13): process-wide per `vm_id`, with compare-and-swap
//! versions from one global counter that skips 0. Also owns [`SharedState`], the handle to all
//! process-wide ABI state (data and queues) that a `Runtime` holds and tests may inject.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;
use wasmtime::{Caller, Linker};

use crate::memory;
use crate::shared_queue::Queues;
use crate::state::HostState;
use crate::types::Status;

/// One vm_id's key space: key → (value, cas).
pub(crate) type KvSpace = DashMap<Vec<u8>, (Vec<u8>, u32)>;

/// Process-wide shared data and queues. Cheap to clone (an `Arc`); two `Vm`s whose runtimes hold
/// the same `SharedState` and whose plugins have the same `vm_id` share data and queues.
#[derive(Clone, Default)]
pub struct SharedState {
    pub(crate) inner: Arc<SharedInner>,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("vm_ids", &self.inner.kv.len())
            .finish()
    }
}

#[derive(Default)]
pub(crate) struct SharedInner {
    kv: DashMap<String, Arc<KvSpace>>,
    cas: AtomicU32,
    pub(crate) queues: Queues,
}

impl SharedState {
    /// A fresh, empty state (isolated from every other).
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn kv_space(&self, vm_id: &str) -> Arc<KvSpace> {
        if let Some(space) = self.inner.kv.get(vm_id) {
            return space.clone();
        }
        self.inner.kv.entry(vm_id.to_owned()).or_default().clone()
    }

    fn next_cas(&self) -> u32 {
        loop {
            let cas = self
                .inner
                .cas
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if cas != 0 {
                return cas;
            }
        }
    }

    /// Reads `key` in `vm_id`'s space: `(value, cas)`.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.kv_space(vm_id).get(key).map(|e| e.value().clone())
    }

    /// Writes `key` with the ABI's CAS rule: an existing key with `cas != 0` and `cas != stored`
    /// → `CasMismatch`; otherwise stored with a fresh cas (a new key is created whatever `cas` is).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<u32, Status> {
        set_in(self, &self.kv_space(vm_id), key, value, cas)
    }
}

fn set_in(
    shared: &SharedState,
    space: &KvSpace,
    key: &[u8],
    value: &[u8],
    cas: u32,
) -> Result<u32, Status> {
    // `entry` holds the shard lock, so check-and-set is atomic against other threads.
    match space.entry(key.to_vec()) {
        dashmap::Entry::Occupied(mut e) => {
            if cas != 0 && cas != e.get().1 {
                return Err(Status::CasMismatch);
            }
            let new = shared.next_cas();
            e.insert((value.to_vec(), new));
            Ok(new)
        }
        dashmap::Entry::Vacant(e) => {
            let new = shared.next_cas();
            e.insert((value.to_vec(), new));
            Ok(new)
        }
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: Caller<'_, HostState>,
         kp: u32,
         kl: u32,
         vp: u32,
         vl: u32,
         casp: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_shared_data";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[vp, vl, casp])?;
            let found = memory::with_bytes(&mut caller, F, kp, kl, |key, st| {
                st.kv.get(key).map(|e| e.value().clone())
            })?;
            let Some((value, cas)) = found else {
                return Ok(Status::NotFound.raw());
            };
            memory::return_bytes(&mut caller, F, &value, vp, vl)?;
            memory::write_u32(&mut caller, F, casp, cas)?;
            Ok(Status::Ok.raw())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut caller: Caller<'_, HostState>,
         kp: u32,
         kl: u32,
         vp: u32,
         vl: u32,
         cas: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_set_shared_data";
            memory::not_in_allocator(&caller, F)?;
            let cap = caller.data().plugin.limits.max_copy_bytes;
            if vl as usize > cap || kl as usize > cap {
                return Ok(Status::BadArgument.raw());
            }
            memory::with_two(&mut caller, F, (kp, kl), (vp, vl), |key, value, st| {
                Status::code(set_in(&st.shared, &st.kv, key, value, cas).map(drop))
            })
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rules_follow_envoy() {
        let s = SharedState::new();
        assert_eq!(s.get("vm", b"k1"), None);
        let c1 = s.set("vm", b"k1", b"a", 0).unwrap();
        let c2 = s.set("vm", b"k1", b"b", 0).unwrap();
        assert_ne!(c1, c2);
        assert_ne!(c1, 0);
        let c3 = s.set("vm", b"k2", b"x", 12345).unwrap(); // new key: cas ignored
        let (v, cas) = s.get("vm", b"k2").unwrap();
        assert_eq!((v.as_slice(), cas), (&b"x"[..], c3));
        assert_eq!(s.set("vm", b"k2", b"y", cas + 1), Err(Status::CasMismatch));
        assert!(s.set("vm", b"k2", b"y", cas).is_ok());
        // other vm_ids are separate
        assert_eq!(s.get("other", b"k1"), None);
        // "remove" = empty value, still present with a cas
        s.set("vm", b"k1", b"", 0).unwrap();
        assert_eq!(s.get("vm", b"k1").unwrap().0, Vec::<u8>::new());
    }

    #[test]
    fn cas_counter_skips_zero() {
        let s = SharedState::new();
        s.inner.cas.store(u32::MAX - 1, Ordering::Relaxed);
        let a = s.set("vm", b"k", b"1", 0).unwrap();
        let b = s.set("vm", b"k", b"2", 0).unwrap();
        assert_eq!(a, u32::MAX);
        assert_eq!(b, 1);
    }

    #[test]
    fn concurrent_cas_increments_lose_nothing() {
        let s = SharedState::new();
        // cas 0 is an unconditional write, so seed the key first: every later write is a real CAS.
        s.set("vm", b"n", &0u64.to_le_bytes(), 0).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (v, cas) = s.get("vm", b"n").unwrap();
                            let n = u64::from_le_bytes(v.try_into().unwrap());
                            if s.set("vm", b"n", &(n + 1).to_le_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (v, _) = s.get("vm", b"n").unwrap();
        assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), 2000);
    }
}
