"""The batched engine's decode thread: which sequences join, what each step
decodes, and what the step's logits become.

Each step decodes one token for each sequence that is generating and a
bounded chunk of the prompts of sequences that are joining (so a long new
prompt cannot stall the others for long). New jobs join and finished or
cancelled ones leave between steps. A slot keeps its KV when its sequence
leaves: a later prompt that starts the same way reuses it (prefix_cache.py).

Two ways to step (BATCH_INVARIANT):

- invariant: on the CPU, generating rows go in decodes of at most 7 rows
  and each prompt chunk in a decode of its own (CPU_MAX_ROWS, _step), so a
  sequence's answer does not depend on what else runs.
- mixed: every generating row and up to STEP_TOKENS of joining prompts in
  one decode (_mixed_step).

Only this thread calls into the llama.cpp context once it runs. It never
waits on an event loop: what a step emits is handed to each loop in one
`call_soon_threadsafe` when the step ends (_flush).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable

import llama_cpp

from streamworker.engines.base import Done, EngineError, Piece
from streamworker.engines.choices import echo_entries, make_sampler
from streamworker.engines.prefix_cache import SlotCache
from streamworker.engines.sampling import logits_view, token_logprob
from streamworker.engines.sequences import BatchJob, Emit, Seq

# Prompt tokens decoded between two generating steps, and the most tokens
# one mixed step holds. A decode's time grows with its token count, so this
# bounds how long joining prompts delay the others' next token: by one
# decode of 128 tokens (about 0.2 s for the bundled model on 2 CPU cores,
# docs/benchmarks.md), plus one pass over the weights (~20 ms) for each
# further prompt that shares those 128 tokens in invariant mode. Invariant
# prefill chunks start at multiples of it, so it is also the grain of exact
# prefix reuse (prefix_cache.py): 128 tokens prefill only ~5% slower than
# 256 here, and lose half as much of a prefix.
PREFILL_CHUNK = 128
STEP_TOKENS = PREFILL_CHUNK
# A prefix shorter than this is not worth a copy of a whole KV stream (tens
# of MiB) from another slot; it is recomputed instead.
COPY_MIN_TOKENS = 128
N_BATCH = 512  # the context's logical batch, as in the high-level API
# On the CPU, ggml switches matmul kernels once a decode holds 8 or more rows
# (llamafile's tinyBLAS), and those round differently (greedy logits moved by
# more than 1 on the bundled model). Decoding at most 7 sequences per call
# keeps each sequence's answer independent of how many others run; 8 then
# cost two passes over the weights instead of one.
CPU_MAX_ROWS = 7


def _deliver(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for inbox, item in batch:
        inbox.put_nowait(item)


class DecodeLoop:
    """Runs the steps of one llama.cpp context (n_seq_max = `slots`, one KV
    stream per slot) on a thread of its own."""

    def __init__(
        self,
        ctx: llama_cpp.llama_context_p,
        vocab: llama_cpp.llama_vocab_p,
        *,
        n_ctx: int,
        slots: int,
        piece: Callable[[int], bytes],
        invariant: bool,
        on_gpu: bool,
        prefix_cache: bool,
    ) -> None:
        self.ctx = ctx
        self.vocab = vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.memory = llama_cpp.llama_get_memory(ctx)
        self._n_ctx = n_ctx  # per sequence
        self._piece = piece
        # A GPU rounds by batch size anyway and lives on wide batches.
        self.max_rows = N_BATCH if on_gpu or not invariant else CPU_MAX_ROWS
        self.mixed = not invariant
        self.cache = SlotCache(slots, PREFILL_CHUNK, invariant) if prefix_cache else None
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)

        self._lock = threading.Condition()
        self._waiting: deque[BatchJob] = deque()
        self._free_ids = list(range(slots))
        # What this thread emitted during the current step, handed to the
        # event loops in one call each when the step ends (_flush).
        self._outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, object]] = []
        self._closed = False
        self.steps = 0  # decode steps run (for tests and benchmarks)
        self.prefilled = 0  # tokens decoded as prefill (n choices share theirs)
        self.reused = 0  # prompt tokens taken from the prefix cache instead
        self.queried = 0  # prompt tokens of jobs that looked in the prefix cache
        self._thread = threading.Thread(target=self._run, name="batched-decode", daemon=True)
        self._thread.start()

    # -- called from the event loops ---------------------------------------------

    def emitter(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue) -> Emit:
        """How a job's items reach `inbox` on `loop`: held until the step
        that made them ends (_flush)."""

        def emit(item: Piece | Done | BaseException) -> None:
            self._outbox.append((loop, inbox, item))

        return emit

    def submit(self, job: BatchJob) -> None:
        """Queue the job; it joins when a step ends and its slots are free."""
        with self._lock:
            if self._closed:
                raise EngineError("the engine is closed")
            self._waiting.append(job)
            self._lock.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> bool:
        """Stop the thread (jobs still in it end with an error); False when it
        is still decoding, and nothing may then be freed under it."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            return False
        llama_cpp.llama_batch_free(self.batch)
        return True

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        active: list[Seq] = []
        while True:
            with self._lock:
                while not self._closed and not active and not self._waiting:
                    self._lock.wait()
                if self._closed:
                    waiting, self._waiting = list(self._waiting), deque()
                    break
                # A job joins when all its sequences fit: the fork needs them.
                while self._waiting and len(self._free_ids) >= len(self._waiting[0].seqs):
                    job = self._waiting.popleft()
                    self._place(job)
                    active.extend(job.seqs)
            try:
                active = self._step(active)
                self._flush()
            except Exception as exc:  # a decode fault fails the jobs in it
                jobs = {seq.job: None for seq in active}
                for job in jobs:  # their slots' KV is suspect: nothing of it is reused
                    job.error = job.error or EngineError("decode failed")
                for seq in active:
                    self._release(seq)
                for job in jobs:
                    job.emit(
                        exc
                        if isinstance(exc, EngineError)
                        else EngineError(f"decode failed: {exc}")
                    )
                active = []
                self._flush()
        for job in {seq.job: None for seq in active} | {job: None for job in waiting}:
            job.emit(EngineError("the engine is closed"))
        self._flush()

    def _flush(self) -> None:
        """Hand the step's items to their event loops: one wake-up of each
        loop per step, not one per token (each costs a system call and a
        turn of the loop, on the cores the decode needs). Never blocks the
        decode thread on a loop."""
        if not self._outbox:
            return
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        for loop, inbox, item in self._outbox:
            batches.setdefault(loop, []).append((inbox, item))
        self._outbox = []
        for loop, batch in batches.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_deliver, batch)

    def _place(self, job: BatchJob) -> None:
        """Give each of the job's sequences a free slot; start the prompt
        after the longest prefix a free slot's KV still holds."""
        free = sorted(self._free_ids)
        reuse = None
        if self.cache is not None and job.echo_logprobs is None:
            reuse = self.cache.best(free, job.prompt)
            self.queried += len(job.prompt)
        for seq in job.seqs:
            # The lowest free id keeps running sequences on neighbouring KV
            # streams (see _step).
            seq.seq_id = free.pop(0)
            self._free_ids.remove(seq.seq_id)
        parent = job.seqs[0]
        dst = parent.seq_id
        taken = 0
        if reuse is not None and reuse[1] > 0:
            src, taken = reuse
            if src != dst and taken < COPY_MIN_TOKENS:
                taken = 0
            elif src != dst:
                # Whole-stream copy (each slot has a KV stream of its own),
                # made at the next decode; the source keeps its prefix too.
                llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
                self.cache.tokens[dst] = list(self.cache.tokens[src])  # type: ignore[union-attr]
        for seq in job.seqs:
            if self.cache is not None and not (seq is parent and taken):
                self.cache.tokens[seq.seq_id] = []
            if not (seq is parent and taken):
                llama_cpp.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
        if taken:
            llama_cpp.llama_memory_seq_rm(self.memory, dst, taken, -1)
            if llama_cpp.llama_memory_seq_pos_min(self.memory, dst) != 0:
                # Positions the prefix needs are gone (never expected with
                # whole-context sliding-window layers): start from scratch.
                llama_cpp.llama_memory_seq_rm(self.memory, dst, -1, -1)
                taken = 0
        if self.cache is not None:
            self.cache.tokens[dst] = []  # the slot's KV changes from here on
        if taken:
            parent.n_past = taken
            parent.tokens = job.prompt[:taken]
            parent.feed = job.prompt[taken:]
            self.reused += taken

    def _release(self, seq: Seq) -> bool:
        """Free the sequence's slot, keeping what its KV holds that a later
        prompt may reuse; True when it was its job's last one."""
        if seq.seq_id < 0:
            return False
        kept = 0
        if self.cache is not None and seq.job.error is None:
            prefilled = len(seq.job.prompt) - len(seq.job.seqs[0].feed)
            kept = self.cache.kept(len(seq.job.prompt), prefilled, len(seq.tokens))
            kept = min(kept, len(seq.tokens))
            self.cache.tokens[seq.seq_id] = seq.tokens[:kept]
        llama_cpp.llama_memory_seq_rm(self.memory, seq.seq_id, kept, -1)
        with self._lock:
            self._free_ids.append(seq.seq_id)
        seq.seq_id = -1
        seq.choice.close()
        seq.job.live -= 1
        return seq.job.live == 0

    def _drop(self, seq: Seq, running: list[Seq]) -> None:
        """The sequence leaves; its job ends with its last sequence. Slots are
        freed before the Done: the worker counts them free on the Done."""
        running.remove(seq)
        if self._release(seq):
            seq.job.emit(seq.job.error or seq.job.done())

    def _step(self, active: list[Seq]) -> list[Seq]:
        """One round of decoding; returns the sequences still running."""
        running = list(active)
        for seq in active:
            if seq.choice.sampler is None and seq.job.error is None:
                try:  # a bad grammar fails its own job, not the others
                    sampler = make_sampler(seq.choice, self.vocab, self.n_vocab, self._n_ctx)
                    seq.choice.start(sampler)
                except EngineError as exc:
                    seq.job.error = exc
            if seq.job.cancel.is_set() or seq.job.error is not None:
                self._drop(seq, running)
        generating = sorted(
            (seq for seq in running if not seq.feed and not seq.waiting), key=lambda q: q.seq_id
        )
        joining = [seq for seq in running if seq.feed]
        if self.mixed:
            self._mixed_step(generating, joining, running)
            return running
        # Generating sequences: one token each, in as few decodes as allowed,
        # split evenly (8 on the CPU: 4 + 4) into runs of neighbouring seq
        # ids: a decode's KV view spans every stream from its lowest to its
        # highest id, so seqs 0,2,4,6 cost 1.7x what 0,1,2,3 cost.
        groups = -(-len(generating) // self.max_rows)
        size = -(-len(generating) // groups) if groups else 0
        for g in range(groups):
            group = generating[g * size : (g + 1) * size]
            n = 0
            for seq in group:
                n = self._add(n, seq.next_token, seq, logits=True)
            self._decode(n)
            self._sampled(group, running)
        # Then joining prompts, each chunk in a decode of its own: ggml's CPU
        # kernels round differently depending on where a token sits in a
        # batch, so a prompt decoded on its own, in chunks that start at
        # multiples of PREFILL_CHUNK, gives the same logits however many
        # other sequences run, and whether or not its prefix came from the
        # prefix cache (prefix_cache.py). Several prompts' chunks go in one
        # step while they fit in PREFILL_CHUNK tokens together (at least one
        # goes): clients that arrive at once start generating together, not
        # one step apart, and each first token leaves as soon as it exists.
        budget = PREFILL_CHUNK
        for seq in joining:
            take = min(len(seq.feed), PREFILL_CHUNK - seq.n_past % PREFILL_CHUNK)
            if take > budget:
                break
            budget -= take
            self._decode(self._add_prompt(0, seq, take))
            self._prompt_decoded(seq, running)
            self._flush()
        return running

    def _mixed_step(self, generating: list[Seq], joining: list[Seq], running: list[Seq]) -> None:
        """One decode for the whole step: every generating row, then joining
        prompts' tokens up to STEP_TOKENS in all (the oldest job first)."""
        for at in range(0, max(len(generating), 1), N_BATCH):
            group = generating[at : at + N_BATCH]
            n = 0
            for seq in group:
                n = self._add(n, seq.next_token, seq, logits=True)
            fed = []
            if at + N_BATCH >= len(generating):  # the last group takes the prompts
                budget = max(STEP_TOKENS - n, 0)
                for seq in joining:
                    take = min(len(seq.feed), budget, N_BATCH - n)
                    if take <= 0:
                        break
                    n = self._add_prompt(n, seq, take)
                    budget -= take
                    fed.append(seq)
            if n == 0:
                return
            self._decode(n)
            self._sampled(group, running)
            for seq in fed:
                self._prompt_decoded(seq, running)

    def _sampled(self, group: list[Seq], running: list[Seq]) -> None:
        """After a decode of `group`'s next tokens: each samples its next."""
        for seq in group:
            if seq.forced:  # a logged token: decoded, not sampled
                seq.next_token = seq.forced.pop(0)
            elif not self._advance(seq):
                self._drop(seq, running)

    def _add_prompt(self, n: int, seq: Seq, take: int) -> int:
        """Add the next `take` prompt tokens of `seq` to the batch from `n`."""
        job = seq.job
        chunk, seq.feed = seq.feed[:take], seq.feed[take:]
        self.prefilled += take
        # The echo's logprobs need every prompt position's logits.
        rows = seq.parent and job.echo_logprobs is not None
        seq.echo_rows = []
        for i, token in enumerate(chunk):
            if rows and seq.n_past + 1 < len(job.prompt):
                seq.echo_rows.append((seq.n_past, n))
            last = not seq.feed and i == take - 1
            n = self._add(n, token, seq, logits=last or (rows and seq.n_past < len(job.prompt)))
            if last:
                seq.batch_index = n - 1
        return n

    def _prompt_decoded(self, seq: Seq, running: list[Seq]) -> None:
        """After a decode that held a chunk of `seq`'s prompt."""
        job = seq.job
        for pos, index in seq.echo_rows:
            row = logits_view(self.ctx, index, self.n_vocab)
            top = job.params.top_logprobs
            job.echo_logprobs.append(token_logprob(row, job.prompt[pos + 1], top, self._piece))  # type: ignore[union-attr]
        if seq.feed:
            return
        if seq.parent and job.split:
            self._fork(seq, running)
        else:
            self._begin(seq, running)

    def _begin(self, seq: Seq, running: list[Seq]) -> None:
        """The prompt is in the sequence's KV: decode its choice's logged
        tokens first (one per step), or sample its first token now."""
        if seq.choice.remaining <= 0:  # ran only for the echo's logprobs
            for entry in seq.choice.end("length"):
                seq.job.emit(entry)
            self._drop(seq, running)
        elif seq.choice.done_tokens:
            seq.forced = list(seq.choice.done_tokens)
            seq.next_token = seq.forced.pop(0)
        elif not self._advance(seq):
            self._drop(seq, running)

    def _fork(self, parent: Seq, running: list[Seq]) -> None:
        """The prompt is in the parent's KV: give each choice its copy, and
        let each go on with its own logged tokens or its first sample."""
        job = parent.job
        parent.parent = False
        if job.echo_logprobs is not None:  # else the echo went out at once
            for choice in job.choices:
                if not choice.ended:
                    for piece in echo_entries(
                        choice, job.prompt, job.echo_first, job.echo_logprobs, self._piece
                    ):
                        job.emit(piece)
        for seq in job.seqs:
            if seq is not parent:
                # Whole-stream copy (each sequence has a KV stream of its
                # own), made at the next decode, before that decode writes.
                llama_cpp.llama_memory_seq_cp(self.memory, parent.seq_id, seq.seq_id, -1, -1)
                seq.n_past = parent.n_past
                seq.tokens = list(parent.tokens)
                seq.waiting = False
            seq.batch_index = parent.batch_index
        for seq in list(job.seqs):
            if seq.seq_id >= 0:
                self._begin(seq, running)

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        self.steps += 1

    def _add(self, n: int, token: int, seq: Seq, *, logits: bool) -> int:
        batch = self.batch
        batch.token[n] = token
        batch.pos[n] = seq.n_past
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq.seq_id
        batch.logits[n] = logits
        seq.tokens.append(token)
        seq.n_past += 1
        if logits:
            seq.batch_index = n
        return n + 1

    def _advance(self, seq: Seq) -> bool:
        """Sample this step's token for `seq` and emit it; False when it ended."""
        choice = seq.choice
        try:
            entries = choice.step(logits_view(self.ctx, seq.batch_index, self.n_vocab))
        except EngineError as exc:  # no token the grammar allows: this job only
            seq.job.error = exc
            return False
        for entry in entries:
            seq.job.emit(entry)
        if choice.reason:
            return False
        if seq.n_past >= self._n_ctx:
            seq.job.emit(choice.end("length")[0])
            return False
        seq.next_token = entries[0].token
        return True
