//! JWT authentication: JWKS parsing (inline and fetched), fetching the JWKS from its cluster,
//! signature and claim verification, and the per-VM cache of verified tokens.

use std::cell::RefCell;
use std::hash::Hasher;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use weir_sdk::proxy_wasm::hostcalls;
use weir_sdk::proxy_wasm::types::{BufferType, LogLevel, MapType};

use crate::config::{JwksCluster, JwtConfig};
use crate::{Metrics, Reason, State, now_secs};

/// The most JWKS fetches in flight per VM (each waiting request fetches for itself, because only
/// the stream's own callback can edit its headers; this bounds the fan-out of a burst).
const MAX_FETCHES: u32 = 16;

enum KeyMaterial {
    Rsa(rsa::RsaPublicKey),
    Ec(p256::ecdsa::VerifyingKey),
    Oct(Vec<u8>),
}

pub(crate) struct Jwk {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<String>,
    key: KeyMaterial,
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "not base64url".to_owned())
}

/// Parses a JWKS. `strict`: a key that does not parse is an error (inline configuration);
/// otherwise it is skipped (a fetched JWKS may list key types this filter does not use).
pub(crate) fn parse_jwks(jwks: &Value, strict: bool) -> Result<Vec<Jwk>, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        match parse_jwk(k) {
            Ok(Some(jwk)) => out.push(jwk),
            Ok(None) => {}
            Err(e) if strict => return Err(format!("keys[{i}]: {e}")),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// `Ok(None)`: a key not meant for signatures.
fn parse_jwk(k: &Value) -> Result<Option<Jwk>, String> {
    let field = |name: &str| k.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let bytes = |name: &str| {
        field(name)
            .ok_or_else(|| format!("missing {name}"))
            .and_then(|v| b64(v).map_err(|e| format!("{name}: {e}")))
    };
    let key = match field("kty") {
        Some("RSA") => {
            let n = rsa::BigUint::from_bytes_be(&bytes("n")?);
            let e = rsa::BigUint::from_bytes_be(&bytes("e")?);
            KeyMaterial::Rsa(rsa::RsaPublicKey::new(n, e).map_err(|e| format!("RSA key: {e}"))?)
        }
        Some("EC") => {
            if field("crv") != Some("P-256") {
                return Err("only EC keys on P-256 are supported".into());
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            KeyMaterial::Ec(
                p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| "EC point not on P-256")?,
            )
        }
        Some("oct") => {
            let k = bytes("k")?;
            if k.is_empty() {
                return Err("empty oct key".into());
            }
            KeyMaterial::Oct(k)
        }
        Some(other) => return Err(format!("unsupported kty {other:?}")),
        None => return Err("missing kty".into()),
    };
    Ok(Some(Jwk {
        kid: field("kid").map(str::to_owned),
        alg: field("alg").map(str::to_owned),
        key,
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum Alg {
    Rs256,
    Es256,
    Hs256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::Hs256 => "HS256",
        }
    }

    fn fits(self, key: &Jwk) -> bool {
        let kty = matches!(
            (self, &key.key),
            (Self::Rs256, KeyMaterial::Rsa(_))
                | (Self::Es256, KeyMaterial::Ec(_))
                | (Self::Hs256, KeyMaterial::Oct(_))
        );
        kty && key.alg.as_deref().is_none_or(|a| a == self.name())
    }
}

fn verify_signature(alg: Alg, key: &KeyMaterial, signed: &[u8], sig: &[u8]) -> bool {
    match key {
        KeyMaterial::Rsa(pk) => {
            let digest = Sha256::digest(signed);
            pk.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, sig)
                .is_ok()
        }
        KeyMaterial::Ec(vk) => {
            use p256::ecdsa::signature::Verifier;
            let Ok(sig) = p256::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            vk.verify(signed, &sig).is_ok()
        }
        KeyMaterial::Oct(k) => {
            debug_assert!(alg == Alg::Hs256);
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(k) else {
                return false;
            };
            mac.update(signed);
            mac.verify_slice(sig).is_ok()
        }
    }
}

/// The result of verifying a token against a key set.
pub(crate) enum Verified {
    Ok(serde_json::Map<String, Value>),
    Refused(Reason),
    /// The `kid` is not in the key set.
    UnknownKid,
}

pub(crate) fn verify_jwt(token: &str, keys: &[Jwk], config: &JwtConfig, now: u64) -> Verified {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Verified::Refused(Reason::InvalidToken);
    };
    let Some(header) = b64(h)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Verified::Refused(Reason::InvalidToken);
    };
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Alg::Rs256,
        Some("ES256") => Alg::Es256,
        Some("HS256") => Alg::Hs256,
        _ => return Verified::Refused(Reason::InvalidToken),
    };
    let Ok(sig) = b64(s) else {
        return Verified::Refused(Reason::InvalidToken);
    };
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates = keys.iter().filter(|k| match kid {
        Some(kid) => k.kid.as_deref() == Some(kid),
        None => true,
    });
    let mut any = false;
    let mut ok = false;
    for key in candidates {
        if !alg.fits(key) {
            continue;
        }
        any = true;
        if verify_signature(alg, &key.key, signed, &sig) {
            ok = true;
            break;
        }
    }
    if !any {
        return if kid.is_some() && !keys.iter().any(|k| k.kid.as_deref() == kid) {
            Verified::UnknownKid
        } else {
            Verified::Refused(Reason::UnknownKey)
        };
    }
    if !ok {
        return Verified::Refused(Reason::BadSignature);
    }
    // Only now are the claims read.
    let Some(Value::Object(claims)) = b64(p)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Verified::Refused(Reason::InvalidToken);
    };
    let skew = config.clock_skew.as_secs();
    let time = |name: &str| claims.get(name).map(|v| v.as_f64());
    match time("exp") {
        Some(None) => return Verified::Refused(Reason::InvalidToken),
        Some(Some(exp)) if (now as f64) > exp + skew as f64 => {
            return Verified::Refused(Reason::Expired);
        }
        _ => {}
    }
    match time("nbf") {
        Some(None) => return Verified::Refused(Reason::InvalidToken),
        Some(Some(nbf)) if ((now + skew) as f64) < nbf => {
            return Verified::Refused(Reason::NotYetValid);
        }
        _ => {}
    }
    if let Some(iss) = &config.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
    {
        return Verified::Refused(Reason::WrongIssuer);
    }
    if let Some(auds) = &config.audiences {
        let fits = |a: &Value| a.as_str().is_some_and(|a| auds.iter().any(|w| w == a));
        let ok = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(fits),
            Some(a) => fits(a),
            None => false,
        };
        if !ok {
            return Verified::Refused(Reason::WrongAudience);
        }
    }
    Verified::Ok(claims)
}

/// A 64-bit hash of a token, eight bytes at a time (FxHash's step, then a final mix so every
/// bit of the key reaches the bits a hash table indexes by). Not keyed: only verified tokens are
/// inserted, so a client cannot fill the cache with colliding entries, and a collision only
/// costs a re-verification. SipHash (std's default) over a few hundred bytes of JWT was the
/// largest single cost of a cache hit.
pub(crate) fn token_hash(token: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let words = token.chunks_exact(8);
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    let mut h = words.fold(token.len() as u64, |h, w| {
        step(h, u64::from_le_bytes(w.try_into().expect("chunks of 8")))
    });
    h = step(h, u64::from_le_bytes(last));
    // MurmurHash3's fmix64.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hasher of a map whose keys are hashes already ([`token_hash`]).
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are `u64`); any other key still hashes.
        self.0 = token_hash(bytes) ^ self.0.rotate_left(17);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `a == b`, eight bytes at a time. Slice equality in Wasm is a byte-by-byte `memcmp` loop, and
/// a JWT is a few hundred bytes.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (wa.remainder(), wb.remainder());
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("chunks of 8"));
    wa.zip(wb).all(|(x, y)| word(x) == word(y)) && ra.iter().zip(rb).all(|(x, y)| x == y)
}

/// A verified token, valid while its key set is the one it was verified with.
pub(crate) struct Cached {
    pub(crate) token: Box<str>,
    pub(crate) keys: Rc<Vec<Jwk>>,
    pub(crate) claims: Rc<serde_json::Map<String, Value>>,
    /// `exp` and `nbf`, read once: a hit checks them without looking them up again.
    exp: Option<f64>,
    nbf: Option<f64>,
    /// The principal (`sub`), if a string.
    pub(crate) sub: Option<Rc<str>>,
}

impl Cached {
    pub(crate) fn new(
        token: &str,
        keys: &Rc<Vec<Jwk>>,
        claims: Rc<serde_json::Map<String, Value>>,
    ) -> Self {
        let time = |name: &str| claims.get(name).and_then(Value::as_f64);
        Self {
            token: token.into(),
            keys: Rc::clone(keys),
            exp: time("exp"),
            nbf: time("nbf"),
            sub: claims.get("sub").and_then(Value::as_str).map(Rc::from),
            claims,
        }
    }

    /// `exp` and `nbf` against `now` with `skew` (the checks that must run even for a cached
    /// token).
    pub(crate) fn time_ok(&self, now: u64, skew: u64) -> bool {
        self.exp.is_none_or(|exp| now as f64 <= exp + skew as f64)
            && self.nbf.is_none_or(|nbf| (now + skew) as f64 >= nbf)
    }
}

/// Most tokens kept verified per VM; when full the cache starts over (a burst of distinct
/// tokens cannot grow it without bound).
pub(crate) const VERIFIED_CACHE_MAX: usize = 1024;

/// Dispatches a JWKS fetch on the acting context (`None`: too many in flight, or refused).
pub(crate) fn dispatch_jwks(c: &JwksCluster, state: &RefCell<State>) -> Option<u32> {
    let mut st = state.borrow_mut();
    if st.in_flight >= MAX_FETCHES {
        return None;
    }
    let headers = vec![
        (":method", "GET"),
        (":path", c.path.as_str()),
        (":authority", c.authority.as_str()),
        ("accept", "application/json"),
    ];
    Metrics::add(st.metrics.fetches);
    match hostcalls::dispatch_http_call(&c.cluster, headers, None, vec![], c.timeout) {
        Ok(token) => {
            st.in_flight += 1;
            Some(token)
        }
        Err(e) => {
            Metrics::add(st.metrics.fetch_failures);
            let _ = hostcalls::log(
                LogLevel::Warn,
                &format!("auth: JWKS fetch from {} failed: {e:?}", c.cluster),
            );
            None
        }
    }
}

pub(crate) fn stream_fetch(jwt: &JwtConfig, state: &RefCell<State>) -> Option<u32> {
    dispatch_jwks(jwt.cluster.as_ref()?, state)
}

/// Takes the JWKS answer being delivered now into the cache (a failure keeps the old keys).
pub(crate) fn jwks_answered(state: &RefCell<State>, body_size: usize) {
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten();
    let keys = if status.as_deref().is_some_and(|s| s.starts_with(b"2")) {
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match serde_json::from_slice::<Value>(&body)
            .map_err(|e| e.to_string())
            .and_then(|v| parse_jwks(&v, false))
        {
            Ok(keys) => Some(keys),
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Warn, &format!("auth: bad JWKS: {e}"));
                None
            }
        }
    } else {
        let _ = hostcalls::log(
            LogLevel::Warn,
            &format!(
                "auth: JWKS fetch answered {}",
                status.map_or_else(
                    || "nothing (failed)".into(),
                    |s| String::from_utf8_lossy(&s).into_owned()
                )
            ),
        );
        None
    };
    let now = now_secs();
    let mut st = state.borrow_mut();
    st.in_flight = st.in_flight.saturating_sub(1);
    match keys {
        Some(keys) => {
            st.keys = Some(Rc::new(keys));
            st.fetched_at = Some(now);
            st.failed_at = None;
            st.kid_refresh_pending = false;
        }
        None => {
            Metrics::add(st.metrics.fetch_failures);
            if st.keys.is_none() {
                st.failed_at = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_slice_equality() {
        let long = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("a", "b"),
            ("abcdefgh", "abcdefgh"),
            ("abcdefgh", "abcdefgX"),
            ("abcdefghi", "abcdefghX"),
            (long, long),
            (long, &long[..long.len() - 1]),
        ] {
            assert_eq!(
                same_bytes(a.as_bytes(), b.as_bytes()),
                a == b,
                "{a:?} {b:?}"
            );
        }
        let mut other = long.to_owned().into_bytes();
        other[long.len() - 3] ^= 1;
        assert!(!same_bytes(long.as_bytes(), &other));
    }

    #[test]
    fn token_hash_tells_tokens_apart() {
        let long = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        assert_eq!(
            token_hash(long.as_bytes()),
            token_hash(long.to_owned().as_bytes())
        );
        // Every single-byte change, at every position (word or tail), and every length change
        // gives another hash; so do trailing zero bytes (the tail is zero-padded).
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(token_hash(long.as_bytes())));
        for i in 0..long.len() {
            let mut other = long.as_bytes().to_vec();
            other[i] ^= 1;
            assert!(seen.insert(token_hash(&other)), "flip at {i}");
            assert!(seen.insert(token_hash(&long.as_bytes()[..i])), "prefix {i}");
        }
        assert_ne!(token_hash(b"a"), token_hash(b"a\0"));
        assert_ne!(token_hash(b""), token_hash(b"\0"));
    }
}
