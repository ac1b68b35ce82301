#!/usr/bin/env bash
# Fetches everything maas needs that is not a Rust crate, idempotently:
#   - ONNX Runtime 1.31.1 (libonnxruntime.so) from the PyPI wheel `onnxruntime==1.31.1`, into .ort/
#   - a Python virtualenv (.venv) with grpcio/protobuf for the Python client example and tests
#   - promtool from Debian's `prometheus` package (apt-get download), into .tools/prometheus
# Only PyPI (via pip) and Debian's archive (via apt) are contacted. Set MAAS_SKIP_VENV=1 to skip the
# virtualenv, MAAS_SKIP_PROMTOOL=1 to skip promtool.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
ORT_DIR=.ort
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
PYTHON=${PYTHON:-python3}

if [ ! -f "$ORT_LIB" ]; then
  echo "setup: fetching onnxruntime==$ORT_VERSION from PyPI" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$tmp" "onnxruntime==$ORT_VERSION"
  wheel=$(ls "$tmp"/onnxruntime-"$ORT_VERSION"-*.whl)
  mkdir -p "$ORT_DIR"
  "$PYTHON" - "$wheel" "$ORT_DIR" "$ORT_VERSION" <<'PY'
import sys, zipfile, os
wheel, dest, ver = sys.argv[1:]
name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(wheel) as z:
    data = z.read(name)
tmp = os.path.join(dest, f".libonnxruntime.so.{ver}.part")
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, os.path.join(dest, f"libonnxruntime.so.{ver}"))
PY
  echo "setup: ONNX Runtime library at $ORT_LIB" >&2
fi

# The marker holds the hash of both requirements files, so a changed file re-runs the install.
# requirements-isolated.txt goes to .venv/isolated with --no-deps, off the venv's import path (see
# that file for why).
want=$(cat scripts/requirements.txt scripts/requirements-isolated.txt | sha256sum | cut -d' ' -f1)
if [ "${MAAS_SKIP_VENV:-0}" != 1 ] && [ "$(cat .venv/.maas-ready 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the Python dependencies into .venv" >&2
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
  .venv/bin/pip install --quiet --disable-pip-version-check --upgrade --no-deps --target .venv/isolated \
    -r scripts/requirements-isolated.txt
  echo "$want" > .venv/.maas-ready
fi

# promtool (`promtool check metrics`, used by tests/metrics.rs) from Debian's `prometheus` package,
# unpacked into .tools/prometheus without installing it (no root needed when apt's lists are there;
# as root, the lists are fetched first if apt cannot find the package). Set MAAS_SKIP_PROMTOOL=1 to skip.
PROMTOOL=.tools/prometheus/usr/bin/promtool
if [ "${MAAS_SKIP_PROMTOOL:-0}" != 1 ] && [ ! -x "$PROMTOOL" ]; then
  echo "setup: fetching promtool (Debian package prometheus) into .tools/prometheus" >&2
  debdir=$(mktemp -d)
  if ! (cd "$debdir" && apt-get download prometheus >/dev/null 2>&1); then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >/dev/null
      (cd "$debdir" && apt-get download prometheus >/dev/null 2>&1)
    else
      echo "setup: apt-get download prometheus failed; run 'apt-get update' as root, or set MAAS_SKIP_PROMTOOL=1" >&2
      rm -rf "$debdir"
      exit 1
    fi
  fi
  mkdir -p .tools && rm -rf .tools/prometheus.part
  dpkg-deb -x "$debdir"/prometheus_*.deb .tools/prometheus.part
  rm -rf "$debdir" .tools/prometheus .tools/prometheus.part/usr/bin/prometheus
  mv .tools/prometheus.part .tools/prometheus
  "$PROMTOOL" --version >/dev/null
  echo "setup: promtool at $PROMTOOL" >&2
fi
