"""The batched engine's bookkeeping: a job holds one sequence (a KV slot) per
choice still to run.

The prompt is prefilled once, on the job's first sequence. A job with
several sequences (n > 1) then forks: the prompt's KV is copied to the
sibling sequences. Each sequence goes on with the tokens its choice logged
in earlier attempts, decoded one per step as they were when they were
generated (CPU kernels round a batch of tokens differently from one token,
so a resumed greedy choice continues exactly as it would have), or samples
at once from the prompt's last logits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from streamworker.engines.base import Done, Piece
from streamworker.engines.choices import Choice, done_reason, echo_entries, finish_reasons
from streamworker.protocol.wire import GenerationParams, TokenLogprob

Emit = Callable[[Piece | Done | BaseException], None]


@dataclass(eq=False)
class BatchJob:
    """One request inside the decode thread."""

    prompt: list[int]
    params: GenerationParams
    choices: list[Choice]  # all of them, ended ones included
    cancel: threading.Event
    emit: Emit
    echo_first: int  # where the echoed prompt starts (after a BOS)
    # The prompt's logprobs, filled while it is prefilled, when the echo
    # needs them; else None.
    echo_logprobs: list[TokenLogprob | None] | None = None
    seqs: list[Seq] = field(default_factory=list)
    live: int = 0  # sequences not yet released
    error: Exception | None = None  # what failed the job (its other sequences leave)

    @property
    def split(self) -> bool:
        """Fork after the prompt (see the module's docstring); also where the
        echo's entries go out when they wait for the prompt's logprobs."""
        return len(self.seqs) > 1 or self.echo_logprobs is not None

    def done(self) -> Done:
        cancelled = self.cancel.is_set() and any(not c.ended for c in self.choices)
        return Done(
            done_reason(self.choices, cancelled), len(self.prompt), finish_reasons(self.choices)
        )


@dataclass(eq=False)
class Seq:
    """One choice of a job in one KV slot."""

    job: BatchJob
    choice: Choice
    feed: list[int]  # prompt tokens still to prefill
    parent: bool  # holds the prompt until the fork
    forced: list[int] = field(default_factory=list)  # logged tokens still to decode
    waiting: bool = False  # a sibling before the fork: nothing to decode yet
    seq_id: int = -1
    n_past: int = 0  # positions already in the KV cache
    tokens: list[int] = field(default_factory=list)  # the token at each of those positions
    next_token: int = -1  # sampled, to be decoded in the next step
    batch_index: int = -1  # where this step's logits are, or -1
    # Absolute prompt position of each token in this step's chunk whose
    # logits the echo's logprobs need, with its batch index.
    echo_rows: list[tuple[int, int]] = field(default_factory=list)


def prepare(job: BatchJob, piece: Callable[[int], bytes]) -> tuple[BatchJob, list[Piece]]:
    """The job with its sequences, and the entries that need no decoding: an
    echo without logprobs, the end of choices whose budget is spent (unless
    the prompt must run anyway for the echo's logprobs)."""
    ready: list[Piece] = []
    choices, prompt = job.choices, job.prompt
    if job.params.echo:
        echoes = len(prompt) - job.echo_first
        if job.params.logprobs and any(not c.ended and c.echoed < echoes for c in choices):
            job.echo_logprobs = [None]  # filled as the prompt is prefilled
        else:
            for choice in choices:
                if not choice.ended:
                    ready.extend(echo_entries(choice, prompt, job.echo_first, None, piece))
    if job.echo_logprobs is None:
        for choice in choices:
            if not choice.ended and choice.remaining <= 0:
                ready.extend(choice.end("length"))
    sequences(job)
    return job, ready


def sequences(job: BatchJob) -> list[Seq]:
    """One sequence per choice still to run; the first holds the prompt."""
    running = [c for c in job.choices if not c.ended]
    job.seqs = [Seq(job, c, [], parent=i == 0, waiting=i > 0) for i, c in enumerate(running)]
    job.live = len(job.seqs)
    if job.seqs:
        job.seqs[0].feed = list(job.prompt)
    return job.seqs
