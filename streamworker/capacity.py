"""How many jobs a worker runs at once: WORKER_CONCURRENCY, or `auto`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capacity:
    slots: int
    gpu: str  # GPU UUID, or "cpu"
    reason: str


def resolve(value: str) -> Capacity:
    value = value.strip().lower()
    if value != "auto":
        try:
            slots = int(value)
        except ValueError:
            raise ValueError(f"WORKER_CONCURRENCY must be a number or 'auto', not {value!r}")
        if slots < 1:
            raise ValueError("WORKER_CONCURRENCY must be at least 1")
        return Capacity(slots, "cpu", "set by WORKER_CONCURRENCY")
    return Capacity(1, "cpu", "auto: no GPU sizing yet, one slot")


def report() -> str:
    cap = resolve("auto")
    return f"slots={cap.slots} gpu={cap.gpu} ({cap.reason})"
