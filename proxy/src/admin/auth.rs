//! Who may change the running proxy: a mutation must carry the bearer token of
//! `admin.token_file` (compared in constant time, read afresh each time so it can rotate), a
//! `Host` naming this endpoint and no foreign `Origin`.

use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;

use super::{Admin, Resp, error};

impl Admin {
    /// Token, `Host` and `Origin` checks for a mutation.
    pub(super) fn authorize(&self, req: &Request<Incoming>) -> Result<(), Box<Resp>> {
        let host_ok = |h: &str| {
            let port = self.local.port();
            h == self.local.to_string()
                || h == format!("localhost:{port}")
                || h == format!("127.0.0.1:{port}")
                || h == format!("[::1]:{port}")
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if !host.is_some_and(host_ok) {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "foreign Host: admin mutations must be addressed to the admin endpoint itself",
            )));
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let ok = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(host_ok);
            if !ok {
                return Err(Box::new(error(
                    StatusCode::FORBIDDEN,
                    "foreign Origin: admin mutations are not for web pages",
                )));
            }
        }
        let Some(file) = &self.config.token_file else {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "admin mutations are off: set admin.token_file in the manifest",
            )));
        };
        let expected = match std::fs::read_to_string(file) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "cannot read the admin token file");
                return Err(Box::new(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot read the admin token file",
                )));
            }
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g)
                if !expected.is_empty() && constant_time_eq(g.as_bytes(), expected.as_bytes()) =>
            {
                Ok(())
            }
            _ => {
                let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Err(Box::new(r))
            }
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
