"""The layers hold: import-linter's contracts (pyproject.toml), and the
gateway reaching into streamworker only through the job protocol and the
shared tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.unit

# The worker-side code the gateway runs: counting prompt tokens with the
# worker's own template and vocabulary (gateway/context_window.py), and
# compiling JSON schemas to the grammars the worker's sampler loads
# (gateway/structured.py); and the Qdrant settings and connection, which the
# gateway opens (it owns the store) and the operator CLI checks.
# And systemd's notification protocol (streamworker/sdnotify.py), which the
# gateway speaks like the workers do: it imports nothing of either side (the
# lowest layer of the worker's contract).
SHARED_WITH_GATEWAY = {
    "streamworker.tokenizer",
    "streamworker.grammar",
    "streamworker.qdrant",
    "streamworker.sdnotify",
}


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout


def test_gateway_imports_only_the_protocol_from_streamworker() -> None:
    graph = grimp.build_graph("gateway", "streamworker")
    reached = set()
    for module in graph.find_children("gateway") | {"gateway"}:
        reached |= {
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if imported == "streamworker" or imported.startswith("streamworker.")
        }
    outside = {
        m
        for m in reached
        if not m.startswith("streamworker.protocol") and m not in SHARED_WITH_GATEWAY
    }
    assert reached, "the gateway should use the protocol"
    assert outside == set(), f"gateway imports {sorted(outside)} beyond the protocol"
