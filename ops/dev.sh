#!/bin/sh
# One entry point for a fresh machine: installs what is missing (redis-server,
# a virtualenv with the project and its dev tools, `just`), then runs a
# justfile recipe:  sh ops/dev.sh demo | test | bench | lint | ...
set -eu
cd "$(dirname "$0")/.."

# Debian packages: redis-server always; for the test suite also the tools
# that check the ops files for real (nginx -t and a live nginx, promtool,
# systemd-analyze verify, docker-compose config).
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
if [ "${1:-}" = "test" ]; then
    command -v nginx >/dev/null 2>&1 || need="$need nginx-light"
    command -v promtool >/dev/null 2>&1 || need="$need prometheus"
    command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
    command -v docker-compose >/dev/null 2>&1 || need="$need docker-compose"
    command -v kubectl >/dev/null 2>&1 || need="$need kubernetes-client"
fi
if [ -n "$need" ]; then
    echo ">> installing Debian packages:$need" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    # --no-install-recommends: the tools only, no extra daemons.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $need
fi

if [ ! -x .venv/bin/python ]; then
    echo ">> creating .venv" >&2
    python3 -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # llama-cpp-python builds from source. ggml's AMX kernels (Intel Sapphire
    # Rapids and later) segfault on Q4_K models like the bundled one, so the
    # build leaves them out; the wheel is kept outside the clone and reused.
    llama=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -n 1)
    wheels="${XDG_CACHE_HOME:-$HOME/.cache}/streamworker/wheels"
    if ! ls "$wheels"/llama_cpp_python-"$llama"-*.whl >/dev/null 2>&1; then
        echo ">> building llama-cpp-python $llama (once, about 5 minutes on 2 cores)" >&2
        no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        CMAKE_ARGS="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx' ${CMAKE_ARGS:-}" \
            .venv/bin/python -m pip wheel -q --no-deps --no-binary llama-cpp-python \
            --no-cache-dir -w "$wheels" "llama-cpp-python==$llama"
    fi
    echo ">> installing the project" >&2
    .venv/bin/python -m pip install -q "$wheels"/llama_cpp_python-"$llama"-*.whl
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi

# The benchmarks' peer (llama_cpp.server) needs the server extra.
if [ "${1:-}" = "bench" ] && ! .venv/bin/python -c "import llama_cpp.server.app" 2>/dev/null; then
    echo ">> installing the benchmark peer (llama-cpp-python[server])" >&2
    # llama-cpp-python itself is installed already (the wheel above): pip
    # adds only the server's dependencies.
    .venv/bin/python -m pip install -q -e '.[dev,bench]'
fi

[ "$#" -gt 0 ] || set -- --list
exec .venv/bin/just "$@"
