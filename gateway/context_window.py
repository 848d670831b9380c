"""Prompt tokens against the model's context, before a job is enqueued.

Workers publish their context size (``n_ctx``), model file and chat format
in their registry heartbeat. When that file is readable from the gateway's
host, the gateway loads the model's vocabulary only (no weights, about half a
second, once per model file and format) and renders and tokenizes the prompt
with the same code and the same chat format as the worker
(streamworker/tokenizer.py), so an oversize prompt is refused with 400
``context_length_exceeded`` and never takes a queue slot.

When the file is not reachable (gateway on another host, echo test double)
the gateway cannot count exactly; it refuses only what is certain
(``max_tokens`` alone filling the context) and estimates the prompt for rate
limiting. The worker then checks exactly and fails the job.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.errors import BadRequest, ContextLengthExceeded
from streamworker.protocol.wire import JobKind

if TYPE_CHECKING:
    from streamworker.protocol.registry import WorkerInfo
    from streamworker.protocol.wire import JobRequest
    from streamworker.tokenizer import PromptBuilder

log = logging.getLogger("gateway.context_window")

# Estimate without a vocabulary: ~4 bytes per token in English BPE vocabularies,
# plus the chat template's few tokens per message. Used for rate limits only.
BYTES_PER_TOKEN = 4
TEMPLATE_TOKENS_PER_MESSAGE = 4


def estimate_tokens(request: JobRequest) -> int:
    if request.kind is JobKind.COMPLETION:
        prompt = request.prompt
        if not isinstance(prompt, str):
            return len(prompt)
        return -(-len(prompt.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)
    messages = request.messages
    size = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in messages)
    return -(-size // BYTES_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)


def _count(tokenizer: PromptBuilder, request: JobRequest) -> int:
    """The prompt's exact length; token ids the request names (a raw
    prompt's, logit_bias keys) must exist in the vocabulary."""
    bias = request.params.logit_bias
    if bias and (bad := max(bias)) >= tokenizer.n_vocab:
        raise BadRequest(
            f"Token id {bad} is not in the model's vocabulary of {tokenizer.n_vocab}.",
            param="logit_bias",
        )
    if request.kind is not JobKind.COMPLETION:
        return tokenizer.count(request.messages)
    tokens = tokenizer.raw_tokens(request.prompt)
    if not isinstance(request.prompt, str):
        n_vocab = tokenizer.n_vocab
        if (bad := next((t for t in tokens if t >= n_vocab), None)) is not None:
            raise BadRequest(
                f"Token id {bad} is not in the model's vocabulary of {n_vocab}.", param="prompt"
            )
    return len(tokens)


def _load(path: str, chat_format: str) -> PromptBuilder | None:
    if not os.path.isfile(path):
        return None
    try:
        # Imported here: llama.cpp's library is only needed when a model file
        # is reachable, and it is slow to load.
        from streamworker.tokenizer import load_vocabulary

        return load_vocabulary(path, chat_format)
    except Exception as exc:  # an unreadable file must not fail requests
        log.warning(
            "cannot load the vocabulary of %s (%s); estimating prompt tokens",
            path,
            type(exc).__name__,
        )
        return None


class ContextWindow:
    """Per model: the smallest live context and, when reachable, a tokenizer."""

    def __init__(self) -> None:
        self._tokenizers: dict[tuple[str, str], PromptBuilder | None] = {}
        self._lock = asyncio.Lock()

    async def tokenizer(self, workers: Sequence[WorkerInfo]) -> PromptBuilder | None:
        for source in sorted({(w.model_path, w.chat_format) for w in workers if w.model_path}):
            if source not in self._tokenizers:
                async with self._lock:
                    if source not in self._tokenizers:
                        self._tokenizers[source] = await asyncio.to_thread(_load, *source)
            if (found := self._tokenizers[source]) is not None:
                return found
        return None

    async def prompt_tokens(
        self, workers: Sequence[WorkerInfo], request: JobRequest, max_tokens: int
    ) -> int:
        """The prompt's tokens on these workers (exact where possible, else an
        estimate), after refusing a prompt that cannot fit their context."""
        contexts = [w.n_ctx for w in workers if w.n_ctx > 0]
        n_ctx = min(contexts) if contexts else 0
        tokenizer = await self.tokenizer(workers) if n_ctx else None
        if tokenizer is None:
            if n_ctx and max_tokens >= n_ctx:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {n_ctx} tokens; max_tokens "
                    f"{max_tokens} leaves no room for the prompt.",
                    param="max_tokens",
                )
            return estimate_tokens(request)
        count = await asyncio.to_thread(_count, tokenizer, request)
        if count + max_tokens > n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you "
                f"requested {count + max_tokens} tokens ({count} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the "
                "messages or the completion.",
                param="prompt" if request.kind is JobKind.COMPLETION else "messages",
            )
        return count
