"""The embedding engine: many inputs -> one vector each, many per llama.cpp decode.

Any GGUF model loaded with `embedding=True` and mean pooling (the average of
the last hidden states over the input's tokens), normalised to unit length
so that cosine distance and dot product agree. Blocking: callers run it in a
thread. The model is loaded on first use, under a lock, so a worker that
never embeds never pays for it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from streamworker.engines.base import EngineError
from streamworker.engines.model_file import resolve_model_path
from streamworker.protocol.outcomes import EndCode

if TYPE_CHECKING:
    from streamworker.settings import EmbeddingSettings


class InputTooLong(EngineError):
    """An input has more tokens than the embedding context: no retry helps."""

    permanent = True
    code = EndCode.CONTEXT_LENGTH_EXCEEDED


# Tokens per llama.cpp decode. Every input of a decode shares one unified KV
# cache and attends over all of its cells (masked to its own sequence), so a
# decode's attention grows with the square of its tokens: on the bundled model
# on 2 CPU cores, decodes of at most 512 tokens embedded 1.36x as fast as
# decodes of up to 2048 (docs/benchmarks.md). A longer input gets a decode alone.
DECODE_TOKENS = 512


def _decode_groups(counts: list[int], limit: int = DECODE_TOKENS) -> list[list[int]]:
    """Input indices in order, split into runs of at most `limit` tokens
    (an input longer than `limit` alone in its run)."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(counts):
        if current and used + n > limit:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        groups.append(current)
    return groups


class Embedder:
    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings
        self._llm: Any = None
        self._lock = threading.Lock()

    def _model(self) -> Any:
        with self._lock:
            if self._llm is None:
                import llama_cpp

                path = resolve_model_path(self.settings.embedding_model_path)
                n_ctx = self.settings.embedding_n_ctx
                self._llm = llama_cpp.Llama(
                    model_path=str(path),
                    embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=n_ctx,
                    n_batch=n_ctx,
                    n_ubatch=n_ctx,  # a pooled input must fit one micro-batch
                    n_threads=self.settings.embedding_n_threads or None,
                    n_gpu_layers=self.settings.embedding_n_gpu_layers,
                    verbose=False,
                )
            return self._llm

    def _tokens(self, llm: Any, item: str | list[int]) -> list[int]:
        if isinstance(item, list):
            return item
        return llm.tokenize(item.encode(), add_bos=True, special=False)

    def embed(self, inputs: list[str | list[int]]) -> tuple[list[list[float]], list[int]]:
        """Unit vectors for `inputs` (texts or token ids), and each input's
        token count. Raises InputTooLong rather than truncating silently."""
        llm = self._model()
        limit = self.settings.embedding_n_ctx
        texts: list[str] = []
        counts: list[int] = []
        for i, item in enumerate(inputs):
            tokens = self._tokens(llm, item)
            if len(tokens) > limit:
                raise InputTooLong(
                    f"input {i} has {len(tokens)} tokens; the embedding model takes at most {limit}"
                )
            counts.append(len(tokens))
            # Token ids are embedded as the text they stand for: llama-cpp's
            # batch call takes text, and the ids came from its vocabulary.
            texts.append(
                item
                if isinstance(item, str)
                else llm.detokenize(item).decode("utf-8", errors="replace")
            )
        vectors: list[list[float]] = []
        with self._lock:  # one llama context: one call at a time
            for group in _decode_groups(counts):
                vectors.extend(llm.embed([texts[i] for i in group], normalize=True, truncate=True))
        return vectors, counts

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
