#!/usr/bin/env bash
# Idle memory (issue 27): anonymous RSS (RssAnon, /proc/PID/status) of a release weir after it is
# ready and has answered a few requests, for
#   - no filters, 1 worker
#   - the embedded default (five stock filters, `weir default-config`) on 1 and 2 workers
#   - 1..4 instances of one stock filter (builtin:fault) on 2 workers: the cost per added filter
# Each figure is the median of STARTS starts. Only loopback ports are used; every weir started
# is stopped on exit.
#
# Usage: benches/load/memory.sh            # 3 starts each, ~30 s after the build
# Knobs: STARTS, WEIR_BIN (a weir to measure instead of building the release one), ADMIN_PORT
#        (19902), LISTEN_PORT (18089), RUN_DIR (/tmp/weir-memory-bench).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
STARTS=${STARTS:-3}
ADMIN_PORT=${ADMIN_PORT:-19902}
LISTEN_PORT=${LISTEN_PORT:-18089}
RUN_DIR=${RUN_DIR:-/tmp/weir-memory-bench}
mkdir -p "$RUN_DIR"
if [[ -z ${WEIR_BIN:-} ]]; then
  cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
  WEIR_BIN=$CARGO_TARGET_DIR/release/weir
fi
PID=
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null; true' EXIT

# manifest NAME WORKERS FILTERS: no filters when FILTERS is 0; "default" for the embedded one.
manifest() {
  local f=$RUN_DIR/$1.yaml
  if [[ $3 == default ]]; then
    "$WEIR_BIN" default-config |
      sed -e "s/127.0.0.1:9901/127.0.0.1:$ADMIN_PORT/; s/127.0.0.1:8080/127.0.0.1:$LISTEN_PORT/" >"$f"
    sed -i "1i workers: $2" "$f"
  else
    {
      echo "workers: $2"
      echo "admin: { address: 127.0.0.1:$ADMIN_PORT }"
      if (($3 > 0)); then
        echo "listeners: [{ name: main, address: 127.0.0.1:$LISTEN_PORT, default_cluster: demo, chain: c }]"
        echo "chains: { c: [$(seq -s, -f 'f%g' 1 "$3")] }"
        echo "filters:"
        for i in $(seq 1 "$3"); do echo "  f$i: { module: builtin:fault, config: { header_control: true } }"; done
      else
        echo "listeners: [{ name: main, address: 127.0.0.1:$LISTEN_PORT, default_cluster: demo }]"
      fi
      echo "clusters: { demo: { demo: v1 } }"
    } >"$f"
  fi
  echo "$f"
}

# anon MANIFEST: RssAnon in KiB of one start.
anon() {
  "$WEIR_BIN" run --config "$1" --log-level warn >"$RUN_DIR/weir.log" 2>&1 &
  PID=$!
  for _ in $(seq 400); do
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready" && break
    kill -0 "$PID" 2>/dev/null || { cat "$RUN_DIR/weir.log" >&2; exit 1; }
    sleep 0.025
  done
  for _ in 1 2 3 4 5 6; do curl -s -o /dev/null "http://127.0.0.1:$LISTEN_PORT/"; done
  # Settled: two readings 200 ms apart agree within 64 KiB (purges are done).
  local a b
  b=$(awk '/RssAnon/ {print $2}' "/proc/$PID/status")
  for _ in $(seq 50); do
    sleep 0.2
    a=$b
    b=$(awk '/RssAnon/ {print $2}' "/proc/$PID/status")
    ((a - b < 64 && b - a < 64)) && break
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  echo "$b"
}

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

measure() {
  local f; f=$(manifest "$1" "$2" "$3")
  for _ in $(seq "$STARTS"); do anon "$f"; done | median
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$ROOT" rev-parse --short HEAD), $(nproc) CPUs; RssAnon KiB, median of $STARTS starts"
none=$(measure none 1 0)
d1=$(measure default1 1 default)
d2=$(measure default2 2 default)
declare -a k
for n in 1 2 3 4; do k[n]=$(measure "fault$n" 2 "$n"); done
per=$(( (k[4] - k[1]) / 3 ))
echo
echo "| weir | anonymous RSS |"
echo "|---|---|"
echo "| no filters, 1 worker | $none KiB |"
echo "| embedded default (5 stock filters), 1 worker | $d1 KiB |"
echo "| embedded default, 2 workers | $d2 KiB |"
for n in 1 2 3 4; do echo "| $n × builtin:fault, 2 workers | ${k[n]} KiB |"; done
echo "| each further filter (1 → 4 instances, 2 workers) | $per KiB, $((per / 2)) KiB per worker |"
