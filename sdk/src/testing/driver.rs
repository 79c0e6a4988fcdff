//! Drives a filter `Vm` the way Envoy sequences a stream, over the in-memory embedder: one
//! [`Filter`] = one VM + its [`MemPlugin`] record + its [`FakeClock`]; one [`HttpStream`] /
//! [`TcpStream`] = one stream context + its lent [`MemStream`].
//!
//! Body buffering follows Envoy: a body callback that returns Pause keeps its bytes buffered and the
//! next callback sees the cumulative body; one that returns Continue forwards the buffer (recorded
//! in `forwarded_*`) and the next callback sees only new bytes. Effects (`Outcome`) are returned to
//! the caller, who decides what a local reply or a resume means for the stream.

use std::sync::Arc;
use std::time::Duration;

use weir_host_abi::{
    Action, CalloutResponse, ContextId, LocalReply, Module, Outcome, PeerType, PluginConfig,
    Runtime, StartError, StreamBox, Vm, VmError, downcast_stream,
};

use super::embedder::{FakeClock, HeaderMap, MemPlugin, MemStream, PluginHandle, headers};

/// The wall-clock reading every [`Filter`] starts at (2023-11-14T22:13:20Z).
pub const EPOCH_START: Duration = Duration::from_secs(1_700_000_000);

/// One VM of a plugin, with the plugin host's record and clock.
pub struct Filter {
    /// The VM.
    pub vm: Vm,
    /// What the plugin host recorded.
    pub plugin: PluginHandle,
    /// The plugin host's clock.
    pub clock: FakeClock,
}

impl Filter {
    /// Starts `module` with `config` and a default [`MemPlugin`].
    pub fn start(
        runtime: &Runtime,
        module: &Arc<Module>,
        config: PluginConfig,
    ) -> Result<Self, StartError> {
        Self::start_with(runtime, module, config, |p| p)
    }

    /// Starts `module` with `config` and a [`MemPlugin`] adjusted by `customize`.
    pub fn start_with(
        runtime: &Runtime,
        module: &Arc<Module>,
        config: PluginConfig,
        customize: impl FnOnce(MemPlugin) -> MemPlugin,
    ) -> Result<Self, StartError> {
        let clock = FakeClock::at(EPOCH_START);
        let (plugin, handle) = MemPlugin::new(clock.clone());
        let vm = Vm::new(runtime, module.clone(), config, Box::new(customize(plugin)))?;
        Ok(Self {
            vm,
            plugin: handle,
            clock,
        })
    }

    /// Creates an HTTP stream context over `stream`.
    pub fn open_http(&mut self, stream: MemStream) -> Result<HttpStream, VmError> {
        let ctx = self.vm.create_http_stream()?;
        Ok(HttpStream {
            ctx,
            stream: Box::new(stream),
            request_paused: false,
            response_paused: false,
            forwarded_request_body: Vec::new(),
            forwarded_response_body: Vec::new(),
        })
    }

    /// `on_request_headers` with the stream's current request headers.
    pub fn request_headers(
        &mut self,
        s: &mut HttpStream,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        let n = s.mem().request_headers.as_ref().map_or(0, Vec::len);
        self.vm
            .on_request_headers(s.ctx, &mut s.stream, n, end_of_stream)
    }

    /// One request body chunk.
    pub fn request_body(
        &mut self,
        s: &mut HttpStream,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        s.mem().request_body.extend_from_slice(chunk);
        let size = s.mem().request_body.len();
        let out = self
            .vm
            .on_request_body(s.ctx, &mut s.stream, size, end_of_stream)?;
        s.request_paused = out.action == Action::Pause;
        if !s.request_paused {
            let body = std::mem::take(&mut s.mem().request_body);
            s.forwarded_request_body.extend_from_slice(&body);
        }
        Ok(out)
    }

    /// `on_request_trailers` after installing `trailers` as the request trailers.
    pub fn request_trailers(
        &mut self,
        s: &mut HttpStream,
        trailers: &[(&str, &str)],
    ) -> Result<Outcome, VmError> {
        s.mem().request_trailers = Some(headers(trailers));
        self.vm
            .on_request_trailers(s.ctx, &mut s.stream, trailers.len())
    }

    /// `on_response_headers` after installing `response` as the response headers.
    pub fn response_headers(
        &mut self,
        s: &mut HttpStream,
        response: HeaderMap,
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        let n = response.len();
        s.mem().response_headers = Some(response);
        self.vm
            .on_response_headers(s.ctx, &mut s.stream, n, end_of_stream)
    }

    /// One response body chunk.
    pub fn response_body(
        &mut self,
        s: &mut HttpStream,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Outcome, VmError> {
        s.mem().response_body.extend_from_slice(chunk);
        let size = s.mem().response_body.len();
        let out = self
            .vm
            .on_response_body(s.ctx, &mut s.stream, size, end_of_stream)?;
        s.response_paused = out.action == Action::Pause;
        if !s.response_paused {
            let body = std::mem::take(&mut s.mem().response_body);
            s.forwarded_response_body.extend_from_slice(&body);
        }
        Ok(out)
    }

    /// `on_response_trailers` after installing `trailers` as the response trailers.
    pub fn response_trailers(
        &mut self,
        s: &mut HttpStream,
        trailers: &[(&str, &str)],
    ) -> Result<Outcome, VmError> {
        s.mem().response_trailers = Some(headers(trailers));
        self.vm
            .on_response_trailers(s.ctx, &mut s.stream, trailers.len())
    }

    /// Ends the stream: `on_log` → `on_done` → `on_delete`.
    pub fn finish(&mut self, s: &mut HttpStream) -> Result<(), VmError> {
        self.vm.finish_http_stream(s.ctx, &mut s.stream)
    }

    /// Answers HTTP callout `token`, lending `stream` if the dispatching stream is still alive.
    pub fn answer_http_call(
        &mut self,
        token: u32,
        response: CalloutResponse,
        stream: Option<&mut HttpStream>,
    ) -> Result<Outcome, VmError> {
        self.vm
            .on_http_call_response(token, response, stream.map(|s| &mut s.stream))
    }

    /// Fires the root's timer once if the filter set one: advances the clock by the period and
    /// calls `on_tick`. `None` when no tick period is set.
    pub fn fire_tick(&mut self) -> Result<Option<Outcome>, VmError> {
        let Some(period) = self.vm.tick_period() else {
            return Ok(None);
        };
        self.clock.advance(period);
        self.vm.on_tick().map(Some)
    }

    /// Waits (at most `timeout`) for a queue notification and delivers it (`on_queue_ready`).
    pub fn deliver_queue_ready(&mut self, timeout: Duration) -> Result<Option<Outcome>, VmError> {
        match self.plugin.wait_queue_ready(timeout) {
            Some(queue) => self.vm.on_queue_ready(queue).map(Some),
            None => Ok(None),
        }
    }

    /// Creates an L4 stream context over `stream` and calls `on_new_connection`.
    pub fn open_tcp(&mut self, stream: MemStream) -> Result<(TcpStream, Outcome), VmError> {
        let ctx = self.vm.create_tcp_stream()?;
        let mut s = TcpStream {
            ctx,
            stream: Box::new(stream),
        };
        let out = self.vm.on_new_connection(ctx, &mut s.stream)?;
        Ok((s, out))
    }

    /// Downstream → upstream bytes; returns the outcome and the bytes forwarded upstream.
    pub fn downstream_data(
        &mut self,
        s: &mut TcpStream,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<(Outcome, Vec<u8>), VmError> {
        s.mem().downstream_data = data.to_vec();
        let out = self
            .vm
            .on_downstream_data(s.ctx, &mut s.stream, data.len(), end_of_stream)?;
        Ok((out, std::mem::take(&mut s.mem().downstream_data)))
    }

    /// Upstream → downstream bytes; returns the outcome and the bytes forwarded downstream.
    pub fn upstream_data(
        &mut self,
        s: &mut TcpStream,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<(Outcome, Vec<u8>), VmError> {
        s.mem().upstream_data = data.to_vec();
        let out = self
            .vm
            .on_upstream_data(s.ctx, &mut s.stream, data.len(), end_of_stream)?;
        Ok((out, std::mem::take(&mut s.mem().upstream_data)))
    }

    /// The connection closed on both sides (downstream by `downstream_peer`, upstream unknown),
    /// then the context ends in Envoy's TCP order: `on_done` → `on_log` → `on_delete`.
    pub fn close_tcp(
        &mut self,
        s: &mut TcpStream,
        downstream_peer: PeerType,
    ) -> Result<(), VmError> {
        self.vm
            .on_upstream_connection_close(s.ctx, &mut s.stream, PeerType::Unknown)?;
        self.vm
            .on_downstream_connection_close(s.ctx, &mut s.stream, downstream_peer)?;
        self.vm.finish_tcp_stream(s.ctx, &mut s.stream)
    }
}

/// An HTTP stream context and the stream it is lent.
pub struct HttpStream {
    /// The context id.
    pub ctx: ContextId,
    /// The lent stream (a [`MemStream`]; see [`HttpStream::mem`]).
    pub stream: StreamBox,
    request_paused: bool,
    response_paused: bool,
    /// Request body bytes the filter let through (Continue), in order.
    pub forwarded_request_body: Vec<u8>,
    /// Response body bytes the filter let through, in order.
    pub forwarded_response_body: Vec<u8>,
}

impl HttpStream {
    /// The stream's in-memory state.
    pub fn mem(&mut self) -> &mut MemStream {
        downcast_stream::<MemStream>(&mut self.stream).expect("the lent stream is a MemStream")
    }
}

/// An L4 stream context and the stream it is lent.
pub struct TcpStream {
    /// The context id.
    pub ctx: ContextId,
    /// The lent stream.
    pub stream: StreamBox,
}

impl TcpStream {
    /// The stream's in-memory state.
    pub fn mem(&mut self) -> &mut MemStream {
        downcast_stream::<MemStream>(&mut self.stream).expect("the lent stream is a MemStream")
    }
}

/// The response headers Envoy sends for a local reply (before the filter's response phase sees
/// them): `:status`, the reply's headers, and for gRPC replies the trailers-only form
/// (`content-type: application/grpc`, `grpc-status`, `grpc-message` = body).
pub fn local_reply_headers(reply: &LocalReply) -> HeaderMap {
    let mut map: HeaderMap = vec![(":status".to_owned(), reply.status.to_string().into_bytes())];
    if let Some(code) = reply.grpc_status {
        map.push(("content-type".to_owned(), b"application/grpc".to_vec()));
        map.push(("grpc-status".to_owned(), code.to_string().into_bytes()));
        map.push(("grpc-message".to_owned(), reply.body.clone()));
    } else if !reply.body.is_empty() {
        map.push(("content-type".to_owned(), b"text/plain".to_vec()));
        map.push((
            "content-length".to_owned(),
            reply.body.len().to_string().into_bytes(),
        ));
    }
    for (k, v) in &reply.headers {
        map.push((String::from_utf8_lossy(k).into_owned(), v.clone()));
    }
    map
}

/// A successful callout answer.
pub fn callout_response(
    status: u16,
    response_headers: &[(&str, &str)],
    body: &[u8],
    trailers: &[(&str, &str)],
) -> CalloutResponse {
    let mut headers_out = vec![(b":status".to_vec(), status.to_string().into_bytes())];
    headers_out.extend(
        response_headers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    CalloutResponse {
        headers: headers_out,
        body: body.to_vec(),
        trailers: trailers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
        status: None,
    }
}

/// What Envoy delivers when a callout times out: its router's 504 local reply, as an ordinary
/// response (not a failure).
pub fn callout_timeout_response() -> CalloutResponse {
    callout_response(
        504,
        &[("content-type", "text/plain")],
        b"upstream request timeout",
        &[],
    )
}
