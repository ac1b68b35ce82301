# maas container image: a static-ish Rust binary plus ONNX Runtime, on distroless (glibc, libstdc++,
# CA certificates, uid 65532, no shell).
#
#   docker build -t maas .
#   docker run --rm -p 8500:8500 -p 8501:8501 -v "$PWD/model_repository:/models:ro" \
#     maas --model-repository=/models
#
# Where base images cannot be pulled, scripts/image.sh builds an equivalent image FROM scratch out
# of the host-built binary (and smoke-tests it).

# ONNX Runtime's shared library, from the official PyPI wheel (the same file scripts/setup.sh
# puts in .ort/). maas loads it at run time (ort's load-dynamic feature).
FROM python:3.11-slim-bookworm AS ort
ARG ORT_VERSION=1.31.1
WORKDIR /ort
RUN pip download --no-cache-dir --no-deps --only-binary=:all: --dest /tmp/wheel "onnxruntime==${ORT_VERSION}" \
 && python -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('/tmp/wheel/onnxruntime-*.whl')[0]); open('libonnxruntime.so.${ORT_VERSION}', 'wb').write(z.read('onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}'))" \
 && rm -rf /tmp/wheel

# The maas binary. build.rs compiles the protos with protox (pure Rust): no protoc needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps debug info for profiling; the image does not need it.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo build --release --locked --bin maas \
 && install -D -m 0755 target/release/maas /out/maas

FROM gcr.io/distroless/cc-debian12:nonroot
ARG ORT_VERSION=1.31.1
COPY --from=build /out/maas /usr/local/bin/maas
COPY --from=ort /ort/libonnxruntime.so.${ORT_VERSION} /usr/local/lib/libonnxruntime.so.${ORT_VERSION}
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so.${ORT_VERSION}
# gRPC (TF Serving and KServe v2) and REST (TF Serving, KServe v2, /healthz, /readyz, /metrics).
EXPOSE 8500 8501
# Numeric, so Kubernetes' runAsNonRoot can check it (the distroless "nonroot" user).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/maas", "serve"]
