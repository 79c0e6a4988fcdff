//! `weir admin …`: a small client for the admin endpoint, so operators need not hand-craft curl
//! calls. One HTTP/1.1 request per invocation over a plain blocking socket (the admin endpoint is
//! local), the bearer token read from a file or `WEIR_ADMIN_TOKEN`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Why an admin call failed before an answer came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin endpoint at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin endpoint I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the admin endpoint sent an unreadable answer")]
    BadResponse,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The admin endpoint's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Where and how to call.
pub struct AdminClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub timeout: Duration,
}

impl AdminClient {
    /// The token from `token_file`, else `WEIR_ADMIN_TOKEN`, else none (reads need none).
    pub fn new(addr: SocketAddr, token_file: Option<&Path>) -> Result<Self, ClientError> {
        let token = match token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|source| ClientError::Read {
                        path: p.display().to_string(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("WEIR_ADMIN_TOKEN").ok(),
        };
        Ok(Self {
            addr,
            token,
            timeout: Duration::from_secs(60),
        })
    }

    /// Sends one request and reads the whole answer.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Answer, ClientError> {
        let mut s =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(|source| {
                ClientError::Connect {
                    addr: self.addr,
                    source,
                }
            })?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(t) = content_type {
            head.push_str(&format!("Content-Type: {t}\r\n"));
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        parse(&raw)
    }
}

/// Parses a `Connection: close` answer (Content-Length or chunked body).
fn parse(raw: &[u8]) -> Result<Answer, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(ClientError::BadResponse),
    };
    let status = resp.code.ok_or(ClientError::BadResponse)?;
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let rest = &raw[n..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            match httparse::parse_chunk_size(&rest[at..]) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    let _ = used;
                    break;
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    let start = at + used;
                    let end = start + size as usize;
                    if end > rest.len() {
                        return Err(ClientError::BadResponse);
                    }
                    out.extend_from_slice(&rest[start..end]);
                    at = end + 2;
                }
                _ => return Err(ClientError::BadResponse),
            }
        }
        out
    } else {
        rest.to_vec()
    };
    Ok(Answer { status, body })
}

/// `?dry_run=true` when asked.
/// The JSON body of `PUT /clusters/NAME/endpoints` from `IP:PORT[,key=value…]` arguments.
pub fn endpoints_body(specs: &[String]) -> Result<String, String> {
    let mut eps = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut parts = spec.split(',');
        let address = parts.next().unwrap_or_default();
        if address.parse::<SocketAddr>().is_err() {
            return Err(format!("`{address}` is not IP:PORT"));
        }
        let mut ep = serde_json::Map::new();
        ep.insert("address".into(), address.into());
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("`{kv}` in `{spec}` is not key=value"))?;
            let value = match k {
                "weight" | "priority" => serde_json::Value::from(
                    v.parse::<u32>()
                        .map_err(|_| format!("{k} in `{spec}`: `{v}` is not a number"))?,
                ),
                "zone" | "health" => serde_json::Value::from(v),
                _ => {
                    return Err(format!(
                        "`{k}` in `{spec}`: use weight, priority, zone or health"
                    ));
                }
            };
            ep.insert(k.into(), value);
        }
        eps.push(serde_json::Value::Object(ep));
    }
    Ok(serde_json::json!({ "endpoints": eps }).to_string())
}

pub fn with_dry_run(path: &str, dry_run: bool) -> String {
    if dry_run {
        format!("{path}?dry_run=true")
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_answers() {
        let a = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"abc"[..]));
        let a = parse(b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((a.status, a.body.as_slice()), (409, &b"abc"[..]));
        assert!(parse(b"garbage").is_err());
    }
}
