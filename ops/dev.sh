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
    echo ">> installing the project (llama-cpp-python builds from source once: ~5 min)" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi

[ "$#" -gt 0 ] || set -- --list
exec .venv/bin/just "$@"
