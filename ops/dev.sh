#!/bin/sh
# One entry point for a fresh machine: installs what is missing (redis-server,
# a virtualenv with the project and its dev tools, `just`), then runs a
# justfile recipe:  sh ops/dev.sh demo | test | bench | lint | ...
set -eu
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo ">> installing redis-server (Debian package)" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q redis-server
    # Debian starts a system redis on 6379; the project runs its own instances.
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
