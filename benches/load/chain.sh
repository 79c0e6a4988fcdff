#!/usr/bin/env bash
# Chain cost (issues 4 and 7): the same weir build, one worker each, side by side in one run —
# without a filter chain, and with a chain — behind the same tiny hyper backend, loaded by wrk in
# alternating rounds. Prints req/s, latency and proxy CPU per request for both and the
# chain/no-chain ratios.
#   CHAIN=three (default)  3 trivial Wasm filters (each reads one request header and adds one)
#   CHAIN=edge             the full stock edge chain: telemetry (access log off), auth (an HS256
#                          JWT on every request, verified, claims forwarded), ratelimit (a global
#                          bucket that never runs dry), fault (abort at 0 %), router (one route)
#
# Usage:  benches/load/chain.sh                 # 3 rounds × 10 s
#         REPS=5 DURATION=10 CHAIN=edge benches/load/chain.sh
#
# Pinning follows the shared harness's PIN=split: wrk on CPU 0; the proxies and the backend on
# CPU 1 (so a cheaper proxy shows up as more req/s). Only loopback addresses are used; every
# process started is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
SHARED=${SHARED:-$ROOT/../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
RUN_DIR=${RUN_DIR:-/tmp/weir-chain-bench}
BACKEND_PORT=${BACKEND_PORT:-18180}
PLAIN_PORT=${PLAIN_PORT:-18191}
CHAIN_PORT=${CHAIN_PORT:-18192}
CHAIN=${CHAIN:-three}
# HS256 JWT for the edge chain (secret "weir-bench-secret", iss/aud below, exp in 2100).
b64() { python3 -c 'import base64,sys; print(base64.urlsafe_b64encode(sys.stdin.buffer.read()).rstrip(b"=").decode())'; }
JWT_KEY=$(printf '%s' weir-bench-secret | b64)
JWT=$(python3 - <<'PY'
import base64, hashlib, hmac, json
enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
h = enc(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "bench"}).encode())
p = enc(json.dumps({"iss": "https://idp.bench", "aud": "edge", "sub": "bench-user", "exp": 4102444800}).encode())
sig = hmac.new(b"weir-bench-secret", f"{h}.{p}".encode(), hashlib.sha256).digest()
print(f"{h}.{p}.{enc(sig)}")
PY
)
HDR=()
[[ $CHAIN == edge ]] && HDR=(-H "authorization: Bearer $JWT")

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v wrk >/dev/null || { SUDO=; ((EUID == 0)) || SUDO=sudo; $SUDO apt-get update && $SUDO apt-get install -y wrk; }

log "building weir (release) and the backend"
cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
BACKEND_TARGET=${BACKEND_TARGET:-$SHARED/backend/target}   # the shared harness's own target dir
CARGO_TARGET_DIR=$BACKEND_TARGET cargo build --release --quiet --manifest-path "$SHARED/backend/Cargo.toml"
WEIR=$CARGO_TARGET_DIR/release/weir
BACKEND=$BACKEND_TARGET/release/peer-backend
mkdir -p "$RUN_DIR"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

manifest() { # port chain? -> file
  local f=$RUN_DIR/weir-$1.yaml
  {
    echo "workers: 1"
    echo "listeners:"
    echo "  - { name: main, address: 127.0.0.1:$1, default_cluster: backend$([[ $2 == yes ]] && echo ", chain: $CHAIN") }"
    echo "clusters:"
    echo "  backend: { endpoints: [127.0.0.1:$BACKEND_PORT] }"
    if [[ $2 == yes && $CHAIN == edge ]]; then
      echo "chains: { edge: [telemetry, auth, ratelimit, fault, router] }"
      echo "filters:"
      echo "  telemetry: { module: builtin:telemetry, config: { access_log: false } }"
      echo "  auth: { module: builtin:auth, config: { jwt: { issuer: 'https://idp.bench', audiences: [edge], jwks: { keys: [ { kty: oct, kid: bench, alg: HS256, k: '$JWT_KEY' } ] }, forward_claims: { sub: x-user } } } }"
      echo "  ratelimit: { module: builtin:ratelimit, config: { buckets: [ { name: all, key: { global: true }, capacity: 1000000000, refill: { tokens: 1000000000, per: 1s } } ] } }"
      echo "  fault: { module: builtin:fault, config: { abort: { status: 503, percent: 0 } } }"
      echo "  router: { module: builtin:router, config: { routes: [ { match: { path: { prefix: / } }, to: backend } ] } }"
    elif [[ $2 == yes ]]; then
      echo "chains: { three: [f1, f2, f3] }"
      echo "filters:"
      for i in 1 2 3; do
        echo "  f$i: { module: builtin:add-header, config: { copy: [ { from: user-agent, to: x-copy-$i } ] } }"
      done
    fi
  } >"$f"
  echo "$f"
}

BACKEND_ADDR=127.0.0.1:$BACKEND_PORT taskset -c 1 "$BACKEND" >"$RUN_DIR/backend.log" 2>&1 &
pids+=($!)
for target in plain chain; do
  port=$PLAIN_PORT; chain=no
  [[ $target == chain ]] && port=$CHAIN_PORT && chain=yes
  taskset -c 1 "$WEIR" run --config "$(manifest "$port" "$chain")" --log-level warn >"$RUN_DIR/$target.out" 2>"$RUN_DIR/$target.err" &
  pids+=($!)
  eval "pid_$target=$!"
done
for i in $(seq 100); do
  if grep -q "weir: ready" "$RUN_DIR/plain.out" 2>/dev/null && grep -q "weir: ready" "$RUN_DIR/chain.out" 2>/dev/null; then break; fi
  sleep 0.1
done
grep -q "weir: ready" "$RUN_DIR/chain.out" || { cat "$RUN_DIR/chain.err"; exit 1; }
# Every path must answer 200 before anything is measured: a round of 503s is not a benchmark.
for port in $BACKEND_PORT $PLAIN_PORT $CHAIN_PORT; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "${HDR[@]}" "http://127.0.0.1:$port/" || true)
  [[ $code == 200 ]] || { log "127.0.0.1:$port answered '$code', not 200; see $RUN_DIR/*.err"; exit 1; }
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
results=$RUN_DIR/results.tsv
: >"$results"
for r in $(seq "$REPS"); do
  for target in plain chain; do
    port=$PLAIN_PORT; [[ $target == chain ]] && port=$CHAIN_PORT
    pid_var=pid_$target; pid=${!pid_var}
    timeout $((WARMUP + 5)) taskset -c 0 wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${HDR[@]}" "http://127.0.0.1:$port/" >/dev/null
    t0=$(ticks "$pid")
    out=$(timeout $((DURATION + 10)) taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${HDR[@]}" "http://127.0.0.1:$port/")
    t1=$(ticks "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$HZ" 'BEGIN {printf "%.2f", (b-a)*1e6/hz/(n>0?n:1)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$target" "$rps" "$p50" "$p99" "$cpu" "${errs:-0}" >>"$results"
    log "round $r $target: $rps req/s, p50 $p50, p99 $p99, CPU ${cpu}us/req ${errs}"
    [[ -z $errs ]] || { log "errors in this round; the figures are not valid"; exit 1; }
  done
done

awk -F'\t' -v chain="$CHAIN" '
  function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t } return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
  { R[$1, $2] = $3; C[$1, $2] = $6; rounds[$1] = 1; n[$2]++; rps[$2, n[$2]] = $3; cpu[$2, n[$2]] = $6 }
  END {
    for (t in n) { for (k = 1; k <= n[t]; k++) { x[k] = rps[t, k]; y[k] = cpu[t, k] } mr[t] = med(x, n[t]); mc[t] = med(y, n[t]) }
    k = 0; for (r in rounds) { k++; q[k] = R[r, "chain"] / R[r, "plain"]; w[k] = C[r, "chain"] / C[r, "plain"] }
    printf "| target | req/s (median) | proxy CPU us/req | chain / no chain req/s [per-round median] | CPU ratio |\n|---|---|---|---|---|\n"
    printf "| no chain | %.0f | %.2f | 1.000 | 1.000 |\n", mr["plain"], mc["plain"]
    printf "| chain (%s) | %.0f | %.2f | %.3f | %.3f |\n", chain, mr["chain"], mc["chain"], med(q, k), med(w, k)
  }' "$results"
