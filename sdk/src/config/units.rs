//! Durations (`10ms`, `1m30s`, `1h`) and sizes (`64KiB`, `1MiB`, `512`) in a filter's
//! configuration, in the manifest's grammar, so a filter's `config:` reads like the rest of the
//! manifest.
//!
//! The manifest (`proxy/src/config/units.rs`) parses durations with the `humantime` crate and
//! sizes by hand. Both are re-implemented here rather than shared: a filter must not depend on
//! the proxy, and the guest should not carry another crate for one parser. The grammar,
//! the overflow rules and the error messages are the manifest's; the tests hold a table of cases
//! whose expected results were produced by the manifest's own functions.
//!
//! Durations: one or more spans, each a number (fractions allowed: `1.5s`) and a unit, optionally
//! separated by spaces (`1m30s`, `1h 30m`). A bare `0` is zero; any other bare number is an
//! error, because `timeout: 5` could mean seconds or milliseconds. Units: `ns`, `us`/`µs`, `ms`,
//! `s`, `m`, `h`, `d`, `w`, `M` (30.44 days), `y` (365.25 days), and their spelled-out
//! variants (`sec`, `min`, `hours`, …). Sizes: a whole number and an optional unit, binary
//! (`KiB`, `MiB`, `GiB`) or decimal (`KB`, `MB`, `GB`), `B` or nothing for bytes; the unit is
//! case-insensitive.
//!
//! Over 700 lines only with its unit tests (the code is under 600): the case tables taken from the
//! manifest's own parser are long.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use DurationErrorKind as E;

// ---------------------------------------------------------------------------------------------
// Durations.

/// Why a duration did not parse. It displays as the manifest's message, e.g. ``invalid duration
/// `soon`: expected number at 0 (write e.g. 10ms, 1s, 5m)``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {kind} (write e.g. 10ms, 1s, 5m)")]
pub struct DurationError {
    /// The text as written (not trimmed).
    pub input: String,
    /// What is wrong with it.
    pub kind: DurationErrorKind,
}

/// What is wrong with a duration. Offsets are bytes into the text with surrounding whitespace
/// removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationErrorKind {
    /// Nothing but whitespace.
    Empty,
    /// A character that is neither a digit, a letter, `µ`, `.` nor whitespace, or a `.` without
    /// digits after it.
    InvalidCharacter(usize),
    /// A unit, or anything else, where a number should start.
    NumberExpected(usize),
    /// A unit that is not one of the known ones; `unit` is empty when the number had none.
    UnknownUnit {
        /// Where the unit starts.
        start: usize,
        /// Where it ends (exclusive).
        end: usize,
        /// The unit as written.
        unit: String,
        /// The whole part of the number in front of it.
        value: u64,
    },
    /// Too large for a `Duration` (or, in nanoseconds, for a `u64`), or finer than a nanosecond.
    NumberOverflow,
}

impl fmt::Display for DurationErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime's wording, which is what the manifest prints.
        match self {
            Self::Empty => f.write_str("value was empty"),
            Self::InvalidCharacter(at) => write!(f, "invalid character at {at}"),
            Self::NumberExpected(at) => write!(f, "expected number at {at}"),
            Self::UnknownUnit { unit, value, .. } if unit.is_empty() => {
                write!(f, "time unit needed, for example {value}sec or {value}ms")
            }
            Self::UnknownUnit { unit, .. } => write!(
                f,
                "unknown time unit {unit:?}, supported units: ns, us/µs, ms, sec, min, hours, \
                 days, weeks, months, years (and few variations)"
            ),
            Self::NumberOverflow => f.write_str(
                "number is too large or cannot be represented without a lack of precision \
                 (values below 1ns are not supported)",
            ),
        }
    }
}

/// Parses a duration the way the manifest does: `10ms`, `1s`, `1.5s`, `1m30s`, `2h`, `1h 30m`.
/// Surrounding whitespace is ignored.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let parsed = if t == "0" {
        Ok(Duration::ZERO)
    } else {
        Parser {
            iter: t.chars(),
            src: t,
        }
        .parse()
    };
    parsed.map_err(|kind| DurationError {
        input: s.to_owned(),
        kind,
    })
}

/// The part after a decimal point: `numerator / denominator`.
#[derive(Clone, Copy)]
struct Fraction {
    numerator: u64,
    denominator: u64,
}

/// A port of humantime 2's parser, step for step, so that the same text gives the same value or
/// the same error (offsets included) as in the manifest.
struct Parser<'a> {
    iter: std::str::Chars<'a>,
    src: &'a str,
}

fn digit(c: char) -> u64 {
    u64::from(c) - u64::from('0')
}

fn mul(a: u64, b: u64) -> Result<u64, E> {
    a.checked_mul(b).ok_or(E::NumberOverflow)
}

fn add(a: u64, b: u64) -> Result<u64, E> {
    a.checked_add(b).ok_or(E::NumberOverflow)
}

/// `a / b` when exact; a remainder means a value finer than the unit can hold.
fn div(a: u64, b: u64) -> Result<u64, E> {
    if a.is_multiple_of(b) {
        Ok(a / b)
    } else {
        Err(E::NumberOverflow)
    }
}

fn is_unit_char(c: char) -> bool {
    c.is_ascii_alphabetic() || c == 'µ'
}

impl Parser<'_> {
    /// Bytes consumed so far.
    fn off(&self) -> usize {
        self.src.len() - self.iter.as_str().len()
    }

    fn parse(mut self) -> Result<Duration, E> {
        let mut n = self.parse_first_char()?.ok_or(E::Empty)?;
        let mut out = Duration::ZERO;
        'outer: loop {
            // The number: digits (spaces between them are skipped), then maybe a fraction.
            let mut frac = None;
            let mut off = self.off();
            while let Some(c) = self.iter.next() {
                match c {
                    '0'..='9' => {
                        n = n
                            .checked_mul(10)
                            .and_then(|x| x.checked_add(digit(c)))
                            .ok_or(E::NumberOverflow)?;
                    }
                    c if c.is_whitespace() => {}
                    c if is_unit_char(c) => break,
                    '.' => {
                        frac = Some(self.parse_fraction(&mut off)?);
                        break;
                    }
                    _ => return Err(E::InvalidCharacter(off)),
                }
                off = self.off();
            }
            // The unit: letters up to a digit (the next span), a space or the end.
            let start = off;
            let mut off = self.off();
            while let Some(c) = self.iter.next() {
                match c {
                    '0'..='9' => {
                        self.add_span(n, frac, start, off, &mut out)?;
                        n = digit(c);
                        continue 'outer;
                    }
                    c if c.is_whitespace() => break,
                    c if is_unit_char(c) => {}
                    _ => return Err(E::InvalidCharacter(off)),
                }
                off = self.off();
            }
            self.add_span(n, frac, start, off, &mut out)?;
            n = match self.parse_first_char()? {
                Some(n) => n,
                None => return Ok(out),
            };
        }
    }

    /// Skips whitespace to the first digit of a span (`None` at the end of the text).
    fn parse_first_char(&mut self) -> Result<Option<u64>, E> {
        let off = self.off();
        for c in self.iter.by_ref() {
            match c {
                '0'..='9' => return Ok(Some(digit(c))),
                c if c.is_whitespace() => {}
                _ => return Err(E::NumberExpected(off)),
            }
        }
        Ok(None)
    }

    fn parse_fraction(&mut self, off: &mut usize) -> Result<Fraction, E> {
        let mut numerator = 0u64;
        let mut denominator = 1u64;
        let mut zeros = true;
        while let Some(c) = self.iter.next() {
            match c {
                '0' => {
                    denominator = mul(denominator, 10)?;
                    if !zeros {
                        numerator = mul(numerator, 10)?;
                    }
                }
                '1'..='9' => {
                    zeros = false;
                    denominator = mul(denominator, 10)?;
                    numerator = add(mul(numerator, 10)?, digit(c))?;
                }
                c if c.is_whitespace() => {}
                c if is_unit_char(c) => break,
                _ => return Err(E::InvalidCharacter(*off)),
            }
            *off = self.off();
        }
        if denominator == 1 {
            // No digit after the point (`1.s`).
            return Err(E::InvalidCharacter(*off));
        }
        Ok(Fraction {
            numerator,
            denominator,
        })
    }

    /// Adds `n[.frac] unit` (the unit is `src[start..end]`) to `out`.
    fn add_span(
        &self,
        n: u64,
        frac: Option<Fraction>,
        start: usize,
        end: usize,
        out: &mut Duration,
    ) -> Result<(), E> {
        let unit = &self.src[start..end];
        let Some(unit_kind) = Unit::from_name(unit) else {
            return Err(E::UnknownUnit {
                start,
                end,
                unit: unit.to_owned(),
                value: n,
            });
        };
        // The whole part, as seconds and nanoseconds (sub-second units overflow in nanoseconds,
        // as in the manifest: `100000000000000ms` is refused although a Duration could hold it).
        let (secs, nanos) = match unit_kind {
            Unit::Nanosecond => (0, n),
            Unit::Microsecond => (0, mul(n, 1_000)?),
            Unit::Millisecond => (0, mul(n, 1_000_000)?),
            Unit::Second => (n, 0),
            Unit::Minute => (mul(n, 60)?, 0),
            Unit::Hour => (mul(n, 3_600)?, 0),
            Unit::Day => (mul(n, 86_400)?, 0),
            Unit::Week => (mul(n, 7 * 86_400)?, 0),
            Unit::Month => (mul(n, MONTH_SECS)?, 0),
            Unit::Year => (mul(n, YEAR_SECS)?, 0),
        };
        add_to(secs, nanos, out)?;
        if let Some(Fraction {
            numerator: n,
            denominator: d,
        }) = frac
        {
            let (secs, nanos) = match unit_kind {
                Unit::Nanosecond => return Err(E::NumberOverflow),
                Unit::Microsecond => (0, div(mul(n, 1_000)?, d)?),
                Unit::Millisecond => (0, div(mul(n, 1_000_000)?, d)?),
                Unit::Second => (0, div(mul(n, 1_000_000_000)?, d)?),
                Unit::Minute => (0, div(mul(n, 60_000_000_000)?, d)?),
                Unit::Hour => (div(mul(n, 3_600)?, d)?, 0),
                Unit::Day => (div(mul(n, 86_400)?, d)?, 0),
                Unit::Week => (div(mul(n, 7 * 86_400)?, d)?, 0),
                Unit::Month => (div(mul(n, MONTH_SECS)?, d)?, 0),
                Unit::Year => (div(mul(n, YEAR_SECS)?, d)?, 0),
            };
            add_to(secs, nanos, out)?;
        }
        Ok(())
    }
}

/// 30.44 days.
const MONTH_SECS: u64 = 2_630_016;
/// 365.25 days.
const YEAR_SECS: u64 = 31_557_600;

fn add_to(secs: u64, nanos: u64, out: &mut Duration) -> Result<(), E> {
    let mut nanos = add(u64::from(out.subsec_nanos()), nanos)?;
    let mut secs = secs;
    // humantime carries only above 10⁹ and lets `Duration::new` carry exactly 10⁹, which panics
    // when the seconds are at their limit; carrying at 10⁹ here gives the same value and an
    // overflow error instead of the panic.
    if nanos >= 1_000_000_000 {
        secs = add(secs, nanos / 1_000_000_000)?;
        nanos %= 1_000_000_000;
    }
    let secs = add(out.as_secs(), secs)?;
    *out = Duration::new(secs, u32::try_from(nanos).expect("below 10⁹"));
    Ok(())
}

#[derive(Clone, Copy)]
enum Unit {
    Nanosecond,
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "nanos" | "nsec" | "ns" => Self::Nanosecond,
            "usec" | "us" | "µs" => Self::Microsecond,
            "millis" | "msec" | "ms" => Self::Millisecond,
            "seconds" | "second" | "secs" | "sec" | "s" => Self::Second,
            "minutes" | "minute" | "min" | "mins" | "m" => Self::Minute,
            "hours" | "hour" | "hr" | "hrs" | "h" => Self::Hour,
            "days" | "day" | "d" => Self::Day,
            "weeks" | "week" | "wk" | "wks" | "w" => Self::Week,
            "months" | "month" | "M" => Self::Month,
            "years" | "year" | "yr" | "yrs" | "y" => Self::Year,
            _ => return None,
        })
    }
}

/// Writes `d` in the grammar, exactly, with the largest units first: `1h30m`, `250ms`,
/// `1s500ms`, `0s`. Days and longer are written in hours (a month or a year is not a fixed
/// number of days to a reader).
pub fn format_duration(d: Duration) -> String {
    use fmt::Write as _;
    if d.is_zero() {
        return "0s".into();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 3_600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

/// A duration in the manifest's grammar, for a configuration type: deserializes from a string
/// such as `"10ms"` or `"1m30s"`; a bare number is refused with a message asking for a unit.
/// Serializes back as [`format_duration`] writes it.
///
/// serde_json's error for a bad value names its line and column but not the field; a filter
/// that wants the field's name in the message keeps the field a `String` and calls
/// [`parse_duration`] while it validates the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, like 10ms, 1s or 5m")
            }
            fn visit_str<Er: de::Error>(self, s: &str) -> Result<Self::Value, Er> {
                parse_duration(s).map(HumanDuration).map_err(Er::custom)
            }
            fn visit_u64<Er: de::Error>(self, n: u64) -> Result<Self::Value, Er> {
                Err(Er::custom(format!(
                    "`{n}` has no unit: write a duration like {n}ms or {n}s"
                )))
            }
            fn visit_i64<Er: de::Error>(self, n: i64) -> Result<Self::Value, Er> {
                self.visit_u64(n.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// For `#[serde(deserialize_with = "weir_sdk::config::deserialize_duration")]` on a
/// [`Duration`] field: what [`HumanDuration`] accepts.
pub fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    HumanDuration::deserialize(d).map(|h| h.0)
}

// ---------------------------------------------------------------------------------------------
// Sizes.

/// Why a size did not parse (the manifest's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number where one should be (`KiB`, `-1`, `1.5MiB`), or a number beyond `u64`.
    #[error("invalid size `{input}` (write e.g. 64KiB, 1MiB or 4096)")]
    Invalid {
        /// The text as written.
        input: String,
    },
    /// A unit other than `B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB` (`unit` lower-cased).
    #[error("invalid size unit `{unit}` in `{input}` (use B, KiB, MiB, GiB, KB, MB, GB)")]
    UnknownUnit {
        /// The text as written.
        input: String,
        /// The unit, trimmed and lower-cased.
        unit: String,
    },
    /// More bytes than a `u64` holds.
    #[error("size `{input}` is too large")]
    TooLarge {
        /// The text as written.
        input: String,
    },
}

/// Parses a size the way the manifest does: `64KiB`, `1MiB`, `1MB`, `512B`, `4096`. Binary
/// (`KiB`, `MiB`, `GiB`, also `Ki`/`K`, …) and decimal (`KB`, `MB`, `GB`) units, case-insensitive;
/// whitespace around the text and before the unit is ignored.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::Invalid { input: s.into() })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "ki" | "k" => 1 << 10,
        "mib" | "mi" | "m" => 1 << 20,
        "gib" | "gi" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(SizeError::UnknownUnit {
                input: s.into(),
                unit: other.into(),
            });
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| SizeError::TooLarge { input: s.into() })
}

/// Writes bytes in the largest exact binary unit (`64KiB`, `1MiB`), else as a bare number, so a
/// written size parses back unchanged.
pub fn format_size(n: u64) -> String {
    for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{unit}", n / m);
        }
    }
    n.to_string()
}

/// A byte size in the manifest's grammar, for a configuration type: deserializes from a string
/// such as `"64KiB"` or from a non-negative integer (bytes). Serializes as [`format_size`]
/// writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanSize(pub u64);

impl From<HumanSize> for u64 {
    fn from(s: HumanSize) -> Self {
        s.0
    }
}

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl std::str::FromStr for HumanSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(Self)
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like 64KiB, 1MiB or a number of bytes")
            }
            fn visit_str<Er: de::Error>(self, s: &str) -> Result<Self::Value, Er> {
                parse_size(s).map(HumanSize).map_err(Er::custom)
            }
            fn visit_u64<Er: de::Error>(self, n: u64) -> Result<Self::Value, Er> {
                Ok(HumanSize(n))
            }
            fn visit_i64<Er: de::Error>(self, n: i64) -> Result<Self::Value, Er> {
                u64::try_from(n)
                    .map(HumanSize)
                    .map_err(|_| Er::custom(format!("size must not be negative (got {n})")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HumanSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// For `#[serde(deserialize_with = "weir_sdk::config::deserialize_size")]` on a `u64` field:
/// what [`HumanSize`] accepts.
pub fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    HumanSize::deserialize(d).map(|h| h.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the manifest's `parse_duration` / `parse_size` (proxy/src/config/units.rs) return for
    /// each input: `Ok((seconds, nanoseconds))` or `Ok(bytes)`, else the error message. Generated
    /// by running those functions (humantime 2.4) on the inputs: the cases of that file's tests
    /// and of humantime's, plus edge cases (whitespace, offsets, overflow at each unit).
    #[test]
    fn durations_parse_as_in_the_manifest() {
        for (input, want) in MANIFEST_DURATIONS {
            let got = parse_duration(input)
                .map(|d| (d.as_secs(), d.subsec_nanos()))
                .map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_owned), "{input:?}");
        }
    }

    #[test]
    fn sizes_parse_as_in_the_manifest() {
        for (input, want) in MANIFEST_SIZES {
            let got = parse_size(input).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_owned), "{input:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn duration_errors_are_typed() {
        let kind = |s: &str| parse_duration(s).unwrap_err().kind;
        assert_eq!(kind(""), E::Empty);
        assert_eq!(kind("  "), E::Empty);
        assert_eq!(kind("soon"), E::NumberExpected(0));
        assert_eq!(kind("1s x"), E::NumberExpected(3));
        assert_eq!(kind("-5ms"), E::NumberExpected(0));
        assert_eq!(kind("1.s"), E::InvalidCharacter(1));
        assert_eq!(kind("1,5s"), E::InvalidCharacter(1));
        assert_eq!(
            kind("5 parsecs"),
            E::UnknownUnit {
                start: 2,
                end: 9,
                unit: "parsecs".into(),
                value: 5
            }
        );
        assert_eq!(
            kind("5"),
            E::UnknownUnit {
                start: 1,
                end: 1,
                unit: String::new(),
                value: 5
            }
        );
        assert_eq!(kind("0.5ns"), E::NumberOverflow);
        assert_eq!(kind("18446744073709551616s"), E::NumberOverflow);
        // Sub-second units overflow in nanoseconds, as in the manifest.
        assert_eq!(kind("18446744073710ms"), E::NumberOverflow);
        // The manifest's humantime panics here (Duration::new carrying into u64::MAX seconds).
        assert_eq!(
            kind("18446744073709551615s 1000000000ns"),
            E::NumberOverflow
        );
        let e = parse_duration(" 5 ").unwrap_err();
        assert_eq!(e.input, " 5 ");
        assert_eq!(
            e.to_string(),
            "invalid duration ` 5 `: time unit needed, for example 5sec or 5ms \
             (write e.g. 10ms, 1s, 5m)"
        );
    }

    #[test]
    fn durations_format_in_the_grammar() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1_500), "1s500ms"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::new(3_661, 1_001_001), "1h1m1s1ms1us1ns"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
        let max = Duration::MAX;
        assert_eq!(parse_duration(&format_duration(max)), Ok(max));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(
            parse_size("KiB"),
            Err(SizeError::Invalid {
                input: "KiB".into()
            })
        );
        assert_eq!(
            parse_size("12 parsecs"),
            Err(SizeError::UnknownUnit {
                input: "12 parsecs".into(),
                unit: "parsecs".into()
            })
        );
        assert_eq!(
            parse_size("99999999999999GiB"),
            Err(SizeError::TooLarge {
                input: "99999999999999GiB".into()
            })
        );
        assert_eq!(format_size(65_536), "64KiB");
        assert_eq!(format_size(3 << 30), "3GiB");
        assert_eq!(format_size(1_000), "1000");
        assert_eq!(format_size(0), "0");
    }

    #[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[serde(default)]
        timeout: Option<HumanDuration>,
        #[serde(deserialize_with = "deserialize_duration", default)]
        #[serde(skip_serializing)]
        every: Duration,
        #[serde(default)]
        max_body: Option<HumanSize>,
        #[serde(deserialize_with = "deserialize_size", default)]
        #[serde(skip_serializing)]
        limit: u64,
    }

    fn demo(json: &str) -> Result<Demo, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn serde_reads_human_forms() {
        let d = demo(r#"{"timeout": "1m30s", "every": "1h", "max_body": "64KiB", "limit": 4096}"#)
            .unwrap();
        assert_eq!(d.timeout, Some(HumanDuration(Duration::from_secs(90))));
        assert_eq!(d.every, Duration::from_secs(3_600));
        assert_eq!(d.max_body, Some(HumanSize(65_536)));
        assert_eq!(d.limit, 4_096);
        let d = demo("{}").unwrap();
        assert_eq!(
            (d.timeout, d.every, d.max_body, d.limit),
            (None, Duration::ZERO, None, 0)
        );
        assert_eq!(
            serde_json::to_string(&demo(r#"{"timeout": "90s", "max_body": 1048576}"#).unwrap())
                .unwrap(),
            r#"{"timeout":"1m30s","max_body":"1MiB"}"#
        );
        assert_eq!(
            "250ms".parse(),
            Ok(HumanDuration(Duration::from_millis(250)))
        );
        assert_eq!("1MiB".parse(), Ok(HumanSize(1 << 20)));
        assert_eq!(HumanDuration(Duration::from_secs(5)).to_string(), "5s");
        assert_eq!(HumanSize(2048).to_string(), "2KiB");
    }

    #[test]
    fn serde_errors_say_what_to_write() {
        for (json, want) in [
            (
                r#"{"timeout": 5}"#,
                "`5` has no unit: write a duration like 5ms or 5s",
            ),
            (r#"{"every": -5}"#, "`5` has no unit"),
            (
                r#"{"timeout": 1.5}"#,
                "a duration with a unit, like 10ms, 1s or 5m",
            ),
            (
                r#"{"timeout": "soon"}"#,
                "invalid duration `soon`: expected number at 0",
            ),
            (r#"{"every": "5 parsecs"}"#, "unknown time unit \"parsecs\""),
            (r#"{"max_body": -1}"#, "size must not be negative (got -1)"),
            (
                r#"{"max_body": "1.5MiB"}"#,
                "invalid size unit `.5mib` in `1.5MiB`",
            ),
            (
                r#"{"limit": true}"#,
                "a size like 64KiB, 1MiB or a number of bytes",
            ),
        ] {
            let e = demo(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    /// An input and what the manifest made of it.
    type Case<T> = (&'static str, Result<T, &'static str>);

    const MANIFEST_DURATIONS: &[Case<(u64, u32)>] = &[
        ("10ms", Ok((0, 10000000))),
        ("1s", Ok((1, 0))),
        ("5m", Ok((300, 0))),
        ("1m30s", Ok((90, 0))),
        ("2h", Ok((7200, 0))),
        ("1h", Ok((3600, 0))),
        ("500us", Ok((0, 500000))),
        ("500µs", Ok((0, 500000))),
        ("2s", Ok((2, 0))),
        ("0", Ok((0, 0))),
        (" 0 ", Ok((0, 0))),
        ("0s", Ok((0, 0))),
        ("0ms", Ok((0, 0))),
        (
            "soon",
            Err("invalid duration `soon`: expected number at 0 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "5",
            Err(
                "invalid duration `5`: time unit needed, for example 5sec or 5ms (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "10",
            Err(
                "invalid duration `10`: time unit needed, for example 10sec or 10ms (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("1.5s", Ok((1, 500000000))),
        (
            "1.5",
            Err(
                "invalid duration `1.5`: time unit needed, for example 1sec or 1ms (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("250ms", Ok((0, 250000000))),
        ("1.5h", Ok((5400, 0))),
        ("0.5h", Ok((1800, 0))),
        ("1h 30m", Ok((5400, 0))),
        ("1h30m", Ok((5400, 0))),
        ("2h 15m", Ok((8100, 0))),
        ("20 min 17 nsec ", Ok((1200, 17))),
        (" 1s ", Ok((1, 0))),
        ("1 0s", Ok((10, 0))),
        ("10 s", Ok((10, 0))),
        (
            "1.s",
            Err("invalid duration `1.s`: invalid character at 1 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "1..s",
            Err("invalid duration `1..s`: invalid character at 1 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            ".1s",
            Err("invalid duration `.1s`: expected number at 0 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            ".",
            Err("invalid duration `.`: expected number at 0 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "-5ms",
            Err("invalid duration `-5ms`: expected number at 0 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "+5ms",
            Err("invalid duration `+5ms`: expected number at 0 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "1s-",
            Err("invalid duration `1s-`: invalid character at 2 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "1,5s",
            Err("invalid duration `1,5s`: invalid character at 1 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "1e3ms",
            Err(
                "invalid duration `1e3ms`: unknown time unit \"e\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "1x",
            Err(
                "invalid duration `1x`: unknown time unit \"x\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "1S",
            Err(
                "invalid duration `1S`: unknown time unit \"S\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "1MS",
            Err(
                "invalid duration `1MS`: unknown time unit \"MS\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("12M", Ok((31560192, 0))),
        ("1month", Ok((2630016, 0))),
        ("1y", Ok((31557600, 0))),
        ("17nsec", Ok((0, 17))),
        ("17nanos", Ok((0, 17))),
        ("33ns", Ok((0, 33))),
        ("3usec", Ok((0, 3000))),
        ("78us", Ok((0, 78000))),
        ("163µs", Ok((0, 163000))),
        ("31msec", Ok((0, 31000000))),
        ("31millis", Ok((0, 31000000))),
        ("6ms", Ok((0, 6000000))),
        ("3000s", Ok((3000, 0))),
        ("300sec", Ok((300, 0))),
        ("300secs", Ok((300, 0))),
        ("50seconds", Ok((50, 0))),
        ("1second", Ok((1, 0))),
        ("100m", Ok((6000, 0))),
        ("12min", Ok((720, 0))),
        ("12mins", Ok((720, 0))),
        ("1minute", Ok((60, 0))),
        ("7minutes", Ok((420, 0))),
        ("7hr", Ok((25200, 0))),
        ("7hrs", Ok((25200, 0))),
        ("1hour", Ok((3600, 0))),
        ("24hours", Ok((86400, 0))),
        ("1day", Ok((86400, 0))),
        ("2days", Ok((172800, 0))),
        ("365d", Ok((31536000, 0))),
        ("1week", Ok((604800, 0))),
        ("7weeks", Ok((4233600, 0))),
        ("104wks", Ok((62899200, 0))),
        ("100wk", Ok((60480000, 0))),
        ("52w", Ok((31449600, 0))),
        ("3months", Ok((7890048, 0))),
        ("1year", Ok((31557600, 0))),
        ("7years", Ok((220903200, 0))),
        ("15yrs", Ok((473364000, 0))),
        ("10yr", Ok((315576000, 0))),
        ("17y", Ok((536479200, 0))),
        (
            "17.5nsec",
            Err(
                "invalid duration `17.5nsec`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "0.0005ns",
            Err(
                "invalid duration `0.0005ns`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("3.1us", Ok((0, 3100))),
        (
            "3.0001us",
            Err(
                "invalid duration `3.0001us`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("31.1ms", Ok((0, 31100000))),
        ("31.000001ms", Ok((0, 31000001))),
        (
            "31.0000001ms",
            Err(
                "invalid duration `31.0000001ms`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("300.0s", Ok((300, 0))),
        ("0.0s", Ok((0, 0))),
        ("1.123456789s", Ok((1, 123456789))),
        (
            "1.0000000002s",
            Err(
                "invalid duration `1.0000000002s`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "0.000123456789s",
            Err(
                "invalid duration `0.000123456789s`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("12.1min", Ok((726, 0))),
        ("1.5minute", Ok((90, 0))),
        ("2.5h", Ok((9000, 0))),
        ("1.5d", Ok((129600, 0))),
        (
            "0.00000005d",
            Err(
                "invalid duration `0.00000005d`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("7.120us 3ns", Ok((0, 7123))),
        ("1.234s 789ns", Ok((1, 234000789))),
        ("1.234s0.345ms0.678us0ns", Ok((1, 234345678))),
        (
            "100000000000000000000ns",
            Err(
                "invalid duration `100000000000000000000ns`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("18446744073709551615ns", Ok((18446744073, 709551615))),
        (
            "100000000000000000us",
            Err(
                "invalid duration `100000000000000000us`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "100000000000000ms",
            Err(
                "invalid duration `100000000000000ms`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("18446744073709ms", Ok((18446744073, 709000000))),
        (
            "18446744073710ms",
            Err(
                "invalid duration `18446744073710ms`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "100000000000000000000s",
            Err(
                "invalid duration `100000000000000000000s`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("18446744073709551615s", Ok((18446744073709551615, 0))),
        (
            "18446744073709551616s",
            Err(
                "invalid duration `18446744073709551616s`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "10000000000000000000m",
            Err(
                "invalid duration `10000000000000000000m`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "1000000000000000000h",
            Err(
                "invalid duration `1000000000000000000h`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "100000000000000000d",
            Err(
                "invalid duration `100000000000000000d`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "10000000000000000w",
            Err(
                "invalid duration `10000000000000000w`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "1000000000000000M",
            Err(
                "invalid duration `1000000000000000M`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "10000000000000000000000y",
            Err(
                "invalid duration `10000000000000000000000y`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "18446744073709551615s 1s",
            Err(
                "invalid duration `18446744073709551615s 1s`: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "1s 1",
            Err(
                "invalid duration `1s 1`: time unit needed, for example 1sec or 1ms (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        (
            "1s x",
            Err("invalid duration `1s x`: expected number at 3 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "1s 2",
            Err(
                "invalid duration `1s 2`: time unit needed, for example 2sec or 2ms (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("1 s 2 m", Ok((121, 0))),
        (
            "µs",
            Err("invalid duration `µs`: expected number at 0 (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "1µ",
            Err(
                "invalid duration `1µ`: unknown time unit \"µ\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("1 µs", Ok((0, 1000))),
        (
            "1sec5",
            Err(
                "invalid duration `1sec5`: time unit needed, for example 5sec or 5ms (write e.g. 10ms, 1s, 5m)",
            ),
        ),
        ("1d 1ms", Ok((86400, 1000000))),
        (
            "",
            Err("invalid duration ``: value was empty (write e.g. 10ms, 1s, 5m)"),
        ),
        (
            "   ",
            Err("invalid duration `   `: value was empty (write e.g. 10ms, 1s, 5m)"),
        ),
        ("\t1s\n", Ok((1, 0))),
    ];

    const MANIFEST_SIZES: &[Case<u64>] = &[
        ("64KiB", Ok(65536)),
        ("1MiB", Ok(1048576)),
        ("1MB", Ok(1000000)),
        ("512", Ok(512)),
        ("512B", Ok(512)),
        ("512b", Ok(512)),
        (
            "12 parsecs",
            Err("invalid size unit `parsecs` in `12 parsecs` (use B, KiB, MiB, GiB, KB, MB, GB)"),
        ),
        (
            "KiB",
            Err("invalid size `KiB` (write e.g. 64KiB, 1MiB or 4096)"),
        ),
        (
            "99999999999999GiB",
            Err("size `99999999999999GiB` is too large"),
        ),
        ("60KiB", Ok(61440)),
        ("16KiB", Ok(16384)),
        ("32MiB", Ok(33554432)),
        ("64MiB", Ok(67108864)),
        ("1GiB", Ok(1073741824)),
        ("1GB", Ok(1000000000)),
        ("1KB", Ok(1000)),
        ("1kb", Ok(1000)),
        ("1k", Ok(1024)),
        ("1Ki", Ok(1024)),
        ("1m", Ok(1048576)),
        ("1Mi", Ok(1048576)),
        ("1g", Ok(1073741824)),
        ("1Gi", Ok(1073741824)),
        ("64 KiB", Ok(65536)),
        (" 64KiB ", Ok(65536)),
        ("0", Ok(0)),
        ("0B", Ok(0)),
        ("", Err("invalid size `` (write e.g. 64KiB, 1MiB or 4096)")),
        (
            "-1",
            Err("invalid size `-1` (write e.g. 64KiB, 1MiB or 4096)"),
        ),
        (
            "+1",
            Err("invalid size `+1` (write e.g. 64KiB, 1MiB or 4096)"),
        ),
        (
            "1.5MiB",
            Err("invalid size unit `.5mib` in `1.5MiB` (use B, KiB, MiB, GiB, KB, MB, GB)"),
        ),
        (
            "1e3",
            Err("invalid size unit `e3` in `1e3` (use B, KiB, MiB, GiB, KB, MB, GB)"),
        ),
        (
            "1TiB",
            Err("invalid size unit `tib` in `1TiB` (use B, KiB, MiB, GiB, KB, MB, GB)"),
        ),
        ("18446744073709551615", Ok(18446744073709551615)),
        (
            "18446744073709551616",
            Err("invalid size `18446744073709551616` (write e.g. 64KiB, 1MiB or 4096)"),
        ),
        ("18446744073709551615B", Ok(18446744073709551615)),
        ("17179869184GiB", Err("size `17179869184GiB` is too large")),
        ("17179869183GiB", Ok(18446744072635809792)),
        (
            "1 0KiB",
            Err("invalid size unit `0kib` in `1 0KiB` (use B, KiB, MiB, GiB, KB, MB, GB)"),
        ),
        (
            "1KiBs",
            Err("invalid size unit `kibs` in `1KiBs` (use B, KiB, MiB, GiB, KB, MB, GB)"),
        ),
    ];
}
