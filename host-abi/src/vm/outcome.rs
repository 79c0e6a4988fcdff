//! What a callback hands back to the embedder: the [`Action`] it returned and the effects it
//! deferred ([`Outcome`]), and how a failed call is classified (trap, deadline, memory limit).
//!
//! Separate from the VM because these are the types the embedder matches on (and the host
//! functions that queue effects build), while the VM only produces them.

use wasmtime::Trap;

use crate::error::FailureReason;
use crate::memory::HostTrap;
use crate::state::Finished;
use crate::types::{Action, ContextId, Pairs, StreamType};

/// A local reply the guest asked for (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// Extra headers (names lower-cased).
    pub headers: Pairs,
    /// Body (for gRPC replies: the `grpc-message`).
    pub body: Vec<u8>,
    /// `Some(code)` for a gRPC reply (trailers-only with `grpc-status`), `None` for plain HTTP.
    pub grpc_status: Option<i32>,
    /// Details for access logs (spaces replaced by `_`).
    pub details: String,
}

/// An effect the guest requested during a callback; the embedder applies it after the callback
/// returned (never re-entrantly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `proxy_continue_stream`: resume a paused direction.
    ContinueStream(StreamType),
    /// `proxy_close_stream`: reset the HTTP stream / close the L4 side.
    CloseStream(StreamType),
    /// `proxy_send_local_response`: answer downstream, stop the chain.
    LocalReply(LocalReply),
}

/// An effect and the context it applies to (the effective context when it was requested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// Target context.
    pub context: ContextId,
    /// The effect.
    pub effect: Effect,
}

/// The result of a callback.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// What the callback returned (forced to `Pause` when it sent a local reply). Callbacks without
    /// a result report `Continue`.
    pub action: Action,
    /// Deferred effects, in the order requested.
    pub effects: Vec<Deferred>,
}

impl Outcome {
    /// The first local reply requested, if any.
    pub fn local_reply(&self) -> Option<&LocalReply> {
        self.effects.iter().find_map(|d| match &d.effect {
            Effect::LocalReply(r) => Some(r),
            _ => None,
        })
    }

    /// The outcome of a finished call: its raw result (`None` for callbacks without one) and the
    /// effects it queued.
    pub(super) fn from_call(raw: Option<u32>, call: Finished) -> Outcome {
        let mut action = raw.map(|r| Action::from_raw(r as i32)).unwrap_or_default();
        if call.local_reply {
            action = Action::Pause;
        }
        Outcome {
            action,
            effects: call.effects,
        }
    }
}

/// Why a call into the guest failed, and the message for the report. A host function's own trap
/// carries its reason; an epoch interrupt is the deadline; otherwise `memory_limit_hit` (the
/// store's limiter refused a growth) tells a memory failure from a plain trap.
pub(super) fn failure_reason(
    e: &wasmtime::Error,
    memory_limit_hit: bool,
) -> (FailureReason, String) {
    if let Some(t) = e.downcast_ref::<HostTrap>() {
        (t.reason, t.message.clone())
    } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        (FailureReason::Deadline, format!("{e:?}"))
    } else if memory_limit_hit {
        (FailureReason::MemoryLimit, format!("{e:?}"))
    } else {
        (FailureReason::Trap, format!("{e:?}"))
    }
}
