#!/usr/bin/env bash
# Tracing cost (issue 9): the same weir build, one worker each, side by side in one run — with
# tracing off (the default), and with OpenTelemetry tracing at 100% sampling exporting every span
# over OTLP/HTTP to a local collector sink — behind the same tiny hyper backend, loaded by wrk in
# alternating rounds. Prints req/s, latency and proxy CPU per request for both, and the on/off
# ratios. The traced weir's CPU includes its exporter thread (same process).
#
# The sink is a small python3 http.server that answers every POST /v1/traces with 200 and counts
# requests and bytes (it does not decode them); it is pinned beside wrk, so its own CPU is not
# charged to either proxy.
#
# Usage:  benches/load/tracing.sh                 # 3 rounds × 10 s
#         REPS=5 DURATION=10 benches/load/tracing.sh
#         REPS=1 DURATION=2 benches/load/tracing.sh   # a smoke run
#
# Pinning follows the shared harness's PIN=split: wrk (and the sink) on CPU 0; the proxies and the
# backend on CPU 1. Only loopback addresses are used; every process started is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
SHARED=${SHARED:-$ROOT/../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
RUN_DIR=${RUN_DIR:-/tmp/weir-tracing-bench}
BACKEND_PORT=${BACKEND_PORT:-18280}
OFF_PORT=${OFF_PORT:-18291}
ON_PORT=${ON_PORT:-18292}
SINK_PORT=${SINK_PORT:-18293}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v wrk >/dev/null || { SUDO=; ((EUID == 0)) || SUDO=sudo; $SUDO apt-get update && $SUDO apt-get install -y wrk; }

if [[ -n ${WEIR_BIN:-} ]]; then
  WEIR=$WEIR_BIN   # a build of your own (e.g. a debug build, to check the script itself)
else
  log "building weir (release)"
  cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
  WEIR=$CARGO_TARGET_DIR/release/weir
fi
log "building the backend"
BACKEND_TARGET=${BACKEND_TARGET:-$SHARED/backend/target}   # the shared harness's own target dir
CARGO_TARGET_DIR=$BACKEND_TARGET cargo build --release --quiet --manifest-path "$SHARED/backend/Cargo.toml"
BACKEND=$BACKEND_TARGET/release/peer-backend
mkdir -p "$RUN_DIR"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The collector sink: 200 to every export, keep-alive, counts written on SIGTERM.
cat >"$RUN_DIR/sink.py" <<'PY'
import http.server, signal, sys
stats = {"requests": 0, "bytes": 0}
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        stats["requests"] += 1
        stats["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
def stop(*_):
    print(f"sink: {stats['requests']} exports, {stats['bytes']} bytes", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY

manifest() { # port tracing(yes|no) -> file
  local f=$RUN_DIR/weir-$1.yaml
  {
    echo "workers: 1"
    echo "listeners:"
    echo "  - { name: main, address: 127.0.0.1:$1, default_cluster: backend }"
    echo "clusters:"
    echo "  backend: { endpoints: [127.0.0.1:$BACKEND_PORT] }"
    if [[ $2 == yes ]]; then
      echo "telemetry:"
      echo "  tracing:"
      echo "    collector: http://127.0.0.1:$SINK_PORT"
      echo "    sample_ratio: 1.0"
      # A queue deep enough that no span is dropped at full load: a dropped span would be a span
      # not paid for.
      echo "    max_queue: 65536"
      echo "    batch_delay: 1s"
    fi
  } >"$f"
  echo "$f"
}

taskset -c 0 python3 "$RUN_DIR/sink.py" "$SINK_PORT" >"$RUN_DIR/sink.out" 2>&1 &
pids+=($!)
sink_pid=$!
BACKEND_ADDR=127.0.0.1:$BACKEND_PORT taskset -c 1 "$BACKEND" >"$RUN_DIR/backend.log" 2>&1 &
pids+=($!)
for target in off on; do
  port=$OFF_PORT; tracing=no
  [[ $target == on ]] && port=$ON_PORT && tracing=yes
  taskset -c 1 "$WEIR" run --config "$(manifest "$port" "$tracing")" --log-level warn >"$RUN_DIR/$target.out" 2>"$RUN_DIR/$target.err" &
  pids+=($!)
  eval "pid_$target=$!"
done
for i in $(seq 100); do
  if grep -q "weir: ready" "$RUN_DIR/off.out" 2>/dev/null && grep -q "weir: ready" "$RUN_DIR/on.out" 2>/dev/null; then break; fi
  sleep 0.1
done
grep -q "weir: ready" "$RUN_DIR/on.out" || { cat "$RUN_DIR/on.err"; exit 1; }
# Every path must answer 200 before anything is measured.
for port in $BACKEND_PORT $OFF_PORT $ON_PORT; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)
  [[ $code == 200 ]] || { log "127.0.0.1:$port answered '$code', not 200; see $RUN_DIR/*.err"; exit 1; }
done
# ... and the traced weir must actually export (within its 1 s batch delay).
for i in $(seq 50); do
  [[ -s $RUN_DIR/sink.out ]] && break
  kill -0 "$sink_pid" 2>/dev/null || { log "the sink died: $(cat "$RUN_DIR/sink.out")"; exit 1; }
  sleep 0.1
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
results=$RUN_DIR/results.tsv
: >"$results"
for r in $(seq "$REPS"); do
  for target in off on; do
    port=$OFF_PORT; [[ $target == on ]] && port=$ON_PORT
    pid_var=pid_$target; pid=${!pid_var}
    timeout $((WARMUP + 5)) taskset -c 0 wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null
    t0=$(ticks "$pid")
    out=$(timeout $((DURATION + 10)) taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/")
    t1=$(ticks "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$HZ" 'BEGIN {printf "%.2f", (b-a)*1e6/hz/(n>0?n:1)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$target" "$rps" "$p50" "$p99" "$cpu" "${errs:-0}" >>"$results"
    log "round $r tracing $target: $rps req/s, p50 $p50, p99 $p99, CPU ${cpu}us/req ${errs}"
    [[ -z $errs ]] || { log "errors in this round; the figures are not valid"; exit 1; }
  done
done
# Let the last batch go out, then read the sink's counts.
sleep 1.5
kill -TERM "$sink_pid" 2>/dev/null || true
wait "$sink_pid" 2>/dev/null || true
log "$(cat "$RUN_DIR/sink.out")"

awk -F'\t' '
  function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t } return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
  { R[$1, $2] = $3; C[$1, $2] = $6; rounds[$1] = 1; n[$2]++; rps[$2, n[$2]] = $3; cpu[$2, n[$2]] = $6 }
  END {
    for (t in n) { for (k = 1; k <= n[t]; k++) { x[k] = rps[t, k]; y[k] = cpu[t, k] } mr[t] = med(x, n[t]); mc[t] = med(y, n[t]) }
    k = 0; for (r in rounds) { k++; q[k] = R[r, "on"] / R[r, "off"]; w[k] = C[r, "on"] / C[r, "off"] }
    printf "| tracing | req/s (median) | proxy CPU us/req | on / off req/s [per-round median] | CPU ratio |\n|---|---|---|---|---|\n"
    printf "| off | %.0f | %.2f | 1.000 | 1.000 |\n", mr["off"], mc["off"]
    printf "| on, 100%% sampled, OTLP/HTTP export | %.0f | %.2f | %.3f | %.3f |\n", mr["on"], mc["on"], med(q, k), med(w, k)
  }' "$results"
