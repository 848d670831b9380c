"""WORKER_CONCURRENCY=auto: the VRAM sizing rule, with NVML real (absent on
this machine) and faked at the pynvml boundary, against GGUF headers."""

from __future__ import annotations

import struct
import subprocess
import types
from pathlib import Path

import pytest

from streamworker import capacity
from streamworker.capacity import GiB, gpu_slots, resolve
from streamworker.gguf import model_shape, read_metadata
from streamworker.settings import EngineSettings
from tests.harness import PYTHON, ROOT


def write_gguf(path: Path, meta: dict[str, object], size: int = 0) -> Path:
    """A GGUF header with `meta` (ints as uint32, str as string), then a hole
    up to `size` bytes standing in for the weights (a sparse file)."""

    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta))
    for key, value in meta.items():
        if isinstance(value, str):
            body += s(key) + struct.pack("<I", 8) + s(value)
        else:
            body += s(key) + struct.pack("<II", 4, value)
    path.write_bytes(body)
    if size:
        with open(path, "r+b") as f:
            f.truncate(size)
    return path


class FakeNvml(types.ModuleType):
    """A TEST DOUBLE of pynvml: answers as a driver with one card would."""

    def __init__(self, total: int, free: int, uuid: str = "GPU-fake-0001") -> None:
        super().__init__("pynvml")
        self.total, self.free, self.uuid = total, free, uuid
        self.handles: list[object] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, i: int) -> object:
        self.handles.append(("index", i))
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> object:
        self.handles.append(("uuid", uuid))
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> object:
        return types.SimpleNamespace(total=self.total, free=self.free, used=self.total - self.free)

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return self.uuid

    def nvmlDeviceGetName(self, handle: object) -> bytes:
        return b"Fake 32GB"


def big_model(tmp_path: Path) -> Path:
    """7 GiB of weights (+1 GiB runtime = an 8 GiB base) and a KV
    cache of 48 layers x 8 heads x (128 + 128) x 2 bytes = 192 KiB a token:
    12 GiB per request at n_ctx 65536 (12 GB per request)."""
    return write_gguf(
        tmp_path / "big.gguf",
        {
            "general.architecture": "llama",
            "llama.block_count": 48,
            "llama.attention.head_count": 64,
            "llama.attention.head_count_kv": 8,
            "llama.embedding_length": 8192,
            "llama.context_length": 131072,
        },
        size=7 * GiB,
    )


def test_rule_arithmetic_matches_the_seed() -> None:
    # 32 GB card, 8 GB base, 12 GB per request: floor((22.4 - 8) / 12) = 1.
    assert gpu_slots(32 * GiB, 32 * GiB, 8 * GiB, 12 * GiB)[0] == 1
    assert gpu_slots(80 * GiB, 80 * GiB, 8 * GiB, 12 * GiB)[0] == 4
    # Never below 1, even when the model alone overflows the budget.
    assert gpu_slots(16 * GiB, 16 * GiB, 20 * GiB, 12 * GiB)[0] == 1
    # Other processes use the card: free memory caps the rule.
    slots, why = gpu_slots(80 * GiB, 40 * GiB, 8 * GiB, 12 * GiB)
    assert slots == 2 and "free memory" in why


def test_auto_with_nvml_faked_seed_example(tmp_path: Path) -> None:
    model = big_model(tmp_path)
    nvml = FakeNvml(total=32 * GiB, free=32 * GiB)
    # The batched engine: memory is the only limit below 64 slots.
    settings = EngineSettings(engine="batched", model_path=str(model), model_n_ctx=65536)
    cap = resolve("auto", settings, nvml=nvml)
    assert cap.slots == 1
    assert cap.gpu == "GPU-fake-0001"
    table = dict(cap.inputs)
    assert table["KV cache per request"].startswith("12.00 GiB")
    assert table["weights (GGUF size)"] == "7.00 GiB"
    assert "floor((32.00 GiB x 0.7 - 8.00 GiB) / 12.00 GiB) = 1" in table["rule"]
    # Same card, an 80 GB one: four requests fit.
    assert resolve("auto", settings, nvml=FakeNvml(80 * GiB, 80 * GiB)).slots == 4
    # A smaller context per request: more slots (n_ctx 16384 -> 3 GiB each).
    small = EngineSettings(engine="batched", model_path=str(model), model_n_ctx=16384)
    assert resolve("auto", small, nvml=nvml).slots == 4  # floor(14.4 / 3)
    # A q8_0 cache: 34 bytes per 32 values, 1.59 GiB a request: floor(14.4 / 1.59).
    assert resolve("auto", small, cache_type="q8_0", nvml=nvml).slots == 9


def test_engine_limits_what_memory_allows(tmp_path: Path) -> None:
    model = big_model(tmp_path)
    huge = FakeNvml(total=1024 * GiB, free=1024 * GiB)
    # The llama engine decodes one sequence at a time: more slots would only
    # queue inside the worker.
    llama = resolve(
        "auto", EngineSettings(engine="llama", model_path=str(model), model_n_ctx=512), nvml=huge
    )
    assert llama.slots == 1 and "engine limit" in dict(llama.inputs)
    batched = resolve(
        "auto", EngineSettings(engine="batched", model_path=str(model), model_n_ctx=512), nvml=huge
    )
    assert batched.slots == capacity.AUTO_MAX_SLOTS


def test_cuda_visible_devices_picks_the_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = EngineSettings(model_path=str(big_model(tmp_path)), model_n_ctx=65536)
    nvml = FakeNvml(32 * GiB, 32 * GiB, uuid="GPU-abc")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    resolve("auto", settings, nvml=nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    resolve("auto", settings, nvml=nvml)
    assert nvml.handles == [("uuid", "GPU-abc"), ("index", 3)]


def test_auto_without_nvml_uses_the_cpu_rule() -> None:
    # The real pynvml on this machine: no NVIDIA driver, so NVML is absent.
    cap = resolve("auto", EngineSettings())
    assert cap.slots == capacity.cpu_slots() >= 1
    assert "CPU rule" in cap.reason and "NVML" in cap.reason
    assert cap.gpu == capacity.cpu_key()


def test_model_on_cpu_with_a_gpu_present_uses_the_cpu_rule(tmp_path: Path) -> None:
    settings = EngineSettings(model_path=str(big_model(tmp_path)), model_n_gpu_layers=0)
    cap = resolve("auto", settings, nvml=FakeNvml(32 * GiB, 32 * GiB))
    assert "CPU rule" in cap.reason and "MODEL_N_GPU_LAYERS=0" in cap.reason


def test_numbers_and_bad_values() -> None:
    assert resolve("3").slots == 3
    assert resolve("3", EngineSettings(engine="batched")).slots == 3


def test_a_number_the_engine_cannot_run_is_clamped_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="streamworker.capacity"):
        cap = resolve("4", EngineSettings(engine="llama"))
    assert cap.slots == 1
    assert "clamped to 1" in cap.reason
    assert any("WORKER_CONCURRENCY=4 clamped to 1" in r.getMessage() for r in caplog.records)
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="WORKER_CONCURRENCY"):
            resolve(bad)


def test_batched_only_settings_on_another_engine_are_named() -> None:
    """Set for an engine that cannot honour them: a line each for the
    worker's start-up WARNING, never silence."""
    env = {"PREFIX_CACHE": "true", "BATCH_INVARIANT": "false", "MODEL_NAME": "m"}
    lines = capacity.unused_settings(EngineSettings(engine="llama"), env)
    assert len(lines) == 2
    assert lines[0].startswith("BATCH_INVARIANT is set but ENGINE=llama does not use it")
    assert lines[1].startswith("PREFIX_CACHE is set but ENGINE=llama")
    assert capacity.unused_settings(EngineSettings(engine="batched"), env) == []
    assert capacity.unused_settings(EngineSettings(engine="llama"), {"PREFIX_CACHE": ""}) == []


def test_reads_the_bundled_gguf_header() -> None:
    from streamworker.engines.model_file import resolve_model_path

    path = resolve_model_path("")
    shape = model_shape(path)
    assert (shape.arch, shape.n_layers, shape.n_kv_heads) == ("gemma3", 18, 1)
    assert shape.key_length == shape.value_length == 256
    # 18 layers x 1 head x 512 x 2 bytes x 4096 tokens = 72 MiB per request.
    assert shape.kv_bytes(4096, 2.0) == 72 * (1 << 20)
    assert read_metadata(path)["tokenizer.ggml.tokens"] is None  # long arrays skipped


def test_capacity_command_prints_the_table() -> None:
    out = subprocess.run(
        [PYTHON, "-m", "streamworker", "capacity"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    ).stdout
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert rows["slots"].strip().isdigit()
    assert "WORKER_CONCURRENCY" in rows and "rule" in rows
