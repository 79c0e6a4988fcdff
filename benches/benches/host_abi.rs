//! Micro-benchmarks of weir-host-abi: VM instantiation from an `InstancePre` (on-demand and
//! pooling allocator), one `on_request_headers` round trip on a 10-header request that reads 2
//! headers and adds 1, and a full HTTP stream lifecycle. The guest is hand-written WAT doing what
//! the SDK would (so these benches do not depend on the guest build), plus the SDK-built
//! `header_bench` filter for comparison. Figures are recorded in benches/README.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir_host_abi::{
    Action, DefaultPluginHost, MapType, Module, Pairs, PluginConfig, PoolingConfig, Runtime,
    RuntimeConfig, SharedState, Status, StreamBox, StreamHost, Vm,
};

/// Reads `x-a` and `x-b`, adds `x-bench: 1`; response headers read `:status`. The allocator hands
/// out one scratch region (the SDK frees every result right after reading it).
const GUEST: &str = r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 17)
  (data (i32.const 100) "x-a")
  (data (i32.const 110) "x-b")
  (data (i32.const 120) "x-bench")
  (data (i32.const 130) "1")
  (data (i32.const 140) ":status")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "_initialize"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 65536)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $get (i32.const 0) (i32.const 100) (i32.const 3) (i32.const 200) (i32.const 204)))
    (drop (call $get (i32.const 0) (i32.const 110) (i32.const 3) (i32.const 200) (i32.const 204)))
    (drop (call $add (i32.const 0) (i32.const 120) (i32.const 7) (i32.const 130) (i32.const 1)))
    i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $get (i32.const 2) (i32.const 140) (i32.const 7) (i32.const 200) (i32.const 204)))
    i32.const 0)
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_delete") (param i32)))"#;

/// A minimal embedder stream: a 10-header request and a response.
struct BenchStream {
    request: Pairs,
    response: Pairs,
}

impl BenchStream {
    fn boxed() -> StreamBox {
        let mut request: Pairs = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/bench".to_vec()),
            (b":authority".to_vec(), b"example.com".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b"user-agent".to_vec(), b"criterion".to_vec()),
            (b"accept".to_vec(), b"*/*".to_vec()),
            (b"x-a".to_vec(), b"alpha".to_vec()),
            (b"x-b".to_vec(), b"beta".to_vec()),
            (b"x-request-id".to_vec(), b"0123456789abcdef".to_vec()),
        ];
        request.push((b"content-length".to_vec(), b"0".to_vec()));
        Box::new(BenchStream {
            request,
            response: vec![(b":status".to_vec(), b"200".to_vec())],
        })
    }

    fn map(&mut self, map: MapType) -> Result<&mut Pairs, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request),
            MapType::HttpResponseHeaders => Ok(&mut self.response),
            _ => Err(Status::NotFound),
        }
    }
}

impl StreamHost for BenchStream {
    fn header_map(&mut self, map: MapType) -> Result<Pairs, Status> {
        self.map(map).cloned()
    }
    fn header_value(&mut self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Ok(self
            .map(map)?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone()))
    }
    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let m = self.map(map)?;
        // Keep the request at 10 headers across iterations: the bench measures one add, not growth.
        m.truncate(10);
        m.push((key.to_vec(), value.to_vec()));
        Ok(())
    }
}

fn runtime(pooling: bool) -> Runtime {
    let config = RuntimeConfig {
        pooling: pooling.then(PoolingConfig::default),
        ..RuntimeConfig::default()
    };
    Runtime::with_config(config, SharedState::new()).unwrap()
}

fn vm(rt: &Runtime, module: &Arc<Module>) -> Vm {
    vm_with(rt, module, PluginConfig::new("bench"))
}

fn vm_with(rt: &Runtime, module: &Arc<Module>, config: PluginConfig) -> Vm {
    Vm::new(rt, module.clone(), config, Box::new(DefaultPluginHost)).unwrap()
}

fn lifecycle(vm: &mut Vm, stream: &mut StreamBox) {
    let ctx = vm.create_http_stream().unwrap();
    let out = vm.on_request_headers(ctx, stream, 10, true).unwrap();
    debug_assert_eq!(out.action, Action::Continue);
    vm.on_response_headers(ctx, stream, 1, true).unwrap();
    vm.finish_http_stream(ctx, stream).unwrap();
}

fn benches(c: &mut Criterion) {
    let sdk_wasm = std::fs::read(weir_test_artifacts::HEADER_BENCH).expect("header_bench artifact");
    for pooling in [false, true] {
        let rt = runtime(pooling);
        let alloc = if pooling { "pooling" } else { "on-demand" };
        let wat = rt.compile(GUEST.as_bytes()).unwrap();
        let sdk = rt.compile(&sdk_wasm).unwrap();

        let mut g = c.benchmark_group(format!("instantiate/{alloc}"));
        g.bench_function("wat", |b| b.iter(|| black_box(vm(&rt, &wat))));
        g.bench_function("sdk_header_bench", |b| b.iter(|| black_box(vm(&rt, &sdk))));
        g.finish();

        if pooling {
            continue; // per-call costs do not depend on the allocator
        }
        let mut g = c.benchmark_group("request_headers");
        for (name, module) in [("wat", &wat), ("sdk_header_bench", &sdk)] {
            let mut vm = vm(&rt, module);
            let mut stream = BenchStream::boxed();
            let ctx = vm.create_http_stream().unwrap();
            g.bench_function(name, |b| {
                b.iter(|| black_box(vm.on_request_headers(ctx, &mut stream, 10, false).unwrap()))
            });
        }
        g.finish();

        let mut g = c.benchmark_group("stream_lifecycle");
        for (name, module) in [("wat", &wat), ("sdk_header_bench", &sdk)] {
            let mut vm = vm(&rt, module);
            let mut stream = BenchStream::boxed();
            g.bench_function(name, |b| b.iter(|| lifecycle(&mut vm, &mut stream)));
        }
        // The same SDK guest, declaring that it only handles request headers: the response
        // headers, log and done callbacks are skipped.
        let declared = PluginConfig::new("bench").with_configuration("declare");
        let mut vm = vm_with(&rt, &sdk, declared);
        assert_eq!(vm.http_phases(), weir_host_abi::HttpPhases::REQUEST_HEADERS);
        let mut stream = BenchStream::boxed();
        g.bench_function("sdk_header_bench_declared", |b| {
            b.iter(|| lifecycle(&mut vm, &mut stream))
        });
        g.finish();
    }
}

criterion_group!(host_abi, benches);
criterion_main!(host_abi);
