#!/usr/bin/env bash
# Serves the bundled model_repository/ on gRPC port 8500 (fetches ONNX Runtime on first use).
# Extra arguments go to `maas serve`, e.g. scripts/serve.sh --port 9000 --session-pool-size 4
set -euo pipefail
cd "$(dirname "$0")/.."
MAAS_SKIP_VENV=1 ./scripts/setup.sh
exec cargo run --release --bin maas -- serve --model-repository model_repository "$@"
