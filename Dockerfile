# syntax=docker/dockerfile:1
#
# Certus Evaluate sidecar image (see docs/deployment.md).
#
#   docker build -t certus-evaluate:cpu .                          # CPU (default)
#   docker build -t certus-evaluate:gpu --build-arg VARIANT=gpu .  # CUDA base image
#
# Stages: base-cpu | base-gpu -> base -> builder (two venvs, each from its lock in requirements/:
# serving from serve.lock, the export toolchain from export.lock + model.lock; exports the ONNX model,
# warms Numba's cache) -> runtime (serving venv, source, model, Numba cache; non-root).
# The builder and the runtime start from the same base, so the venv's interpreter path and ABI match.
#
# Build args:
#   VARIANT          cpu (python:3.11-slim) | gpu (CUDA_IMAGE + Ubuntu's python3). The ONNX Runtime
#                    package is the same in both: the locked onnxruntime-gpu, whose wheel carries the
#                    CUDA *and* the CPU execution provider. What VARIANT changes is the
#                    base: the gpu base adds the CUDA 13 runtime and cuDNN 9 libraries that the CUDA EP
#                    of onnxruntime-gpu 1.31 loads (libcudart.so.13, libcublas.so.13, libcudnn.so.9),
#                    and sets CERTUS_PROVIDER=auto (CUDA when a GPU is visible, else CPU); the cpu
#                    base sets CERTUS_PROVIDER=cpu. The gpu image needs a host driver >= 580 and the
#                    NVIDIA container toolkit (docker run --gpus all / a nvidia.com/gpu resource).
#   CUDA_IMAGE       nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 (CUDA 13 + cuDNN 9, Python 3.12).
#   PYTHON_IMAGE     python:3.11-slim-bookworm.
#   TORCH_INDEX_URL  where the export-only CPU torch wheel comes from (builder stage only; its hash
#                    is in requirements/export.lock).
#   MODEL_VARIANT    auto (default) | fp32 | int8 | fp16 (CUDA only): the ONNX variant served
#                    (CERTUS_MODEL_VARIANT). auto, as outside Docker, serves int8 on CPU and fp16 on
#                    CUDA, decided at start-up by the node's hardware, so all three are baked in.
#                    A fixed variant bakes in only that one.
#   MODEL_EXPORT     what is exported: by default all for auto, else MODEL_VARIANT; all bakes in
#                    all three so that CERTUS_MODEL_VARIANT can pick another one at run time.
#   NUMBA_CPU_NAME   generic (default): the Numba kernels are compiled for a generic CPU of the
#                    architecture, so the cache baked into the image is valid on every node
#                    (measured: kernels within 1-8% of host-tuned code; ONNX dominates a request).
#                    An LLVM CPU name (e.g. skylake-avx512) tunes for that CPU instead; a node whose
#                    CPU features differ then recompiles at start (~10-20 s) into the writable
#                    cache dir. Never pass an empty value: Numba treats "" as its own target.
#   UID              10001: the non-root user the sidecar runs as.
#
# The image listens on 127.0.0.1:50051: in a pod, containers share the loopback interface, so the
# app container reaches the sidecar on localhost and nothing outside the pod can. To listen on
# another address set CERTUS_ADDRESS and configure auth (CERTUS_AUTH_TOKENS_FILE / TLS), or set
# CERTUS_ALLOW_INSECURE_REMOTE=1 explicitly; the sidecar refuses to start otherwise.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------- bases
FROM ${PYTHON_IMAGE} AS base-cpu
ENV CERTUS_PROVIDER=cpu

FROM ${CUDA_IMAGE} AS base-gpu
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV CERTUS_PROVIDER=auto

FROM base-${VARIANT} AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CERTUS_HOME=/var/lib/certus \
    CERTUS_MODEL_DIR=/opt/certus/model \
    NUMBA_CACHE_DIR=/var/cache/certus/numba

# ---------------------------------------------------------------------------- builder
FROM base AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG MODEL_VARIANT=auto
ARG MODEL_EXPORT=
ARG NUMBA_CPU_NAME=generic
ARG PIP_VERSION=26.3
WORKDIR /app

# The locked dependency sets, in their own layer (editing the source does not reinstall them):
# exact versions with hashes, --no-deps (the locks are complete), as `make install` does.
COPY requirements ./requirements

# Serving venv: what runs in the image. No torch, no transformers, no onnx.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install "pip==$PIP_VERSION" \
 && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/serve.lock

# Export toolchain venv: builder only, never copied (CPU torch from its own index).
RUN python3 -m venv /opt/export-venv \
 && /opt/export-venv/bin/pip install "pip==$PIP_VERSION" \
 && /opt/export-venv/bin/pip install --extra-index-url "$TORCH_INDEX_URL" --require-hashes --no-deps \
      -r requirements/export.lock -r requirements/model.lock

# The source: certus-client (stubs generated from proto/ at build) and certus-evaluate, installed
# editable into the serving venv (package data used in place), and into the export venv without
# dependencies (the toolchain runs certus.models.export from it).
COPY README.md pyproject.toml setup.py ./
COPY proto ./proto
COPY clients/python ./clients/python
COPY sidecar ./sidecar
COPY kernels ./kernels
COPY models ./models
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation -e /app/clients/python -e /app \
 && /opt/export-venv/bin/pip install --no-deps --no-build-isolation -e /app \
 && /opt/venv/bin/python -m compileall -q /app/sidecar /app/kernels /app/models /app/clients/python/src

# Export all-MiniLM-L6-v2 to ONNX once (checked against PyTorch) into CERTUS_MODEL_DIR, through the
# serving command, which runs the toolchain as its own process.
RUN export_variant="${MODEL_EXPORT:-$MODEL_VARIANT}" \
 && if [ "$export_variant" = auto ]; then export_variant=all; fi \
 && CERTUS_EXPORT_PYTHON=/opt/export-venv/bin/python /opt/venv/bin/certus-sidecar models export --variant "$export_variant"

# Warm Numba's on-disk cache with the serving venv, at the paths the runtime uses.
RUN NUMBA_CPU_NAME="$NUMBA_CPU_NAME" /opt/venv/bin/python -c "from certus import kernels; print(f'numba warm-up {kernels.warmup():.1f} s')"

# ---------------------------------------------------------------------------- runtime
FROM base AS runtime
ARG MODEL_VARIANT=auto
ARG NUMBA_CPU_NAME=generic
ARG UID=10001
RUN groupadd --system --gid "$UID" certus \
 && useradd --system --uid "$UID" --gid certus --home-dir /var/lib/certus --no-create-home --shell /usr/sbin/nologin certus \
 && install -d -o certus -g certus -m 0750 /var/lib/certus \
 && install -d -o certus -g certus -m 0755 /var/cache/certus

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
COPY --from=builder /opt/certus/model /opt/certus/model
# Writable by the sidecar: Numba only uses a cache directory it can write to (even to read it),
# and compiles into it whatever the baked cache lacks (e.g. NUMBA_CPU_NAME overridden at run time).
COPY --from=builder --chown=certus:certus /var/cache/certus/numba /var/cache/certus/numba

ENV PATH=/opt/venv/bin:$PATH \
    NUMBA_CPU_NAME=${NUMBA_CPU_NAME} \
    CERTUS_ADDRESS=127.0.0.1:50051 \
    CERTUS_MODEL_VARIANT=${MODEL_VARIANT} \
    LOG_FORMAT=json

USER ${UID}:${UID}
WORKDIR /var/lib/certus
EXPOSE 50051

# grpc.health.v1 Check over plaintext loopback (health is open even when auth is on). Follows
# CERTUS_ADDRESS; a wildcard bind is probed on 127.0.0.1. Exit 0 only when SERVING.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg; host, port = os.environ.get('CERTUS_ADDRESS', '127.0.0.1:50051').rsplit(':', 1); host = '127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host; r = hg.HealthStub(grpc.insecure_channel(host + ':' + port)).Check(h.HealthCheckRequest(), timeout=3); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]

# SIGTERM: health NOT_SERVING, in-flight calls finish (CERTUS_GRACE_S), log and outbox flushed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["certus-sidecar"]
CMD ["serve"]
