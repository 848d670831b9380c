"""The llama engine: llama-cpp-python's high-level API, one sequence at a time.

The reference the batched engine is tested against. A resumed job is
prefilled with the prompt plus the tokens already delivered, and generation
continues from there, so the client's text continues exactly. Sampling is
the shared `sampling.Sampler` over the context's logits (llama.cpp's stages),
not the high-level API's sampler, so both engines sample alike; n choices
run one after another.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import llama_cpp
from llama_cpp import Llama

from streamworker.engines.base import MAX_CHOICES, Done, EngineError, Piece, ThreadedEngine
from streamworker.engines.choices import (
    Choice,
    check_fits,
    done_reason,
    echo_entries,
    echo_start,
    finish_reasons,
    make_sampler,
    plan,
    prompt_tokens,
)
from streamworker.engines.model_file import resolve_model_path
from streamworker.engines.sampling import logits_view, token_logprob
from streamworker.protocol.wire import JobRequest, Message, TokenLogprob
from streamworker.settings import EngineSettings
from streamworker.tokenizer import PromptBuilder, quiet_llama_logs


class LlamaEngine(ThreadedEngine):
    def __init__(self, settings: EngineSettings) -> None:
        super().__init__()
        quiet_llama_logs()
        self.model_name = settings.model_name
        self.path = resolve_model_path(settings.model_path)
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=settings.model_n_ctx,
            n_threads=settings.model_n_threads or None,
            n_gpu_layers=settings.model_n_gpu_layers,
            # As the batched engine: faster, and the two compute alike.
            flash_attn=True,
            verbose=False,
        )
        self.prompts = PromptBuilder(self.llm._model, settings.chat_format)

    @property
    def n_ctx(self) -> int:  # type: ignore[override]
        # llama.cpp rounds a small context up, but the Python token buffer
        # keeps the size asked for: the smaller one is the real limit.
        return min(self.llm.n_ctx(), len(self.llm.input_ids))

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.prompts.count(messages)

    def _generate_sync(
        self, request: JobRequest, resume: Sequence[Piece], cancel: threading.Event
    ) -> Iterator[Piece | Done]:
        params = request.params
        prompt, stops = prompt_tokens(request, self.prompts)
        check_fits(len(prompt), params, self.n_ctx, MAX_CHOICES)
        model = self.llm._model
        choices = plan(
            request,
            stops,
            resume,
            is_end=lambda t: llama_cpp.llama_vocab_is_eog(model.vocab, t),
            text_bytes=lambda t: model.detokenize([t]),
            logprob_bytes=self._piece,
        )
        first = echo_start(prompt, model.token_bos())
        echo_logprobs = None
        echoes = len(prompt) - first
        if params.echo and params.logprobs and any(c.echoed < echoes for c in choices):
            echo_logprobs = self._prompt_logprobs(prompt, params.top_logprobs)
        for choice in choices:
            if choice.finished:
                continue
            if params.echo:
                yield from echo_entries(choice, prompt, first, echo_logprobs, self._piece)
            yield from self._run_choice(prompt, choice, cancel)
            if not choice.reason:  # cancelled
                break
        cancelled = cancel.is_set() and any(not c.ended for c in choices)
        yield Done(done_reason(choices, cancelled), len(prompt), finish_reasons(choices))

    def _run_choice(
        self, prompt: list[int], choice: Choice, cancel: threading.Event
    ) -> Iterator[Piece]:
        """One choice, after a prefill of its own: the choices run one after
        another, each from a fresh evaluation of the prompt (plus the tokens
        it already has), exactly as a resumed choice is evaluated, so a
        choice's greedy answer does not depend on whether it was resumed."""
        if choice.remaining <= 0:
            yield from choice.end("length")
            return
        model = self.llm._model
        choice.start(make_sampler(choice, model.vocab, self.llm.n_vocab(), self.n_ctx))
        try:
            self._prefill(prompt, choice.done_tokens)
            while not cancel.is_set():
                entries = choice.step(logits_view(self.llm.ctx, -1, self.llm.n_vocab()))
                yield from entries
                if choice.reason:
                    return
                self.llm.eval([entries[0].token])
        finally:
            choice.close()

    def _piece(self, token: int) -> bytes:
        return self.llm._model.detokenize([token], special=True)

    def _prompt_logprobs(self, prompt: list[int], top_n: int) -> list[TokenLogprob | None]:
        """Every prompt token's logprob given the tokens before it (the echo of
        a legacy completion): one pass over the prompt with every row's
        logits, apart from the generation's own prefill."""
        out: list[TokenLogprob | None] = [None]
        n_vocab = self.llm.n_vocab()
        self.llm.reset()
        memory = llama_cpp.llama_get_memory(self.llm.ctx)
        llama_cpp.llama_memory_seq_rm(memory, -1, -1, -1)
        step = self.llm.n_batch
        batch = llama_cpp.llama_batch_init(step, 0, 1)
        try:
            for at in range(0, len(prompt) - 1, step):
                chunk = prompt[at : at + step]
                for i, token in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, at + i, 1
                    batch.seq_id[i][0], batch.logits[i] = 0, True
                batch.n_tokens = len(chunk)
                if llama_cpp.llama_decode(self.llm.ctx, batch) != 0:
                    raise EngineError("llama_decode failed on the prompt")
                for i in range(len(chunk)):
                    if at + i + 1 < len(prompt):
                        row = logits_view(self.llm.ctx, i, n_vocab)
                        out.append(token_logprob(row, prompt[at + i + 1], top_n, self._piece))
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_memory_seq_rm(memory, -1, -1, -1)
        return out

    def _prefill(self, prompt: list[int], done: list[int]) -> None:
        """Evaluate the history exactly as an uninterrupted run did: the whole
        prompt in batches, then every later token one at a time. CPU kernels
        for a batch and for one token round differently, so a resumed job
        prefilled in one batch could pick another token at a near tie;
        replayed this way, greedy decoding continues identically (and the
        batched engine, which does the same, computes the same logits). Also
        why the KV cache is not reused across requests: a reused prefix would
        carry another request's batching."""
        self.llm.reset()
        self.llm.eval(prompt)
        for token in done:
            self.llm.eval([token])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()
