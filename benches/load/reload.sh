#!/usr/bin/env bash
# Swap latency (issue 5): time from an admin call to the new generation serving on every worker,
# for a change whose module is already compiled (a configuration change of a built-in: the
# module is found by its sha256) and for new module bytes (compiled on the admin call). The admin
# endpoint answers only once every worker serves the new generation, so the call's own duration
# is the figure; the transaction's internal time (`micros` in the answer) is shown beside it.
#
# Usage: benches/load/reload.sh            # 2 workers, 30 swaps of each kind
#        N=50 WORKERS=2 benches/load/reload.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$HERE" rev-parse --show-toplevel)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
N=${N:-30}
WORKERS=${WORKERS:-2}
RUN_DIR=${RUN_DIR:-/tmp/weir-reload-bench}
mkdir -p "$RUN_DIR"

cargo build --release --quiet -p weir --manifest-path "$ROOT/Cargo.toml"
WEIR=$CARGO_TARGET_DIR/release/weir
MODULE=$(ls -t "$CARGO_TARGET_DIR"/weir-filters*/wasm32-wasip1/release/add_header.wasm | head -1)

echo "bench-token-0123456789" >"$RUN_DIR/token"
cat >"$RUN_DIR/weir.yaml" <<YAML
workers: $WORKERS
admin: { address: 127.0.0.1:0, token_file: token }
listeners:
  - { name: main, address: 127.0.0.1:0, default_cluster: demo, chain: c }
clusters:
  demo: { demo: bench }
chains: { c: [v] }
filters:
  v: { module: builtin:add-header, config: { response: { x-v: "0" } } }
YAML
"$WEIR" run --config "$RUN_DIR/weir.yaml" --log-level warn >"$RUN_DIR/out" 2>"$RUN_DIR/err" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "weir: ready" "$RUN_DIR/out" && break; sleep 0.1; done
ADMIN=$(awk '/admin listening on/ {print $NF}' "$RUN_DIR/out")
AUTH="Authorization: Bearer $(cat "$RUN_DIR/token")"

# One swap: prints "wall_us internal_us".
swap() { # kind i
  local out
  if [[ $1 == cached ]]; then
    out=$(curl -s -w ' %{time_total}' -X PUT -H "$AUTH" -H 'Content-Type: application/json' \
      --data "{\"config\":{\"response\":{\"x-v\":\"$2\"}}}" "http://$ADMIN/filters/v")
  else
    # The same module with a distinct custom section appended: new bytes, new sha256, compiled.
    python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); n=b"weir-bench"; p=sys.argv[2].encode(); b=bytes([len(n)])+n+p; sys.stdout.buffer.write(d+bytes([0,len(b)])+b)' "$MODULE" "$2" >"$RUN_DIR/m.wasm"
    out=$(curl -s -w ' %{time_total}' -X PUT -H "$AUTH" -H 'Content-Type: application/wasm' \
      --data-binary "@$RUN_DIR/m.wasm" "http://$ADMIN/filters/v")
  fi
  grep -q '"published"' <<<"$out" || { echo "swap failed: $out" >&2; exit 1; }
  local micros wall
  micros=$(grep -o '"micros": [0-9]*' <<<"$out" | awk '{print $2}')
  wall=${out##* }
  awk -v w="$wall" -v m="$micros" 'BEGIN {printf "%.0f %d\n", w * 1e6, m}'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "| change | admin call (median µs) | transaction (median µs) | swaps |"
echo "|---|---|---|---|"
for kind in cached uncached; do
  : >"$RUN_DIR/$kind.txt"
  for i in $(seq "$N"); do swap "$kind" "$i" >>"$RUN_DIR/$kind.txt"; done
  printf '| %s | %s | %s | %s |\n' "$kind module" "$(cut -d' ' -f1 "$RUN_DIR/$kind.txt" | median)" \
    "$(cut -d' ' -f2 "$RUN_DIR/$kind.txt" | median)" "$N"
done
