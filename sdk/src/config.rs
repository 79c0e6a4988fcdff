//! Typed plugin configuration: the JSON a manifest gives a filter (`config:`), parsed with serde.
//!
//! Weir hands a filter its configuration as JSON bytes in buffer 7 during `on_configure` (Envoy does
//! the same for a `google.protobuf.Struct`). An empty configuration parses as `{}`, so a config type
//! whose fields all have `#[serde(default)]` accepts "no config".
//!
//! Durations and sizes are written as in the manifest (`10ms`, `1m30s`, `64KiB`):
//! [`parse_duration`] and [`parse_size`] for a field validated by hand (the error can then name
//! the field), [`HumanDuration`] / [`HumanSize`] or [`deserialize_duration`] /
//! [`deserialize_size`] for serde.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, Status};
use serde::de::DeserializeOwned;

mod units;
pub use units::{
    DurationError, DurationErrorKind, HumanDuration, HumanSize, SizeError, deserialize_duration,
    deserialize_size, format_duration, format_size, parse_duration, parse_size,
};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not valid JSON for the target type (the message names line and column).
    #[error("invalid plugin configuration: {0}")]
    Invalid(#[from] serde_json::Error),
    /// The host refused to hand out the configuration buffer.
    #[error("could not read the plugin configuration: {0:?}")]
    Host(Status),
}

/// Parses configuration bytes as JSON into `T`; empty or whitespace-only input parses as `{}`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::from_slice(b"{}")?);
    }
    Ok(serde_json::from_slice(bytes)?)
}

/// Reads and parses the plugin configuration. Call it from `RootContext::on_configure` (the buffer
/// only exists during that callback).
pub fn plugin_configuration<T: DeserializeOwned>() -> Result<T, ConfigError> {
    let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .map_err(ConfigError::Host)?
        .unwrap_or_default();
    parse(&bytes)
}

/// The whole of a typical `on_configure`: parse the plugin configuration into `slot` and return
/// true, or log the error at ERROR (the operator sees it in the proxy's log) and return false, which
/// makes the proxy reject the filter instead of running it with a half-understood configuration.
pub fn on_configure<T: DeserializeOwned>(slot: &mut T) -> bool {
    match plugin_configuration() {
        Ok(config) => {
            *slot = config;
            true
        }
        Err(e) => {
            // Logging can only fail if the host is broken; there is nothing better to do then.
            let _ = hostcalls::log(LogLevel::Error, &e.to_string());
            false
        }
    }
}

/// Whether `s` is an RFC 9110 token (a header name, a method, a cookie name).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a header name from a configuration and lower-cases it: a token, optionally behind a
/// leading `:` when `pseudo_ok` (pseudo-headers may be read or matched, never added or edited).
pub fn header_name(name: &str, pseudo_ok: bool) -> Result<String, &'static str> {
    let token = match name.strip_prefix(':') {
        Some(rest) if pseudo_ok => rest,
        Some(_) => return Err("pseudo-headers cannot be added or edited"),
        None => name,
    };
    if token.is_empty() {
        return Err("empty name");
    }
    if !is_token(token) {
        return Err("not a valid header name");
    }
    Ok(name.to_ascii_lowercase())
}

/// Checks a header value from a configuration: no control character but HTAB (CR, LF and NUL
/// would let a configuration smuggle extra header lines into an HTTP/1 message).
pub fn header_value(value: &str) -> Result<(), &'static str> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("value contains a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[serde(default)]
        name: String,
        #[serde(default)]
        limit: u32,
    }

    #[test]
    fn empty_configuration_is_an_empty_object() {
        assert_eq!(parse::<Demo>(b"").unwrap(), Demo::default());
        assert_eq!(parse::<Demo>(b"  \n").unwrap(), Demo::default());
    }

    #[test]
    fn json_is_parsed_into_the_type() {
        let d: Demo = parse(br#"{"name":"a","limit":3}"#).unwrap();
        assert_eq!(
            d,
            Demo {
                name: "a".into(),
                limit: 3
            }
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse::<Demo>(br#"{"nmae":"a"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `nmae`"), "{e}");
        let e = parse::<Demo>(b"{").unwrap_err();
        assert!(
            e.to_string().starts_with("invalid plugin configuration"),
            "{e}"
        );
    }

    #[test]
    fn header_names_and_values() {
        assert_eq!(header_name("X-A", false), Ok("x-a".to_owned()));
        assert_eq!(header_name(":path", true), Ok(":path".to_owned()));
        assert!(header_name(":path", false).is_err());
        assert!(header_name("", false).is_err() && header_name(":", true).is_err());
        assert!(header_name("a b", false).is_err());
        assert!(header_value("ok\tvalue").is_ok());
        for bad in ["a\r\nb", "a\0", "a\x7f"] {
            assert!(header_value(bad).is_err(), "{bad:?}");
        }
        assert!(is_token("GET") && !is_token("") && !is_token("a;b"));
    }
}
