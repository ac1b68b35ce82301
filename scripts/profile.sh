#!/usr/bin/env bash
# Where a request's instructions go: runs a release `maas serve` under valgrind --tool=callgrind
# (instruction counts: deterministic, unlike timings on a noisy machine) with instrumentation off
# while it loads and warms up, turns it on for a fixed load from `maas bench load`, dumps, and prints
# the self cost grouped by library / crate / maas module, per request (scripts/callgrind_summary.py).
#
# Usage: scripts/profile.sh [--model M] [--protocol tf|v2] [--concurrency C] [--seconds S] [-- SERVE FLAGS...]
#   defaults: numbers_classifier, tf, concurrency 1, 20 s; the server serves model_repository/ with
#   one session. Extra flags after -- go to `maas serve` (e.g. -- --enable-batching).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=numbers_classifier
PROTOCOL=tf
CONC=1
SECS=20
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --protocol) PROTOCOL=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "profile.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "profile.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
MAAS_SKIP_VENV=1 ./scripts/setup.sh
cargo build --release --bin maas
WORK=$(mktemp -d "${TMPDIR:-/tmp}/maas-profile.XXXXXX")
PORT=${PORT:-18650}
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
  ./target/release/maas serve --model-repository model_repository --host 127.0.0.1 --port "$PORT" \
  --rest-api-port 0 --session-pool-size 1 "$@" 2>"$WORK/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q "initial models loaded" "$WORK/server.log" && break; sleep 0.2; done
grep -q "initial models loaded" "$WORK/server.log" || { echo "profile.sh: server did not start; see $WORK/server.log" >&2; exit 1; }
LOAD=(./target/release/maas bench load --address "127.0.0.1:$PORT" --model "$MODEL" --protocol "$PROTOCOL" --concurrency "$CONC")
"${LOAD[@]}" --seconds 2 --warmup-seconds 1 >/dev/null
callgrind_control -i on "$SERVER" >/dev/null
"${LOAD[@]}" --seconds "$SECS" --warmup-seconds 0 --json >"$WORK/load.json"
callgrind_control -d "$SERVER" >/dev/null
callgrind_control -i off "$SERVER" >/dev/null
REQUESTS=$(grep -o '"requests": *[0-9]*' "$WORK/load.json" | grep -o '[0-9]*$')
DUMP=$(ls -t "$WORK"/callgrind.out.* | head -1)
echo "profile.sh: $REQUESTS requests of $MODEL ($PROTOCOL, concurrency $CONC) under callgrind; profile $DUMP"
python3 scripts/callgrind_summary.py "$DUMP" "$REQUESTS"
