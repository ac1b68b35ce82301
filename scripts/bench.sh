#!/usr/bin/env bash
# First load measurement: starts a release maas on the bundled repository (pinned to CPU 0) and drives
# numbers_classifier with the load generator (pinned to CPU 1) at concurrency 1 and 16.
# Usage: scripts/bench.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
MAAS_SKIP_VENV=1 ./scripts/setup.sh
cargo build --release --bin maas
cargo bench --no-run --bench load 2>/dev/null
PORT=${PORT:-18555}
taskset -c 0 ./target/release/maas serve --model-repository model_repository --host 127.0.0.1 --port "$PORT" \
  --session-pool-size 1 --intra-op-threads 1 2>/tmp/maas-bench-server.log &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q "initial models loaded" /tmp/maas-bench-server.log && break; sleep 0.1; done
for c in 1 16; do
  taskset -c 1 cargo bench --bench load -- --address "127.0.0.1:$PORT" --concurrency "$c" --seconds "$SECONDS_PER_RUN"
done
