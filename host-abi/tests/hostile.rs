//! Hostile modules, hand-written in WAT: each test checks that the fault is contained — the VM
//! reports a failure (or the guest gets a `Status`), the host never panics or hangs, the failed VM
//! is never re-entered, and a fresh VM on the same `Runtime` still works.
//!
//! Long (1.3k lines): each hostile module is written inline as WAT beside the test that loads it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_host_abi::{
    Action, Availability, BufferType, DefaultPluginHost, FailurePolicy, FailureReason,
    HttpCallRequest, LoadError, MapType, Pairs, PeerType, Plugin, PluginConfig, PluginHost,
    Runtime, StartError, Status, StreamBox, StreamHost, Verdict, Vm, VmError, VmFailed,
    edit_buffer,
};

// ---------------------------------------------------------------------------------------------
// A tiny embedder
// ---------------------------------------------------------------------------------------------

/// A stream with request headers and a body, enough for every host function to find data.
#[derive(Debug, Default)]
struct Stream {
    headers: Pairs,
    body: Vec<u8>,
}

impl Stream {
    fn boxed() -> StreamBox {
        Box::new(Stream {
            headers: vec![
                (b":path".to_vec(), b"/".to_vec()),
                (b"x-a".to_vec(), b"1".to_vec()),
            ],
            body: b"hello".to_vec(),
        })
    }
}

impl StreamHost for Stream {
    fn header_map(&mut self, map: MapType) -> Result<Pairs, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(self.headers.clone()),
            _ => Err(Status::NotFound),
        }
    }
    fn set_header_map(&mut self, _map: MapType, pairs: Pairs) -> Result<(), Status> {
        self.headers = pairs;
        Ok(())
    }
    fn add_header(&mut self, _map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.headers.push((key.to_vec(), value.to_vec()));
        Ok(())
    }
    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.remove_header(map, key)?;
        self.add_header(map, key, value)
    }
    fn remove_header(&mut self, _map: MapType, key: &[u8]) -> Result<(), Status> {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        Ok(())
    }
    fn buffer(&mut self, _buffer: BufferType) -> Option<&[u8]> {
        Some(&self.body)
    }
    fn set_buffer(
        &mut self,
        _buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), Status> {
        edit_buffer(&mut self.body, start, size, data)
    }
    fn get_property(&mut self, _path: &[&[u8]]) -> Option<Vec<u8>> {
        Some(b"value".to_vec())
    }
    fn set_property(&mut self, _path: &[&[u8]], _value: &[u8]) -> Result<(), Status> {
        Ok(())
    }
}

/// A plugin host that accepts every callout.
#[derive(Debug, Default)]
struct Host;

impl PluginHost for Host {
    fn dispatch_http_call(&mut self, _request: HttpCallRequest) -> Result<(), Status> {
        Ok(())
    }
    fn dispatch_grpc(&mut self, _request: weir_host_abi::GrpcCallRequest) -> Result<(), Status> {
        Ok(())
    }
    fn call_foreign_function(&mut self, name: &str, args: &[u8]) -> Result<Vec<u8>, Status> {
        if name == "echo" {
            Ok(args.to_vec())
        } else {
            Err(Status::NotFound)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WAT building blocks
// ---------------------------------------------------------------------------------------------

/// Memory (2 pages), ABI marker, `_initialize`, a bump allocator from 64 KiB.
const PRELUDE: &str = r#"
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 65536))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "_initialize"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    global.get $bump
    local.set $p
    global.get $bump
    local.get $n
    i32.add
    global.set $bump
    local.get $p)
"#;

/// Every callback export with its signature and a neutral body (Continue / true / nothing).
const CALLBACKS: &[(&str, &str, Option<&str>)] = &[
    ("proxy_on_context_create", "(param i32 i32)", None),
    (
        "proxy_on_vm_start",
        "(param i32 i32) (result i32)",
        Some("i32.const 1"),
    ),
    (
        "proxy_on_configure",
        "(param i32 i32) (result i32)",
        Some("i32.const 1"),
    ),
    ("proxy_on_tick", "(param i32)", None),
    ("proxy_on_queue_ready", "(param i32 i32)", None),
    (
        "proxy_on_new_connection",
        "(param i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_downstream_data",
        "(param i32 i32 i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_upstream_data",
        "(param i32 i32 i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_downstream_connection_close",
        "(param i32 i32)",
        None,
    ),
    (
        "proxy_on_upstream_connection_close",
        "(param i32 i32)",
        None,
    ),
    (
        "proxy_on_request_headers",
        "(param i32 i32 i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_request_body",
        "(param i32 i32 i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_request_trailers",
        "(param i32 i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_response_headers",
        "(param i32 i32 i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_response_body",
        "(param i32 i32 i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_response_trailers",
        "(param i32 i32) (result i32)",
        Some("i32.const 0"),
    ),
    (
        "proxy_on_http_call_response",
        "(param i32 i32 i32 i32 i32)",
        None,
    ),
    (
        "proxy_on_grpc_receive_initial_metadata",
        "(param i32 i32 i32)",
        None,
    ),
    (
        "proxy_on_grpc_receive_trailing_metadata",
        "(param i32 i32 i32)",
        None,
    ),
    ("proxy_on_grpc_receive", "(param i32 i32 i32)", None),
    ("proxy_on_grpc_close", "(param i32 i32 i32)", None),
    ("proxy_on_foreign_function", "(param i32 i32 i32)", None),
    ("proxy_on_log", "(param i32)", None),
    (
        "proxy_on_done",
        "(param i32) (result i32)",
        Some("i32.const 1"),
    ),
    ("proxy_on_delete", "(param i32)", None),
];

/// A full module: imports, prelude, every callback; `overrides` replaces chosen bodies.
fn module(imports: &str, overrides: &[(&str, &str)], extra: &str) -> String {
    let mut wat = format!("(module\n{imports}\n{PRELUDE}\n");
    for (name, sig, body) in CALLBACKS {
        let body = overrides
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| *b)
            .or(*body)
            .unwrap_or("");
        wat.push_str(&format!("  (func (export \"{name}\") {sig} {body})\n"));
    }
    wat.push_str(extra);
    wat.push(')');
    wat
}

fn runtime() -> Runtime {
    Runtime::new().expect("runtime")
}

fn start(rt: &Runtime, wat: &str, config: PluginConfig) -> Result<Vm, StartError> {
    let module = rt.compile(wat.as_bytes()).expect("module compiles");
    Vm::new(rt, module, config, Box::new(Host))
}

fn start_ok(rt: &Runtime, wat: &str) -> Vm {
    start(rt, wat, PluginConfig::new("hostile")).expect("VM starts")
}

fn failed(e: VmError) -> VmFailed {
    match e {
        VmError::Failed(f) => *f,
        other => panic!("expected a VM failure, got {other:?}"),
    }
}

/// After a failure: the VM refuses to run again, without running guest code.
fn assert_not_reentered(vm: &mut Vm) {
    let before = vm.stats().snapshot().callbacks;
    let mut s = Stream::boxed();
    assert!(matches!(vm.create_http_stream(), Err(VmError::Failed(_))));
    assert!(matches!(
        vm.on_request_headers(2, &mut s, 0, false),
        Err(VmError::Failed(_))
    ));
    assert!(matches!(vm.on_tick(), Err(VmError::Failed(_))));
    assert_eq!(
        vm.stats().snapshot().callbacks,
        before,
        "no guest code ran after the failure"
    );
    assert!(vm.is_failed());
}

/// A well-behaved VM on the same runtime still serves a full stream.
fn assert_runtime_healthy(rt: &Runtime) {
    let wat = module("", &[("proxy_on_request_headers", "i32.const 1")], "");
    let mut vm = start_ok(rt, &wat);
    let mut s = Stream::boxed();
    let ctx = vm.create_http_stream().unwrap();
    assert_eq!(
        vm.on_request_headers(ctx, &mut s, 2, false).unwrap().action,
        Action::Pause
    );
    vm.finish_http_stream(ctx, &mut s).unwrap();
    assert!(vm.live_streams().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Traps in every callback
// ---------------------------------------------------------------------------------------------

const HTTP_CALL_IMPORTS: &str = r#"
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
"#;

/// Data: "auth" at 100, a serialized map {:method GET, :path /, :authority a} at 200 (61 bytes).
const HTTP_CALL_DATA: &str = r#"
  (data (i32.const 100) "auth")
  (data (i32.const 200)
    "\03\00\00\00" "\07\00\00\00\03\00\00\00" "\05\00\00\00\01\00\00\00" "\0a\00\00\00\01\00\00\00"
    ":method\00GET\00" ":path\00/\00" ":authority\00a\00")
"#;

/// `proxy_on_request_headers` body that dispatches an HTTP call and a gRPC call (tokens at 300, 304).
const DISPATCH: &str = r#"
    (drop (call $http_call (i32.const 100) (i32.const 4) (i32.const 200) (i32.const 61)
                           (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 300)))
    (drop (call $grpc_call (i32.const 100) (i32.const 4) (i32.const 100) (i32.const 4) (i32.const 100) (i32.const 4)
                           (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 304)))
    i32.const 1
"#;

fn outstanding_token(vm: &Vm, which: &str) -> u32 {
    // Tokens are also visible through the VM's outstanding-callout table.
    let calls = vm.outstanding_callouts();
    let want = if which == "http" { 0 } else { 1 };
    *calls
        .keys()
        .find(|t| *t & 3 == want)
        .expect("callout outstanding")
}

#[test]
fn trap_in_each_start_callback_is_a_start_error() {
    let rt = runtime();
    for phase in [
        "_initialize",
        "proxy_on_context_create",
        "proxy_on_vm_start",
        "proxy_on_configure",
    ] {
        let wat = if phase == "_initialize" {
            module("", &[], "").replace(
                r#"(func (export "_initialize"))"#,
                r#"(func (export "_initialize") unreachable)"#,
            )
        } else {
            module("", &[(phase, "unreachable")], "")
        };
        match start(&rt, &wat, PluginConfig::new("hostile")) {
            Err(StartError::Failed { phase: p, failure }) => {
                assert_eq!(p, phase);
                assert_eq!(failure.reason, FailureReason::Trap);
                assert!(
                    failure.message.contains("unreachable"),
                    "{}",
                    failure.message
                );
            }
            other => panic!("{phase}: expected a start failure, got {other:?}"),
        }
    }
    assert_runtime_healthy(&rt);
}

#[test]
fn trap_in_each_stream_callback_fails_the_vm_and_names_its_streams() {
    let rt = runtime();
    type Drive = fn(&mut Vm, u32, &mut StreamBox) -> Result<(), VmError>;
    let http: &[(&str, Drive)] = &[
        ("proxy_on_request_headers", |vm, c, s| {
            vm.on_request_headers(c, s, 1, false).map(drop)
        }),
        ("proxy_on_request_body", |vm, c, s| {
            vm.on_request_body(c, s, 5, true).map(drop)
        }),
        ("proxy_on_request_trailers", |vm, c, s| {
            vm.on_request_trailers(c, s, 0).map(drop)
        }),
        ("proxy_on_response_headers", |vm, c, s| {
            vm.on_response_headers(c, s, 1, false).map(drop)
        }),
        ("proxy_on_response_body", |vm, c, s| {
            vm.on_response_body(c, s, 5, true).map(drop)
        }),
        ("proxy_on_response_trailers", |vm, c, s| {
            vm.on_response_trailers(c, s, 0).map(drop)
        }),
        ("proxy_on_log", |vm, c, s| vm.on_log(c, s)),
        ("proxy_on_done", |vm, c, s| vm.on_done(c, s)),
        ("proxy_on_delete", |vm, c, _| vm.on_delete(c)),
    ];
    for (name, drive) in http {
        let wat = module("", &[(name, "unreachable")], "");
        let mut vm = start_ok(&rt, &wat);
        let other = vm.create_http_stream().unwrap();
        let ctx = vm.create_http_stream().unwrap();
        let mut s = Stream::boxed();
        let f = failed(drive(&mut vm, ctx, &mut s).expect_err(name));
        assert_eq!(f.callback, *name);
        assert_eq!(f.reason, FailureReason::Trap);
        assert_eq!(f.plugin, "hostile");
        assert_eq!(
            f.live_streams,
            vec![other, ctx],
            "{name}: every stream the VM held is reported"
        );
        assert_not_reentered(&mut vm);
        // The lent stream came back intact.
        assert_eq!(
            weir_host_abi::downcast_stream::<Stream>(&mut s)
                .unwrap()
                .body,
            b"hello"
        );
    }
    let tcp: &[(&str, Drive)] = &[
        ("proxy_on_new_connection", |vm, c, s| {
            vm.on_new_connection(c, s).map(drop)
        }),
        ("proxy_on_downstream_data", |vm, c, s| {
            vm.on_downstream_data(c, s, 5, false).map(drop)
        }),
        ("proxy_on_upstream_data", |vm, c, s| {
            vm.on_upstream_data(c, s, 5, false).map(drop)
        }),
        ("proxy_on_downstream_connection_close", |vm, c, s| {
            vm.on_downstream_connection_close(c, s, PeerType::Remote)
                .map(drop)
        }),
        ("proxy_on_upstream_connection_close", |vm, c, s| {
            vm.on_upstream_connection_close(c, s, PeerType::Unknown)
                .map(drop)
        }),
    ];
    for (name, drive) in tcp {
        let wat = module("", &[(name, "unreachable")], "");
        let mut vm = start_ok(&rt, &wat);
        let ctx = vm.create_tcp_stream().unwrap();
        let mut s = Stream::boxed();
        let f = failed(drive(&mut vm, ctx, &mut s).expect_err(name));
        assert_eq!((f.callback, f.reason), (*name, FailureReason::Trap));
        assert_eq!(f.live_streams, vec![ctx]);
        assert_not_reentered(&mut vm);
    }
    // Stream context creation itself.
    let mut vm = start_ok(
        &rt,
        &module(
            "",
            &[("proxy_on_context_create", "local.get 1 if unreachable end")],
            "",
        ),
    );
    let f = failed(vm.create_http_stream().unwrap_err());
    assert_eq!(f.callback, "proxy_on_context_create");
    assert_not_reentered(&mut vm);
    assert_runtime_healthy(&rt);
}

#[test]
fn trap_in_each_root_callback_fails_the_vm() {
    let rt = runtime();
    type Drive = fn(&mut Vm) -> Result<(), VmError>;
    let cases: &[(&str, Drive)] = &[
        ("proxy_on_tick", |vm| vm.on_tick().map(drop)),
        ("proxy_on_queue_ready", |vm| vm.on_queue_ready(1).map(drop)),
        ("proxy_on_foreign_function", |vm| {
            vm.on_foreign_function(7, b"args".to_vec()).map(drop)
        }),
        ("proxy_on_done", |vm| vm.shutdown().map(drop)),
        ("proxy_on_http_call_response", |vm| {
            let t = outstanding_token(vm, "http");
            vm.on_http_call_response(t, weir_host_abi::CalloutResponse::default(), None)
                .map(drop)
        }),
        ("proxy_on_grpc_receive_initial_metadata", |vm| {
            let t = outstanding_token(vm, "grpc");
            vm.on_grpc_receive_initial_metadata(t, Vec::new(), None)
                .map(drop)
        }),
        ("proxy_on_grpc_receive", |vm| {
            let t = outstanding_token(vm, "grpc");
            vm.on_grpc_receive(t, b"m".to_vec(), None).map(drop)
        }),
        ("proxy_on_grpc_receive_trailing_metadata", |vm| {
            let t = outstanding_token(vm, "grpc");
            vm.on_grpc_receive_trailing_metadata(t, Vec::new(), None)
                .map(drop)
        }),
        ("proxy_on_grpc_close", |vm| {
            let t = outstanding_token(vm, "grpc");
            vm.on_grpc_close(t, 14, "unavailable", None).map(drop)
        }),
    ];
    for (name, drive) in cases {
        let wat = module(
            HTTP_CALL_IMPORTS,
            &[
                (name, "unreachable"),
                ("proxy_on_request_headers", DISPATCH),
            ],
            HTTP_CALL_DATA,
        );
        let mut vm = start_ok(&rt, &wat);
        let ctx = vm.create_http_stream().unwrap();
        let mut s = Stream::boxed();
        assert_eq!(
            vm.on_request_headers(ctx, &mut s, 1, false).unwrap().action,
            Action::Pause
        );
        assert_eq!(
            vm.outstanding_callouts().len(),
            2,
            "both callouts dispatched"
        );
        let f = failed(drive(&mut vm).expect_err(name));
        assert_eq!((f.callback, f.reason), (*name, FailureReason::Trap));
        assert_eq!(f.live_streams, vec![ctx]);
        assert_not_reentered(&mut vm);
    }
    assert_runtime_healthy(&rt);
}

// ---------------------------------------------------------------------------------------------
// Time, memory, stack
// ---------------------------------------------------------------------------------------------

#[test]
fn infinite_loop_hits_the_deadline() {
    let rt = runtime();
    let wat = module(
        "",
        &[("proxy_on_request_headers", "(loop $l (br $l)) i32.const 0")],
        "",
    );
    let mut config = PluginConfig::new("spin");
    config.limits.deadlines.headers = Duration::from_millis(20);
    let stats = config.stats.clone();
    let mut vm = start(&rt, &wat, config).unwrap();
    let ctx = vm.create_http_stream().unwrap();
    let mut s = Stream::boxed();
    let t0 = Instant::now();
    let f = failed(vm.on_request_headers(ctx, &mut s, 0, false).unwrap_err());
    let took = t0.elapsed();
    assert_eq!(f.reason, FailureReason::Deadline);
    assert!(
        took >= Duration::from_millis(20),
        "stopped before its deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "deadline not enforced promptly: {took:?}"
    );
    let snap = stats.snapshot();
    assert_eq!((snap.traps, snap.deadline_hits), (1, 1));
    assert_not_reentered(&mut vm);
    assert_runtime_healthy(&rt);
}

#[test]
fn infinite_loop_at_start_hits_the_start_deadline() {
    let rt = runtime();
    let wat = module(
        "",
        &[("proxy_on_configure", "(loop $l (br $l)) i32.const 1")],
        "",
    );
    let mut config = PluginConfig::new("spin");
    config.limits.deadlines.start = Duration::from_millis(30);
    match start(&rt, &wat, config) {
        Err(StartError::Failed {
            phase: "proxy_on_configure",
            failure,
        }) => assert_eq!(failure.reason, FailureReason::Deadline),
        other => panic!("expected a deadline at configure, got {other:?}"),
    }
    assert_runtime_healthy(&rt);
}

#[test]
fn memory_bomb_is_capped() {
    let rt = runtime();
    // Grow one page at a time until refused, then trap (what a Rust guest's allocator does).
    let bomb = "(block $done (loop $l (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1))) (br $l))) unreachable";
    let wat = module("", &[("proxy_on_request_headers", bomb)], "");
    let mut config = PluginConfig::new("bomb");
    config.limits.memory_bytes = 4 << 20;
    let stats = config.stats.clone();
    let mut vm = start(&rt, &wat, config).unwrap();
    let ctx = vm.create_http_stream().unwrap();
    let mut s = Stream::boxed();
    let f = failed(vm.on_request_headers(ctx, &mut s, 0, false).unwrap_err());
    assert_eq!(f.reason, FailureReason::MemoryLimit);
    assert!(
        vm.memory_bytes() <= 4 << 20,
        "memory grew past the cap: {}",
        vm.memory_bytes()
    );
    assert_eq!(vm.memory_bytes(), 4 << 20, "grew exactly to the cap");
    assert_eq!(stats.snapshot().memory_limit_hits, 1);
    assert_not_reentered(&mut vm);

    // A single huge grow is refused too, and a guest that handles the refusal keeps running.
    let wat = module(
        "",
        &[(
            "proxy_on_request_headers",
            "(i32.eq (memory.grow (i32.const 60000)) (i32.const -1))",
        )],
        "",
    );
    let mut config = PluginConfig::new("polite");
    config.limits.memory_bytes = 4 << 20;
    let mut vm = start(&rt, &wat, config).unwrap();
    let ctx = vm.create_http_stream().unwrap();
    assert_eq!(
        vm.on_request_headers(ctx, &mut s, 0, false).unwrap().action,
        Action::Pause,
        "grow returned -1"
    );
    assert!(!vm.is_failed());

    // A module whose initial memory exceeds the cap never starts.
    let wat = module("", &[], "").replace(
        r#"(memory (export "memory") 2)"#,
        r#"(memory (export "memory") 100)"#,
    );
    let mut config = PluginConfig::new("fat");
    config.limits.memory_bytes = 1 << 20;
    assert!(matches!(
        start(&rt, &wat, config),
        Err(StartError::Instantiate(_))
    ));
    assert_runtime_healthy(&rt);
}

#[test]
fn stack_overflow_is_a_trap() {
    let rt = runtime();
    let wat = module(
        "",
        &[(
            "proxy_on_request_headers",
            "(call $recurse (i32.const 0)) i32.const 0",
        )],
        "(func $recurse (param i32) (call $recurse (i32.add (local.get 0) (i32.const 1))))",
    );
    let mut vm = start_ok(&rt, &wat);
    let ctx = vm.create_http_stream().unwrap();
    let mut s = Stream::boxed();
    let f = failed(vm.on_request_headers(ctx, &mut s, 0, false).unwrap_err());
    assert_eq!(f.reason, FailureReason::Trap);
    assert!(f.message.contains("stack"), "{}", f.message);
    assert_runtime_healthy(&rt);
}

// ---------------------------------------------------------------------------------------------
// Bad pointers and lengths to every host function
// ---------------------------------------------------------------------------------------------

/// Every import the host defines: (module, name, params, has_result).
const HOST_FUNCTIONS: &[(&str, &str, &str, bool)] = &[
    ("env", "proxy_log", "iii", true),
    ("env", "proxy_get_log_level", "i", true),
    ("env", "proxy_get_current_time_nanoseconds", "i", true),
    ("env", "proxy_set_tick_period_milliseconds", "i", true),
    ("env", "proxy_get_buffer_bytes", "iiiii", true),
    ("env", "proxy_set_buffer_bytes", "iiiii", true),
    ("env", "proxy_get_buffer_status", "iii", true),
    ("env", "proxy_get_header_map_pairs", "iii", true),
    ("env", "proxy_set_header_map_pairs", "iii", true),
    ("env", "proxy_get_header_map_value", "iiiii", true),
    ("env", "proxy_add_header_map_value", "iiiii", true),
    ("env", "proxy_replace_header_map_value", "iiiii", true),
    ("env", "proxy_remove_header_map_value", "iii", true),
    ("env", "proxy_get_header_map_size", "ii", true),
    ("env", "proxy_get_property", "iiii", true),
    ("env", "proxy_set_property", "iiii", true),
    ("env", "proxy_get_shared_data", "iiiii", true),
    ("env", "proxy_set_shared_data", "iiiii", true),
    ("env", "proxy_register_shared_queue", "iii", true),
    ("env", "proxy_resolve_shared_queue", "iiiii", true),
    ("env", "proxy_enqueue_shared_queue", "iii", true),
    ("env", "proxy_dequeue_shared_queue", "iii", true),
    ("env", "proxy_continue_stream", "i", true),
    ("env", "proxy_close_stream", "i", true),
    ("env", "proxy_send_local_response", "iiiiiiii", true),
    ("env", "proxy_http_call", "iiiiiiiiii", true),
    ("env", "proxy_grpc_call", "iiiiiiiiiiii", true),
    ("env", "proxy_grpc_stream", "iiiiiiiii", true),
    ("env", "proxy_grpc_send", "iiii", true),
    ("env", "proxy_grpc_cancel", "i", true),
    ("env", "proxy_grpc_close", "i", true),
    ("env", "proxy_get_status", "iii", true),
    ("env", "proxy_set_effective_context", "i", true),
    ("env", "proxy_call_foreign_function", "iiiiii", true),
    ("env", "proxy_done", "", true),
    ("env", "proxy_define_metric", "iiii", true),
    ("env", "proxy_get_metric", "ii", true),
    ("env", "proxy_record_metric", "iI", true),
    ("env", "proxy_increment_metric", "iI", true),
    ("wasi_snapshot_preview1", "fd_write", "iiii", true),
    ("wasi_snapshot_preview1", "environ_get", "ii", true),
    ("wasi_snapshot_preview1", "environ_sizes_get", "ii", true),
    ("wasi_snapshot_preview1", "args_get", "ii", true),
    ("wasi_snapshot_preview1", "args_sizes_get", "ii", true),
    ("wasi_snapshot_preview1", "clock_time_get", "iIi", true),
    ("wasi_snapshot_preview1", "random_get", "ii", true),
    ("wasi_snapshot_preview1", "fd_close", "i", true),
    ("wasi_snapshot_preview1", "fd_seek", "iIii", true),
    ("wasi_snapshot_preview1", "fd_fdstat_get", "ii", true),
    ("wasi_snapshot_preview1", "sched_yield", "", true),
    ("wasi_snapshot_preview1", "poll_oneoff", "iiii", true),
];

/// Argument `i` under pattern `p` (all computed in the guest from `on_request_headers`' second
/// argument): 0 all 0xFFFF_FFF0; 1 all 0xFFFF_FFFF; 2 small valid pointers with huge lengths;
/// 3 pointers 1 byte before the end of memory; 4 all zero (null, empty); 5 valid small values;
/// 6 pointers just past the end of memory.
const ARG_FN: &str = r#"
  (func $arg (param $p i32) (param $i i32) (result i32)
    (if (i32.eq (local.get $p) (i32.const 0)) (then (return (i32.const 0xFFFFFFF0))))
    (if (i32.eq (local.get $p) (i32.const 1)) (then (return (i32.const 0xFFFFFFFF))))
    (if (i32.eq (local.get $p) (i32.const 2))
      (then (return (select (i32.const 0xFFFFFFFF) (i32.const 1024) (i32.and (local.get $i) (i32.const 1))))))
    (if (i32.eq (local.get $p) (i32.const 3)) (then (return (i32.const 0x1FFFF))))
    (if (i32.eq (local.get $p) (i32.const 4)) (then (return (i32.const 0))))
    (if (i32.eq (local.get $p) (i32.const 5)) (then (return (i32.add (i32.const 2048) (i32.mul (local.get $i) (i32.const 8))))))
    (i32.const 0x20000))
"#;
const PATTERNS: u32 = 7;

#[test]
fn bad_pointers_and_lengths_to_every_host_function_never_panic_the_host() {
    let rt = runtime();
    let mut outcomes = std::collections::BTreeMap::new();
    for (m, name, params, _) in HOST_FUNCTIONS {
        let wasm_params: Vec<&str> = params
            .chars()
            .map(|c| if c == 'I' { "i64" } else { "i32" })
            .collect();
        let result = if *name == "proc_exit" {
            ""
        } else {
            "(result i32)"
        };
        let import = format!(
            r#"(import "{m}" "{name}" (func $f (param {}) {result}))"#,
            wasm_params.join(" ")
        );
        let mut call = String::new();
        for (i, c) in params.chars().enumerate() {
            call.push_str(&format!("(call $arg (local.get 1) (i32.const {i}))"));
            if c == 'I' {
                call.push_str(" i64.extend_i32_u");
            }
            call.push(' ');
        }
        let body = format!("{call} (call $f) drop i32.const 0");
        let wat = module(&import, &[("proxy_on_request_headers", &body)], ARG_FN);
        let module = rt
            .compile(wat.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for p in 0..PATTERNS {
            let mut config = PluginConfig::new("pointers");
            config.vm_configuration = b"vm-config".to_vec();
            config.environment = vec![("A".into(), "B".into())];
            let mut vm = Vm::new(&rt, module.clone(), config, Box::new(Host)).unwrap();
            let ctx = vm.create_http_stream().unwrap();
            let mut s = Stream::boxed();
            let r = vm.on_request_headers(ctx, &mut s, p as usize, false);
            let label = match &r {
                Ok(_) => "status".to_owned(),
                Err(VmError::Failed(f)) => {
                    assert!(
                        matches!(f.reason, FailureReason::Trap | FailureReason::AbiViolation),
                        "{name} pattern {p}: unexpected failure {f:?}"
                    );
                    format!("trap:{:?}", f.reason)
                }
                Err(e) => panic!("{name} pattern {p}: {e}"),
            };
            outcomes.insert(format!("{name}/{p}"), label);
        }
    }
    if std::env::var_os("HOSTILE_VERBOSE").is_some() {
        eprintln!("{outcomes:#?}");
    }
    // Out-of-bounds pointers to a proxy_* call that reads them must trap (the SDK cannot handle
    // INVALID_MEMORY_ACCESS), while WASI calls answer with errno FAULT.
    assert!(outcomes["proxy_get_header_map_value/0"].starts_with("trap"));
    assert!(outcomes["proxy_log/6"].starts_with("trap"));
    assert_eq!(outcomes["fd_write/0"], "status");
    assert_eq!(
        outcomes["proxy_log/4"], "status",
        "null pointer with zero length is empty, not a fault"
    );
    assert_runtime_healthy(&rt);
}

// ---------------------------------------------------------------------------------------------
// Allocator abuse and oversized copies
// ---------------------------------------------------------------------------------------------

const GET_PROPERTY: &str = r#"(import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))"#;
/// Reads `plugin_name` (path at 100), result pointer/size at 300/304; returns the status.
const READ_PROPERTY: &str =
    "(call $get_property (i32.const 100) (i32.const 11) (i32.const 300) (i32.const 304))";
const PATH_DATA: &str = r#"(data (i32.const 100) "plugin_name")"#;

fn allocator_module(alloc_body: &str, imports: &str) -> String {
    let wat = module(
        &format!("{GET_PROPERTY}{imports}"),
        &[("proxy_on_request_headers", READ_PROPERTY)],
        PATH_DATA,
    );
    let start = wat
        .find(r#"(func (export "proxy_on_memory_allocate")"#)
        .unwrap();
    let end = start + wat[start..].find("local.get $p)").unwrap() + "local.get $p)".len();
    format!(
        "{}(func (export \"proxy_on_memory_allocate\") (param $n i32) (result i32) {alloc_body}){}",
        &wat[..start],
        &wat[end..]
    )
}

#[test]
fn bad_allocators_are_abi_violations() {
    let rt = runtime();
    let cases = [
        ("null", "i32.const 0", ""),
        ("out of bounds", "i32.const 0x1FFFE", ""),
        ("wrapping", "i32.const 0xFFFFFFFF", ""),
        ("trapping", "unreachable", ""),
        (
            "re-entrant host call",
            "(drop (call $done)) i32.const 4096",
            r#"(import "env" "proxy_done" (func $done (result i32)))"#,
        ),
    ];
    for (what, body, imports) in cases {
        let mut vm = start_ok(&rt, &allocator_module(body, imports));
        let ctx = vm.create_http_stream().unwrap();
        let mut s = Stream::boxed();
        let f = failed(
            vm.on_request_headers(ctx, &mut s, 0, false)
                .expect_err(what),
        );
        let expected = if what == "trapping" {
            FailureReason::Trap
        } else {
            FailureReason::AbiViolation
        };
        assert_eq!(f.reason, expected, "{what}: {}", f.message);
        assert_not_reentered(&mut vm);
    }
    // Logging from inside the allocator is allowed (cpp-host allows it too).
    let logging = allocator_module(
        "(drop (call $log (i32.const 2) (i32.const 100) (i32.const 11))) i32.const 4096",
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#,
    );
    let mut vm = start_ok(&rt, &logging);
    let ctx = vm.create_http_stream().unwrap();
    let mut s = Stream::boxed();
    assert_eq!(
        vm.on_request_headers(ctx, &mut s, 0, false).unwrap().action,
        Action::Continue
    );
    assert_runtime_healthy(&rt);
}

/// A stream with one enormous header value and body.
#[derive(Debug)]
struct HugeStream(Vec<u8>);
impl StreamHost for HugeStream {
    fn header_value(&mut self, _map: MapType, _key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(self.0.clone()))
    }
    fn header_map(&mut self, _map: MapType) -> Result<Pairs, Status> {
        Ok(vec![(b"x-huge".to_vec(), self.0.clone())])
    }
    fn buffer(&mut self, _buffer: BufferType) -> Option<&[u8]> {
        Some(&self.0)
    }
}

#[test]
fn huge_copies_are_refused_with_a_status_or_contained() {
    let rt = runtime();
    let imports = r#"
      (import "env" "proxy_get_header_map_value" (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
      (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
    "#;
    // Second argument selects the call; the status (≠ 0 → Pause) tells us the guest got an error.
    let body = r#"
      (if (result i32) (i32.eqz (local.get 1))
        (then (call $get_value (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 300) (i32.const 304)))
        (else (if (result i32) (i32.eq (local.get 1) (i32.const 1))
          (then (call $get_pairs (i32.const 0) (i32.const 300) (i32.const 304)))
          (else (call $get_buffer (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 300) (i32.const 304))))))
    "#;
    let wat = module(
        imports,
        &[("proxy_on_request_headers", body)],
        r#"(data (i32.const 100) "x")"#,
    );
    let module = rt.compile(wat.as_bytes()).unwrap();
    let huge = vec![b'a'; 2 << 20]; // above the 1 MiB map cap
    for (which, expect_status) in [(0usize, true), (1, true)] {
        let mut vm = Vm::new(
            &rt,
            module.clone(),
            PluginConfig::new("huge"),
            Box::new(Host),
        )
        .unwrap();
        let ctx = vm.create_http_stream().unwrap();
        let mut s: StreamBox = Box::new(HugeStream(huge.clone()));
        let out = vm.on_request_headers(ctx, &mut s, which, false).unwrap();
        assert_eq!(
            out.action == Action::Pause,
            expect_status,
            "call {which}: status returned to the guest"
        );
        assert!(!vm.is_failed());
    }
    // The body is not map-capped, but the 2-page guest cannot take 2 MiB at 64 KiB: the bump
    // allocator hands out an out-of-memory pointer and the VM fails instead of writing anywhere.
    let mut vm = Vm::new(
        &rt,
        module.clone(),
        PluginConfig::new("huge"),
        Box::new(Host),
    )
    .unwrap();
    let ctx = vm.create_http_stream().unwrap();
    let mut s: StreamBox = Box::new(HugeStream(huge.clone()));
    let f = failed(vm.on_request_headers(ctx, &mut s, 2, false).unwrap_err());
    assert_eq!(f.reason, FailureReason::AbiViolation);
    // With a copy cap below the body size the guest gets a status instead.
    let mut config = PluginConfig::new("huge");
    config.limits.max_copy_bytes = 1 << 20;
    config.limits.max_map_bytes = 1 << 20;
    let mut vm = Vm::new(&rt, module, config, Box::new(Host)).unwrap();
    let ctx = vm.create_http_stream().unwrap();
    assert_eq!(
        vm.on_request_headers(ctx, &mut s, 2, false).unwrap().action,
        Action::Pause
    );
    assert_runtime_healthy(&rt);
}

// ---------------------------------------------------------------------------------------------
// Load-time checks
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_exports_are_named() {
    let rt = runtime();
    let good = module("", &[], "");
    let cases: Vec<(String, LoadError)> = vec![
        (
            good.replace(r#"(func (export "proxy_abi_version_0_2_1"))"#, ""),
            LoadError::MissingAbiVersion,
        ),
        (
            good.replace(r#"(export "proxy_on_memory_allocate")"#, ""),
            LoadError::MissingAllocator,
        ),
        (
            good.replace(r#"(memory (export "memory") 2)"#, "(memory 2)"),
            LoadError::MissingExport("memory"),
        ),
        (
            good.replace(r#"(func (export "_initialize"))"#, ""),
            LoadError::MissingInitialize,
        ),
    ];
    for (wat, expected) in cases {
        assert_eq!(rt.compile(wat.as_bytes()).unwrap_err(), expected);
    }
    // A mistyped callback export names itself.
    let bad = good.replace(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)"#,
        r#"(func (export "proxy_on_request_headers") (param i32 i32) (result i32) i32.const 0)"#,
    );
    match rt.compile(bad.as_bytes()).unwrap_err() {
        LoadError::ExportType { name, .. } => assert_eq!(name, "proxy_on_request_headers"),
        other => panic!("{other:?}"),
    }
    // `_start` instead of `_initialize` and `malloc` instead of `proxy_on_memory_allocate` are fine,
    // as is the 0.2.0 ABI marker.
    let old = good
        .replace(
            r#"(func (export "_initialize"))"#,
            r#"(func (export "_start"))"#,
        )
        .replace(
            r#"(export "proxy_on_memory_allocate")"#,
            r#"(export "malloc")"#,
        )
        .replace("proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0");
    start_ok(&rt, &old);
    // Not Wasm at all, and too big.
    assert!(matches!(
        rt.compile(b"\0asm garbage"),
        Err(LoadError::Compile(_))
    ));
    let cfg = weir_host_abi::RuntimeConfig {
        max_module_bytes: 100,
        ..Default::default()
    };
    let small = Runtime::with_config(cfg, weir_host_abi::SharedState::new()).unwrap();
    assert!(matches!(
        small.compile(good.as_bytes()),
        Err(LoadError::TooLarge { limit: 100, .. })
    ));
}

#[test]
fn unknown_and_mistyped_imports_are_named() {
    let rt = runtime();
    let cases = [
        (
            r#"(import "env" "proxy_does_not_exist" (func (param i32) (result i32)))"#,
            ("env", "proxy_does_not_exist"),
        ),
        (
            r#"(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
            ("wasi_snapshot_preview1", "path_open"),
        ),
        (
            r#"(import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))"#,
            ("wasi_snapshot_preview1", "sock_accept"),
        ),
        (
            r#"(import "other" "proxy_log" (func (param i32 i32 i32) (result i32)))"#,
            ("other", "proxy_log"),
        ),
        (
            r#"(import "env" "table" (table 1 funcref))"#,
            ("env", "table"),
        ),
    ];
    for (import, (m, n)) in cases {
        let wat = module(import, &[], "");
        assert_eq!(
            rt.compile(wat.as_bytes()).unwrap_err(),
            LoadError::UnknownImport {
                module: m.into(),
                name: n.into()
            },
            "{import}"
        );
    }
    let wat = module(
        r#"(import "env" "proxy_log" (func (param i64 i32 i32) (result i32)))"#,
        &[],
        "",
    );
    match rt.compile(wat.as_bytes()).unwrap_err() {
        LoadError::ImportType {
            module,
            name,
            expected,
            found,
        } => {
            assert_eq!((module.as_str(), name.as_str()), ("env", "proxy_log"));
            assert_eq!(expected, "(i32, i32, i32) -> (i32)");
            assert_eq!(found, "(i64, i32, i32) -> (i32)");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rejected_configuration_never_goes_live() {
    let rt = runtime();
    let wat = module("", &[("proxy_on_configure", "i32.const 0")], "");
    assert!(matches!(
        start(&rt, &wat, PluginConfig::new("no")),
        Err(StartError::ConfigureRejected)
    ));
    let wat = module("", &[("proxy_on_vm_start", "i32.const 0")], "");
    assert!(matches!(
        start(&rt, &wat, PluginConfig::new("no")),
        Err(StartError::VmStartRejected)
    ));
    // The plugin wrapper refuses to start as well.
    let module_ = rt
        .compile(module("", &[("proxy_on_configure", "i32.const 0")], "").as_bytes())
        .unwrap();
    let p = Plugin::new(
        &rt,
        module_,
        PluginConfig::new("no"),
        Box::new(|| Box::new(DefaultPluginHost)),
    );
    assert!(matches!(p, Err(StartError::ConfigureRejected)));
    assert_runtime_healthy(&rt);
}

// ---------------------------------------------------------------------------------------------
// Failure policies
// ---------------------------------------------------------------------------------------------

/// Traps on request headers when the header count is 13.
fn flaky(rt: &Runtime) -> Arc<weir_host_abi::Module> {
    let wat = module(
        "",
        &[(
            "proxy_on_request_headers",
            "(if (i32.eq (local.get 1) (i32.const 13)) (then unreachable)) i32.const 0",
        )],
        "",
    );
    rt.compile(wat.as_bytes()).unwrap()
}

fn fail_once(plugin: &mut Plugin, now: Instant) -> (VmFailed, Verdict) {
    let Availability::Ready(vm) = plugin.vm_at(now) else {
        panic!("VM should be ready")
    };
    let ctx = vm.create_http_stream().unwrap();
    let mut s = Stream::boxed();
    let f = failed(vm.on_request_headers(ctx, &mut s, 13, false).unwrap_err());
    let verdict = plugin.on_failure_at(&f, now);
    (f, verdict)
}

#[test]
fn fail_closed_and_fail_open_policies() {
    let rt = runtime();
    for (policy, verdict) in [
        (FailurePolicy::FailClosed, Verdict::FailClosed),
        (FailurePolicy::FailOpen, Verdict::FailOpen),
    ] {
        let mut config = PluginConfig::new("flaky");
        config.failure_policy = policy;
        let mut plugin = Plugin::new(
            &rt,
            flaky(&rt),
            config,
            Box::new(|| Box::new(DefaultPluginHost)),
        )
        .unwrap();
        let now = Instant::now();
        let (f, v) = fail_once(&mut plugin, now);
        assert_eq!(v, verdict);
        assert_eq!(f.live_streams.len(), 1);
        // Stays down: never re-entered, never rebuilt.
        for later in [now, now + Duration::from_secs(3600)] {
            assert!(matches!(plugin.vm_at(later), Availability::Unavailable(v) if v == verdict));
        }
        assert_eq!(plugin.stats().snapshot().vm_rebuilds, 0);
        assert_eq!(plugin.stats().snapshot().traps, 1);
    }
}

#[test]
fn reload_policy_rebuilds_with_exponential_backoff() {
    let rt = runtime();
    let mut config = PluginConfig::new("flaky");
    config.failure_policy = FailurePolicy::Reload;
    let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = built.clone();
    let factory = Box::new(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(DefaultPluginHost) as Box<dyn PluginHost>
    });
    let mut plugin = Plugin::new(&rt, flaky(&rt), config, factory).unwrap();
    let t0 = Instant::now();
    let (_, v) = fail_once(&mut plugin, t0);
    assert_eq!(
        v,
        Verdict::FailClosed,
        "streams of a reloading filter fail closed"
    );
    // Down for the first backoff (100 ms), then rebuilt.
    assert!(matches!(
        plugin.vm_at(t0 + Duration::from_millis(99)),
        Availability::Unavailable(Verdict::FailClosed)
    ));
    assert_eq!(plugin.next_rebuild(), Some(t0 + Duration::from_millis(100)));
    let t1 = t0 + Duration::from_millis(100);
    assert!(matches!(plugin.vm_at(t1), Availability::Ready(_)));
    assert_eq!(plugin.stats().snapshot().vm_rebuilds, 1);
    assert_eq!(
        built.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "a fresh plugin host per VM"
    );
    // Failing again soon doubles the wait.
    fail_once(&mut plugin, t1);
    assert_eq!(plugin.next_rebuild(), Some(t1 + Duration::from_millis(200)));
    let t2 = t1 + Duration::from_millis(200);
    assert!(matches!(plugin.vm_at(t2), Availability::Ready(_)));
    fail_once(&mut plugin, t2);
    assert_eq!(plugin.next_rebuild(), Some(t2 + Duration::from_millis(400)));
    // The rebuilt VM is a fresh instance that serves normally.
    let t3 = t2 + Duration::from_millis(400);
    let Availability::Ready(vm) = plugin.vm_at(t3) else {
        panic!("rebuilt")
    };
    let ctx = vm.create_http_stream().unwrap();
    let mut s = Stream::boxed();
    assert_eq!(
        vm.on_request_headers(ctx, &mut s, 1, false).unwrap().action,
        Action::Continue
    );
    assert_eq!(plugin.stats().snapshot().vm_rebuilds, 3);
    assert_eq!(plugin.stats().snapshot().traps, 3);
}

#[test]
fn a_vm_noticed_failed_by_the_plugin_is_replaced_even_without_on_failure() {
    let rt = runtime();
    let mut config = PluginConfig::new("flaky");
    config.failure_policy = FailurePolicy::Reload;
    let mut plugin = Plugin::new(
        &rt,
        flaky(&rt),
        config,
        Box::new(|| Box::new(DefaultPluginHost)),
    )
    .unwrap();
    let t0 = Instant::now();
    {
        let Availability::Ready(vm) = plugin.vm_at(t0) else {
            panic!()
        };
        let ctx = vm.create_http_stream().unwrap();
        let mut s = Stream::boxed();
        assert!(vm.on_request_headers(ctx, &mut s, 13, false).is_err());
    }
    assert!(matches!(
        plugin.vm_at(t0),
        Availability::Unavailable(Verdict::FailClosed)
    ));
    assert!(matches!(
        plugin.vm_at(t0 + Duration::from_millis(100)),
        Availability::Ready(_)
    ));
}

/// A plugin host whose logging blocks the thread (as a descheduled worker would look to the guest).
struct SlowHost;
impl PluginHost for SlowHost {
    fn log(&mut self, _level: weir_host_abi::LogLevel, _message: &str) {
        std::thread::sleep(Duration::from_millis(15));
    }
}

#[test]
fn time_off_cpu_is_not_charged_to_the_guest() {
    let rt = runtime();
    // Five slow host calls (75 ms of wall time, almost no guest CPU) against a 10 ms budget, with
    // a guest function call after each so the epoch deadline is checked.
    let step = "(drop (call $log (i32.const 2) (i32.const 100) (i32.const 1))) (call $nop)";
    let body = format!("{step} {step} {step} {step} {step} i32.const 0");
    let wat = module(
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#,
        &[("proxy_on_request_headers", &body)],
        "(func $nop)",
    );
    let module = rt.compile(wat.as_bytes()).unwrap();
    let mut config = PluginConfig::new("slow-host");
    config.limits.deadlines.headers = Duration::from_millis(10);
    let mut vm = Vm::new(&rt, module, config, Box::new(SlowHost)).unwrap();
    let ctx = vm.create_http_stream().unwrap();
    let mut s = Stream::boxed();
    let t0 = Instant::now();
    let out = vm.on_request_headers(ctx, &mut s, 0, false);
    assert!(t0.elapsed() >= Duration::from_millis(75));
    if cfg!(target_os = "linux") {
        assert_eq!(
            out.unwrap().action,
            Action::Continue,
            "a guest that used little CPU keeps running"
        );
    }
}
