#!/usr/bin/env bash
# xDS at scale (issue 26): weir following a control plane that holds CLUSTERS EDS clusters of
# ENDPOINTS endpoints each.
#
# The control plane is the e2e tests' scripted ADS server, driven by benches/examples/xds_scale.rs
# (it starts weir itself, so it can time the start-up and read the ACKs). It measures:
# 1. Start-up: spawn → `/ready` 200 (polled every 5 ms) with everything pushed at once, and RSS
#    after ready for 0 clusters, CLUSTERS × 1 and CLUSTERS × ENDPOINTS, STARTS times each; then
#    the start-ups again with MIMALLOC_PURGE_DELAY=0 (RSS nearer what is live), whose
#    differences give the memory per cluster and per endpoint.
# 2. One cluster's endpoint change: the time from the server's `set()` to weir's ACK (received,
#    applied through every worker, ACKed), target under 10 ms; for an idle cluster (every
#    endpoint moves) and for the loaded cluster c0 (its backends reordered and reweighted).
# 3. A paced load (wrk, 20 connections each pausing 2 ms between requests, through the xDS
#    listener to c0's ENDPOINTS real backends): p99 with no updates, with UPDATES updates of the
#    idle cluster and with UPDATES updates of c0, ROUNDS times each (order rotated per round).
#
# Usage: benches/load/xds.sh                        # 1,000 × 10, 100 updates, 3 rounds × 10 s
#        MODE=sotw ROUNDS=1 benches/load/xds.sh     # state-of-the-world ADS instead of Delta
#        STARTUP_ONLY=1 benches/load/xds.sh         # start-up and memory only
# Knobs: CLUSTERS ENDPOINTS UPDATES ROUNDS DURATION STARTS WORKERS MODE STARTUP_ONLY LISTEN_PORT
#        BACKEND_PORT RUN_DIR, and WEIR_BIN (a weir to use instead of building the release one).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
export CLUSTERS=${CLUSTERS:-1000} ENDPOINTS=${ENDPOINTS:-10} UPDATES=${UPDATES:-100}
export ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} STARTS=${STARTS:-3} WORKERS=${WORKERS:-2}
export MODE=${MODE:-delta}
export RUN_DIR=${RUN_DIR:-/tmp/weir-xds-bench}
LISTEN_PORT=${LISTEN_PORT:-18190}
BACKEND_PORT=${BACKEND_PORT:-18180}
mkdir -p "$RUN_DIR"
command -v wrk >/dev/null || {
  SUDO=$([[ $(id -u) == 0 ]] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk
}

if [[ -z ${WEIR_BIN:-} ]]; then
  cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
  WEIR_BIN=$CARGO_TARGET_DIR/release/weir
fi
export WEIR_BIN
cargo build --release --quiet -p weir-benches --example xds_scale --manifest-path "$ROOT/Cargo.toml"
# The shared harness's backend, in its own target dir as the harness builds it.
CARGO_TARGET_DIR=$SHARED_BENCH/backend/target cargo build --release --quiet \
  --manifest-path "$SHARED_BENCH/backend/Cargo.toml"
BACKEND=$SHARED_BENCH/backend/target/release/peer-backend

for p in $LISTEN_PORT $(seq "$BACKEND_PORT" $((BACKEND_PORT + ENDPOINTS - 1))); do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "port $p is taken" >&2; exit 1; fi
done
# c0's endpoints: one backend per endpoint (an endpoint is an address; a cluster's are distinct).
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
backends=()
for ((e = 0; e < ENDPOINTS; e++)); do
  BACKEND_ADDR=127.0.0.1:$((BACKEND_PORT + e)) "$BACKEND" >"$RUN_DIR/backend-$e.log" 2>&1 &
  pids+=($!)
  backends+=("127.0.0.1:$((BACKEND_PORT + e))")
done
export BACKENDS
BACKENDS=$(IFS=,; echo "${backends[*]}")
export LISTEN=127.0.0.1:$LISTEN_PORT WRK_SCRIPT=$SHARED_BENCH/conf/stats.lua

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- proxy filters || echo " + uncommitted proxy changes (diff $(git -C "$ROOT" diff HEAD -- proxy filters | sha256sum | cut -c1-8))"), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$CARGO_TARGET_DIR/release/examples/xds_scale" | tee "$RUN_DIR/summary.md"
# The start-ups again with mimalloc returning freed pages at once: the default RSS holds tens of
# MB that start-up freed and mimalloc has not returned yet, varying by as much between identical
# starts: too much for a difference per cluster. These rows are appended to the summary.
MIMALLOC_PURGE_DELAY=0 STARTUP_ONLY=1 "$CARGO_TARGET_DIR/release/examples/xds_scale" \
  >"$RUN_DIR/startup-purge0.txt"
grep '^| [^f-]' "$RUN_DIR/startup-purge0.txt" | tee -a "$RUN_DIR/summary.md"
