"""Prompt tokens against the model's context, before a job is enqueued.

Workers publish their context size (``n_ctx``) and model file in their
registry heartbeat. When that file is readable from the gateway's host, the
gateway loads the model's vocabulary only (llama.cpp ``vocab_only``: no
weights, about half a second, once per model) and renders and tokenizes the
prompt exactly as the worker will, so an oversize prompt is refused with 400
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

from gateway import state
from gateway.errors import ContextLengthExceeded
from streamworker.engines.base import Message

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.chat import ChatJob
    from streamworker.registry import WorkerInfo

log = logging.getLogger("gateway.context_window")

# Estimate without a vocabulary: ~4 bytes per token in English BPE vocabularies,
# plus the chat template's few tokens per message. Used for rate limits only.
BYTES_PER_TOKEN = 4
TEMPLATE_TOKENS_PER_MESSAGE = 4


def estimate_tokens(messages: Sequence[Message]) -> int:
    size = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in messages)
    return -(-size // BYTES_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)


class Tokenizer:
    """A model's vocabulary and chat template, without its weights."""

    def __init__(self, path: str) -> None:
        # Imported here: llama.cpp's library is only needed when a model file
        # is reachable, and it is slow to load.
        from llama_cpp import Llama

        from streamworker.engines.chat_template import renderer
        from streamworker.engines.llama import quiet_llama_logs

        quiet_llama_logs()
        self.llm = Llama(model_path=path, vocab_only=True, verbose=False)
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode("utf-8", "ignore")
        bos = self.llm.detokenize([self.llm.token_bos()], special=True).decode("utf-8", "ignore")
        self.render = renderer(self.llm.metadata, eos, bos)

    def count(self, messages: Sequence[Message]) -> int:
        prompt, _ = self.render(messages)
        return len(
            self.llm.tokenize(prompt.encode("utf-8", "surrogatepass"), add_bos=True, special=True)
        )


class ContextWindow:
    """Per model: the smallest live context and, when reachable, a tokenizer."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, Tokenizer | None] = {}
        self._lock = asyncio.Lock()

    async def tokenizer(self, workers: Sequence[WorkerInfo]) -> Tokenizer | None:
        paths = sorted({w.model_path for w in workers if w.model_path})
        for path in paths:
            if path in self._tokenizers:
                if self._tokenizers[path] is not None:
                    return self._tokenizers[path]
                continue
            async with self._lock:
                if path not in self._tokenizers:
                    self._tokenizers[path] = await asyncio.to_thread(self._load, path)
            if self._tokenizers[path] is not None:
                return self._tokenizers[path]
        return None

    @staticmethod
    def _load(path: str) -> Tokenizer | None:
        if not os.path.isfile(path):
            return None
        try:
            return Tokenizer(path)
        except Exception as exc:  # an unreadable file must not fail requests
            log.warning(
                "cannot load the vocabulary of %s (%s); estimating prompt tokens",
                path,
                type(exc).__name__,
            )
            return None

    async def prompt_tokens(self, app: web.Application, job: ChatJob) -> int:
        """The job's prompt tokens (exact where possible, else an estimate),
        after refusing a job that cannot fit the model's context."""
        workers = [w for w in await state.of(app).models.workers() if w.model == job.model]
        contexts = [w.n_ctx for w in workers if w.n_ctx > 0]
        n_ctx = min(contexts) if contexts else 0
        messages = job.request.messages
        max_tokens = job.request.params.max_tokens
        tokenizer = await self.tokenizer(workers) if n_ctx else None
        if tokenizer is None:
            if n_ctx and max_tokens >= n_ctx:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {n_ctx} tokens; max_tokens "
                    f"{max_tokens} leaves no room for the prompt.",
                    param="max_tokens",
                )
            return estimate_tokens(messages)
        count = await asyncio.to_thread(tokenizer.count, messages)
        if count + max_tokens > n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you "
                f"requested {count + max_tokens} tokens ({count} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the "
                "messages or the completion.",
                param="messages",
            )
        return count
