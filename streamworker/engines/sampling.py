"""Choosing the next token from a row of logits: llama.cpp's sampler stages
for one choice, and the logprobs a client asked for.

Both engines hand a numpy view of the model's logits to `Sampler.sample`.
The stages are llama.cpp's own (logit bias, penalties, grammar, top-k, min-p,
top-p, temperature, a seeded draw or greedy), so the answers match what
llama-server gives for the same parameters. A plain greedy request (no
grammar, bias or penalty) stays a numpy argmax: per-token sampler calls over
a 262k vocabulary cost more than the decode itself on a GPU.

The grammar runs apart from the chain, the way llama.cpp's common sampler
runs it: the token is first picked without it and kept when the grammar
allows it; only when it does not is the whole vocabulary filtered by the
grammar and the pick made again. A rejected draw followed by a draw from the
allowed tokens is a draw from the allowed tokens' distribution, so nothing
changes but the cost: checking every token of the vocabulary against the
grammar at every step is what makes constrained decoding slow.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable

import llama_cpp
import numpy as np

from streamworker.engines.base import EngineError
from streamworker.protocol.wire import GenerationParams, TokenLogprob, TopLogprob

# llama_token_data, as numpy sees it: the array the sampler stages work on.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class BadGrammar(EngineError):
    """llama.cpp could not parse the job's grammar: no retry can help."""

    permanent = True


def logits_view(ctx: llama_cpp.llama_context_p, index: int, n_vocab: int) -> np.ndarray:
    """The logits of one output row of the last decode, without a copy (valid
    until the next decode)."""
    ptr = llama_cpp.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))


def needs_chain(params: GenerationParams) -> bool:
    """Whether the request needs llama.cpp's stages (else: numpy argmax; a
    grammar runs apart from the chain either way)."""
    return bool(
        params.temperature > 0
        or params.logit_bias
        or params.repeat_penalty != 1.0
        or params.presence_penalty
        or params.frequency_penalty
    )


class Sampler:
    """One choice's sampling state: the chain (whose penalties remember the
    tokens so far), the grammar (which remembers where in the grammar the
    text is), and a seed of its own."""

    def __init__(
        self,
        vocab: llama_cpp.llama_vocab_p,
        n_vocab: int,
        params: GenerationParams,
        seed: int,
        penalty_window: int,
    ) -> None:
        self.n_vocab = n_vocab
        self._vocab = vocab
        self.chain: llama_cpp.llama_sampler_p | None = None
        self.grammar: llama_cpp.llama_sampler_p | None = None
        self._cur: np.ndarray | None = None  # made on first use: 3 MB for Gemma 3
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        if params.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not grammar:
                raise BadGrammar("the grammar could not be parsed")
            self.grammar = grammar
        if not needs_chain(params):
            return
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain

        def add(stage: llama_cpp.llama_sampler_p) -> None:
            llama_cpp.llama_sampler_chain_add(chain, stage)  # the chain owns it now

        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                biases[i].token, biases[i].bias = token, bias
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            # OpenAI's penalties count every token generated so far, not a
            # recent window as llama.cpp's default of 64 does.
            add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    penalty_window,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, logits: np.ndarray) -> int:
        """The next token; the sampler's state has taken it in."""
        if self.chain is None:
            token = int(logits.argmax())
        else:
            token = self._pick(logits, grammar_first=False)
        if self.grammar is not None and not self.allows(token, float(logits[token])):
            token = self._pick(logits, grammar_first=True)
        self._accept(token)
        return token

    def _pick(self, logits: np.ndarray, *, grammar_first: bool) -> int:
        if self._cur is None:
            self._cur = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        cur = self._cur
        cur["id"] = np.arange(self.n_vocab, dtype=np.int32)
        cur["logit"] = logits
        cur["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=cur.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self.n_vocab,
            selected=-1,
            sorted=False,
        )
        if grammar_first:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        if self.chain is not None:
            llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
            token = int(cur["id"][array.selected])
        else:  # greedy under a grammar: the best token it allows
            token = int(cur["id"][: array.size][cur["logit"][: array.size].argmax()])
        return token

    def allows(self, token: int, logit: float = 0.0) -> bool:
        """Whether the grammar (if any) lets `token` come next."""
        if self.grammar is None:
            return True
        one = self._one
        one[0] = (token, logit, 0.0)
        array = llama_cpp.llama_token_data_array(
            data=one.ctypes.data_as(llama_cpp.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return bool(np.isfinite(one["logit"][0]))

    def _accept(self, token: int) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_accept(self.chain, token)
        # An end-of-generation token ends the text: the grammar need not
        # advance (and llama.cpp aborts on one it does not expect).
        if self.grammar is not None and not llama_cpp.llama_vocab_is_eog(self._vocab, token):
            # llama.cpp aborts the process on a token its grammar cannot take.
            if not self.allows(token):
                raise BadGrammar(f"token {token} does not match the grammar")
            llama_cpp.llama_sampler_accept(self.grammar, token)

    def replay(self, tokens: list[int]) -> None:
        """A resumed choice: take in the tokens earlier attempts delivered,
        so the penalties count them and the grammar continues after them."""
        for token in tokens:
            self._accept(token)

    def close(self) -> None:
        for stage in (self.chain, self.grammar):
            if stage is not None:
                llama_cpp.llama_sampler_free(stage)
        self.chain = self.grammar = None


def token_logprob(
    logits: np.ndarray, token: int, top_n: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """The token's log-probability under the model (a log-softmax over the
    whole vocabulary, before any sampling stage: what OpenAI reports), and
    the `top_n` likeliest tokens with theirs."""
    row = logits.astype(np.float64, copy=False)
    peak = float(row.max())
    norm = peak + math.log(float(np.exp(row - peak).sum()))
    top: list[TopLogprob] = []
    if top_n > 0:
        best = np.argpartition(row, -top_n)[-top_n:]
        best = best[np.argsort(-row[best], kind="stable")]
        top = [TopLogprob(int(t), piece(int(t)), float(row[t]) - norm) for t in best]
    return TokenLogprob(piece(token), float(row[token]) - norm, top)
