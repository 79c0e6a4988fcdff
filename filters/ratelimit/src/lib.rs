//! `builtin:ratelimit`: token-bucket rate limiting whose buckets live in proxy-wasm shared data,
//! updated with compare-and-swap, so a limit holds process-wide whatever the worker count.
//!
//! Configuration (JSON plugin configuration; unknown fields are rejected):
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `buckets` | array of buckets (below), at least one | required | the first bucket whose `match` accepts the request applies; no match → the request passes unlimited |
//! | `missing_key` | `"allow"` or `"deny"` | `"allow"` | a request whose bucket key has no value: pass it unlimited, or answer 403 `missing_key` |
//!
//! A bucket:
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `name` | string of `[A-Za-z0-9_-]`, 1–64 chars, unique | required | names the bucket (and its shared-data keys) |
//! | `key` | one of the keys below | required | what a separate bucket is kept per |
//! | `capacity` | integer 1–1 000 000 000 | required | the burst: tokens in a full bucket (a new bucket starts full) |
//! | `refill` | `{"tokens": n, "per": duration}` | required | the rate: `n` (1–1 000 000 000) tokens every `per`; a duration is written as in the manifest (`weir_sdk::config::parse_duration`: `"1s"`, `"1m30s"`, `"1h"`), a whole number of milliseconds from 1 ms to 24 h |
//! | `match` | `{"path_prefix": p, "method": m, "header": h}` | absent (all) | every given part must hold: `:path` starts with `p`; `:method` is `m` (exact); `h` is a header name that must be present, or `{"name": n, "value": v}` for an exact value |
//!
//! Keys (one field each):
//!
//! | key | value |
//! |---|---|
//! | `{"client": "address"}` | the client IP (`source.address` without its port) |
//! | `{"header": "x-user"}` | the request header's first value |
//! | `{"claim": "sub"}` | property `weir.auth.claim.sub` (set by `builtin:auth` for its `forward_claims`) |
//! | `{"principal": true}` | property `weir.auth.principal` (set by `builtin:auth`) |
//! | `{"identity": "peer"}` | property `connection.uri_san_peer_certificate` (the mTLS client's SPIFFE ID) |
//! | `{"global": true}` | one bucket for every request |
//!
//! An empty value counts as missing.
//!
//! Behaviour:
//! * Each request the bucket applies to takes one token. The bucket state is the shared-data
//!   entry `ratelimit.<bucket>.<key value>`: 16 bytes, the tokens in fixed point (10⁻⁹ token,
//!   u64 LE) and the time of the last refill (ms since the epoch, u64 LE, from
//!   `proxy_get_current_time`). Refill is computed lazily on each request; taking a token is a
//!   `get_shared_data` → `set_shared_data(…, cas)` loop retried on `CasMismatch` (at most 64
//!   times; after that the request passes and a warning is logged). A new key is created with
//!   a CAS value that cannot match an existing entry, so two workers creating the same bucket at
//!   once also serialize. A refused request only reads the entry.
//! * Shared data is process-wide across workers and configuration reloads (a reload keeps the
//!   buckets; a smaller `capacity` clamps them), and bucket names are process-wide: two
//!   ratelimit filters naming the same bucket share it.
//! * Key values longer than 256 bytes, or not UTF-8, are replaced by their SHA-256
//!   (`ratelimit.<bucket>#<hex>`, a namespace no literal value can reach).
//! * Shared data grows with every distinct key value and entries are never removed (~40 bytes
//!   plus the key each): key by a bounded set (client addresses, principals), not by arbitrary
//!   client-chosen values, on long-running proxies.
//! * Over the limit: local reply 429 with `retry-after` (whole seconds until one token, rounded
//!   up, at least 1), `x-ratelimit-limit: <capacity>`, `x-ratelimit-remaining: 0`,
//!   `x-ratelimit-reset` (whole seconds until the bucket is full again, rounded up),
//!   `x-weir-ratelimit: over_limit` and body `weir: over_limit\n`.
//! * A missing key with `missing_key: deny`: local reply 403 with `x-weir-ratelimit:
//!   missing_key` and body `weir: missing_key\n`.
//! * An allowed request's response gets `x-ratelimit-limit` and `x-ratelimit-remaining` (whole
//!   tokens left after this request).
//! * Metrics (`proxy_define_metric`): counters `ratelimit.allowed` and `ratelimit.limited`
//!   (requests a bucket applied to; `missing_key` denials count as limited).
//! * A bad configuration is logged at error level and fails `on_configure`.
//!
//! Cost: the configuration is parsed once and shared through an `Rc`; per request the key is
//! formatted into a per-VM reused `String`, and the shared-data read/write are 16-byte values.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_sdk::phases::Phase;
use weir_sdk::proxy_wasm;
use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use weir_sdk::proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_root_context_id| Box::new(RateLimitRoot {
        config: None,
        shared: Rc::new(RefCell::new(PerVm::default())),
    }));
}}

/// Fixed-point scale of the stored token count (10⁻⁹ token).
const SCALE: u64 = 1_000_000_000;
/// The largest `capacity` and `refill.tokens` (so `capacity * SCALE` fits a u64).
const MAX_TOKENS: u64 = 1_000_000_000;
/// The longest `refill.per`.
const MAX_PER_MS: u64 = 24 * 3_600_000;
/// Key values longer than this are hashed.
const MAX_KEY_VALUE: usize = 256;
/// CAS attempts before giving up (and letting the request pass).
const CAS_RETRIES: usize = 64;
/// The CAS passed when creating an entry: on a vacant key the host stores whatever the CAS is,
/// on an existing one a CAS other than the stored one is a mismatch. The host's CAS values come
/// from one counter that starts at 1, so an existing entry holding this one is practically
/// impossible, and a creation racing another creation retries instead of overwriting it.
const CREATE_CAS: u32 = u32::MAX;

const OVER_LIMIT_BODY: &str = "weir: over_limit\n";
const MISSING_KEY_BODY: &str = "weir: missing_key\n";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    buckets: Vec<RawBucket>,
    #[serde(default)]
    missing_key: MissingKey,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum MissingKey {
    #[default]
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBucket {
    name: String,
    key: RawKey,
    capacity: u64,
    refill: RawRefill,
    #[serde(default, rename = "match")]
    matcher: Option<RawMatch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawKey {
    Client(String),
    Header(String),
    Claim(String),
    Principal(bool),
    Identity(String),
    Global(bool),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRefill {
    tokens: u64,
    per: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    header: Option<RawHeaderMatch>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawHeaderMatch {
    Present(String),
    Value { name: String, value: String },
}

/// Where a bucket's key value comes from.
enum KeySource {
    /// `source.address` without the port.
    Address,
    /// A request header (lower-cased name).
    Header(String),
    /// A stream property (its path in wire form: segments joined by NUL, built once here).
    Property(Vec<u8>),
    Global,
}

struct Bucket {
    key: KeySource,
    capacity: u64,
    /// `capacity` in decimal, for the headers.
    capacity_text: String,
    refill_tokens: u64,
    refill_per_ms: u64,
    path_prefix: Option<String>,
    method: Option<String>,
    /// `(lower-cased name, exact value)`.
    header: Option<(String, Option<String>)>,
    /// `ratelimit.<name>.`
    key_prefix: String,
    /// `ratelimit.<name>#`
    hashed_prefix: String,
}

struct Config {
    buckets: Vec<Bucket>,
    missing_key: MissingKey,
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid configuration: {e}"))?;
        if raw.buckets.is_empty() {
            return Err("buckets is empty".into());
        }
        let mut names = HashSet::new();
        let mut buckets = Vec::with_capacity(raw.buckets.len());
        for b in raw.buckets {
            let name = b.name;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return Err(format!(
                    "bucket name {name:?} is not 1-64 characters of [A-Za-z0-9_-]"
                ));
            }
            if !names.insert(name.clone()) {
                return Err(format!("bucket name {name:?} is used twice"));
            }
            let ctx = |e: String| format!("bucket {name}: {e}");
            let key = match b.key {
                RawKey::Client(c) if c == "address" => KeySource::Address,
                RawKey::Client(c) => {
                    return Err(ctx(format!("key.client {c:?} is not \"address\"")));
                }
                RawKey::Header(h) if !h.is_empty() => KeySource::Header(h.to_ascii_lowercase()),
                RawKey::Claim(c) if !c.is_empty() => {
                    KeySource::Property([&b"weir\0auth\0claim\0"[..], c.as_bytes()].concat())
                }
                RawKey::Header(_) | RawKey::Claim(_) => {
                    return Err(ctx("key names an empty header or claim".into()));
                }
                RawKey::Principal(true) => KeySource::Property(b"weir\0auth\0principal".to_vec()),
                RawKey::Identity(i) if i == "peer" => {
                    KeySource::Property(b"connection\0uri_san_peer_certificate".to_vec())
                }
                RawKey::Identity(i) => {
                    return Err(ctx(format!("key.identity {i:?} is not \"peer\"")));
                }
                RawKey::Global(true) => KeySource::Global,
                RawKey::Principal(false) | RawKey::Global(false) => {
                    return Err(ctx("key.principal / key.global must be true".into()));
                }
            };
            if !(1..=MAX_TOKENS).contains(&b.capacity) {
                return Err(ctx(format!(
                    "capacity {} is not 1-{MAX_TOKENS}",
                    b.capacity
                )));
            }
            if !(1..=MAX_TOKENS).contains(&b.refill.tokens) {
                return Err(ctx(format!(
                    "refill.tokens {} is not 1-{MAX_TOKENS}",
                    b.refill.tokens
                )));
            }
            let per =
                parse_duration_ms(&b.refill.per).map_err(|e| ctx(format!("refill.per: {e}")))?;
            let (path_prefix, method, header) = match b.matcher {
                Some(m) => (
                    m.path_prefix,
                    m.method,
                    match m.header {
                        None => None,
                        Some(RawHeaderMatch::Present(n)) => Some((n.to_ascii_lowercase(), None)),
                        Some(RawHeaderMatch::Value { name, value }) => {
                            Some((name.to_ascii_lowercase(), Some(value)))
                        }
                    },
                ),
                None => (None, None, None),
            };
            if header.as_ref().is_some_and(|(n, _)| n.is_empty()) {
                return Err(ctx("match.header is empty".into()));
            }
            buckets.push(Bucket {
                key,
                capacity: b.capacity,
                capacity_text: b.capacity.to_string(),
                refill_tokens: b.refill.tokens,
                refill_per_ms: per,
                path_prefix,
                method,
                header,
                key_prefix: format!("ratelimit.{name}."),
                hashed_prefix: format!("ratelimit.{name}#"),
            });
        }
        Ok(Self {
            buckets,
            missing_key: raw.missing_key,
        })
    }
}

/// A duration in the manifest's grammar (`"100ms"`, `"1s"`, `"1m30s"`, `"1h"`) in whole
/// milliseconds, 1 ms to [`MAX_PER_MS`].
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let d = weir_sdk::config::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_millis(1)..=Duration::from_millis(MAX_PER_MS)).contains(&d) {
        return Err(format!("{s:?} is not between 1ms and 24h"));
    }
    // The bucket state counts milliseconds; rounding would change the rate.
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{s:?} is not a whole number of milliseconds"));
    }
    Ok(u64::try_from(d.as_millis()).unwrap_or(MAX_PER_MS))
}

/// The stored bucket: tokens in [`SCALE`] units and the last refill (ms since the epoch).
#[derive(Clone, Copy, Debug, PartialEq)]
struct State {
    tokens: u64,
    last_ms: u64,
}

impl State {
    fn encode(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.tokens.to_le_bytes());
        b[8..].copy_from_slice(&self.last_ms.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 16] = b.try_into().ok()?;
        Some(Self {
            tokens: u64::from_le_bytes(b[..8].try_into().ok()?),
            last_ms: u64::from_le_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// Milliseconds needed to refill `missing` fixed-point tokens (rounded up).
fn ms_to_refill(bucket: &Bucket, missing: u64) -> u64 {
    let num = u128::from(missing) * u128::from(bucket.refill_per_ms);
    let den = u128::from(bucket.refill_tokens) * u128::from(SCALE);
    u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
}

impl Bucket {
    fn full(&self) -> u64 {
        self.capacity * SCALE
    }

    /// The bucket refilled up to `now_ms` (a new bucket is full).
    fn refill(&self, stored: Option<State>, now_ms: u64) -> State {
        let Some(st) = stored else {
            return State {
                tokens: self.full(),
                last_ms: now_ms,
            };
        };
        let tokens = st.tokens.min(self.full());
        // Another worker may have written a later time than ours: never move backwards.
        let Some(elapsed) = now_ms.checked_sub(st.last_ms).filter(|e| *e > 0) else {
            return State { tokens, ..st };
        };
        let add = u128::from(elapsed) * u128::from(self.refill_tokens) * u128::from(SCALE)
            / u128::from(self.refill_per_ms);
        let tokens = u128::from(tokens)
            .saturating_add(add)
            .min(u128::from(self.full())) as u64;
        State {
            tokens,
            last_ms: now_ms,
        }
    }

    fn matches(&self, ctx: &RateLimit) -> bool {
        if let Some(prefix) = &self.path_prefix {
            match ctx.get_http_request_header(":path") {
                Some(p) if p.starts_with(prefix.as_str()) => {}
                _ => return false,
            }
        }
        if let Some(method) = &self.method {
            match ctx.get_http_request_header(":method") {
                Some(m) if m == *method => {}
                _ => return false,
            }
        }
        if let Some((name, value)) = &self.header {
            match (ctx.get_http_request_header_bytes(name), value) {
                (None, _) => return false,
                (Some(v), Some(want)) if v != want.as_bytes() => return false,
                _ => {}
            }
        }
        true
    }

    /// The key's value for this request (`None`: missing or empty).
    fn key_value(&self, ctx: &RateLimit) -> Option<Vec<u8>> {
        let v = match &self.key {
            KeySource::Global => return Some(Vec::new()),
            KeySource::Header(h) => ctx.get_http_request_header_bytes(h)?,
            KeySource::Property(path) => weir_sdk::properties::get_raw(path)?,
            KeySource::Address => {
                let a = weir_sdk::properties::get_raw(b"source\0address")?;
                strip_port(&a).to_vec()
            }
        };
        (!v.is_empty()).then_some(v)
    }
}

/// `1.2.3.4:5` → `1.2.3.4`, `[::1]:5` → `::1`; anything else as is.
fn strip_port(a: &[u8]) -> &[u8] {
    if let Some(rest) = a.strip_prefix(b"[")
        && let Some(end) = rest.iter().position(|c| *c == b']')
    {
        return &rest[..end];
    }
    match a.iter().rposition(|c| *c == b':') {
        Some(i) if a[..i].iter().all(|c| *c != b':') => &a[..i],
        _ => a,
    }
}

/// Formats the shared-data key into `out` (reused across requests).
fn format_key(bucket: &Bucket, value: &[u8], out: &mut String) {
    out.clear();
    match std::str::from_utf8(value) {
        Ok(v) if v.len() <= MAX_KEY_VALUE => {
            out.push_str(&bucket.key_prefix);
            out.push_str(v);
        }
        _ => {
            out.push_str(&bucket.hashed_prefix);
            for b in Sha256::digest(value) {
                let _ = write!(out, "{b:02x}");
            }
        }
    }
}

/// What taking a token from a bucket gave.
enum Decision {
    /// Whole tokens left.
    Allowed(u64),
    /// Seconds until one token, seconds until full.
    Limited { retry_after: u64, reset: u64 },
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Takes one token from the bucket stored under `key` (CAS loop). `None`: the loop gave up.
fn take(bucket: &Bucket, key: &str) -> Option<Decision> {
    let now = now_ms();
    for _ in 0..CAS_RETRIES {
        let (value, cas) = match hostcalls::get_shared_data(key) {
            Ok(r) => r,
            Err(_) => return None,
        };
        let stored = value.as_deref().and_then(State::decode);
        let st = bucket.refill(stored, now);
        if st.tokens < SCALE {
            let secs = |ms: u64| ms.div_ceil(1000);
            return Some(Decision::Limited {
                retry_after: secs(ms_to_refill(bucket, SCALE - st.tokens)).max(1),
                reset: secs(ms_to_refill(bucket, bucket.full() - st.tokens)),
            });
        }
        let next = State {
            tokens: st.tokens - SCALE,
            ..st
        };
        let cas = match (value.is_some(), cas) {
            (true, Some(c)) if c != 0 => c,
            _ => CREATE_CAS,
        };
        match hostcalls::set_shared_data(key, Some(&next.encode()), Some(cas)) {
            Ok(()) => return Some(Decision::Allowed(next.tokens / SCALE)),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

#[derive(Default, Clone, Copy)]
struct Metrics {
    allowed: Option<u32>,
    limited: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let def = |name| hostcalls::define_metric(MetricType::Counter, name).ok();
        Self {
            allowed: def("ratelimit.allowed"),
            limited: def("ratelimit.limited"),
        }
    }

    fn add(id: Option<u32>) {
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// Per-VM state shared by the root and its streams.
#[derive(Default)]
struct PerVm {
    metrics: Metrics,
    /// The shared-data key being built (reused).
    key: String,
}

struct RateLimitRoot {
    config: Option<Rc<Config>>,
    shared: Rc<RefCell<PerVm>>,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                if self.config.is_none() {
                    self.shared.borrow_mut().metrics = Metrics::define();
                }
                self.config = Some(Rc::new(config));
                weir_sdk::phases::declare(&[Phase::RequestHeaders, Phase::ResponseHeaders]);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("ratelimit: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimit {
            config: self.config.clone(),
            shared: Rc::clone(&self.shared),
            allowed: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimit {
    config: Option<Rc<Config>>,
    shared: Rc<RefCell<PerVm>>,
    /// Set when a bucket let the request through: `(bucket index, whole tokens left)`.
    allowed: Option<(usize, u64)>,
}

impl Context for RateLimit {}

impl HttpContext for RateLimit {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            return Action::Continue;
        };
        let Some((index, bucket)) = config
            .buckets
            .iter()
            .enumerate()
            .find(|(_, b)| b.matches(self))
        else {
            return Action::Continue;
        };
        let metrics = self.shared.borrow().metrics;
        let Some(value) = bucket.key_value(self) else {
            if config.missing_key == MissingKey::Deny {
                Metrics::add(metrics.limited);
                let _ = hostcalls::send_http_response(
                    403,
                    vec![("x-weir-ratelimit", "missing_key")],
                    Some(MISSING_KEY_BODY.as_bytes()),
                );
                return Action::Pause;
            }
            return Action::Continue;
        };
        let decision = {
            let mut shared = self.shared.borrow_mut();
            format_key(bucket, &value, &mut shared.key);
            take(bucket, &shared.key)
        };
        match decision {
            Some(Decision::Allowed(remaining)) => {
                Metrics::add(metrics.allowed);
                self.allowed = Some((index, remaining));
                Action::Continue
            }
            Some(Decision::Limited { retry_after, reset }) => {
                Metrics::add(metrics.limited);
                let retry_after = retry_after.to_string();
                let reset = reset.to_string();
                let _ = hostcalls::send_http_response(
                    429,
                    vec![
                        ("retry-after", &retry_after),
                        ("x-ratelimit-limit", &bucket.capacity_text),
                        ("x-ratelimit-remaining", "0"),
                        ("x-ratelimit-reset", &reset),
                        ("x-weir-ratelimit", "over_limit"),
                    ],
                    Some(OVER_LIMIT_BODY.as_bytes()),
                );
                Action::Pause
            }
            None => {
                // Contention beyond CAS_RETRIES (or a host refusal): fail open.
                let _ = hostcalls::log(
                    LogLevel::Warn,
                    "ratelimit: shared data contention, request let through",
                );
                Metrics::add(metrics.allowed);
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some((index, remaining)), Some(config)) = (self.allowed, &self.config) {
            let bucket = &config.buckets[index];
            self.set_http_response_header("x-ratelimit-limit", Some(&bucket.capacity_text));
            self.set_http_response_header("x-ratelimit-remaining", Some(&remaining.to_string()));
        }
        Action::Continue
    }
}
