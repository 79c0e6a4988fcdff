//! The admin endpoint as the tests that change weir live use it: mutations with a bearer token
//! ([`Admin::request`], [`Admin::reload`], [`Admin::rollback`], [`Admin::put_endpoints`]), reads
//! ([`Admin::get_json`], [`Admin::listeners`]), the `generation` of a change's answer
//! ([`generation_of`]), and manifests whose admin endpoint accepts mutations ([`with_token`],
//! [`start_with_token`]).
//!
//! Every request is one connection (`Connection: close`); a mutation carries the token when the
//! [`Admin`] has one, and a test of the refusal uses an [`Admin`] without it.

use std::net::SocketAddr;

use serde_json::Value;

use crate::{H1Client, RawClient, RawResponse, Weir};

/// The file, next to the manifest, that [`with_token`] names and [`start_with_token`] writes.
pub const TOKEN_FILE: &str = "token";

/// `yaml` (with the builders' admin line `admin: { address: 127.0.0.1:0 }`) with mutations
/// enabled by the token file [`TOKEN_FILE`] next to the manifest. Panics if there is no such line.
pub fn with_token(yaml: &str) -> String {
    let out = yaml.replace(
        "admin: { address: 127.0.0.1:0 }",
        "admin: { address: 127.0.0.1:0, token_file: token }",
    );
    assert!(out.contains("token_file"), "no admin line in:\n{yaml}");
    out
}

/// Starts weir on `yaml` (whose admin line names [`TOKEN_FILE`]) with `token` written to that
/// file and `files` next to the manifest.
pub async fn start_with_token(yaml: &str, token: &str, files: &[(&str, &[u8])]) -> Weir {
    let mut all: Vec<(&str, &[u8])> = vec![(TOKEN_FILE, token.as_bytes())];
    all.extend_from_slice(files);
    Weir::start_with_files(yaml, &all, &[]).await
}

/// The `generation` of a change's answer; panics (naming `what`) unless the change answered 200
/// with one.
#[track_caller]
pub fn generation_of(what: &str, r: &RawResponse) -> u64 {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let v: Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", r.text()));
    v["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no generation in {v}"))
}

/// One listener in `GET /listeners`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    /// The address it is bound to (the port chosen for `:0`).
    pub address: SocketAddr,
    /// The generation that made its current settings.
    pub version: u64,
    /// Whether it terminates TLS.
    pub tls: bool,
}

/// A weir's admin endpoint at `addr`; mutations carry `token` as a bearer token when there is one.
#[derive(Clone, Debug)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Admin {
    /// The admin endpoint at `addr`, without a token.
    pub fn new(addr: SocketAddr) -> Admin {
        Admin { addr, token: None }
    }

    /// `weir`'s admin endpoint, without a token.
    pub fn of(weir: &Weir) -> Admin {
        Admin::new(weir.admin_addr())
    }

    /// The same endpoint with `token` on every request.
    pub fn bearer(self, token: &str) -> Admin {
        Admin {
            token: Some(token.to_owned()),
            ..self
        }
    }

    /// One request (`Connection: close`, `Content-Length`, `Content-Type` if given, the token
    /// if there is one) and its response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> RawResponse {
        let addr = self.addr;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = content_type {
            head.push_str(&format!("Content-Type: {t}\r\n"));
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        let mut c = RawClient::connect(addr).await;
        c.write(head.as_bytes()).await.unwrap();
        c.write(body).await.unwrap();
        c.read_response().await
    }

    /// `PUT path` with the JSON `json`.
    pub async fn put_json(&self, path: &str, json: &str) -> RawResponse {
        self.request("PUT", path, Some("application/json"), json.as_bytes())
            .await
    }

    /// `PUT /clusters/CLUSTER/endpoints` with the JSON `json`.
    pub async fn put_endpoints(&self, cluster: &str, json: &str) -> RawResponse {
        self.put_json(&format!("/clusters/{cluster}/endpoints"), json)
            .await
    }

    /// Replaces `weir`'s manifest file (`weir.yaml` in [`Weir::dir`]) with `yaml` atomically (a
    /// temporary file renamed over it) and asks for a reload (`POST /reload`).
    pub async fn reload(&self, weir: &Weir, yaml: &str) -> RawResponse {
        assert_eq!(
            weir.admin_addr(),
            self.addr,
            "another weir's admin endpoint"
        );
        let tmp = weir.dir().join("weir.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, weir.dir().join("weir.yaml")).unwrap();
        self.request("POST", "/reload", None, b"").await
    }

    /// `POST /rollback`: back to the previous generation.
    pub async fn rollback(&self) -> RawResponse {
        self.request("POST", "/rollback", None, b"").await
    }

    /// `GET path` (no token: reads need none) as JSON; panics unless it answers 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let mut c = H1Client::connect(self.addr).await;
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.text()))
    }

    /// `GET /listeners`: every listener, in its order.
    pub async fn listeners(&self) -> Vec<Listener> {
        let v = self.get_json("/listeners").await;
        v["listeners"]
            .as_array()
            .unwrap_or_else(|| panic!("/listeners has no `listeners` list: {v}"))
            .iter()
            .map(|l| Listener {
                name: l["name"].as_str().expect("name").to_owned(),
                address: l["address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no address in {l}")),
                version: l["version"].as_u64().expect("version"),
                tls: l["tls"].as_bool().expect("tls"),
            })
            .collect()
    }

    /// Listener `name` in `/listeners`; panics if absent.
    pub async fn listener(&self, name: &str) -> Listener {
        let all = self.listeners().await;
        all.iter()
            .find(|l| l.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no listener {name} in /listeners: {all:?}"))
    }

    /// The names in `/listeners`, in its order.
    pub async fn listener_names(&self) -> Vec<String> {
        self.listeners().await.into_iter().map(|l| l.name).collect()
    }
}
