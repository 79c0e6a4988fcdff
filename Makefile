# Weir's task runner: CI calls these targets verbatim (see .ci/run).
#   make run    start Weir on the embedded default manifest (http://127.0.0.1:8080, admin :9901)
#   make test   run every test (builds the wasm32-wasip1 guest programs on the way)
#   make lint   rustfmt + clippy with warnings denied
#   make bench  the load harness (Weir vs direct vs nginx) and the criterion micro-benchmarks
SHELL := /bin/bash
CARGO ?= cargo
# One build directory for every target (and for CI): `make run` and `make test` share their
# build instead of compiling wasmtime twice. Override by exporting CARGO_TARGET_DIR.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
WEIR_ARGS ?=

.PHONY: run test lint bench bench-load bench-micro toolchain

# rustup here does not auto-install targets, so every entry point makes sure of them first.
toolchain:
	@rustup target add wasm32-wasip1 >/dev/null 2>&1 || rustup target add wasm32-wasip1
	@rustup component add rustfmt clippy >/dev/null 2>&1 || true

run: toolchain
	$(CARGO) run -p weir -- run $(WEIR_ARGS)

test: toolchain
	$(CARGO) build -p weir
	$(CARGO) test --workspace --no-fail-fast
	# The stock filters' own unit tests (their workspace is separate; run natively).
	$(CARGO) test --manifest-path filters/Cargo.toml --workspace --lib --locked

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# The stock filters are their own wasm32-wasip1 workspace (built into `weir` by proxy/build.rs).
	$(CARGO) fmt --manifest-path filters/Cargo.toml --all -- --check
	$(CARGO) clippy --manifest-path filters/Cargo.toml --target wasm32-wasip1 --locked -- -D warnings

bench: bench-micro bench-load

bench-micro: toolchain
	$(CARGO) bench -p weir-benches

bench-load: toolchain
	bash benches/load/run.sh
