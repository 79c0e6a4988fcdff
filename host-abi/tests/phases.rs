//! HTTP phase declarations (`weir.declare_http_phases`, see `weir_host_abi::phases`): a VM skips
//! the HTTP callbacks its filter did not declare, and only those. The modules are hand-written
//! WAT whose undeclared callbacks trap, so a skipped callback that ran would fail the VM.

use weir_host_abi::{
    Action, DefaultPluginHost, HttpPhases, PluginConfig, Runtime, StartError, StreamBox,
    StreamHost, Vm,
};

struct Stream;
impl StreamHost for Stream {}

/// A module whose `proxy_on_configure` declares `declaration` and returns whether the host
/// answered `expected_status`. Its request-headers callback pauses (so a run is visible); every
/// other HTTP callback in `trapping` traps; `extra` adds functions.
fn module(declaration: &str, expected_status: i32, trapping: &[&str], extra: &str) -> String {
    let name = "weir.declare_http_phases";
    let mut wat = format!(
        r#"(module
  (import "env" "proxy_call_foreign_function"
    (func $ff (param i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{name}")
  (data (i32.const 64) "{declaration}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "_initialize"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 4096)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.eq
      (call $ff (i32.const 16) (i32.const {nl}) (i32.const 64) (i32.const {dl})
        (i32.const 1024) (i32.const 1028))
      (i32.const {expected_status})))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_delete") (param i32))
"#,
        nl = name.len(),
        dl = declaration.len(),
    );
    for export in trapping {
        let sig = match *export {
            "proxy_on_request_trailers" | "proxy_on_response_trailers" => {
                "(param i32 i32) (result i32)"
            }
            "proxy_on_log" => "(param i32)",
            "proxy_on_done" => "(param i32) (result i32)",
            _ => "(param i32 i32 i32) (result i32)",
        };
        wat.push_str(&format!(
            "  (func (export \"{export}\") {sig} unreachable)\n"
        ));
    }
    wat.push_str(extra);
    wat.push(')');
    wat
}

const OTHERS: [&str; 7] = [
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_log",
    "proxy_on_done",
];

fn start(rt: &Runtime, wat: &str) -> Result<Vm, StartError> {
    let module = rt.compile(wat.as_bytes()).expect("module compiles");
    Vm::new(
        rt,
        module,
        PluginConfig::new("phases"),
        Box::new(DefaultPluginHost),
    )
}

/// Runs one whole stream through every HTTP callback.
fn full_stream(vm: &mut Vm) -> Action {
    let mut s: StreamBox = Box::new(Stream);
    let ctx = vm.create_http_stream().expect("context");
    let first = vm
        .on_request_headers(ctx, &mut s, 0, false)
        .expect("request headers")
        .action;
    for outcome in [
        vm.on_request_body(ctx, &mut s, 4, false),
        vm.on_request_trailers(ctx, &mut s, 0),
        vm.on_response_headers(ctx, &mut s, 0, false),
        vm.on_response_body(ctx, &mut s, 4, true),
        vm.on_response_trailers(ctx, &mut s, 0),
    ] {
        let outcome = outcome.expect("a skipped callback is not an error");
        assert_eq!(outcome.action, Action::Continue, "skipped = Continue");
        assert!(outcome.effects.is_empty());
    }
    vm.finish_http_stream(ctx, &mut s)
        .expect("log/done skipped");
    first
}

#[test]
fn undeclared_http_callbacks_are_skipped() {
    let rt = Runtime::new().unwrap();
    let mut vm =
        start(&rt, &module("request_headers", 0, &OTHERS, "")).expect("declaration accepted");
    assert_eq!(vm.http_phases(), HttpPhases::REQUEST_HEADERS);
    let before = vm.stats().snapshot().callbacks;
    assert_eq!(
        full_stream(&mut vm),
        Action::Pause,
        "the declared phase ran"
    );
    assert!(!vm.is_failed(), "no undeclared (trapping) callback ran");
    assert_eq!(
        vm.stats().snapshot().callbacks - before,
        3,
        "context create, request headers, delete"
    );
}

#[test]
fn declared_callbacks_still_run() {
    let rt = Runtime::new().unwrap();
    let mut vm = start(&rt, &module("request_headers,log", 0, &OTHERS, "")).unwrap();
    assert_eq!(
        vm.http_phases(),
        HttpPhases::REQUEST_HEADERS | HttpPhases::LOG
    );
    let mut s: StreamBox = Box::new(Stream);
    let ctx = vm.create_http_stream().unwrap();
    vm.on_response_headers(ctx, &mut s, 0, false).unwrap();
    assert!(
        vm.finish_http_stream(ctx, &mut s).is_err(),
        "the declared on_log ran (and trapped)"
    );
    assert!(vm.is_failed());
}

#[test]
fn a_filter_that_declares_nothing_gets_every_callback() {
    let rt = Runtime::new().unwrap();
    // The declaration names a phase that does not exist: refused (BAD_ARGUMENT = 2), nothing
    // changes, and the module's undeclared callbacks are all delivered.
    let mut vm = start(&rt, &module("request_headers,on_log", 2, &OTHERS, "")).unwrap();
    assert_eq!(vm.http_phases(), HttpPhases::ALL);
    let mut s: StreamBox = Box::new(Stream);
    let ctx = vm.create_http_stream().unwrap();
    assert!(vm.on_response_headers(ctx, &mut s, 0, false).is_err());
}

#[test]
fn a_declaration_cannot_add_a_callback_the_module_lacks() {
    let rt = Runtime::new().unwrap();
    // Exports only request headers (and delete); declares response headers too.
    let mut vm = start(&rt, &module("request_headers,response_headers", 0, &[], "")).unwrap();
    assert_eq!(vm.http_phases(), HttpPhases::REQUEST_HEADERS);
    assert_eq!(full_stream(&mut vm), Action::Pause);
}

#[test]
fn a_declaration_from_a_stream_callback_is_refused() {
    let rt = Runtime::new().unwrap();
    // on_response_headers tries to declare (from a stream context) and traps unless refused.
    let extra = r#"  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (if (i32.ne
          (call $ff (i32.const 16) (i32.const 24) (i32.const 64) (i32.const 16)
            (i32.const 1024) (i32.const 1028))
          (i32.const 2))
      (then unreachable))
    i32.const 0)
"#;
    let mut vm = start(&rt, &module("response_headers", 0, &[], extra)).unwrap();
    let mut s: StreamBox = Box::new(Stream);
    let ctx = vm.create_http_stream().unwrap();
    vm.on_response_headers(ctx, &mut s, 0, false)
        .expect("refused with BAD_ARGUMENT, no trap");
    assert_eq!(vm.http_phases(), HttpPhases::RESPONSE_HEADERS);
}
