#!/usr/bin/env bash
# Load harness for weir (issue 2): builds `weir` in release, then runs the shared peer harness
# (wrk against a tiny hyper backend: direct, nginx, haproxy and weir, one worker each, loopback)
# with weir as the `custom` target.
#
# Usage:   benches/load/run.sh                                    # shared defaults (3 rounds, ~3 min)
#          REPS=1 DURATION=3 TARGETS="direct nginx custom" benches/load/run.sh   # quick check
#          REPS=5 MODE=both benches/load/run.sh                   # + paced-latency table
#
# Every knob of the shared harness (REPS, DURATION, WARMUP, MODE, PIN, TARGETS, WRK_CONNS, ...)
# passes through unchanged; see shared/bench/README.md. Own knobs:
#   SHARED_BENCH    path of the shared harness (default: <repo>/../shared/bench/run.sh)
#   WEIR_LOG_LEVEL  --log-level for weir (default: warn, so logging stays off the request path)
#   WORKERS         weir `workers:` (default 1, like the peers' single worker)
#   RUN_DIR         scratch dir (default /tmp/weir-load-bench rather than the harness's own
#                   default, so this never stops processes another run recorded there)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench/run.sh}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
export RUN_DIR=${RUN_DIR:-/tmp/weir-load-bench}
export WORKERS=${WORKERS:-1}
export WEIR_LOG_LEVEL=${WEIR_LOG_LEVEL:-warn}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[[ -x $SHARED_BENCH ]] || { log "ERROR: shared harness not found at $SHARED_BENCH (set SHARED_BENCH)"; exit 1; }

# Debian packages the harness needs, installed only when missing.
missing=()
for cmd in nginx haproxy wrk; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
if ((${#missing[@]})); then
  log "installing missing packages: ${missing[*]}"
  SUDO=; ((EUID == 0)) || SUDO=sudo
  $SUDO apt-get update && $SUDO apt-get install -y "${missing[@]}"
fi

log "building weir (cargo build --release -p weir)"
cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
export WEIR_BIN=$CARGO_TARGET_DIR/release/weir
[[ -x $WEIR_BIN ]] || { log "ERROR: $WEIR_BIN missing after the build"; exit 1; }
mkdir -p "$RUN_DIR"
export WEIR_MANIFEST=$RUN_DIR/weir-load.yaml

# The harness exports PROXY_LISTEN / UPSTREAM_ADDR / WORKERS to PROXY_CMD's process; the manifest
# is written there, from those, and `exec` keeps weir in the foreground under the PID the harness
# tracks (it pins, measures and stops that PID).
# shellcheck disable=SC2016  # expanded by the harness's child, not here
PROXY_CMD='bash -c '\''cat >"$WEIR_MANIFEST" <<YAML
workers: $WORKERS
admin: { address: 127.0.0.1:0 }
listeners:
  - name: main
    address: $PROXY_LISTEN
    default_cluster: backend
clusters:
  backend:
    endpoints: [$UPSTREAM_ADDR]
YAML
exec "$WEIR_BIN" run --config "$WEIR_MANIFEST" --log-level "$WEIR_LOG_LEVEL"'\'''
export PROXY_CMD
export PROXY_NAME=weir

log "running $SHARED_BENCH (results and logs in $RUN_DIR)"
exec "$SHARED_BENCH"
