//! Stock filters embedded in the binary, referenced as `builtin:NAME` (design.md §7).
//!
//! `build.rs` builds every crate of `filters/` to wasm32-wasip1 and generates a static table of
//! `(name, module bytes)`; the names are the crate names (`add-header`, `local-reply`, …). The
//! modules are ordinary proxy-wasm filters: they are compiled and sandboxed like any module read
//! from disk, only their bytes come from the binary. Their configuration is documented in
//! `filters/README.md`.

// `static BUILTINS: &[(&str, &[u8])]`, sorted by name.
include!(concat!(env!("OUT_DIR"), "/builtin_filters.rs"));

/// The embedded module for `builtin:NAME`, `None` if there is no such builtin.
pub fn lookup(name: &str) -> Option<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, wasm)| *wasm)
}

/// Names of the embedded filters, sorted.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use weir_host_abi::{
        Action, Deadlines, DefaultPluginHost, MapType, Module, Outcome, Pairs, PluginConfig,
        Runtime, StartError, Status, StreamBox, StreamHost, Vm, downcast_stream,
    };

    use super::{lookup, names};

    /// One runtime for every test: its module cache compiles each builtin once.
    fn runtime() -> &'static Runtime {
        static RUNTIME: OnceLock<Runtime> = OnceLock::new();
        RUNTIME.get_or_init(|| Runtime::new().expect("runtime"))
    }

    fn module(name: &str) -> Arc<Module> {
        let wasm = lookup(name).unwrap_or_else(|| panic!("no builtin {name}"));
        runtime()
            .compile(wasm)
            .unwrap_or_else(|e| panic!("builtin:{name} does not load: {e}"))
    }

    /// Starts `builtin:name` with `config`; generous deadlines, because these tests check
    /// behaviour on a shared two-core machine, not speed.
    fn start(name: &str, config: &str) -> Result<Vm, StartError> {
        let mut plugin = PluginConfig::new(name).with_configuration(config);
        plugin.limits.deadlines = Deadlines {
            headers: Duration::from_secs(5),
            body: Duration::from_secs(5),
            start: Duration::from_secs(10),
            other: Duration::from_secs(5),
        };
        Vm::new(runtime(), module(name), plugin, Box::new(DefaultPluginHost))
    }

    /// The smallest embedder: request and response header maps, appended to by `add_header`.
    #[derive(Default)]
    struct Headers {
        request: Pairs,
        response: Pairs,
    }

    impl Headers {
        fn map(&mut self, map: MapType) -> Result<&mut Pairs, Status> {
            match map {
                MapType::HttpRequestHeaders => Ok(&mut self.request),
                MapType::HttpResponseHeaders => Ok(&mut self.response),
                _ => Err(Status::NotFound),
            }
        }
    }

    impl StreamHost for Headers {
        fn header_map(&mut self, map: MapType) -> Result<Pairs, Status> {
            self.map(map).cloned()
        }

        fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
            self.map(map)?
                .push((key.to_ascii_lowercase(), value.to_vec()));
            Ok(())
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Pairs {
        list.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Runs the request-header phase of a fresh stream over `request`; returns the outcome and
    /// the request headers afterwards.
    fn request_phase(vm: &mut Vm, request: &[(&str, &str)]) -> (Outcome, Pairs) {
        let mut stream: StreamBox = Box::new(Headers {
            request: pairs(request),
            ..Headers::default()
        });
        let ctx = vm.create_http_stream().expect("stream context");
        let outcome = vm
            .on_request_headers(ctx, &mut stream, request.len(), true)
            .expect("request headers");
        vm.finish_http_stream(ctx, &mut stream).expect("finish");
        let headers = downcast_stream::<Headers>(&mut stream).unwrap();
        (outcome, std::mem::take(&mut headers.request))
    }

    #[test]
    fn the_stock_filters_are_embedded() {
        assert_eq!(
            names().collect::<Vec<_>>(),
            [
                "add-header",
                "auth",
                "fault",
                "local-reply",
                "ratelimit",
                "router",
                "telemetry"
            ]
        );
    }

    #[test]
    fn every_builtin_is_a_small_wasm_module() {
        for name in names() {
            let wasm = lookup(name).unwrap();
            assert!(wasm.starts_with(b"\0asm"), "builtin:{name} lacks the magic");
            assert!(
                wasm.len() < 1 << 20,
                "builtin:{name} is {} bytes (limit 1 MiB)",
                wasm.len()
            );
        }
    }

    #[test]
    fn unknown_names_are_none() {
        assert!(lookup("no-such-filter").is_none());
        assert!(lookup("").is_none());
        assert!(lookup("add_header").is_none(), "names are crate names");
    }

    #[test]
    fn every_builtin_passes_the_load_checks() {
        for name in names() {
            module(name);
        }
    }

    #[test]
    fn add_header_adds_and_copies() {
        let config = r#"{
            "request": {"X-Env": "prod"},
            "response": {"x-served-by": "weir"},
            "copy": [{"from": ":path", "to": "x-original-path"}, {"from": "x-absent", "to": "x-never"}]
        }"#;
        let mut vm = start("add-header", config).expect("starts");
        let (outcome, request) = request_phase(&mut vm, &[(":path", "/a"), ("x-env", "dev")]);
        assert_eq!(outcome.action, Action::Continue);
        assert!(outcome.effects.is_empty());
        assert_eq!(
            request,
            pairs(&[
                (":path", "/a"),
                ("x-env", "dev"),
                ("x-original-path", "/a"),
                ("x-env", "prod"),
            ]),
            "copies first, then appended (lower-cased) additions"
        );

        let mut stream: StreamBox = Box::new(Headers {
            response: pairs(&[(":status", "200")]),
            ..Headers::default()
        });
        let ctx = vm.create_http_stream().unwrap();
        let outcome = vm.on_response_headers(ctx, &mut stream, 1, true).unwrap();
        assert_eq!(outcome.action, Action::Continue);
        vm.finish_http_stream(ctx, &mut stream).unwrap();
        let headers = downcast_stream::<Headers>(&mut stream).unwrap();
        assert_eq!(
            headers.response,
            pairs(&[(":status", "200"), ("x-served-by", "weir")])
        );
    }

    #[test]
    fn add_header_without_configuration_does_nothing() {
        let mut vm = start("add-header", "").expect("an empty configuration is valid");
        let (outcome, request) = request_phase(&mut vm, &[(":path", "/")]);
        assert_eq!(outcome.action, Action::Continue);
        assert_eq!(request, pairs(&[(":path", "/")]));
    }

    #[test]
    fn add_header_rejects_bad_configuration() {
        for bad in [
            "not json",
            r#"{"requests": {}}"#,
            r#"{"request": {"x-a": "one\r\nx-b: two"}}"#,
            r#"{"request": {"bad name": "v"}}"#,
            r#"{"request": {":authority": "evil"}}"#,
            r#"{"copy": [{"from": "x-a", "to": ":path"}]}"#,
            r#"{"copy": [{"from": "", "to": "x-b"}]}"#,
        ] {
            let err = start("add-header", bad).err();
            assert!(
                matches!(err, Some(StartError::ConfigureRejected)),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn local_reply_answers_when_the_header_is_present() {
        let config = r#"{"status": 403, "body": "denied", "headers": {"X-Denied-By": "weir"},
                         "when_header": "x-deny"}"#;
        let mut vm = start("local-reply", config).expect("starts");

        let (outcome, _) = request_phase(&mut vm, &[(":path", "/")]);
        assert_eq!(outcome.action, Action::Continue);
        assert!(outcome.local_reply().is_none());

        let (outcome, _) = request_phase(&mut vm, &[(":path", "/"), ("x-deny", "")]);
        assert_eq!(outcome.action, Action::Pause);
        let reply = outcome.local_reply().expect("a local reply");
        assert_eq!(reply.status, 403);
        assert_eq!(reply.body, b"denied");
        assert_eq!(reply.headers, pairs(&[("x-denied-by", "weir")]));
        assert_eq!(reply.grpc_status, None);
    }

    #[test]
    fn local_reply_without_condition_answers_everything() {
        let mut vm = start("local-reply", r#"{"status": 204}"#).expect("starts");
        let (outcome, _) = request_phase(&mut vm, &[(":path", "/")]);
        let reply = outcome.local_reply().expect("a local reply");
        assert_eq!((reply.status, reply.body.as_slice()), (204, &b""[..]));
    }

    #[test]
    fn local_reply_rejects_bad_configuration() {
        for bad in [
            "",
            "{}",
            r#"{"status": 99}"#,
            r#"{"status": 600}"#,
            r#"{"status": 200, "headers": {":status": "500"}}"#,
            r#"{"status": 200, "headers": {"x-a": "a\nb"}}"#,
            r#"{"status": 200, "when_header": "a b"}"#,
            r#"{"status": 200, "extra": true}"#,
        ] {
            let err = start("local-reply", bad).err();
            assert!(
                matches!(err, Some(StartError::ConfigureRejected)),
                "{bad}: {err:?}"
            );
        }
    }
}
