#!/usr/bin/env bash
# maas against its limit, side by side, on a machine with (at least) two cores:
#
#   - a release `maas serve` pinned to CPU 0 (one session, one intra-op and one inter-op thread),
#     driven by `maas bench load` pinned to CPU 1, which also reads the server's CPU time;
#   - `maas bench inprocess` pinned to CPU 0: the same model on ONNX Runtime in one process with
#     the same session, threads and concurrency, no network -- what a server could reach at best.
#
#   - the floor: `maas bench floor` pinned to CPU 0, a bare tonic server on the same service paths
#     that skips the request and answers numbers_classifier's reply (computed once at its start), with
#     maas's server settings: what tonic alone costs per request. maas's ratio to it is maas's own cost.
#
# Cases: resnet50 (batch 1) at concurrency 1 and 4, numbers_classifier at 1 and 16 (TF Serving
# Predict and KServe v2 ModelInfer; also against the floor), wide_mlp at 1 and 16 (TF), and
# numbers_classifier at 64 unbatched vs a second server with --enable-batching; then
# numbers_classifier and wide_mlp at 1 and 16 against a Python server
# (scripts/python_baseline_server.py). Every load run reads the server's CPU time and context
# switches (/proc) over the measured window. Tables at the end; the JSON reports, server logs and
# generated models stay in a temporary directory (printed).
#
# Usage: scripts/bench.sh [--seconds S] [--warmup-seconds W] [--connections K]
#        scripts/bench.sh S                 (same as --seconds S)
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=10
WARMUP=1
CONNECTIONS=1
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECS=$2; shift 2 ;;
    --warmup-seconds) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    [0-9]*) SECS=$1; shift ;;
    *) echo "bench.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

command -v taskset >/dev/null || { echo "bench.sh: taskset (util-linux) is needed to pin processes to CPUs" >&2; exit 2; }
if ! taskset -c 1 true 2>/dev/null; then
  echo "bench.sh: needs CPUs 0 and 1 (server and load generator on separate cores); this process may use: $(taskset -pc $$ | cut -d: -f2)" >&2
  exit 2
fi

./scripts/setup.sh
cargo build --release --bin maas
MAAS=$PWD/target/release/maas
PY=$PWD/.venv/bin/python

WORK=$(mktemp -d "${TMPDIR:-/tmp}/maas-bench.XXXXXX")
REPO=$WORK/models
LOGS=$WORK/logs
RESULTS=$WORK/results
mkdir -p "$LOGS" "$RESULTS"
echo "bench.sh: generating the benchmark models into $REPO"
"$PY" scripts/gen_bench_models.py "$REPO" >"$LOGS/gen_bench_models.log"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

# start_server NAME FLAGS...: starts a server pinned to CPU 0 on a free port and waits until its
# initial models are loaded. Sets SERVER_PID and SERVER_ADDR; returns 1 if the server exited.
start_server() {
  local name=$1
  shift
  local log=$LOGS/server-$name.log
  taskset -c 0 "$MAAS" serve --host 127.0.0.1 --port 0 --rest-api-port 0 \
    --session-pool-size 1 --intra-op-threads 1 --inter-op-threads 1 \
    --file-system-poll-wait-seconds 0 "$@" 2>"$log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 1200); do
    if grep -q "initial models loaded" "$log"; then
      SERVER_ADDR=$(grep -o 'addr=127\.0\.0\.1:[0-9]*' "$log" | head -1 | cut -d= -f2)
      echo "bench.sh: server '$name' (pid $SERVER_PID) serving on $SERVER_ADDR; log $log"
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" 2>/dev/null || true
      return 1
    fi
    sleep 0.1
  done
  echo "bench.sh: server '$name' did not finish loading its models in 120 s; see $log" >&2
  exit 1
}

FAILED=0
CASES=()
# run_secs MODEL / warmup_secs MODEL: ResNet-50 answers ~8 requests/s on one core, so it gets twice the
# measured time and at least 3 s of warmup (its first runs page in 100 MB of weights and grow ORT's arena).
run_secs() { if [ "$1" = resnet50 ]; then awk -v s="$SECS" 'BEGIN { print 2 * s }'; else echo "$SECS"; fi; }
warmup_secs() { if [ "$1" = resnet50 ]; then awk -v w="$WARMUP" 'BEGIN { print (w < 3 ? 3 : w) }'; else echo "$WARMUP"; fi; }
# load_run LABEL MODEL PROTOCOL CONCURRENCY: maas bench load (CPU 1) against the current server.
load_run() {
  local label=$1 model=$2 protocol=$3 c=$4
  echo "bench.sh: $label: load ($protocol, concurrency $c, $(run_secs "$model") s)"
  if ! taskset -c 1 "$MAAS" bench load --address "$SERVER_ADDR" --model "$model" --protocol "$protocol" \
    --concurrency "$c" --connections "$CONNECTIONS" --seconds "$(run_secs "$model")" --warmup-seconds "$(warmup_secs "$model")" \
    --server-pid "$SERVER_PID" --json >"$RESULTS/$label.load.json" 2>"$LOGS/$label.load.log"; then
    echo "bench.sh: $label: the load run failed; see $RESULTS/$label.load.json and $LOGS/$label.load.log" >&2
    FAILED=1
  fi
}
# inprocess_run LABEL MODEL CONCURRENCY: maas bench inprocess (CPU 0) with the server's settings.
inprocess_run() {
  local label=$1 model=$2 c=$3
  echo "bench.sh: $label: in-process (concurrency $c, $(run_secs "$model") s)"
  if ! taskset -c 0 "$MAAS" bench inprocess --model-path "$REPO/$model/1/model.onnx" \
    --sessions 1 --intra-op-threads 1 --inter-op-threads 1 \
    --concurrency "$c" --seconds "$(run_secs "$model")" --warmup-seconds "$(warmup_secs "$model")" \
    --json >"$RESULTS/$label.inprocess.json" 2>"$LOGS/$label.inprocess.log"; then
    echo "bench.sh: $label: the in-process run failed; see $LOGS/$label.inprocess.log" >&2
    FAILED=1
  fi
}
# case_run MODEL PROTOCOL CONCURRENCY
case_run() {
  local label=$1-$2-c$3
  CASES+=("$label")
  load_run "$label" "$1" "$2" "$3"
  inprocess_run "$label" "$1" "$3"
}

if ! start_server main --model-repository "$REPO"; then
  echo "bench.sh: the server exited before loading its models; see $LOGS/server-main.log:" >&2
  tail -5 "$LOGS/server-main.log" >&2
  exit 1
fi
MAIN_PID=$SERVER_PID
for c in 1 4; do for p in tf v2; do case_run resnet50 "$p" "$c"; done; done
for c in 1 16; do for p in tf v2; do case_run numbers_classifier "$p" "$c"; done; done
for c in 1 16; do case_run wide_mlp tf "$c"; done
case_run numbers_classifier tf 64
kill "$MAIN_PID" 2>/dev/null || true
wait "$MAIN_PID" 2>/dev/null || true

# The floor for numbers_classifier, on CPU 0 like maas, driven the same way (label: CASE-floor).
FLOOR_LOG=$LOGS/floor.log
taskset -c 0 "$MAAS" bench floor --model-path "$REPO/numbers_classifier/1/model.onnx" >"$FLOOR_LOG" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
SERVER_ADDR=""
for _ in $(seq 600); do
  SERVER_ADDR=$(grep -o 'listening addr=[0-9.]*:[0-9]*' "$FLOOR_LOG" | head -1 | cut -d= -f2 || true)
  [ -n "$SERVER_ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -n "$SERVER_ADDR" ]; then
  echo "bench.sh: floor (pid $SERVER_PID) serving on $SERVER_ADDR: $(head -1 "$FLOOR_LOG")"
  for c in 1 16; do for p in tf v2; do load_run "numbers_classifier-$p-c$c-floor" numbers_classifier "$p" "$c"; done; done
else
  echo "bench.sh: the floor server did not start; see $FLOOR_LOG:" >&2
  tail -3 "$FLOOR_LOG" >&2
  FAILED=1
fi
kill "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true

BATCHING_FILE=$WORK/batching_parameters.txt
cat >"$BATCHING_FILE" <<'EOF'
max_batch_size { value: 64 }
batch_timeout_micros { value: 500 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 1000 }
EOF
BATCHED=""
if start_server batched --model-name numbers_classifier --model-base-path "$REPO/numbers_classifier" \
  --enable-batching --batching-parameters-file "$BATCHING_FILE"; then
  BATCHED=numbers_classifier-tf-c64-batched
  load_run "$BATCHED" numbers_classifier tf 64
else
  echo "bench.sh: batching skipped: the server did not start with --enable-batching --batching-parameters-file:" >&2
  grep -m3 -i "error" "$LOGS/server-batched.log" >&2 || tail -3 "$LOGS/server-batched.log" >&2
fi

# A Python model server for comparison: grpcio with a thread pool and onnxruntime's Python API, the same
# session options (scripts/python_baseline_server.py), pinned to CPU 0 like maas, same load generator.
PYCASES=""
if ! "$PY" -c 'import onnxruntime' 2>/dev/null; then
  echo "bench.sh: installing onnxruntime==1.31.1 (Python) into .venv for the Python baseline"
  "$PY" -m pip install --quiet --disable-pip-version-check onnxruntime==1.31.1 \
    || echo "bench.sh: cannot install onnxruntime for Python; the Python baseline is skipped" >&2
fi
if "$PY" -c 'import onnxruntime' 2>/dev/null; then
  for model in numbers_classifier wide_mlp; do
    "$PY" scripts/python_baseline_server.py --model-path "$REPO/$model/1/model.onnx" --name "$model" \
      --write-request "$WORK/$model.request.pb"
    log=$LOGS/python-$model.log
    taskset -c 0 "$PY" scripts/python_baseline_server.py --model-path "$REPO/$model/1/model.onnx" --name "$model" \
      --port 0 >"$log" 2>&1 &
    pypid=$!
    PIDS+=("$pypid")
    for _ in $(seq 300); do grep -q "serving" "$log" && break; sleep 0.1; done
    pyaddr=$(grep -o '127.0.0.1:[0-9]*' "$log" | head -1)
    if [ -z "$pyaddr" ]; then
      echo "bench.sh: the Python baseline server did not start; see $log" >&2
      FAILED=1
      continue
    fi
    for c in 1 16; do
      label=$model-python-c$c
      echo "bench.sh: $label: load (python baseline, concurrency $c, ${SECS} s)"
      if ! taskset -c 1 "$MAAS" bench load --address "$pyaddr" --request-file "$WORK/$model.request.pb" \
        --concurrency "$c" --seconds "$SECS" --warmup-seconds "$WARMUP" --server-pid "$pypid" \
        --json >"$RESULTS/$label.load.json" 2>"$LOGS/$label.load.log"; then
        echo "bench.sh: $label: the load run failed; see $LOGS/$label.load.log" >&2
        FAILED=1
      fi
      PYCASES="$PYCASES $model:$c"
    done
    kill "$pypid" 2>/dev/null || true
    wait "$pypid" 2>/dev/null || true
  done
fi

echo
echo "maas vs in-process ONNX Runtime: 1 session, 1 intra-op + 1 inter-op thread, ${SECS} s per run after ${WARMUP} s warmup (resnet50: $(run_secs resnet50) s after $(warmup_secs resnet50) s)"
echo "(server, floor and in-process on CPU 0, load generator on CPU 1; latencies in us; CPU in us per request;"
echo " ctx/req: the server's voluntary + involuntary context switches per request, all threads)"
"$PY" - "$RESULTS" "$BATCHED" "$PYCASES" "${CASES[@]}" <<'PY'
import json, os, sys

results, batched, pycases, cases = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]

def load(label, kind):
    try:
        with open(os.path.join(results, f"{label}.{kind}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def num(v, fmt="{:.0f}"):
    return "-" if v is None else fmt.format(v)

def cpu(r, key="cpu_us_per_request"):
    return None if r is None or not r.get("cpu") else r["cpu"].get(key)

def ctx(r):
    return cpu(r, "context_switches_per_request")

def rps(r):
    return r["requests_per_second"] if r else None

def lat(r):
    return "-" if r is None else f'{r["latency_us"]["p50"]:.0f}/{r["latency_us"]["p99"]:.0f}'

def table(head, rows, left):
    widths = [max(len(r[k]) for r in rows + [head]) for k in range(len(head))]
    for r in [head] + rows:
        print("  ".join(v.rjust(w) if k >= left else v.ljust(w) for k, (v, w) in enumerate(zip(r, widths))))

head = ["model", "proto", "c", "maas req/s", "in-proc req/s", "ratio", "floor ratio", "maas p50/p99",
        "in-proc p50/p99", "server CPU", "in-proc CPU", "overhead", "ctx/req", "errors"]
rows = []
def row(label, l, i, note=""):
    model = (l or i or {}).get("model", label)
    proto = (l or {}).get("protocol", "-") + note
    c = (l or i or {}).get("concurrency", "-")
    lr, ir, fr = rps(l), rps(i), rps(load(label + "-floor", "load"))
    ratio = lr / ir if lr and ir else None
    sc, ic = cpu(l), cpu(i)
    over = sc - ic if sc is not None and ic is not None else None
    errors = (l["errors"] if l else "FAILED")
    rows.append([model, proto, str(c), num(lr), num(ir), num(ratio, "{:.2f}"), num(lr / fr if lr and fr else None, "{:.2f}"),
                 lat(l), lat(i), num(sc, "{:.1f}"), num(ic, "{:.1f}"), num(over, "{:.1f}"), num(ctx(l), "{:.2f}"), str(errors)])

for label in cases:
    row(label, load(label, "load"), load(label, "inprocess"))
if batched:
    row(batched, load(batched, "load"), None, " batched")
table(head, rows, 2)
print("ratio = maas req/s / in-process req/s; floor ratio = maas req/s / the floor's req/s (a bare tonic server")
print("answering the same reply, below); overhead = server CPU - in-process CPU per request")

floors = [label for label in cases if load(label + "-floor", "load")]
if floors:
    print()
    print("maas vs the floor (maas bench floor: bare tonic 0.14, same service paths and server settings, fixed reply")
    print("of the same size, no decoding of tensors, no inference), both pinned to CPU 0:")
    head = ["model", "proto", "c", "maas req/s", "floor req/s", "maas/floor", "maas p50/p99", "floor p50/p99",
            "maas CPU", "floor CPU", "maas ctx/req", "floor ctx/req", "errors"]
    rows = []
    for label in floors:
        m, f = load(label, "load"), load(label + "-floor", "load")
        mr, fr = rps(m), rps(f)
        rows.append([f["model"], f["protocol"], str(f["concurrency"]), num(mr), num(fr), num(mr / fr if mr and fr else None, "{:.2f}"),
                     lat(m), lat(f), num(cpu(m), "{:.1f}"), num(cpu(f), "{:.1f}"), num(ctx(m), "{:.2f}"),
                     num(ctx(f), "{:.2f}"), str(f["errors"])])
    table(head, rows, 2)
if batched:
    u, b = load("numbers_classifier-tf-c64", "load"), load(batched, "load")
    if u and b and u["requests_per_second"]:
        print(f'numbers_classifier c=64: batched / unbatched throughput = '
              f'{b["requests_per_second"] / u["requests_per_second"]:.2f}x '
              f'(p99 {b["latency_us"]["p99"]:.0f} vs {u["latency_us"]["p99"]:.0f} us)')
else:
    print("numbers_classifier c=64 batched: skipped (the server rejected the batching flags)")
if pycases:
    print()
    print("maas vs a Python server (grpcio + onnxruntime Python API, same session options, pinned to CPU 0), TF Predict:")
    head = ["model", "c", "maas req/s", "python req/s", "maas/python", "maas p50/p99", "python p50/p99",
            "maas CPU", "python CPU", "maas ctx/req", "python ctx/req", "errors"]
    rows = []
    for case in pycases:
        model, c = case.split(":")
        m, p = load(f"{model}-tf-c{c}", "load"), load(f"{model}-python-c{c}", "load")
        mr, pr = rps(m), rps(p)
        rows.append([model, c, num(mr), num(pr), num(mr / pr if mr and pr else None, "{:.2f}"), lat(m), lat(p),
                     num(cpu(m), "{:.1f}"), num(cpu(p), "{:.1f}"), num(ctx(m), "{:.2f}"), num(ctx(p), "{:.2f}"),
                     str(p["errors"] if p else "FAILED")])
    table(head, rows, 1)
PY
echo
echo "models:  $REPO"
echo "logs:    $LOGS"
echo "reports: $RESULTS (maas bench --json)"
if [ "$FAILED" != 0 ]; then
  echo "bench.sh: some runs failed (see above)" >&2
  exit 1
fi
