//! Typed plugin configuration: the JSON a manifest gives a filter (`config:`), parsed with serde.
//!
//! Weir hands a filter its configuration as JSON bytes in buffer 7 during `on_configure` (Envoy does
//! the same for a `google.protobuf.Struct`). An empty configuration parses as `{}`, so a config type
//! whose fields all have `#[serde(default)]` accepts "no config".

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, Status};
use serde::de::DeserializeOwned;

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
}
