"""The batched engine: continuous batching over llama.cpp's low-level API.

One model, one context holding `slots` sequences, one decode thread. Each step
is a single `llama_decode` over every active sequence: one token for each
sequence that is generating, plus a bounded chunk of prompt for sequences
that are still prefilling (so a long new prompt cannot stall the others for
long). New requests join and finished or cancelled ones leave between steps;
a sequence's KV cells are removed when it leaves, so its slot is clean for
the next job.

Greedy sampling (temperature 0) is a numpy argmax over the sequence's logits:
per-sequence `llama_sampler_sample` over Gemma's 262k vocabulary costs more
than the decode itself on a GPU. Other temperatures use one llama.cpp sampler
chain per sequence, seeded from the request.

The decode thread never waits on the event loop: it hands items over with
`loop.call_soon_threadsafe`, and the async side never calls into llama.cpp
except through that thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio
import llama_cpp
import numpy as np
from llama_cpp import _internals

from streamworker.engines.base import (
    Done,
    EngineError,
    Piece,
    PromptExceedsContext,
    TextAssembler,
)
from streamworker.engines.model_file import resolve_model_path
from streamworker.protocol.wire import GenerationParams, Message
from streamworker.settings import EngineSettings
from streamworker.tokenizer import PromptBuilder, quiet_llama_logs

# Prompt tokens decoded between two generating steps. A decode's time grows
# with its token count, so this bounds how long a joining prompt delays the
# others' next token (about 0.2 s for the bundled model on 2 CPU cores).
PREFILL_CHUNK = 256
N_BATCH = 512  # the context's logical batch, as in the high-level API
# On the CPU, ggml switches matmul kernels once a decode holds 8 or more rows
# (llamafile's tinyBLAS), and those round differently (greedy logits moved by
# more than 1 on the bundled model). Decoding at most 7 sequences per call
# keeps each sequence's answer independent of how many others run; 8 then
# cost two passes over the weights instead of one.
CPU_MAX_ROWS = 7

Emit = Callable[[Piece | Done | BaseException], None]


@dataclass(eq=False)
class _Seq:
    """One request inside the decode thread."""

    feed: list[int]  # tokens still to prefill (prompt + resumed tokens)
    prompt_len: int
    params: GenerationParams
    assembler: TextAssembler
    remaining: int  # tokens still allowed by max_tokens
    cancel: threading.Event
    emit: Emit
    seq_id: int = -1
    n_past: int = 0  # positions already in the KV cache
    next_token: int = -1  # sampled, to be decoded in the next step
    produced: int = 0
    sampler: llama_cpp.llama_sampler_p | None = None
    batch_index: int = -1  # where this step's logits are, or -1


class BatchedEngine:
    def __init__(self, settings: EngineSettings, *, batch_invariant: bool = True) -> None:
        """batch_invariant=False trades the guarantee below (an answer does not
        depend on the load) for ggml's fastest CPU kernels; benchmarks only."""
        quiet_llama_logs()
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
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
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
        # defaults: the two engines must compute the same logits.
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.yarn_attn_factor = 1.0
        cparams.yarn_beta_fast = 32.0
        cparams.yarn_beta_slow = 1.0
        cparams.no_perf = True
        # Sliding-window layers keep only their window per sequence, not the
        # whole context: the KV of 8 slots then costs ~1/4 of the memory.
        cparams.swa_full = False
        self.ctx = llama_cpp.llama_init_from_model(self.model.model, cparams)
        if not self.ctx:
            self.model.close()
            raise EngineError("llama.cpp could not create a context")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        on_gpu = settings.model_n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        # A GPU rounds by batch size anyway and lives on wide batches.
        self.max_rows = N_BATCH if on_gpu or not batch_invariant else CPU_MAX_ROWS
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self.prompts = PromptBuilder(self.model, settings.chat_format)

        self._lock = threading.Condition()
        self._waiting: deque[_Seq] = deque()
        self._free_ids = list(range(self.slots))
        self._closed = False
        self.steps = 0  # decode steps run (for tests and benchmarks)
        self._thread = threading.Thread(target=self._run, name="batched-decode", daemon=True)
        self._thread.start()

    # -- the async side ---------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.prompts.count(messages)

    def _prepare(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        resume: Sequence[Piece],
        cancel: threading.Event,
        emit: Emit,
    ) -> _Seq:
        prompt, template_stops = self.prompts.tokens(messages)
        if len(prompt) + params.max_tokens > self._n_ctx:
            raise PromptExceedsContext(
                f"{len(prompt)} prompt tokens + max_tokens {params.max_tokens} exceed "
                f"the context of {self._n_ctx}"
            )
        done_tokens = [p.token for p in resume if p.token >= 0]
        assembler = TextAssembler([*params.stop, *template_stops])
        assembler.replay(
            [self.model.detokenize([t]) for t in done_tokens], "".join(p.text for p in resume)
        )
        feed = prompt + done_tokens
        return _Seq(
            feed=feed,
            prompt_len=len(prompt),
            params=params,
            assembler=assembler,
            remaining=params.max_tokens - len(done_tokens),
            cancel=cancel,
            emit=emit,
        )

    async def generate(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        resume: Sequence[Piece],
        cancel: threading.Event,
    ) -> AsyncIterator[Piece | Done]:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Piece | Done | BaseException] = asyncio.Queue()

        def emit(item: Piece | Done | BaseException) -> None:
            # Never blocks the decode thread on the loop.
            loop.call_soon_threadsafe(inbox.put_nowait, item)

        # Template rendering and tokenization are CPU work: off the loop too.
        seq = await anyio.to_thread.run_sync(self._prepare, messages, params, resume, cancel, emit)
        if seq.remaining <= 0:
            yield Done("length", seq.prompt_len)
            return
        with self._lock:
            if self._closed:
                raise EngineError("the engine is closed")
            self._waiting.append(seq)
            self._lock.notify()
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
                # The consumer went away: the decode thread drops the sequence
                # at its next step and says so with a Done; wait for that, so
                # the slot is free before the worker counts it free.
                cancel.set()
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    while not isinstance(await inbox.get(), (Done, BaseException)):
                        pass

    def alive(self) -> bool:
        """False once the decode thread is gone (nothing would ever decode
        again): the worker then stops heartbeating and exits to be restarted
        (streamworker.heartbeat.engine_alive)."""
        return self._thread.is_alive()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            return  # still decoding: freeing under it would crash the process
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        self.model.close()

    # -- the decode thread --------------------------------------------------------

    def _run(self) -> None:
        active: list[_Seq] = []
        while True:
            with self._lock:
                while not self._closed and not active and not self._waiting:
                    self._lock.wait()
                if self._closed:
                    waiting, self._waiting = list(self._waiting), deque()
                    break
                while self._waiting and self._free_ids:
                    seq = self._waiting.popleft()
                    # The lowest free id keeps running sequences on neighbouring
                    # KV streams (see _step).
                    seq.seq_id = min(self._free_ids)
                    self._free_ids.remove(seq.seq_id)
                    active.append(seq)
            try:
                active = self._step(active)
            except Exception as exc:  # a decode fault fails the sequences in it
                for seq in active:
                    self._release(seq)
                    seq.emit(EngineError(f"decode failed: {exc}"))
                active = []
        for seq in [*active, *waiting]:
            seq.emit(EngineError("the engine is closed"))

    def _release(self, seq: _Seq) -> None:
        if seq.seq_id >= 0:
            llama_cpp.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
            with self._lock:
                self._free_ids.append(seq.seq_id)
            seq.seq_id = -1
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
            seq.sampler = None

    def _step(self, active: list[_Seq]) -> list[_Seq]:
        """One round of decoding; returns the sequences still running."""
        running: list[_Seq] = []
        for seq in active:
            if seq.cancel.is_set():
                self._release(seq)
                seq.emit(Done("cancelled", seq.prompt_len))
            else:
                running.append(seq)
        # Generating sequences: one token each, in as few decodes as allowed,
        # split evenly (8 on the CPU: 4 + 4) into runs of neighbouring seq
        # ids: a decode's KV view spans every stream from its lowest to its
        # highest id, so seqs 0,2,4,6 cost 1.7x what 0,1,2,3 cost.
        generating = sorted((seq for seq in running if not seq.feed), key=lambda q: q.seq_id)
        groups = -(-len(generating) // self.max_rows)
        size = -(-len(generating) // groups) if groups else 0
        for g in range(groups):
            group = generating[g * size : (g + 1) * size]
            n = 0
            for seq in group:
                n = self._add(n, seq.next_token, seq, logits=True)
            self._decode(n)
            for seq in group:
                if not self._advance(seq):
                    self._release(seq)
                    running.remove(seq)
        # Then one chunk of one joining prompt, in a decode of its own: ggml's
        # CPU kernels round differently depending on where a token sits in a
        # batch, so a prompt decoded on its own, cut where the high-level API
        # cuts it, gives the same logits as the single-sequence engine.
        seq = next((seq for seq in running if seq.feed), None)
        if seq is not None:
            take = min(len(seq.feed), PREFILL_CHUNK)
            chunk, seq.feed = seq.feed[:take], seq.feed[take:]
            n = 0
            for i, token in enumerate(chunk):
                n = self._add(n, token, seq, logits=not seq.feed and i == take - 1)
            self._decode(n)
            if not seq.feed and not self._advance(seq):
                self._release(seq)
                running.remove(seq)
        return running

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        self.steps += 1

    def _add(self, n: int, token: int, seq: _Seq, *, logits: bool) -> int:
        batch = self.batch
        batch.token[n] = token
        batch.pos[n] = seq.n_past
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq.seq_id
        batch.logits[n] = logits
        seq.n_past += 1
        if logits:
            seq.batch_index = n
        return n + 1

    def _sample(self, seq: _Seq) -> int:
        if seq.params.temperature <= 0:
            ptr = llama_cpp.llama_get_logits_ith(self.ctx, seq.batch_index)
            logits = np.ctypeslib.as_array(
                ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
            )
            return int(logits.argmax())
        if seq.sampler is None:
            # The high-level API's chain for these parameters (top_k 0 and
            # min_p 0 are no-ops there), seeded per request.
            chain = llama_cpp.llama_sampler_chain_init(
                llama_cpp.llama_sampler_chain_default_params()
            )
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_top_p(seq.params.top_p, 1)
            )
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_temp(seq.params.temperature)
            )
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_dist(seq.params.seed & 0xFFFFFFFF)
            )
            seq.sampler = chain
        return llama_cpp.llama_sampler_sample(seq.sampler, self.ctx, seq.batch_index)

    def _advance(self, seq: _Seq) -> bool:
        """Sample this step's token for `seq` and emit it; False when it ended."""
        token = self._sample(seq)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            return self._finish(seq, "stop")
        text = seq.assembler.feed(self.model.detokenize([token]))
        seq.produced += 1
        seq.emit(Piece(token, text))
        if seq.assembler.stopped:
            return self._finish(seq, "stop")
        if seq.produced >= seq.remaining:
            return self._finish(seq, "length")
        if seq.n_past >= self._n_ctx:
            return self._finish(seq, "length")
        seq.next_token = token
        return True

    def _finish(self, seq: _Seq, reason: str) -> bool:
        # Free the slot before the Done: the worker counts it free on the Done.
        self._release(seq)
        if tail := seq.assembler.flush():
            seq.emit(Piece(-1, tail))
        seq.emit(Done(reason, seq.prompt_len))
        return False
