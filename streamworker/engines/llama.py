"""The llama engine: llama-cpp-python's high-level API, one sequence at a time.

The reference the batched engine is tested against. A resumed job is
prefilled with the prompt plus the tokens already delivered, and generation
continues from there, so the client's text continues exactly.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import llama_cpp
from llama_cpp import Llama

from streamworker.engines.base import (
    Done,
    Piece,
    PromptExceedsContext,
    TextAssembler,
    ThreadedEngine,
)
from streamworker.engines.model_file import resolve_model_path
from streamworker.protocol.wire import GenerationParams, Message
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
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        resume: Sequence[Piece],
        cancel: threading.Event,
    ) -> Iterator[Piece | Done]:
        prompt, template_stops = self.prompts.tokens(messages)
        done_tokens = [p.token for p in resume if p.token >= 0]
        if len(prompt) + params.max_tokens > self.n_ctx:
            raise PromptExceedsContext(
                f"{len(prompt)} prompt tokens + max_tokens {params.max_tokens} exceed "
                f"the context of {self.n_ctx}"
            )
        assembler = TextAssembler([*params.stop, *template_stops])
        history = [*prompt, *done_tokens]
        assembler.replay(
            [
                self.llm.detokenize([t], prev_tokens=history[: len(prompt) + i])
                for i, t in enumerate(done_tokens)
            ],
            "".join(p.text for p in resume),
        )
        remaining = params.max_tokens - len(done_tokens)
        if remaining <= 0:
            yield Done("length", len(prompt))
            return
        self.llm.set_seed(params.seed)
        self._prefill(prompt, done_tokens)
        vocab = self.llm._model.vocab
        # generate() sees the whole history in the cache but its last token, so
        # it evaluates only that token, then samples on from there.
        generator = self.llm.generate(
            history,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            reset=True,
        )
        finish = "length"
        produced = 0
        try:
            for token in generator:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                text = assembler.feed(self.llm.detokenize([token], prev_tokens=history))
                history.append(token)
                produced += 1
                yield Piece(token, text)
                if assembler.stopped:
                    finish = "stop"
                    break
                if produced >= remaining:
                    break
        finally:
            with contextlib.suppress(Exception):
                generator.close()
        if finish != "cancelled" and (tail := assembler.flush()):
            yield Piece(-1, tail)
        yield Done(finish, len(prompt))

    def _prefill(self, prompt: list[int], done: list[int]) -> None:
        """Evaluate the history exactly as an uninterrupted run did: the prompt
        but its last token in batches, then every later token one at a time.
        CPU kernels for a batch and for one token round differently, so a
        resumed job prefilled in one batch could pick another token at a near
        tie; replayed this way, greedy decoding continues identically. Also
        why the KV cache is not reused across requests: a reused prefix would
        carry another request's batching."""
        self.llm.reset()
        if len(prompt) > 1:
            self.llm.eval(prompt[:-1])
        for token in [prompt[-1], *done][:-1]:
            self.llm.eval([token])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()
