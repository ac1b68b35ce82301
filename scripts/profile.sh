#!/usr/bin/env bash
# Where a request's instructions go: runs a release `maas serve` under valgrind --tool=callgrind
# (instruction counts: deterministic, unlike timings on a noisy machine) pinned to CPU 0, with
# instrumentation off while it loads and warms up, turns it on for a fixed load from `maas bench load`
# (pinned to CPU 1, which also counts the server's context switches), dumps, and prints the self
# cost grouped by library / crate / maas module, per request (scripts/callgrind_summary.py), then the
# top functions by inclusive and by self cost, and maas's own by inclusive cost (callgrind_annotate).
#
# Usage: scripts/profile.sh [--model M] [--protocol tf|v2] [--concurrency C] [--seconds S] [--top N] [--floor] [-- SERVE FLAGS...]
#   --floor profiles `maas bench floor` (the bare tonic server answering the model's fixed reply) instead
#   of `maas serve`, so the two per-request tables can be compared.
#   defaults: numbers_classifier, tf, concurrency 1, 20 s, top 25; the server serves model_repository/
#   with one session, one intra-op and one inter-op thread. Extra flags after -- go to `maas serve`
#   (e.g. -- --enable-batching). Every step is bounded: start 180 s, load S + 120 s, dump and exit 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=numbers_classifier
PROTOCOL=tf
CONC=1
SECS=20
TOP=25
FLOOR=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --protocol) PROTOCOL=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --top) TOP=$2; shift 2 ;;
    --floor) FLOOR=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "profile.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "profile.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
PIN_SERVER=()
PIN_LOAD=()
if command -v taskset >/dev/null && taskset -c 1 true 2>/dev/null; then
  PIN_SERVER=(taskset -c 0)
  PIN_LOAD=(taskset -c 1)
else
  echo "profile.sh: not pinning (needs taskset and CPUs 0 and 1); instruction counts stay valid" >&2
fi
MAAS_SKIP_VENV=1 ./scripts/setup.sh
cargo build --release --bin maas
WORK=$(mktemp -d "${TMPDIR:-/tmp}/maas-profile.XXXXXX")
if [ "$FLOOR" = 1 ]; then
  VERSION_DIR=$(ls -d model_repository/"$MODEL"/[0-9]* | sort -t/ -k3 -n | tail -1)
  SERVE=(./target/release/maas bench floor --model-path "$VERSION_DIR/model.onnx" "$@")
else
  SERVE=(./target/release/maas serve --model-repository model_repository --host 127.0.0.1 --port 0
    --rest-api-port 0 --session-pool-size 1 --intra-op-threads 1 --inter-op-threads 1 "$@")
fi
"${PIN_SERVER[@]}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
  "${SERVE[@]}" 2>"$WORK/server.log" >"$WORK/server.out" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
ready() { grep -q "initial models loaded\|maas bench floor listening" "$WORK/server.log" "$WORK/server.out"; }
for _ in $(seq 900); do
  ready && break
  kill -0 "$SERVER" 2>/dev/null || break
  sleep 0.2
done
ready || { echo "profile.sh: server did not start; see $WORK/server.log" >&2; exit 1; }
ADDR=$(cat "$WORK/server.log" "$WORK/server.out" | grep -o 'addr=127\.0\.0\.1:[0-9]*' | head -1 | cut -d= -f2)
LOAD=("${PIN_LOAD[@]}" ./target/release/maas bench load --address "$ADDR" --model "$MODEL" --protocol "$PROTOCOL" --concurrency "$CONC")
timeout 120 "${LOAD[@]}" --seconds 2 --warmup-seconds 1 >/dev/null
callgrind_control -i on "$SERVER" >/dev/null
timeout $((SECS + 120)) "${LOAD[@]}" --seconds "$SECS" --warmup-seconds 0 --server-pid "$SERVER" --json >"$WORK/load.json"
timeout 120 callgrind_control -d "$SERVER" >/dev/null
timeout 120 callgrind_control -i off "$SERVER" >/dev/null
REQUESTS=$(grep -o '"requests": *[0-9]*' "$WORK/load.json" | grep -o '[0-9]*$')
SWITCHES=$(grep -o '"context_switches_per_request": *[0-9.]*' "$WORK/load.json" | grep -o '[0-9.]*$' || true)
DUMP=$(ls -t "$WORK"/callgrind.out.* | head -1)
echo "profile.sh: $REQUESTS requests of $MODEL ($PROTOCOL, concurrency $CONC) under callgrind; profile $DUMP"
echo "profile.sh: the server's context switches per request under callgrind: ${SWITCHES:--} (valgrind runs one thread at a time, so this is not the native count; bench.sh has that)"
python3 scripts/callgrind_summary.py "$DUMP" "$REQUESTS"
# Cost, share and function: the source file and the object are dropped and Rust's long names cut to 200
# characters. (`|| true`: head closes the pipe early, which pipefail would count as a failure.)
top() {
  callgrind_annotate --inclusive="$1" --threshold=100 "$DUMP" 2>/dev/null | grep -E '^ *[0-9,]+ \(' \
    | grep -v 'PROGRAM TOTALS' | grep -E -- "${2:-.}" | sed -E 's/^( *[0-9,]+ \([ 0-9.]+%\) +)[^ ]*\.(rs|c|cc|cpp|h|hpp|S)(:|\?\?\?:)/\1/; s/^( *[0-9,]+ \([ 0-9.]+%\) +)\?\?\?:/\1/; s/ \[[^]]*\]$//' \
    | head -n "$TOP" | cut -c1-200 || true
}
echo
echo "top $TOP functions by inclusive cost (instructions, % of all in the window):"
top yes
echo
echo "top $TOP functions by self cost:"
top no
echo
echo "top $TOP of maas's own functions by inclusive cost:"
top yes 'maas::'
