#!/usr/bin/env bash
# Runs every check and test of maas: setup (ONNX Runtime + Python venv from PyPI), deployment files,
# format, lints, unit and integration tests (real server, real ONNX Runtime, Rust and Python gRPC clients).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Dockerfile lint, Kubernetes and KServe manifests (offline, a few seconds).
./scripts/check_deploy.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-features
