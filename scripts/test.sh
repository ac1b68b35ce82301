#!/usr/bin/env bash
# Runs every check and test of maas: setup (ONNX Runtime + Python venv from PyPI), format, lints,
# unit and integration tests (real server, real ONNX Runtime, Rust and Python gRPC clients).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-features
