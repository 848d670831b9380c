"""How many jobs a worker runs at once: WORKER_CONCURRENCY, or `auto`.

`auto` does the sizing operators otherwise do by hand
with nvidia-smi: keep 30% of the card free, take off what the model and the
runtime use, divide the rest by what one request needs:

    slots = floor((total x 0.7 - (weights + runtime)) / KV cache per request)

at least 1, and no more than free memory allows when other processes already
use the card. Weights are the GGUF's size; the KV cache of one request is
layers x KV heads x (key + value head size) x n_ctx x bytes per element of the
cache type, all read from the GGUF header. Without NVML (no NVIDIA driver) the
CPU rule applies (CPU_SLOTS sequences, whatever the core count), and the
result says so.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from streamworker.gguf import GGUFError, ModelShape, model_shape

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from streamworker.settings import EngineSettings

GiB = 1 << 30
HEADROOM = 0.7  # keep 30% of VRAM free for the runtime's own spikes
# CUDA context, cuBLAS workspace and llama.cpp's compute buffers. Measured on
# an H100: loading gemma-3-270m at n_ctx 4096 took 1.35 GiB, of which weights
# 0.24 and KV cache 0.07; the rest is this overhead (it grows a little with
# n_batch, which we leave at llama.cpp's default).
RUNTIME_OVERHEAD = 1 * GiB
# free memory may be used up to this fraction (other processes' allocations move).
FREE_MARGIN = 0.9
# On a CPU one decode step reads every weight once whatever the number of
# rows, so rows are nearly free until the step turns compute-bound: measured
# with the bundled model on 2 cores, 4 sequences make 2.4x the tokens of one,
# 8 sequences no more than 4 (docs/benchmarks.md). Four slots take most of
# that gain without slowing each stream much (llama-server's default too);
# more cores move the knee further out, so set a number there.
CPU_SLOTS = 4
# The most `auto` gives one worker: per-stream speed falls as the batch grows
# (on an H100 the batched decode's aggregate still rose at 32 sequences), and
# llama.cpp caps sequences per context. Set a number to go beyond.
AUTO_MAX_SLOTS = 64
# Bytes per cached element for llama.cpp's KV cache types (block formats:
# q8_0 stores 32 values in 34 bytes, q4_0 in 18).
CACHE_TYPE_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
}


@dataclass(frozen=True)
class Capacity:
    slots: int
    gpu: str  # GPU UUID, or "cpu-<host>" (the semaphore key)
    reason: str
    inputs: list[tuple[str, str]] = field(default_factory=list)  # for the table


@dataclass(frozen=True)
class GpuMemory:
    uuid: str
    name: str
    total: int
    free: int


def cpu_key() -> str:
    """The semaphore key on a host without a GPU: one per host."""
    return f"cpu-{socket.gethostname()}"


def read_gpu(nvml: ModuleType | None = None) -> GpuMemory | None:
    """The GPU this process will use, through NVML; None without a driver.

    CUDA_VISIBLE_DEVICES picks it (an index or a GPU UUID). NVML numbers GPUs
    in PCI bus order, so run workers with CUDA_DEVICE_ORDER=PCI_BUS_ID for
    an index to mean the same card to both (the systemd unit sets it)."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:  # pynvml.NVMLError: no driver, no GPU
        return None
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        if visible.startswith(("GPU-", "MIG-")):
            handle = nvml.nvmlDeviceGetHandleByUUID(visible)
        else:
            handle = nvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        name = nvml.nvmlDeviceGetName(handle)
        return GpuMemory(
            uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            name=name.decode() if isinstance(name, bytes) else str(name),
            total=int(mem.total),
            free=int(mem.free),
        )
    except Exception:  # a GPU NVML cannot describe: treat the host as CPU-only
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def gpu_slots(total: int, free: int, base: int, per_request: int) -> tuple[int, str]:
    """The sizing rule, and the free-memory cap. Returns (slots, why)."""
    by_rule = math.floor((total * HEADROOM - base) / per_request)
    by_free = math.floor((free * FREE_MARGIN - base) / per_request)
    slots = max(1, min(by_rule, by_free))
    why = f"floor(({_gib(total)} x {HEADROOM} - {_gib(base)}) / {_gib(per_request)}) = {by_rule}"
    if by_free < by_rule:
        why += f"; free memory allows only {by_free}"
    if slots > min(by_rule, by_free):
        why += "; at least 1"
    return slots, why


def cpu_slots() -> int:
    return CPU_SLOTS


def engine_limit(settings: EngineSettings | None) -> tuple[int, str]:
    """What the engine itself can run at once, whatever the memory allows."""
    if settings is not None and settings.engine == "llama":
        # One sequence at a time: more slots would only wait inside the worker
        # while holding GPU semaphore tokens other processes could use.
        return 1, "the llama engine decodes one sequence at a time (ENGINE=batched for more)"
    if settings is not None and settings.engine == "echo" and not settings.echo_concurrent:
        return 1, "the echo double runs one job at a time (ECHO_CONCURRENT for more)"
    return AUTO_MAX_SLOTS, f"auto stops at {AUTO_MAX_SLOTS} (set a number for more)"


# Settings only the batched engine reads, and what another engine does instead.
BATCHED_ONLY = {
    "BATCH_INVARIANT": "its answers never depend on the load anyway",
    "PREFIX_CACHE": "it evaluates every prompt from the start",
}


def unused_settings(settings: EngineSettings, env: Mapping[str, str]) -> list[str]:
    """A line for each batched-engine setting set in `env` that this engine
    cannot honour: the worker logs them at start rather than ignore them."""
    if settings.engine == "batched":
        return []
    return [
        f"{name} is set but ENGINE={settings.engine} does not use it: {why}"
        for name, why in BATCHED_ONLY.items()
        if env.get(name, "") != ""
    ]


def _capped(slots: int, settings: EngineSettings | None, inputs: list[tuple[str, str]]) -> int:
    limit, why = engine_limit(settings)
    if slots > limit:
        inputs.append(("engine limit", f"{limit}: {why}"))
        return limit
    return slots


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _shape(settings: EngineSettings | None) -> tuple[ModelShape | None, str]:
    if settings is None or settings.engine == "echo":
        return None, "no model file (echo test double)"
    try:
        from streamworker.engines.model_file import resolve_model_path

        return model_shape(resolve_model_path(settings.model_path)), ""
    except (OSError, GGUFError, ImportError) as exc:
        return None, f"model unreadable: {exc}"


def resolve(
    value: str,
    settings: EngineSettings | None = None,
    *,
    cache_type: str = "f16",
    nvml: ModuleType | None = None,
) -> Capacity:
    value = value.strip().lower()
    gpu = read_gpu(nvml)
    key = gpu.uuid if gpu is not None else cpu_key()
    if value != "auto":
        try:
            slots = int(value)
        except ValueError:
            raise ValueError(
                f"WORKER_CONCURRENCY must be a number or 'auto', not {value!r}"
            ) from None
        if slots < 1:
            raise ValueError("WORKER_CONCURRENCY must be at least 1")
        inputs = [("WORKER_CONCURRENCY", str(slots))]
        reason = "set by WORKER_CONCURRENCY"
        limit, why = engine_limit(settings)
        if settings is not None and settings.engine == "llama" and slots > limit:
            # More slots than the engine runs would only queue jobs inside the
            # worker (holding their leases and GPU semaphore tokens) while
            # looking like concurrency: clamp, and say so loudly at start.
            log.warning("WORKER_CONCURRENCY=%d clamped to %d: %s", slots, limit, why)
            inputs.append(("engine limit", f"{limit}: {why}"))
            reason = f"WORKER_CONCURRENCY={slots} clamped to {limit}: {why}"
            slots = limit
        return Capacity(slots, key, reason, [*inputs, ("semaphore key", key)])
    shape, problem = _shape(settings)
    inputs: list[tuple[str, str]] = [("WORKER_CONCURRENCY", "auto")]
    on_gpu = gpu is not None and (settings is None or settings.model_n_gpu_layers != 0)
    if shape is None or not on_gpu or gpu is None:
        cores = os.cpu_count() or 1
        why = (
            "no NVIDIA GPU (NVML unavailable)"
            if gpu is None
            else "MODEL_N_GPU_LAYERS=0 keeps the model on the CPU"
            if not on_gpu
            else problem
        )
        inputs += [
            ("GPU", why),
            ("CPU cores", str(cores)),
            ("rule", f"CPU rule: {CPU_SLOTS} slots (continuous batching on the CPU)"),
        ]
        if shape is not None:
            inputs.append(("model", f"{shape.arch}, {_gib(shape.file_bytes)} of weights"))
        elif gpu is None:
            inputs.append(("model", problem))
        slots = _capped(cpu_slots(), settings, inputs)
        inputs += [("semaphore key", key), ("slots", str(slots))]
        return Capacity(slots, key, f"auto, CPU rule: {why}", inputs)
    n_ctx = settings.model_n_ctx if settings is not None else 4096
    per_token = CACHE_TYPE_BYTES[cache_type]
    per_request = shape.kv_bytes(n_ctx, per_token)
    base = shape.file_bytes + RUNTIME_OVERHEAD
    by_memory, why = gpu_slots(gpu.total, gpu.free, base, per_request)
    inputs += [
        ("GPU", f"{gpu.name} ({gpu.uuid})"),
        ("total memory", _gib(gpu.total)),
        ("free memory", _gib(gpu.free)),
        (
            "model",
            f"{shape.arch}, {shape.n_layers} layers, {shape.n_kv_heads} KV heads, "
            f"head size {shape.key_length}/{shape.value_length}",
        ),
        ("weights (GGUF size)", _gib(shape.file_bytes)),
        ("runtime overhead", _gib(RUNTIME_OVERHEAD)),
        ("KV cache per request", f"{_gib(per_request)} (n_ctx {n_ctx}, cache {cache_type})"),
        ("rule", why),
    ]
    slots = _capped(by_memory, settings, inputs)
    inputs += [("semaphore key", key), ("slots", str(slots))]
    if slots < by_memory:
        why += f"; engine limit {slots}"
    return Capacity(slots, key, f"auto: {why}", inputs)


def table(cap: Capacity) -> str:
    width = max(len(k) for k, _ in cap.inputs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in cap.inputs)


def report(value: str = "auto", settings: EngineSettings | None = None) -> str:
    return table(resolve(value, settings))
