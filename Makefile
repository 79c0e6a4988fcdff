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

.PHONY: run test lint bench bench-load bench-micro toolchain clone-root

# rustup here does not auto-install targets, so every entry point makes sure of them first.
toolchain:
	@rustup target add wasm32-wasip1 >/dev/null 2>&1 || rustup target add wasm32-wasip1
	@rustup component add rustfmt clippy >/dev/null 2>&1 || true

# Some binaries bake the clone's path in (`env!("CARGO_MANIFEST_DIR")`: the tests' filter sources
# and examples, `weir new-filter`'s sdk path), and cargo does not rebuild them when the same target
# dir is used from a clone at another path (the sources' mtimes are older than the binaries); such
# a binary would look for its files in the other clone. The target dir records the clone that used
# it last; from another clone, the files that bake the path are touched so cargo rebuilds them.
BAKED_PATHS := $(shell grep -rlF 'env!("CARGO_MANIFEST_DIR")' --include='*.rs' proxy sdk tests 2>/dev/null)
clone-root:
	@mkdir -p "$(CARGO_TARGET_DIR)"
	@if [ "$$(cat "$(CARGO_TARGET_DIR)/.weir-clone-root" 2>/dev/null)" != "$(CURDIR)" ]; then \
		echo "target dir last used by another clone: rebuilding what bakes the clone's path"; \
		touch $(BAKED_PATHS); \
		echo "$(CURDIR)" > "$(CARGO_TARGET_DIR)/.weir-clone-root"; \
	fi

run: toolchain clone-root
	$(CARGO) run -p weir -- run $(WEIR_ARGS)

test: toolchain clone-root
	$(CARGO) build -p weir
	# Programs the tests run beside weir, installed when missing (a release Envoy: e2e/envoy_parity.rs).
	bash tests/deps.sh
	$(CARGO) test --workspace --no-fail-fast
	# The stock filters' own unit tests (their workspace is separate; run natively).
	$(CARGO) test --manifest-path filters/Cargo.toml --workspace --lib --locked

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# The stock filters are their own wasm32-wasip1 workspace (built into `weir` by proxy/build.rs).
	$(CARGO) fmt --manifest-path filters/Cargo.toml --all -- --check
	$(CARGO) clippy --manifest-path filters/Cargo.toml --target wasm32-wasip1 --locked -- -D warnings
	# Module docs link what they describe: a broken or private link is an error.
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

bench: bench-micro bench-load

bench-micro: toolchain
	$(CARGO) bench -p weir-benches

bench-load: toolchain
	bash benches/load/run.sh
