//! Human units in the manifest: durations (`10ms`, `1s`, `5m`) and sizes (`64KiB`, `1MiB`, `512`);
//! the runtime types write their durations back the same way (`/config_dump`).
//!
//! Bare integers are accepted for sizes (bytes) but not for durations: `timeout: 5` is ambiguous
//! (seconds? milliseconds?), so it is an error that says which form to write.
//!
//! The grammar itself is `weir_sdk::config`'s, the one the stock filters read their `config:`
//! with, so a duration or a size means the same in the manifest and in a filter's configuration
//! (one parser, not two copies that could drift). It never panics: a sum of units that overflows
//! is an error (the `humantime` parser used before panicked on some).

use std::time::Duration;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as `10ms`, `1s`, `1m30s`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The sdk's type reads the grammar (and refuses a bare number); written back by
        // humantime, as `/config_dump` always has.
        weir_sdk::config::HumanDuration::deserialize(d).map(|h| HumanDuration(h.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

/// A runtime duration written back the way a manifest writes it (`/config_dump`).
pub(super) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

pub(super) fn ser_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Parses `10ms`, `1s`, `1m30s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    weir_sdk::config::parse_duration(s).map_err(|e| e.to_string())
}

/// A byte size written as `64KiB`, `1MiB`, `1MB`, `512B` or a bare number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        weir_sdk::config::HumanSize::deserialize(d).map(|h| HumanSize(h.0))
    }
}

impl Serialize for HumanSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_size(self.0))
    }
}

/// Parses a size. Binary (`KiB`, `MiB`, `GiB`) and decimal (`KB`, `MB`, `GB`) units; case of the
/// unit letters is not significant except that `b` alone means bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    weir_sdk::config::parse_size(s).map_err(|e| e.to_string())
}

/// Formats bytes in the largest exact binary unit, so a dumped config reads back unchanged.
pub fn format_size(n: u64) -> String {
    weir_sdk::config::format_size(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("512B").unwrap(), 512);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(format_size(65536), "64KiB");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
        let e = serde_yaml_ng::from_str::<HumanDuration>("5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no unit"), "{e}");
        // An overflow is an error, never a panic (humantime panicked on this one).
        let e = parse_duration("18446744073709551615s 1000000000ns").unwrap_err();
        assert!(e.starts_with("invalid duration"), "{e}");
    }
}
