"""The batched engine: continuous batching over llama.cpp's low-level API.

One model, one context holding `slots` sequences, one decode thread
(decode_loop.py) that steps every running sequence together; new requests
join and finished or cancelled ones leave between steps. A slot keeps its
KV when its sequence leaves: a later prompt that starts the same way reuses
it (prefix_cache.py).

Two ways to step, chosen by BATCH_INVARIANT:

- invariant (the default): a sequence's answer does not depend on what else
  runs (decodes of at most 7 rows on the CPU, prompts in decodes of their
  own, and ggml's plain kernels).
- mixed: every generating row and a bounded chunk of joining prompts in one
  decode, with ggml's fastest (repacked) kernels: the most tokens per
  second, but greedy answers may change with the load.

Each choice samples with its own `sampling.Sampler` (a numpy argmax for
plain greedy requests, llama.cpp's stages otherwise). A job with n choices
holds n sequences and prefills its prompt once (`sequences.py`).

This side renders and tokenizes the prompt, queues the job and relays what
the decode thread emits; it never calls into the context itself.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Sequence

import anyio
import llama_cpp
import msgspec
from llama_cpp import _internals

from streamworker.engines.base import Done, EngineError, Piece
from streamworker.engines.choices import check_fits, echo_start, plan, prompt_tokens
from streamworker.engines.decode_loop import N_BATCH, DecodeLoop
from streamworker.engines.model_file import resolve_model_path
from streamworker.engines.sequences import BatchJob, Emit, prepare
from streamworker.protocol.wire import JobRequest, Message
from streamworker.settings import EngineSettings
from streamworker.tokenizer import PromptBuilder, quiet_llama_logs

# Prompts up to this size are rendered and tokenized on the event loop (well
# under a millisecond): a hop to a worker thread costs more, ~2.5 ms of the
# first token on 2 cores, where llama.cpp's threads spin between decodes and
# a newly woken thread waits for a core.
INLINE_PREPARE_CHARS = 4096


def _prompt_size(request: JobRequest) -> int:
    """About how many characters the template renders (tools included)."""
    return len(msgspec.json.encode(request))


class BatchedEngine:
    def __init__(self, settings: EngineSettings) -> None:
        quiet_llama_logs()
        batch_invariant = settings.batch_invariant
        llama_cpp.llama_backend_init()
        self.model_name = settings.model_name
        self.slots = settings.slots
        self._n_ctx = settings.model_n_ctx
        self.path = resolve_model_path(settings.model_path)
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = settings.model_n_gpu_layers
        # No repacked CPU weights: with them ggml multiplies the batch's rows
        # in groups of four (gemm) and the rest one by one (gemv), which round
        # differently, so a sequence's greedy tokens would depend on how many
        # others share its step (logits moved by up to 0.6 on the bundled
        # model). Without them every row takes the same path: an answer never
        # depends on the load. (No effect on GPU layers.)
        mparams.use_extra_bufts = not batch_invariant
        self.model = _internals.LlamaModel(path_model=str(self.path), params=mparams, verbose=False)
        self.vocab = self.model.vocab
        threads = settings.model_n_threads or os.cpu_count() or 1
        cparams = llama_cpp.llama_context_default_params()
        # Every sequence gets the full per-request context: a non-unified KV
        # cache splits n_ctx evenly over n_seq_max streams.
        cparams.n_ctx = settings.model_n_ctx * self.slots
        cparams.n_seq_max = self.slots
        cparams.kv_unified = False
        cparams.n_batch = N_BATCH
        cparams.n_ubatch = N_BATCH
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        # The values the high-level API sets (LlamaEngine), not llama.cpp's
        # defaults: the two engines must compute the same logits. Flash
        # attention (LlamaEngine asks for it too) makes a 4-row CPU decode
        # ~10% faster, and skips masked cells outright, so other sequences'
        # KV never enters a sequence's sums.
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cparams.yarn_attn_factor = 1.0
        cparams.yarn_beta_fast = 32.0
        cparams.yarn_beta_slow = 1.0
        cparams.no_perf = True
        # Without a prefix cache, sliding-window layers keep only their window
        # per sequence, not the whole context (the KV of 8 slots then costs
        # ~1/4 of the memory). With one, they keep every position: a small
        # window cache reuses the cells of positions that left the window, so
        # a prefix could no longer be taken back up once its sequence moved
        # on past the cache's size.
        cparams.swa_full = settings.prefix_cache
        self.ctx = llama_cpp.llama_init_from_model(self.model.model, cparams)
        if not self.ctx:
            self.model.close()
            raise EngineError("llama.cpp could not create a context")
        self.prompts = PromptBuilder(self.model, settings.chat_format)
        self.decoder = DecodeLoop(
            self.ctx,
            self.vocab,
            n_ctx=self._n_ctx,
            slots=self.slots,
            piece=self._piece,
            invariant=batch_invariant,
            on_gpu=settings.model_n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload(),
            prefix_cache=settings.prefix_cache,
        )

    # -- the async side ---------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    # The decode thread's counters, exported by the worker's /metrics.
    @property
    def prefilled(self) -> int:
        return self.decoder.prefilled

    @property
    def reused(self) -> int:
        return self.decoder.reused

    @property
    def queried(self) -> int:
        return self.decoder.queried

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.prompts.count(messages)

    def _prepare(
        self, request: JobRequest, resume: Sequence[Piece], cancel: threading.Event, emit: Emit
    ) -> tuple[BatchJob, list[Piece]]:
        prompt, stops = prompt_tokens(request, self.prompts)
        check_fits(len(prompt), request.params, self._n_ctx, self.slots)
        choices = plan(
            request,
            stops,
            resume,
            is_end=lambda t: llama_cpp.llama_vocab_is_eog(self.vocab, t),
            text_bytes=lambda t: self.model.detokenize([t]),
            logprob_bytes=self._piece,
        )
        first = echo_start(prompt, self.model.token_bos())
        return prepare(BatchJob(prompt, request.params, choices, cancel, emit, first), self._piece)

    def _piece(self, token: int) -> bytes:
        return self.model.detokenize([token], special=True)

    async def generate(
        self, request: JobRequest, resume: Sequence[Piece], cancel: threading.Event
    ) -> AsyncIterator[Piece | Done]:
        inbox: asyncio.Queue[Piece | Done | BaseException] = asyncio.Queue()
        emit = self.decoder.emitter(asyncio.get_running_loop(), inbox)
        if _prompt_size(request) <= INLINE_PREPARE_CHARS:
            job, ready = self._prepare(request, resume, cancel, emit)
        else:  # rendering and tokenizing a long prompt would hold up the loop
            job, ready = await anyio.to_thread.run_sync(
                self._prepare, request, resume, cancel, emit
            )
        for piece in ready:
            yield piece
        if not job.seqs:
            yield job.done()
            return
        self.decoder.submit(job)
        ended = False
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                if isinstance(item, Done):
                    ended = True
                    yield item
                    return
                yield item
        finally:
            if not ended:
                # The consumer went away: the decode thread drops the job at
                # its next step and says so with a Done; wait for that, so
                # its slots are free before the worker counts them free.
                cancel.set()
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    while not isinstance(await inbox.get(), (Done, BaseException)):
                        pass

    def alive(self) -> bool:
        """False once the decode thread is gone (nothing would ever decode
        again): the worker then stops heartbeating and exits to be restarted
        (streamworker.heartbeat.engine_alive)."""
        return self.decoder.alive()

    def close(self) -> None:
        if not self.decoder.close():
            return  # still decoding: freeing under it would crash the process
        llama_cpp.llama_free(self.ctx)
        self.model.close()
