//! The callbacks of stream contexts: HTTP phases (skipped when the module does not run them),
//! L4 data and close events, and the end of a stream (`on_log`, `on_done`, `on_delete`).
//!
//! Separate from the VM's core so each file stays one kind of context; every callback here goes
//! through `Vm::invoke` with the embedder's stream lent to the store.

use crate::embedder::StreamBox;
use crate::error::VmError;
use crate::phases::HttpPhases;
use crate::state::ContextKind;
use crate::types::{ContextId, PeerType};

use super::exports::{Exports, StreamCallback};
use super::{Budget, Outcome, Vm, clamp};

impl Vm {
    fn skips(&self, phase: HttpPhases) -> bool {
        !self.store.data().http_phases.contains(phase)
    }

    /// Whether an HTTP stream callback is skipped; its context is checked all the same.
    fn skipped(&self, ctx: ContextId, phase: HttpPhases) -> Result<bool, VmError> {
        if self.skips(phase) {
            self.check_stream(ctx, ContextKind::Http)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn check_stream(&self, ctx: ContextId, kind: ContextKind) -> Result<(), VmError> {
        self.check_alive()?;
        match self.store.data().contexts.get(&ctx) {
            Some(k) if *k == kind => Ok(()),
            _ => Err(VmError::UnknownContext(ctx)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_call3(
        &mut self,
        name: &'static str,
        pick: fn(&Exports) -> &Option<StreamCallback>,
        kind: ContextKind,
        ctx: ContextId,
        stream: &mut StreamBox,
        budget: Budget,
        a: u32,
        b: bool,
    ) -> Result<Outcome, VmError> {
        self.check_stream(ctx, kind)?;
        let (r, call) = self.invoke(
            name,
            |ex| pick(ex).as_ref(),
            ctx,
            budget,
            (ctx, a, u32::from(b)),
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(Outcome::from_call(r, call))
    }

    /// `proxy_on_request_headers`.
    pub fn on_request_headers(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::REQUEST_HEADERS)? {
            return Ok(Outcome::default());
        }
        self.stream_call3(
            "proxy_on_request_headers",
            |e| &e.request_headers,
            ContextKind::Http,
            ctx,
            stream,
            Budget::Headers,
            clamp(num_headers),
            end_of_stream,
        )
    }

    /// `proxy_on_request_body` (`body_size` = bytes buffered so far, cumulative while paused).
    pub fn on_request_body(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::REQUEST_BODY)? {
            return Ok(Outcome::default());
        }
        self.stream_call3(
            "proxy_on_request_body",
            |e| &e.request_body,
            ContextKind::Http,
            ctx,
            stream,
            Budget::Body,
            clamp(body_size),
            end_of_stream,
        )
    }

    /// `proxy_on_response_headers`.
    pub fn on_response_headers(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::RESPONSE_HEADERS)? {
            return Ok(Outcome::default());
        }
        self.stream_call3(
            "proxy_on_response_headers",
            |e| &e.response_headers,
            ContextKind::Http,
            ctx,
            stream,
            Budget::Headers,
            clamp(num_headers),
            end_of_stream,
        )
    }

    /// `proxy_on_response_body`.
    pub fn on_response_body(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::RESPONSE_BODY)? {
            return Ok(Outcome::default());
        }
        self.stream_call3(
            "proxy_on_response_body",
            |e| &e.response_body,
            ContextKind::Http,
            ctx,
            stream,
            Budget::Body,
            clamp(body_size),
            end_of_stream,
        )
    }

    /// `proxy_on_downstream_data` (downstream → upstream bytes of an L4 stream).
    pub fn on_downstream_data(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        data_size: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        self.stream_call3(
            "proxy_on_downstream_data",
            |e| &e.downstream_data,
            ContextKind::Tcp,
            ctx,
            stream,
            Budget::Body,
            clamp(data_size),
            end_of_stream,
        )
    }

    /// `proxy_on_upstream_data` (upstream → downstream bytes of an L4 stream).
    pub fn on_upstream_data(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        data_size: usize,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        self.stream_call3(
            "proxy_on_upstream_data",
            |e| &e.upstream_data,
            ContextKind::Tcp,
            ctx,
            stream,
            Budget::Body,
            clamp(data_size),
            end_of_stream,
        )
    }

    fn trailers(
        &mut self,
        name: &'static str,
        response: bool,
        ctx: ContextId,
        stream: &mut StreamBox,
        n: usize,
    ) -> Result<Outcome, VmError> {
        self.check_stream(ctx, ContextKind::Http)?;
        let (r, call) = self.invoke(
            name,
            |ex| {
                if response {
                    ex.response_trailers.as_ref()
                } else {
                    ex.request_trailers.as_ref()
                }
            },
            ctx,
            Budget::Headers,
            (ctx, clamp(n)),
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(Outcome::from_call(r, call))
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        num_trailers: usize,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::REQUEST_TRAILERS)? {
            return Ok(Outcome::default());
        }
        self.trailers(
            "proxy_on_request_trailers",
            false,
            ctx,
            stream,
            num_trailers,
        )
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        num_trailers: usize,
    ) -> Result<Outcome, VmError> {
        if self.skipped(ctx, HttpPhases::RESPONSE_TRAILERS)? {
            return Ok(Outcome::default());
        }
        self.trailers(
            "proxy_on_response_trailers",
            true,
            ctx,
            stream,
            num_trailers,
        )
    }

    /// `proxy_on_new_connection` for a context made by [`Vm::create_tcp_stream`].
    pub fn on_new_connection(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
    ) -> Result<Outcome, VmError> {
        self.check_stream(ctx, ContextKind::Tcp)?;
        let (r, call) = self.invoke(
            "proxy_on_new_connection",
            |ex| ex.new_connection.as_ref(),
            ctx,
            Budget::Headers,
            ctx,
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(Outcome::from_call(r, call))
    }

    fn close(
        &mut self,
        name: &'static str,
        upstream: bool,
        ctx: ContextId,
        stream: &mut StreamBox,
        peer: PeerType,
    ) -> Result<Outcome, VmError> {
        self.check_stream(ctx, ContextKind::Tcp)?;
        let (_, call) = self.invoke(
            name,
            |ex| {
                if upstream {
                    ex.upstream_close.as_ref()
                } else {
                    ex.downstream_close.as_ref()
                }
            },
            ctx,
            Budget::Other,
            (ctx, peer as u32),
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(Outcome::from_call(None, call))
    }

    /// `proxy_on_downstream_connection_close`.
    pub fn on_downstream_connection_close(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        peer: PeerType,
    ) -> Result<Outcome, VmError> {
        self.close(
            "proxy_on_downstream_connection_close",
            false,
            ctx,
            stream,
            peer,
        )
    }

    /// `proxy_on_upstream_connection_close`.
    pub fn on_upstream_connection_close(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
        peer: PeerType,
    ) -> Result<Outcome, VmError> {
        self.close(
            "proxy_on_upstream_connection_close",
            true,
            ctx,
            stream,
            peer,
        )
    }

    fn any_stream(&self, ctx: ContextId) -> Result<ContextKind, VmError> {
        self.check_alive()?;
        match self.store.data().contexts.get(&ctx) {
            Some(k @ (ContextKind::Http | ContextKind::Tcp)) => Ok(*k),
            _ => Err(VmError::UnknownContext(ctx)),
        }
    }

    /// `proxy_on_log` for a stream (request complete; maps readable read-only).
    pub fn on_log(&mut self, ctx: ContextId, stream: &mut StreamBox) -> Result<(), VmError> {
        if self.any_stream(ctx)? == ContextKind::Http && self.skips(HttpPhases::LOG) {
            return Ok(());
        }
        self.invoke(
            "proxy_on_log",
            |ex| ex.log.as_ref(),
            ctx,
            Budget::Other,
            ctx,
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(())
    }

    /// `proxy_on_done` for a stream. Its result is ignored for streams, as Envoy does.
    pub fn on_done(&mut self, ctx: ContextId, stream: &mut StreamBox) -> Result<(), VmError> {
        if self.any_stream(ctx)? == ContextKind::Http && self.skips(HttpPhases::DONE) {
            return Ok(());
        }
        self.invoke(
            "proxy_on_done",
            |ex| ex.done.as_ref(),
            ctx,
            Budget::Other,
            ctx,
            Some((ctx, stream)),
            |_| {},
        )?;
        Ok(())
    }

    /// `proxy_on_delete` for a stream; the context id is gone afterwards (even if the guest trapped).
    pub fn on_delete(&mut self, ctx: ContextId) -> Result<(), VmError> {
        self.any_stream(ctx)?;
        let r = self.invoke(
            "proxy_on_delete",
            |ex| ex.delete.as_ref(),
            ctx,
            Budget::Other,
            ctx,
            None,
            |_| {},
        );
        if r.is_ok() {
            self.store.data_mut().contexts.remove(&ctx);
        }
        self.cancel_grpc_streams_of(ctx);
        r.map(|_| ())
    }

    /// The gRPC streams a deleted stream context opened are reset with it, as Envoy resets a
    /// context's streams when it is destroyed (a stream has no deadline; nothing else would end
    /// one whose server waits for the client). Unary calls run to their timeout.
    fn cancel_grpc_streams_of(&mut self, ctx: ContextId) {
        let st = self.store.data_mut();
        if st.grpc_calls.is_empty() {
            return;
        }
        let streams: Vec<u32> = st
            .grpc_calls
            .iter()
            .filter(|&(&token, &origin)| origin == ctx && token & 3 == 2)
            .map(|(&token, _)| token)
            .collect();
        for token in streams {
            st.grpc_calls.remove(&token);
            let _ = st.host.grpc_cancel(token);
        }
    }

    /// Ends an HTTP stream in Envoy's order: `on_log` → `on_done` → `on_delete`.
    pub fn finish_http_stream(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
    ) -> Result<(), VmError> {
        self.check_stream(ctx, ContextKind::Http)?;
        if !self.skips(HttpPhases::LOG) {
            self.on_log(ctx, stream)?;
        }
        if !self.skips(HttpPhases::DONE) {
            self.on_done(ctx, stream)?;
        }
        self.on_delete(ctx)
    }

    /// Ends an L4 stream in Envoy's order: `on_done` → `on_log` → `on_delete`.
    pub fn finish_tcp_stream(
        &mut self,
        ctx: ContextId,
        stream: &mut StreamBox,
    ) -> Result<(), VmError> {
        self.check_stream(ctx, ContextKind::Tcp)?;
        self.on_done(ctx, stream)?;
        self.on_log(ctx, stream)?;
        self.on_delete(ctx)
    }
}
