//! The checks every area of the manifest shares: the error collector and positive durations,
//! names and listen addresses.

use std::net::SocketAddr;
use std::time::Duration;

use super::FieldError;

/// Every problem found so far (validation never stops at the first).
pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(super) fn positive(
    v: Option<Duration>,
    default: Duration,
    path: &str,
    errs: &mut Errors,
) -> Duration {
    match v {
        Some(d) if d.is_zero() => {
            errs.push(path, "must be greater than zero");
            default
        }
        Some(d) => d,
        None => default,
    }
}

/// Where the items being validated come from. A control plane's names follow its own grammar
/// (Istio's cluster names hold `|`), so they are checked more loosely than a manifest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Manifest,
    Xds,
}

/// A name as `source` allows it.
pub(super) fn check_name_in(name: &str, path: &str, source: Source, errs: &mut Errors) {
    match source {
        Source::Manifest => check_name(name, path, errs),
        Source::Xds => {
            // Printable ASCII without spaces, quotes or backslashes: safe in metric labels,
            // JSON and admin paths without escaping rules of its own.
            let ok = !name.is_empty()
                && name.len() <= 256
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\'));
            if !ok {
                errs.push(
                    path,
                    format!("`{name}` is not a valid name (1-256 printable ASCII, no quotes)"),
                );
            }
        }
    }
}

pub(super) fn check_name(name: &str, path: &str, errs: &mut Errors) {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        errs.push(
            path,
            format!("`{name}` is not a valid name (1-128 of A-Z a-z 0-9 - _ .)"),
        );
    }
}

pub(super) fn socket_addr(s: &str, path: &str, errs: &mut Errors) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        errs.push(path, format!("`{s}` is not an ip:port address"));
        SocketAddr::from(([0, 0, 0, 0], 0))
    })
}

/// The messages a manifest gets (empty: it is valid).
#[cfg(test)]
pub(super) fn errs(yaml: &str) -> Vec<String> {
    match super::parse(yaml, "t", std::path::Path::new(".")) {
        Ok(_) => vec![],
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}
