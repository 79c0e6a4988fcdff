//! `Plugin`: one filter on one worker — its current `Vm` plus the failure policy (design.md §5).
//!
//! The embedder asks [`Plugin::vm`] for the VM before each stream; when a callback returns
//! `VmError::Failed`, it calls [`Plugin::on_failure`], which discards the VM (never re-entered) and
//! says what to do with the streams the VM held. `Reload` rebuilds the VM after an exponential
//! backoff, counting rebuilds in `FilterStats::vm_rebuilds`; while it is down, streams fail closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{FailurePolicy, PluginConfig};
use crate::embedder::PluginHost;
use crate::error::{StartError, VmFailed};
use crate::runtime::{Module, Runtime};
use crate::stats::FilterStats;
use crate::vm::Vm;

/// Builds a fresh `PluginHost` for each VM the plugin creates.
pub type HostFactory = Box<dyn FnMut() -> Box<dyn PluginHost> + Send>;

/// What the embedder does with a stream of a failed (or unavailable) filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Terminate the stream: 503 for HTTP (details `wasm_fail_stream`), close for TCP.
    FailClosed,
    /// Skip this filter for the stream.
    FailOpen,
}

/// The VM to use for a new stream, or why there is none.
#[derive(Debug)]
pub enum Availability<'a> {
    /// Run the filter on this VM.
    Ready(&'a mut Vm),
    /// No VM: apply this verdict to the stream.
    Unavailable(Verdict),
}

enum State {
    Running(Box<Vm>),
    /// Failed with `FailClosed` / `FailOpen`: stays down until the plugin is replaced.
    Down(Verdict),
    /// `Reload`: rebuild at `at`.
    Backoff {
        at: Instant,
    },
}

/// One filter instance on one worker thread.
pub struct Plugin {
    runtime: Runtime,
    module: Arc<Module>,
    config: PluginConfig,
    factory: HostFactory,
    state: State,
    last_failure: Option<Instant>,
    last_delay: Option<Duration>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Running(_) => "running",
            State::Down(_) => "down",
            State::Backoff { .. } => "backoff",
        };
        f.debug_struct("Plugin")
            .field("name", &self.config.name)
            .field("state", &state)
            .finish()
    }
}

impl Plugin {
    /// Starts the first VM; a start failure (including a rejected configuration) is returned, so
    /// a bad plugin never goes live.
    pub fn new(
        runtime: &Runtime,
        module: Arc<Module>,
        config: PluginConfig,
        mut factory: HostFactory,
    ) -> Result<Self, StartError> {
        let vm = Vm::new(runtime, module.clone(), config.clone(), factory())?;
        Ok(Self {
            runtime: runtime.clone(),
            module,
            config,
            factory,
            state: State::Running(Box::new(vm)),
            last_failure: None,
            last_delay: None,
        })
    }

    /// The plugin's configuration.
    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// The plugin's counters.
    pub fn stats(&self) -> &Arc<FilterStats> {
        &self.config.stats
    }

    /// The VM for a new stream (rebuilding it first if a `Reload` backoff has elapsed).
    pub fn vm(&mut self) -> Availability<'_> {
        // The common case needs no clock: a running, healthy VM.
        if matches!(&self.state, State::Running(vm) if vm.failure().is_none()) {
            let State::Running(vm) = &mut self.state else {
                unreachable!()
            };
            return Availability::Ready(vm);
        }
        self.vm_at(Instant::now())
    }

    /// [`Plugin::vm`] with an explicit clock (for tests).
    pub fn vm_at(&mut self, now: Instant) -> Availability<'_> {
        if let State::Running(vm) = &self.state
            && let Some(f) = vm.failure().cloned()
        {
            self.on_failure_at(&f, now);
        }
        if let State::Backoff { at } = self.state
            && now >= at
        {
            let host = (self.factory)();
            match Vm::new(
                &self.runtime,
                self.module.clone(),
                self.config.clone(),
                host,
            ) {
                Ok(vm) => {
                    FilterStats::add(&self.config.stats.vm_rebuilds, 1);
                    self.state = State::Running(Box::new(vm));
                }
                Err(e) => {
                    tracing::warn!(plugin = %self.config.name, "filter VM rebuild failed: {e}");
                    self.schedule(now);
                }
            }
        }
        match &mut self.state {
            State::Running(vm) => Availability::Ready(vm),
            State::Down(v) => Availability::Unavailable(*v),
            State::Backoff { .. } => Availability::Unavailable(Verdict::FailClosed),
        }
    }

    /// The VM failed: discard it and return the verdict for every stream in
    /// `failure.live_streams`.
    pub fn on_failure(&mut self, failure: &VmFailed) -> Verdict {
        self.on_failure_at(failure, Instant::now())
    }

    /// [`Plugin::on_failure`] with an explicit clock.
    pub fn on_failure_at(&mut self, failure: &VmFailed, now: Instant) -> Verdict {
        // Only a running VM can fail; a repeated report for the same failure changes nothing.
        if !matches!(self.state, State::Running(_)) {
            return self.verdict();
        }
        tracing::warn!(plugin = %self.config.name, policy = ?self.config.failure_policy, "{failure}");
        match self.config.failure_policy {
            FailurePolicy::FailClosed => self.state = State::Down(Verdict::FailClosed),
            FailurePolicy::FailOpen => self.state = State::Down(Verdict::FailOpen),
            FailurePolicy::Reload => self.schedule(now),
        }
        self.verdict()
    }

    fn verdict(&self) -> Verdict {
        match self.state {
            State::Down(v) => v,
            _ => Verdict::FailClosed,
        }
    }

    /// Next rebuild: the delay doubles on consecutive failures (capped) and starts over once the
    /// plugin has run failure-free for longer than the cap.
    fn schedule(&mut self, now: Instant) {
        let b = self.config.backoff;
        let fresh = self
            .last_failure
            .is_none_or(|t| now.saturating_duration_since(t) > b.max);
        let delay = match (fresh, self.last_delay) {
            (false, Some(d)) => (d * 2).min(b.max),
            _ => b.initial,
        };
        self.last_failure = Some(now);
        self.last_delay = Some(delay);
        self.state = State::Backoff { at: now + delay };
    }

    /// When a `Reload` rebuild is due, if one is pending.
    pub fn next_rebuild(&self) -> Option<Instant> {
        match self.state {
            State::Backoff { at } => Some(at),
            _ => None,
        }
    }
}
