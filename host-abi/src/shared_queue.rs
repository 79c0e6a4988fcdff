//! Shared queues (proxy-wasm-abi.md §13): process-wide, named per `vm_id`, non-zero tokens; the last
//! VM to register a queue receives one notification per enqueue, delivered through the
//! embedder's [`QueueNotifier`] (so `on_queue_ready` runs on the receiver's own thread, never
//! inside the enqueuing call).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;
use wasmtime::{Caller, Linker};

use crate::embedder::QueueNotifier;
use crate::memory;
use crate::shared_data::SharedState;
use crate::state::HostState;
use crate::types::Status;

#[derive(Default)]
pub(crate) struct Queues {
    by_name: DashMap<(String, Vec<u8>), u32>,
    queues: DashMap<u32, Queue>,
    next: AtomicU32,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    receiver: Option<QueueNotifier>,
}

impl SharedState {
    /// Registers (creates or reopens) queue `name` of `vm_id`; `receiver`, if any, becomes the one
    /// notified on enqueue (last registration wins). Returns the queue token.
    pub fn register_queue(&self, vm_id: &str, name: &[u8], receiver: Option<QueueNotifier>) -> u32 {
        let q = &self.inner.queues;
        let token = *q
            .by_name
            .entry((vm_id.to_owned(), name.to_vec()))
            .or_insert_with(|| {
                loop {
                    let t = q.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                    if t != 0 {
                        break t;
                    }
                }
            });
        let mut entry = q.queues.entry(token).or_insert_with(|| Queue {
            items: VecDeque::new(),
            receiver: None,
        });
        if receiver.is_some() {
            entry.receiver = receiver;
        }
        token
    }

    /// The token of queue `name` in `vm_id`, if registered.
    pub fn resolve_queue(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        self.inner
            .queues
            .by_name
            .get(&(vm_id.to_owned(), name.to_vec()))
            .map(|t| *t)
    }

    /// Appends an item and notifies the receiver (outside any lock).
    pub fn enqueue(&self, token: u32, item: Vec<u8>) -> Result<(), Status> {
        let notifier = {
            let mut q = self
                .inner
                .queues
                .queues
                .get_mut(&token)
                .ok_or(Status::NotFound)?;
            q.items.push_back(item);
            q.receiver.clone()
        };
        if let Some(n) = notifier {
            n(token);
        }
        Ok(())
    }

    /// Removes the oldest item: `NotFound` for a bad token, `Empty` when there is none.
    pub fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        let mut q = self
            .inner
            .queues
            .queues
            .get_mut(&token)
            .ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, HostState>, np: u32, nl: u32, idp: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_register_shared_queue";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[idp])?;
            let name = memory::read(&mut caller, F, np, nl, 64 << 10)?;
            let st = caller.data_mut();
            let notifier = st.host.queue_notifier();
            let token = st.shared.register_queue(&st.plugin.vm_id, &name, notifier);
            memory::write_u32(&mut caller, F, idp, token)?;
            Ok(Status::Ok.raw())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Caller<'_, HostState>,
         vp: u32,
         vl: u32,
         np: u32,
         nl: u32,
         idp: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_resolve_shared_queue";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[idp])?;
            let found = memory::with_two(&mut caller, F, (vp, vl), (np, nl), |vm_id, name, st| {
                let vm_id = if vm_id.is_empty() {
                    st.plugin.vm_id.clone()
                } else {
                    String::from_utf8_lossy(vm_id).into_owned()
                };
                st.shared.resolve_queue(&vm_id, name)
            })?;
            match found {
                Some(token) => {
                    memory::write_u32(&mut caller, F, idp, token)?;
                    Ok(Status::Ok.raw())
                }
                None => Ok(Status::NotFound.raw()),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut caller: Caller<'_, HostState>,
         token: u32,
         vp: u32,
         vl: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_enqueue_shared_queue";
            memory::not_in_allocator(&caller, F)?;
            let cap = caller.data().plugin.limits.max_copy_bytes;
            let item = memory::read(&mut caller, F, vp, vl, cap)?;
            let shared = caller.data().shared.clone();
            Ok(Status::code(shared.enqueue(token, item)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: Caller<'_, HostState>,
         token: u32,
         vp: u32,
         vl: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_dequeue_shared_queue";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[vp, vl])?;
            let item = caller.data().shared.dequeue(token);
            match item {
                Ok(item) => {
                    memory::return_bytes(&mut caller, F, &item, vp, vl)?;
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
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn register_resolve_enqueue_dequeue_and_notify_last_registrant() {
        let s = SharedState::new();
        let seen_a = Arc::new(Mutex::new(Vec::new()));
        let seen_b = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (seen_a.clone(), seen_b.clone());
        let t1 = s.register_queue(
            "vm",
            b"q",
            Some(Arc::new(move |t| a.lock().unwrap().push(t))),
        );
        let t2 = s.register_queue(
            "vm",
            b"q",
            Some(Arc::new(move |t| b.lock().unwrap().push(t))),
        );
        assert_eq!(t1, t2);
        assert_ne!(t1, 0);
        assert_eq!(s.resolve_queue("vm", b"q"), Some(t1));
        assert_eq!(s.resolve_queue("other", b"q"), None);
        assert_eq!(s.dequeue(t1), Err(Status::Empty));
        s.enqueue(t1, b"one".to_vec()).unwrap();
        s.enqueue(t1, b"two".to_vec()).unwrap();
        assert!(seen_a.lock().unwrap().is_empty());
        assert_eq!(*seen_b.lock().unwrap(), vec![t1, t1]);
        assert_eq!(s.dequeue(t1).unwrap(), b"one");
        assert_eq!(s.dequeue(t1).unwrap(), b"two");
        assert_eq!(s.dequeue(t1), Err(Status::Empty));
        assert_eq!(s.enqueue(999, vec![]), Err(Status::NotFound));
        assert_eq!(s.dequeue(999), Err(Status::NotFound));
        let other = s.register_queue("vm", b"q2", None);
        assert_ne!(other, t1);
    }
}
