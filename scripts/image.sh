#!/usr/bin/env bash
# Builds the maas container image FROM scratch, without pulling any base image, and smoke-tests it.
#
# The image holds what the Dockerfile's image holds: the host-built release binary (debug info
# stripped), libonnxruntime.so.1.31.1 from .ort/ (the PyPI wheel's library, scripts/setup.sh), every
# shared library `ldd` lists for the two (glibc, libstdc++, libgcc_s, ... and the dynamic loader),
# CA certificates, /etc/passwd with the non-root user 65532, ORT_DYLIB_PATH, USER 65532:65532,
# ports 8500 and 8501, entrypoint `maas serve`. It is built with Debian's buildah (vfs storage,
# chroot isolation: no daemon, no registry), in a throwaway storage directory, and written as an OCI
# archive (load it with `podman load -i`, `skopeo copy oci-archive:... docker://...`).
#
# Smoke test: `maas serve` runs inside the image's root file system (`buildah run`, chroot isolation,
# which shares the host's network namespace) as uid 65532 on loopback ports, with the bundled
# model_repository copied in; then REST and gRPC predictions and the `liveness` health service are
# checked from the host, and SIGTERM must drain and exit 0.
#
#   cargo build --release && scripts/image.sh [OUTPUT.tar]     (default: target/maas-image.oci.tar)
#
# Not run in CI (a release build takes long); CI lints the Dockerfile (scripts/check_deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
TAG=maas:local
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=${MAAS_BIN:-$TARGET_DIR/release/maas}
ORT_LIB=.ort/libonnxruntime.so.$ORT_VERSION
OUT=${1:-$TARGET_DIR/maas-image.oci.tar}

say() { echo "image.sh: $*" >&2; }
die() { say "$*"; exit 1; }

[ -x "$BIN" ] || die "no release binary at $BIN: run \`cargo build --release\` first (or set MAAS_BIN)"
[ -f "$ORT_LIB" ] || die "no $ORT_LIB: run scripts/setup.sh first"
command -v curl >/dev/null || die "curl is needed for the smoke test"
if ! command -v buildah >/dev/null; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "buildah is needed (Debian: apt-get install buildah)"
  say "installing Debian's buildah"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/maas-image.XXXXXX")
BUILDAH=(buildah --storage-driver vfs --root "$work/storage" --runroot "$work/run")
ctr=""
server_pid=""
run_pid=""
cleanup() {
  for p in $server_pid $run_pid; do
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  [ -n "$ctr" ] && "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- 1. the root file system ------------------------------------------------------------------
root="$work/ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/usr/local/lib" "$root/etc/ssl/certs" "$root/tmp" "$root/models"
chmod 1777 "$root/tmp"
objcopy --strip-debug "$BIN" "$root/usr/local/bin/maas"
install -m 0644 "$ORT_LIB" "$root/usr/local/lib/libonnxruntime.so.$ORT_VERSION"

# Every library the binary and ONNX Runtime load, at the path the loader resolved it to (copying the
# file, not the symlink), and the dynamic loader itself.
libs=$( { ldd "$BIN"; ldd "$ORT_LIB"; } | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(0x/{print $1}' | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
interp=$(readelf -l "$BIN" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[ -n "$interp" ] && [ -f "$root$interp" ] || die "the dynamic loader ($interp) is missing from the image"

# CA certificates for object-store TLS (rustls-platform-verifier reads the system bundle).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
else
  say "warning: no /etc/ssl/certs/ca-certificates.crt on this machine; the image has no CA bundle"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
say "root file system: $(du -sh "$root" | cut -f1) ($(echo "$libs" | wc -w) shared libraries from ldd)"

cat >"$work/ctx/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so.$ORT_VERSION
EXPOSE 8500 8501
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/maas", "serve"]
EOF

# ---- 2. build ----------------------------------------------------------------------------------
"${BUILDAH[@]}" bud --quiet --isolation chroot -f "$work/ctx/Containerfile" -t "$TAG" "$work/ctx" >/dev/null
cfg=$("${BUILDAH[@]}" inspect --type image "$TAG" |
  python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["OCIv1"]["config"], separators=(",", ":")))')
say "image config: $cfg"
for want in '"User":"65532:65532"' '"Entrypoint":["/usr/local/bin/maas","serve"]' \
  "ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so.$ORT_VERSION" '"8500/tcp"' '"8501/tcp"'; do
  case $cfg in *"$want"*) ;; *) die "the image config lacks $want" ;; esac
done

# ---- 3. smoke test inside the image's root file system -----------------------------------------
ctr=$("${BUILDAH[@]}" from --quiet "$TAG")
"${BUILDAH[@]}" copy --quiet --chown 65532:65532 "$ctr" model_repository /models >/dev/null
version=$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- /usr/local/bin/maas --version)
say "inside the image: $version"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
rest_port=$(free_port)
[ "$grpc_port" != "$rest_port" ] || rest_port=$(free_port)
log="$work/serve.log"
started=$(date +%s.%N)
"${BUILDAH[@]}" run --isolation chroot "$ctr" -- /usr/local/bin/maas serve --model-repository=/models \
  --host=127.0.0.1 --port="$grpc_port" --rest-api-port="$rest_port" --drain-timeout-seconds=5 >"$log" 2>&1 &
run_pid=$!

ready=""
for _ in $(seq 1 240); do
  if curl -fsS "http://127.0.0.1:$rest_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.25
done
[ -n "$ready" ] || { cat "$log" >&2; die "maas did not become ready inside the image within 60 s"; }
say "ready after $(python3 -c "import time; print(f'{time.time() - $started:.2f}')") s on 127.0.0.1:$grpc_port (gRPC) and :$rest_port (REST)"

# The server process (buildah run's child): found by its unique port argument, only to read its uid
# and to send it SIGTERM.
for p in $(pgrep -f -- "--rest-api-port=$rest_port" || true); do
  case $(readlink "/proc/$p/exe" 2>/dev/null || true) in */usr/local/bin/maas) server_pid=$p; break ;; esac
done
[ -n "$server_pid" ] || die "cannot find the maas process"
uid=$(awk '/^Uid:/{print $2}' "/proc/$server_pid/status")
[ "$uid" = 65532 ] || die "maas runs as uid $uid inside the image, not 65532"
say "maas runs as uid $uid (pid $server_pid), root $(readlink "/proc/$server_pid/root")"

# REST predict (TF Serving API), checked against the bundled model's known answer.
body=$(curl -fsS -d '{"instances": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]]}' \
  "http://127.0.0.1:$rest_port/v1/models/numbers_classifier:predict")
say "REST predict: $body"
python3 - "$body" <<'PY'
import json, sys
got = json.loads(sys.argv[1])["predictions"][0][0]
if abs(got - 0.149407) > 1e-5:
    sys.exit(f"image.sh: REST prediction {got}, expected 0.149407")
PY
# KServe v2 REST.
body=$(curl -fsS -d '{"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}]}' \
  "http://127.0.0.1:$rest_port/v2/models/numbers_classifier/infer")
say "v2 infer: $body"
# gRPC: the Python TF Serving client, and the health services the Kubernetes probes ask for.
if [ -x .venv/bin/python ]; then
  say "gRPC predict: $(.venv/bin/python examples/python_client.py --address "127.0.0.1:$grpc_port" --json)"
  .venv/bin/python - "127.0.0.1:$grpc_port" <<'PY'
import sys
import grpc
ch = grpc.insecure_channel(sys.argv[1])
check = ch.unary_unary("/grpc.health.v1.Health/Check")
for service in (b"", b"liveness"):
    req = (b"\x0a" + bytes([len(service)]) + service) if service else b""
    resp = check(req, timeout=5)
    # HealthCheckResponse{status: SERVING (1)} is the two bytes 08 01.
    if resp != b"\x08\x01":
        sys.exit(f"image.sh: health {service!r}: {resp!r}, expected SERVING")
    print(f"image.sh: gRPC health {service.decode()!r}: SERVING", file=sys.stderr)
PY
fi

# Graceful stop: SIGTERM, drain, exit 0.
kill -TERM "$server_pid"
rc=0
wait "$run_pid" || rc=$?
server_pid=""
grep -q "server stopped" "$log" || { cat "$log" >&2; die "maas did not log a clean stop"; }
[ "$rc" = 0 ] || { cat "$log" >&2; die "buildah run exited $rc after SIGTERM"; }
say "SIGTERM: drained and exited 0"

# ---- 4. export ---------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
"${BUILDAH[@]}" push --quiet "$TAG" "oci-archive:$OUT:$TAG" >/dev/null
say "image written to $OUT ($(du -h "$OUT" | cut -f1)); smoke test passed"
