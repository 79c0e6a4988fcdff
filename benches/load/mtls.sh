#!/usr/bin/env bash
# mTLS cost (issue 6): two weir instances (1 worker each) between wrk and the shared harness's tiny
# backend, side by side in one run, alternating rounds:
#   plain        wrk → front (HTTP) → back over plain HTTP      → backend   (pooled upstream)
#   mtls         wrk → front (HTTP) → back over mutual TLS      → backend   (pooled upstream)
#   plain-fresh  as plain, but front keeps no idle connections  (a new TCP connection per request)
#   mtls-fresh   as mtls,  but front keeps no idle connections  (a new mTLS handshake per request:
#                its req/s is the sidecar-to-sidecar handshake rate, both ends' CPU included)
# Certificates come from `weir certs mesh` (ECDSA P-256, SPIFFE IDs). Prints req/s, latency and
# CPU per request of both weir processes together, and the ratios to plain.
#
# Usage:  benches/load/mtls.sh                  # 3 rounds × 10 s
#         REPS=5 DURATION=10 benches/load/mtls.sh
#
# Pinning: wrk on CPU 0; both weirs and the backend on CPU 1. Loopback only; every process started
# is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
SHARED=${SHARED:-$ROOT/../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
RUN_DIR=${RUN_DIR:-/tmp/weir-mtls-bench}
BACKEND_PORT=${BACKEND_PORT:-18280}
BACK_PLAIN=${BACK_PLAIN:-18281}
BACK_TLS=${BACK_TLS:-18282}
FRONT_BASE=${FRONT_BASE:-18290}   # +0 plain, +1 mtls, +2 plain-fresh, +3 mtls-fresh
TARGETS=(plain mtls plain-fresh mtls-fresh)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v wrk >/dev/null || { SUDO=; ((EUID == 0)) || SUDO=sudo; $SUDO apt-get update && $SUDO apt-get install -y wrk; }

log "building weir (release) and the backend"
cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
BACKEND_TARGET=${BACKEND_TARGET:-$SHARED/backend/target}
CARGO_TARGET_DIR=$BACKEND_TARGET cargo build --release --quiet --manifest-path "$SHARED/backend/Cargo.toml"
WEIR=$CARGO_TARGET_DIR/release/weir
BACKEND=$BACKEND_TARGET/release/peer-backend
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
"$WEIR" certs mesh --out "$RUN_DIR/certs" >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

cat >"$RUN_DIR/back.yaml" <<YAML
workers: 1
listeners:
  - { name: plain, address: 127.0.0.1:$BACK_PLAIN, default_cluster: backend }
  - name: mtls
    address: 127.0.0.1:$BACK_TLS
    default_cluster: backend
    tls: { cert: certs/back.pem, key: certs/back-key.pem, client_ca: certs/ca.pem, trust_domains: [example.org] }
clusters:
  backend: { endpoints: [127.0.0.1:$BACKEND_PORT] }
YAML
tls="{ ca: certs/ca.pem, cert: certs/front.pem, key: certs/front-key.pem, expect_identity: \"spiffe://example.org/ns/default/sa/back\" }"
cat >"$RUN_DIR/front.yaml" <<YAML
workers: 1
listeners:
  - { name: plain, address: 127.0.0.1:$((FRONT_BASE + 0)), default_cluster: back-plain }
  - { name: mtls, address: 127.0.0.1:$((FRONT_BASE + 1)), default_cluster: back-mtls }
  - { name: plain-fresh, address: 127.0.0.1:$((FRONT_BASE + 2)), default_cluster: back-plain-fresh }
  - { name: mtls-fresh, address: 127.0.0.1:$((FRONT_BASE + 3)), default_cluster: back-mtls-fresh }
clusters:
  back-plain: { endpoints: [127.0.0.1:$BACK_PLAIN] }
  back-mtls: { endpoints: [127.0.0.1:$BACK_TLS], tls: $tls }
  back-plain-fresh: { endpoints: [127.0.0.1:$BACK_PLAIN], pool: { max_idle: 0 } }
  back-mtls-fresh: { endpoints: [127.0.0.1:$BACK_TLS], tls: $tls, pool: { max_idle: 0 } }
YAML

BACKEND_ADDR=127.0.0.1:$BACKEND_PORT taskset -c 1 "$BACKEND" >"$RUN_DIR/backend.log" 2>&1 &
pids+=($!)
for side in back front; do
  taskset -c 1 "$WEIR" run --config "$RUN_DIR/$side.yaml" --log-level warn >"$RUN_DIR/$side.out" 2>"$RUN_DIR/$side.err" &
  pids+=($!)
  eval "pid_$side=$!"
done
for i in $(seq 100); do
  if grep -q "weir: ready" "$RUN_DIR/back.out" 2>/dev/null && grep -q "weir: ready" "$RUN_DIR/front.out" 2>/dev/null; then break; fi
  sleep 0.1
done
grep -q "weir: ready" "$RUN_DIR/front.out" || { cat "$RUN_DIR/front.err" "$RUN_DIR/back.err"; exit 1; }
for i in 0 1 2 3; do
  port=$((FRONT_BASE + i))
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)
  [[ $code == 200 ]] || { log "127.0.0.1:$port answered '$code', not 200; see $RUN_DIR/*.err"; exit 1; }
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
both() { echo $(( $(ticks "$pid_front") + $(ticks "$pid_back") )); }
HZ=$(getconf CLK_TCK)
results=$RUN_DIR/results.tsv
: >"$results"
for r in $(seq "$REPS"); do
  for i in 0 1 2 3; do
    target=${TARGETS[$i]}
    port=$((FRONT_BASE + i))
    timeout $((WARMUP + 5)) taskset -c 0 wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null
    t0=$(both)
    out=$(timeout $((DURATION + 10)) taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/")
    t1=$(both)
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$HZ" 'BEGIN {printf "%.2f", (b-a)*1e6/hz/(n>0?n:1)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$target" "$rps" "$p50" "$p99" "$cpu" >>"$results"
    log "round $r $target: $rps req/s, p50 $p50, p99 $p99, CPU (both weirs) ${cpu}us/req ${errs}"
    [[ -z $errs ]] || { log "errors in this round; the figures are not valid"; exit 1; }
  done
done

awk -F'\t' '
  function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t } return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
  { R[$1, $2] = $3; C[$1, $2] = $6; rounds[$1] = 1; n[$2]++; rps[$2, n[$2]] = $3; cpu[$2, n[$2]] = $6 }
  END {
    for (t in n) { for (k = 1; k <= n[t]; k++) { x[k] = rps[t, k]; y[k] = cpu[t, k] } mr[t] = med(x, n[t]); mc[t] = med(y, n[t]) }
    printf "| path (wrk → front → back → backend) | req/s (median) | CPU us/req, both weirs | req/s vs plain [per-round median] | CPU vs plain |\n|---|---|---|---|---|\n"
    split("plain mtls plain-fresh mtls-fresh", order, " ")
    for (o = 1; o <= 4; o++) {
      t = order[o]; base = (t ~ /fresh/) ? "plain-fresh" : "plain"
      k = 0; for (r in rounds) { k++; q[k] = R[r, t] / R[r, base]; w[k] = C[r, t] / C[r, base] }
      printf "| %s | %.0f | %.2f | %.3f (vs %s) | %.3f |\n", t, mr[t], mc[t], med(q, k), base, med(w, k)
    }
  }' "$results"
