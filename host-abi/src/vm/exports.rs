//! The callback table: typed handles to the guest's `proxy_on_*` exports (and `_initialize`),
//! looked up once per instance.
//!
//! Separate from the VM because it is the one place that spells the ABI's export names and
//! signatures; the VM only picks a handle from it per call. An absent export is `None` and
//! behaves like the SDK's default for that callback.

use wasmtime::{Instance, Store, TypedFunc};

use crate::phases::HttpPhases;
use crate::state::HostState;

/// `(context, size_or_count, end_of_stream) -> Action`, the shape of most stream callbacks.
pub(super) type StreamCallback = TypedFunc<(u32, u32, u32), u32>;

/// `(root, token, size_count_or_status)`, the shape of the gRPC callbacks.
pub(super) type GrpcCallback = TypedFunc<(u32, u32, u32), ()>;

/// The callback exports, looked up once per instance (absent ones behave like the SDK's defaults).
#[allow(clippy::type_complexity)] // one field per export, typed exactly as the ABI declares it
pub(super) struct Exports {
    pub(super) initialize: Option<TypedFunc<(), ()>>,
    pub(super) context_create: Option<TypedFunc<(u32, u32), ()>>,
    pub(super) vm_start: Option<TypedFunc<(u32, u32), u32>>,
    pub(super) configure: Option<TypedFunc<(u32, u32), u32>>,
    pub(super) tick: Option<TypedFunc<u32, ()>>,
    pub(super) queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    pub(super) new_connection: Option<TypedFunc<u32, u32>>,
    pub(super) downstream_data: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(super) upstream_data: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(super) downstream_close: Option<TypedFunc<(u32, u32), ()>>,
    pub(super) upstream_close: Option<TypedFunc<(u32, u32), ()>>,
    pub(super) request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(super) request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(super) request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub(super) response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(super) response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(super) response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub(super) http_call_response: Option<TypedFunc<(u32, u32, u32, u32, u32), ()>>,
    pub(super) grpc_initial: Option<GrpcCallback>,
    pub(super) grpc_trailing: Option<GrpcCallback>,
    pub(super) grpc_receive: Option<GrpcCallback>,
    pub(super) grpc_close: Option<GrpcCallback>,
    pub(super) foreign: Option<TypedFunc<(u32, u32, u32), ()>>,
    pub(super) log: Option<TypedFunc<u32, ()>>,
    pub(super) done: Option<TypedFunc<u32, u32>>,
    pub(super) delete: Option<TypedFunc<u32, ()>>,
}

impl Exports {
    /// Looks every callback up on a fresh instance; missing or mistyped exports are `None`.
    pub(super) fn lookup(instance: &Instance, store: &mut Store<HostState>) -> Exports {
        macro_rules! export {
            ($name:literal) => {
                instance.get_typed_func(&mut *store, $name).ok()
            };
        }
        Exports {
            initialize: instance
                .get_typed_func::<(), ()>(&mut *store, "_initialize")
                .or_else(|_| instance.get_typed_func::<(), ()>(&mut *store, "_start"))
                .ok(),
            context_create: export!("proxy_on_context_create"),
            vm_start: export!("proxy_on_vm_start"),
            configure: export!("proxy_on_configure"),
            tick: export!("proxy_on_tick"),
            queue_ready: export!("proxy_on_queue_ready"),
            new_connection: export!("proxy_on_new_connection"),
            downstream_data: export!("proxy_on_downstream_data"),
            upstream_data: export!("proxy_on_upstream_data"),
            downstream_close: export!("proxy_on_downstream_connection_close"),
            upstream_close: export!("proxy_on_upstream_connection_close"),
            request_headers: export!("proxy_on_request_headers"),
            request_body: export!("proxy_on_request_body"),
            request_trailers: export!("proxy_on_request_trailers"),
            response_headers: export!("proxy_on_response_headers"),
            response_body: export!("proxy_on_response_body"),
            response_trailers: export!("proxy_on_response_trailers"),
            http_call_response: export!("proxy_on_http_call_response"),
            grpc_initial: export!("proxy_on_grpc_receive_initial_metadata"),
            grpc_trailing: export!("proxy_on_grpc_receive_trailing_metadata"),
            grpc_receive: export!("proxy_on_grpc_receive"),
            grpc_close: export!("proxy_on_grpc_close"),
            foreign: export!("proxy_on_foreign_function"),
            log: export!("proxy_on_log"),
            done: export!("proxy_on_done"),
            delete: export!("proxy_on_delete"),
        }
    }

    /// The HTTP phases the module exports a callback for (before its own declaration narrows
    /// them, see [`crate::phases`]).
    pub(super) fn http_phases(&self) -> HttpPhases {
        [
            (self.request_headers.is_some(), HttpPhases::REQUEST_HEADERS),
            (self.request_body.is_some(), HttpPhases::REQUEST_BODY),
            (
                self.request_trailers.is_some(),
                HttpPhases::REQUEST_TRAILERS,
            ),
            (
                self.response_headers.is_some(),
                HttpPhases::RESPONSE_HEADERS,
            ),
            (self.response_body.is_some(), HttpPhases::RESPONSE_BODY),
            (
                self.response_trailers.is_some(),
                HttpPhases::RESPONSE_TRAILERS,
            ),
            (self.log.is_some(), HttpPhases::LOG),
            (self.done.is_some(), HttpPhases::DONE),
        ]
        .into_iter()
        .filter(|(present, _)| *present)
        .fold(HttpPhases::NONE, |acc, (_, p)| acc | p)
    }
}

/// The guest's allocator (`proxy_on_memory_allocate`, or `malloc` from older SDKs), the one
/// export the host calls from inside host functions.
pub(super) fn allocator(
    instance: &Instance,
    store: &mut Store<HostState>,
) -> Option<TypedFunc<u32, u32>> {
    instance
        .get_typed_func::<u32, u32>(&mut *store, "proxy_on_memory_allocate")
        .or_else(|_| instance.get_typed_func::<u32, u32>(&mut *store, "malloc"))
        .ok()
}
