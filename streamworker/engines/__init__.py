"""Inference engines: the part of a worker that turns a prompt into tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamworker.engines.base import Engine
    from streamworker.settings import EngineSettings


def load_engine(settings: EngineSettings) -> Engine:
    """Build the engine named by ENGINE. Imports lazily: llama.cpp is heavy."""
    if settings.engine == "echo":
        from streamworker.engines.echo import EchoEngine

        return EchoEngine(settings)
    if settings.engine == "batched":
        from streamworker.engines.batched import BatchedEngine

        return BatchedEngine(settings)
    from streamworker.engines.llama import LlamaEngine

    return LlamaEngine(settings)
