"""Which KV a new sequence can take over from a slot the worker freed.

A slot keeps its KV when its sequence leaves, with the tokens that KV was
computed from. A new prompt that starts with some of those tokens (a system
prompt, the earlier turns of a chat, a retrieved context) starts after them:
its prefill decodes only the rest.

What may be reused depends on the engine's promise:

- batch-invariant (BATCH_INVARIANT=true): the prompt's logits must be bit for
  bit those of a prefill from scratch. A fresh prefill decodes the prompt in
  chunks that start at multiples of `chunk`; a chunk wholly inside the shared
  prefix computes the same numbers whichever prompt it came from, and the
  decodes after it then see the same cache. So only whole chunks of an
  earlier *prompt* are reused (generated tokens were decoded one per step,
  which rounds differently from a prefill), and the new prefill goes on at
  the same chunk boundary a fresh one would have reached.
- otherwise every token whose KV the slot holds counts, generated ones too
  (the next turn of a chat reuses the previous answer).

Either way at least one prompt token is left to decode: its logits start
the generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class SlotCache:
    """What each slot's KV stream holds from position 0: `tokens[s]` (empty
    when the slot holds nothing reusable)."""

    slots: int
    chunk: int
    invariant: bool

    def __post_init__(self) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(self.slots)]

    def usable(self, slot: int, prompt: Sequence[int]) -> int:
        """How many leading tokens of `prompt` the slot's KV can stand for."""
        n = min(common_prefix(self.tokens[slot], prompt), len(prompt) - 1)
        if self.invariant:
            n -= n % self.chunk
        return max(n, 0)

    def best(self, free: Sequence[int], prompt: Sequence[int]) -> tuple[int, int]:
        """(slot, tokens) of the free slot holding the longest usable prefix;
        (-1, 0) when none holds any."""
        best, length = -1, 0
        for slot in free:
            n = self.usable(slot, prompt)
            if n > length:
                best, length = slot, n
        return best, length

    def kept(self, prompt_len: int, prefilled: int, decoded: int) -> int:
        """How many leading positions of a leaving sequence stay reusable:
        `prefilled` prompt tokens went through the prefill, `decoded` tokens
        in all are in its KV."""
        if not self.invariant:
            return decoded
        return min(prefilled, prompt_len) // self.chunk * self.chunk
