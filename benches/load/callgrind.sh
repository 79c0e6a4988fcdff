#!/usr/bin/env bash
# User-space instructions per request through weir's plain path (no filter chain), counted by
# callgrind: the steadiest figure on a shared, noisy machine (the same binary and load give the
# same count whatever else runs). Used as the plain-path baseline in benches/README.md.
#
# Usage:   benches/load/callgrind.sh                       # build weir (release), measure
#          WEIR_BIN=/path/to/weir benches/load/callgrind.sh  # measure another build (A/B)
#
# How: the shared harness's hyper backend and weir (one worker, under callgrind) on loopback;
# wrk -c20 warms up for WARMUP seconds, the counters are zeroed, wrk -c20 runs for DURATION
# seconds, the counters are dumped; instructions / requests of that run is the figure (start-up
# and warm-up are not in it; every thread of weir is, idle control threads included).
# Knobs: DURATION (6), WARMUP (2), CONNS (20), RUN_DIR (/tmp/weir-callgrind), and CHAIN_WASM
# (a proxy-wasm module: the listener gets a chain of it, one instance per word of CHAIN_CONFIGS,
# default "one two three", the word as its configuration), e.g. the Wasm-tax filter (issue 27):
#   CHAIN_WASM=$(ls -t ~/.cache/weir/target/release/build/weir-test-artifacts-*/out/programs-target/wasm32-wasip1/release/tax_bench.wasm | head -1) benches/load/callgrind.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
SHARED=${SHARED:-$ROOT/../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
RUN_DIR=${RUN_DIR:-/tmp/weir-callgrind}
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-20}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
for cmd in wrk valgrind; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
if ((${#missing[@]})); then
  log "installing missing packages: ${missing[*]}"
  SUDO=; ((EUID == 0)) || SUDO=sudo
  $SUDO apt-get update && $SUDO apt-get install -y "${missing[@]}"
fi

if [[ -z ${WEIR_BIN:-} ]]; then
  log "building weir (cargo build --release -p weir)"
  cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
  WEIR_BIN=$CARGO_TARGET_DIR/release/weir
fi
BACKEND_TARGET=${BACKEND_TARGET:-$RUN_DIR/backend-target}
log "building the shared backend"
CARGO_TARGET_DIR=$BACKEND_TARGET cargo build --release --quiet --manifest-path "$SHARED/backend/Cargo.toml"

mkdir -p "$RUN_DIR"
rm -f "$RUN_DIR"/callgrind.out.*
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=$(free_port)
PROXY_PORT=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

BACKEND_ADDR=127.0.0.1:$BACKEND_PORT "$BACKEND_TARGET/release/peer-backend" >"$RUN_DIR/backend.log" 2>&1 &
pids+=($!)
cat >"$RUN_DIR/weir.yaml" <<YAML
workers: 1
admin: { address: 127.0.0.1:0 }
listeners:
  - name: main
    address: 127.0.0.1:$PROXY_PORT
    default_cluster: backend
clusters:
  backend:
    endpoints: [127.0.0.1:$BACKEND_PORT]
YAML
if [[ -n ${CHAIN_WASM:-} ]]; then
  sed -i 's/    default_cluster: backend/    default_cluster: backend\n    chain: measured/' "$RUN_DIR/weir.yaml"
  n=0 chain=""
  echo "filters:" >>"$RUN_DIR/weir.yaml"
  for w in ${CHAIN_CONFIGS:-one two three}; do
    n=$((n + 1)) chain="$chain${chain:+, }f$n"
    echo "  f$n: { module: \"$CHAIN_WASM\", config: $w }" >>"$RUN_DIR/weir.yaml"
  done
  echo "chains: { measured: [$chain] }" >>"$RUN_DIR/weir.yaml"
fi
valgrind --tool=callgrind --callgrind-out-file="$RUN_DIR/callgrind.out.%p" \
  "$WEIR_BIN" run --config "$RUN_DIR/weir.yaml" --log-level warn >"$RUN_DIR/weir.log" 2>&1 &
weir=$!
pids+=("$weir")

wait_up() {
  for _ in $(seq 1 600); do
    if curl -fs -o /dev/null "http://127.0.0.1:$1/"; then return 0; fi
    sleep 0.1
  done
  log "ERROR: nothing answers on port $1"; cat "$RUN_DIR"/*.log >&2; exit 1
}
wait_up "$BACKEND_PORT"
wait_up "$PROXY_PORT"
log "warm-up ${WARMUP}s"
wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$PROXY_PORT/" >/dev/null
callgrind_control --zero "$weir" >/dev/null
log "measuring ${DURATION}s"
out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PROXY_PORT/")
callgrind_control --dump=measured "$weir" >/dev/null
requests=$(awk '/requests in/ {print $1}' <<<"$out")
errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
[[ -z $errors ]] || log "wrk reported: $errors"
dump=$(grep -l 'Trigger: .*measured' "$RUN_DIR"/callgrind.out.* | head -1)
instr=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
printf 'requests %s\ninstructions %s\ninstructions per request %s\n' \
  "$requests" "$instr" "$(awk -v i="$instr" -v r="$requests" 'BEGIN { printf "%.0f", i / r }')"
