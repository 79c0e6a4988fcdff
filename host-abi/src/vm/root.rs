//! The callbacks of the root context: timers, shared-queue notifications, the answers to HTTP
//! and gRPC callouts, foreign functions, and the root's shutdown.
//!
//! Separate from the stream callbacks: these run on the root context with no stream of their own
//! (a callout's answer may borrow the stream that dispatched it).

use crate::embedder::{CalloutResponse, StreamBox};
use crate::error::VmError;
use crate::state::GrpcData;
use crate::types::Pairs;

use super::exports::{Exports, GrpcCallback};
use super::{Budget, Outcome, Vm, clamp};

impl Vm {
    /// `proxy_on_tick` on the root context.
    pub fn on_tick(&mut self) -> Result<Outcome, VmError> {
        let (_, call) = self.invoke(
            "proxy_on_tick",
            |ex| ex.tick.as_ref(),
            self.root,
            Budget::Other,
            self.root,
            None,
            |_| {},
        )?;
        Ok(Outcome::from_call(None, call))
    }

    /// `proxy_on_queue_ready(root, queue_id)`; call it on the VM's thread when its notifier fired.
    pub fn on_queue_ready(&mut self, queue_id: u32) -> Result<Outcome, VmError> {
        let (_, call) = self.invoke(
            "proxy_on_queue_ready",
            |ex| ex.queue_ready.as_ref(),
            self.root,
            Budget::Other,
            (self.root, queue_id),
            None,
            |_| {},
        )?;
        Ok(Outcome::from_call(None, call))
    }

    /// Delivers the answer to HTTP callout `token` (`proxy_on_http_call_response(root, token,
    /// #headers, body_len, #trailers)`), with maps 6/7 and buffer 4 available during the call.
    /// Pass the dispatching stream (see [`Vm::http_call_context`]) if it is still alive so the
    /// guest can edit it and resume it. An unknown token is `Ok` with an empty outcome and no call
    /// (the SDK would panic on it).
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        response: CalloutResponse,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        self.check_alive()?;
        let Some(origin) = self.store.data_mut().http_calls.remove(&token) else {
            return Ok(Outcome::default());
        };
        let params = (
            self.root,
            token,
            clamp(response.headers.len()),
            clamp(response.body.len()),
            clamp(response.trailers.len()),
        );
        let status = response.status.clone();
        let lent = stream.map(|s| (origin, s));
        let (_, call) = self.invoke(
            "proxy_on_http_call_response",
            |ex| ex.http_call_response.as_ref(),
            self.root,
            Budget::Headers,
            params,
            lent,
            |c| {
                c.callout = Some(Box::new(response));
                c.status = status.map(Box::new);
            },
        )?;
        Ok(Outcome::from_call(None, call))
    }

    #[allow(clippy::too_many_arguments)]
    fn grpc_event(
        &mut self,
        name: &'static str,
        pick: fn(&Exports) -> &Option<GrpcCallback>,
        token: u32,
        arg: u32,
        data: GrpcData,
        status: (u32, String),
        stream: Option<&mut StreamBox>,
        close: bool,
    ) -> Result<Outcome, VmError> {
        self.check_alive()?;
        let origin = if close {
            self.store.data_mut().grpc_calls.remove(&token)
        } else {
            self.store.data().grpc_calls.get(&token).copied()
        };
        let Some(origin) = origin else {
            return Ok(Outcome::default());
        };
        let lent = stream.map(|s| (origin, s));
        let (_, call) = self.invoke(
            name,
            |ex| pick(ex).as_ref(),
            self.root,
            Budget::Other,
            (self.root, token, arg),
            lent,
            |c| {
                c.grpc = Some(Box::new(data));
                c.status = Some(Box::new(status));
            },
        )?;
        Ok(Outcome::from_call(None, call))
    }

    /// gRPC initial metadata arrived (map 4 during the call).
    pub fn on_grpc_receive_initial_metadata(
        &mut self,
        token: u32,
        metadata: Pairs,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        let n = clamp(metadata.len());
        let data = GrpcData {
            initial_metadata: Some(metadata),
            ..GrpcData::default()
        };
        self.grpc_event(
            "proxy_on_grpc_receive_initial_metadata",
            |e| &e.grpc_initial,
            token,
            n,
            data,
            (0, String::new()),
            stream,
            false,
        )
    }

    /// A gRPC message arrived (buffer 5 during the call).
    pub fn on_grpc_receive(
        &mut self,
        token: u32,
        message: Vec<u8>,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        self.grpc_message(token, message, stream, false)
    }

    /// `proxy_on_grpc_receive` with `message`; `last`: the call is over with it.
    fn grpc_message(
        &mut self,
        token: u32,
        message: Vec<u8>,
        stream: Option<&mut StreamBox>,
        last: bool,
    ) -> Result<Outcome, VmError> {
        let n = clamp(message.len());
        let data = GrpcData {
            message: Some(message),
            ..GrpcData::default()
        };
        self.grpc_event(
            "proxy_on_grpc_receive",
            |e| &e.grpc_receive,
            token,
            n,
            data,
            (0, String::new()),
            stream,
            last,
        )
    }

    /// The answer of a unary gRPC call (`proxy_dispatch_grpc_call`): `proxy_on_grpc_receive`
    /// with the response message, after which the call is over (as in Envoy, no close follows a
    /// successful unary call). A failed call is answered with [`Vm::on_grpc_close`] instead.
    pub fn on_grpc_call_response(
        &mut self,
        token: u32,
        message: Vec<u8>,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        self.grpc_message(token, message, stream, true)
    }

    /// gRPC trailing metadata arrived (map 5 during the call).
    pub fn on_grpc_receive_trailing_metadata(
        &mut self,
        token: u32,
        metadata: Pairs,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        let n = clamp(metadata.len());
        let data = GrpcData {
            trailing_metadata: Some(metadata),
            ..GrpcData::default()
        };
        self.grpc_event(
            "proxy_on_grpc_receive_trailing_metadata",
            |e| &e.grpc_trailing,
            token,
            n,
            data,
            (0, String::new()),
            stream,
            false,
        )
    }

    /// The gRPC call/stream closed with `status` (`proxy_get_status` reports `(status, message)`).
    pub fn on_grpc_close(
        &mut self,
        token: u32,
        status: u32,
        message: impl Into<String>,
        stream: Option<&mut StreamBox>,
    ) -> Result<Outcome, VmError> {
        self.grpc_event(
            "proxy_on_grpc_close",
            |e| &e.grpc_close,
            token,
            status,
            GrpcData::default(),
            (status, message.into()),
            stream,
            true,
        )
    }

    /// `proxy_on_foreign_function(root, function_id, args_size)` with buffer 8 = `args`.
    pub fn on_foreign_function(
        &mut self,
        function_id: u32,
        args: Vec<u8>,
    ) -> Result<Outcome, VmError> {
        let size = clamp(args.len());
        let (_, call) = self.invoke(
            "proxy_on_foreign_function",
            |ex| ex.foreign.as_ref(),
            self.root,
            Budget::Other,
            (self.root, function_id, size),
            None,
            |c| c.call_data = Some(args),
        )?;
        Ok(Outcome::from_call(None, call))
    }

    /// Shuts the root context down: `proxy_on_done(root)`; `true` → `proxy_on_delete(root)` and
    /// `Ok(true)`. `false` → `Ok(false)`: the guest will call `proxy_done` later (from a tick or
    /// callout); call `shutdown` again after that to finish.
    pub fn shutdown(&mut self) -> Result<bool, VmError> {
        self.check_alive()?;
        let root = self.root;
        let finished = if self.store.data().root_done_called {
            true
        } else {
            let (r, _) = self.invoke(
                "proxy_on_done",
                |ex| ex.done.as_ref(),
                root,
                Budget::Other,
                root,
                None,
                |_| {},
            )?;
            let done = r.unwrap_or(1) != 0;
            self.store.data_mut().root_done_pending = !done;
            done
        };
        if !finished {
            return Ok(false);
        }
        self.invoke(
            "proxy_on_delete",
            |ex| ex.delete.as_ref(),
            root,
            Budget::Other,
            root,
            None,
            |_| {},
        )?;
        self.store.data_mut().contexts.remove(&root);
        Ok(true)
    }
}
