#!/usr/bin/env bash
# Live endpoints (issue 25): what an endpoint update costs.
#
# 1. API latency: time from `PUT /clusters/NAME/endpoints` to every worker serving the new set
#    (the admin call answers only once every worker has switched, so its duration is the figure),
#    on a proxy with one cluster; the transaction's own time and its control-thread share
#    (`prepare_micros`: validation and the new cluster version, before the publish) beside it.
# 2. Scale: the same update on one cluster of a proxy holding CLUSTERS clusters of 10 endpoints
#    (target: under 1 ms of control-thread time), and the p99 of a paced load (wrk, 20 connections
#    each pausing 2 ms between requests, through the listener to a real backend) while UPDATES
#    such updates run, against the same load with none.
# 3. Memory: RSS after start-up with 0 clusters beside the load's, CLUSTERS clusters of 1
#    endpoint and CLUSTERS clusters of 10 endpoints; per cluster and per endpoint by difference.
#
# Usage: benches/load/endpoints.sh                  # 2 workers, 1,000 clusters, 100 updates
#        CLUSTERS=1000 UPDATES=100 DURATION=10 benches/load/endpoints.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
WORKERS=${WORKERS:-2}
CLUSTERS=${CLUSTERS:-1000}
UPDATES=${UPDATES:-100}
N=${N:-30}
DURATION=${DURATION:-10}
RUN_DIR=${RUN_DIR:-/tmp/weir-endpoints-bench}
BACKEND_PORT=${BACKEND_PORT:-18180}
mkdir -p "$RUN_DIR"
command -v wrk >/dev/null || {
  SUDO=$([[ $(id -u) == 0 ]] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk
}

cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
# The shared harness's backend, in its own target dir as the harness builds it.
CARGO_TARGET_DIR=$SHARED_BENCH/backend/target cargo build --release --quiet \
  --manifest-path "$SHARED_BENCH/backend/Cargo.toml"
WEIR=$CARGO_TARGET_DIR/release/weir
BACKEND=$SHARED_BENCH/backend/target/release/peer-backend

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for p in "$BACKEND_PORT" $((BACKEND_PORT + 1)); do
  BACKEND_ADDR=127.0.0.1:$p "$BACKEND" >"$RUN_DIR/backend-$p.log" 2>&1 &
  pids+=($!)
done
echo "bench-token-0123456789" >"$RUN_DIR/token"
AUTH="Authorization: Bearer $(cat "$RUN_DIR/token")"

# manifest N_CLUSTERS N_ENDPOINTS > file: the load's cluster plus N clusters of M endpoints
# (addresses nothing listens on; nothing connects to them without traffic or health checks).
manifest() {
  cat <<YAML
workers: $WORKERS
admin: { address: 127.0.0.1:0, token_file: $RUN_DIR/token }
listeners:
  - { name: main, address: 127.0.0.1:0, default_cluster: backend }
clusters:
  backend: { endpoints: [127.0.0.1:$BACKEND_PORT] }
YAML
  for ((c = 0; c < $1; c++)); do
    printf '  c%04d: { endpoints: [' "$c"
    for ((e = 0; e < $2; e++)); do
      ((e > 0)) && printf ', '
      printf '127.0.%d.%d:%d' $((c / 200 + 2)) $((c % 200 + 1)) $((20000 + e))
    done
    printf '] }\n'
  done
}

start() { # name clusters endpoints -> sets WPID ADMIN LISTEN
  manifest "$2" "$3" >"$RUN_DIR/$1.yaml"
  "$WEIR" run --config "$RUN_DIR/$1.yaml" --log-level warn >"$RUN_DIR/$1.out" 2>"$RUN_DIR/$1.err" &
  WPID=$!
  pids+=("$WPID")
  for _ in $(seq 300); do grep -q "weir: ready" "$RUN_DIR/$1.out" && break; sleep 0.1; done
  grep -q "weir: ready" "$RUN_DIR/$1.out" || { cat "$RUN_DIR/$1.err" >&2; exit 1; }
  ADMIN=$(awk '/admin listening on/ {print $NF}' "$RUN_DIR/$1.out")
  LISTEN=$(awk '/listener main listening on/ {print $NF}' "$RUN_DIR/$1.out")
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# put CLUSTER JSON -> "wall_us micros prepare_micros"
put() {
  local out
  out=$(curl -s -w ' %{time_total}' -X PUT -H "$AUTH" -H 'Content-Type: application/json' \
    --data "$2" "http://$ADMIN/clusters/$1/endpoints")
  grep -q '"generation"' <<<"$out" || { echo "update failed: $out" >&2; exit 1; }
  local m p
  m=$(grep -o '"micros": *[0-9]*' <<<"$out" | grep -o '[0-9]*$')
  p=$(grep -o '"prepare_micros": *[0-9]*' <<<"$out" | grep -o '[0-9]*$')
  awk -v w="${out##* }" -v m="$m" -v p="$p" 'BEGIN {printf "%.0f %d %d\n", w * 1e6, m, p}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
p99() { sort -n | awk '{a[NR]=$1} END {i = int(NR * 0.99); if (i < 1) i = 1; print a[i]}'; }
echo "## memory (RSS after start-up, $WORKERS workers)"
start m0 0 0
r0=$(rss_kib "$WPID"); kill "$WPID"; wait "$WPID" 2>/dev/null || true
start m1 "$CLUSTERS" 1
r1=$(rss_kib "$WPID"); kill "$WPID"; wait "$WPID" 2>/dev/null || true
start m10 "$CLUSTERS" 10
r10=$(rss_kib "$WPID"); kill "$WPID"; wait "$WPID" 2>/dev/null || true
awk -v a="$r0" -v b="$r1" -v c="$r10" -v n="$CLUSTERS" 'BEGIN {
  ep = (c - b) * 1024 / (n * 9); cl = (b - a) * 1024 / n - ep;
  printf "| RSS 0 / %d×1 / %d×10 clusters | %d / %d / %d KiB |\n| per endpoint | %.0f B |\n| per cluster (besides its endpoints) | %.0f B |\n", n, n, a, b, c, ep, cl }'

echo "## endpoint API latency (one cluster, $N updates)"
start api 0 0
: >"$RUN_DIR/api.txt"
for i in $(seq "$N"); do
  put backend "{\"endpoints\":[{\"address\":\"127.0.0.1:$((BACKEND_PORT + i % 2))\"}]}" >>"$RUN_DIR/api.txt"
  curl -sf -o /dev/null "http://$LISTEN/" || { echo "the new endpoint did not serve" >&2; exit 1; }
done
printf '| admin call | %s µs |\n| transaction | %s µs |\n| control thread (prepare) | %s µs |\n' \
  "$(cut -d' ' -f1 "$RUN_DIR/api.txt" | median)" "$(cut -d' ' -f2 "$RUN_DIR/api.txt" | median)" \
  "$(cut -d' ' -f3 "$RUN_DIR/api.txt" | median)"
kill "$WPID"; wait "$WPID" 2>/dev/null || true

echo "## $CLUSTERS clusters × 10 endpoints: one cluster's endpoints replaced, $UPDATES times"
start scale "$CLUSTERS" 10
paced() { # label
  WRK_DELAY_MS=2 wrk -t2 -c20 -d"${DURATION}s" --latency -s "$SHARED_BENCH/conf/stats.lua" \
    "http://$LISTEN/" >"$RUN_DIR/wrk-$1.txt"
  awk '$1 == "STATS" { for (i = 2; i <= NF; i++) { split($i, kv, "="); s[kv[1]] = kv[2] } }
       END { printf "%s %s %s\n", s["p50"], s["p99"], s["errors"] }' "$RUN_DIR/wrk-$1.txt"
}
WRK_DELAY_MS=2 wrk -t2 -c20 -d2s -s "$SHARED_BENCH/conf/stats.lua" "http://$LISTEN/" >/dev/null
quiet=$(paced quiet)
# Admin calls come from one python process (no process start per call, which on two cores costs
# the paced load more than the updates do): first UPDATES calls that change nothing
# (GET /ready), then UPDATES updates, each series spread over a paced run.
calls() { # kind -> one "wall_us micros prepare_micros" line per call on stdout
  python3 - "$1" "$ADMIN" "$UPDATES" "$DURATION" "$(cat "$RUN_DIR/token")" <<'PY'
import http.client, json, sys, time
kind, admin, n, duration, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
host, port = admin.rsplit(":", 1)
gap = (duration - 1) / n
time.sleep(0.5)
for i in range(n):
    c = http.client.HTTPConnection(host, int(port))
    t0 = time.perf_counter()
    if kind == "reads":
        c.request("GET", "/ready")
    else:
        eps = [{"address": "127.0.9.%d:%d" % ((e + i) % 250 + 1, 30000 + e)} for e in range(10)]
        c.request("PUT", "/clusters/c0500/endpoints", body=json.dumps({"endpoints": eps}),
                  headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = c.getresponse()
    body = r.read()
    wall = (time.perf_counter() - t0) * 1e6
    if r.status != 200:
        sys.exit("call failed: %d %s" % (r.status, body))
    if kind != "reads":
        a = json.loads(body)
        print("%.0f %d %d" % (wall, a["micros"], a["prepare_micros"]), flush=True)
    c.close()
    time.sleep(gap)
PY
}
calls reads >/dev/null &
reader=$!
reads=$(paced reads)
wait "$reader"
calls updates >"$RUN_DIR/scale.txt" &
updater=$!
busy=$(paced updating)
wait "$updater"
printf '| update: admin call (median) | %s µs |\n| update: transaction (median) | %s µs |\n| update: control thread (median / p99) | %s / %s µs |\n' \
  "$(cut -d' ' -f1 "$RUN_DIR/scale.txt" | median)" "$(cut -d' ' -f2 "$RUN_DIR/scale.txt" | median)" \
  "$(cut -d' ' -f3 "$RUN_DIR/scale.txt" | median)" "$(cut -d' ' -f3 "$RUN_DIR/scale.txt" | p99)"
read -r qp50 qp99 qerr <<<"$quiet"
read -r rp50 rp99 rerr <<<"$reads"
read -r bp50 bp99 berr <<<"$busy"
printf '| paced load p50 / p99, no admin calls | %s / %s µs (errors %s) |\n| paced load p50 / p99, %s admin reads | %s / %s µs (errors %s) |\n| paced load p50 / p99, %s updates | %s / %s µs (errors %s) |\n' \
  "$qp50" "$qp99" "$qerr" "$UPDATES" "$rp50" "$rp99" "$rerr" "$UPDATES" "$bp50" "$bp99" "$berr"
echo "updates applied: $(wc -l <"$RUN_DIR/scale.txt")"
