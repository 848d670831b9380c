# One image for the gateway and the worker (the command picks the role).
# CPU build by default; for NVIDIA GPUs build the worker with
#   --build-arg BASE=nvidia/cuda:12.6.3-devel-ubuntu24.04 --build-arg CMAKE_ARGS=-DGGML_CUDA=on
# (compose.yaml does this for the `worker` service).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG CMAKE_ARGS=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 CMAKE_ARGS=${CMAKE_ARGS}
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential cmake python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml redis.conf ./
COPY streamworker ./streamworker
COPY gateway ./gateway
# llama-cpp-python compiles llama.cpp here (CUDA when CMAKE_ARGS asks for it).
RUN python3 -m venv /venv && /venv/bin/pip install .
ENV PATH=/venv/bin:$PATH
# A numeric user, so Kubernetes' runAsNonRoot can verify it without a lookup.
RUN useradd --system --uid 10001 --home /var/lib/streamworker --create-home streamworker
USER 10001
# Liveness of whichever role runs: the gateway's /health by default; a worker
# sets HEALTHCHECK_URL to its metrics port (5345 + instance). The slim image
# has no curl, and Python is there anyway. The start period covers a worker
# loading its model.
ENV HEALTHCHECK_URL=http://127.0.0.1:8080/health
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=5)"]
CMD ["python", "-m", "gateway"]
