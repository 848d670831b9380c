"""Read a GGUF file's metadata header, without loading the model.

Capacity sizing needs a handful of numbers (layers, KV heads, head sizes,
trained context) before the engine loads; reading the header ourselves costs
milliseconds and no VRAM, where llama.cpp would map the whole file.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
# Value types: struct format for the scalars; 8 = string, 9 = array.
_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (the tokenizer's vocabulary) are skipped, not kept:
# sizing never needs them and a 262k-entry list would cost memory and time.
MAX_KEPT_ARRAY = 4096


class GGUFError(ValueError):
    """The file is not a GGUF model this reader understands."""


def _read(f: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = int(_read(f, "<Q"))
    return f.read(n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int) -> object:
    if vtype in _SCALAR:
        return _read(f, _SCALAR[vtype])
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        itype = int(_read(f, "<I"))
        count = int(_read(f, "<Q"))
        if count <= MAX_KEPT_ARRAY:
            return [_value(f, itype) for _ in range(count)]
        if itype in _SCALAR:
            f.seek(struct.calcsize(_SCALAR[itype]) * count, 1)
        elif itype == _STRING:
            for _ in range(count):
                f.seek(int(_read(f, "<Q")), 1)
        else:
            for _ in range(count):
                _value(f, itype)
        return None  # present but not kept
    raise GGUFError(f"unknown GGUF value type {vtype}")


def read_metadata(path: Path) -> dict[str, object]:
    """The key/value metadata of a GGUF file (long arrays as None)."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        version = int(_read(f, "<I"))
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old")
        _read(f, "<Q")  # tensor count
        kv_count = int(_read(f, "<Q"))
        meta: dict[str, object] = {"GGUF.version": version}
        for _ in range(kv_count):
            key = _string(f)
            meta[key] = _value(f, int(_read(f, "<I")))
        return meta


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache of one sequence costs, from the model's metadata."""

    arch: str
    n_layers: int
    n_kv_heads: int  # the largest, when it varies by layer
    key_length: int
    value_length: int
    context_length: int  # trained context
    file_bytes: int  # the weights, as loaded (GGUF tensors are stored as used)

    def kv_bytes(self, n_ctx: int, bytes_per_element: float) -> int:
        """KV cache for one sequence of n_ctx tokens. Sliding-window layers
        (Gemma 3) really need less; counting them in full errs on the safe side."""
        per_token = self.n_layers * self.n_kv_heads * (self.key_length + self.value_length)
        return int(per_token * n_ctx * bytes_per_element)


def _int(meta: dict[str, object], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if isinstance(value, list):  # per-layer values: size for the largest
        value = max(int(v) for v in value)  # type: ignore[call-overload]
    if value is None:
        raise GGUFError(f"GGUF metadata lacks {key}")
    return int(value)  # type: ignore[call-overload]


def model_shape(path: Path) -> ModelShape:
    meta = read_metadata(path)
    arch = str(meta.get("general.architecture", ""))
    if not arch:
        raise GGUFError("GGUF metadata lacks general.architecture")
    p = f"{arch}."
    heads = _int(meta, p + "attention.head_count")
    head_dim = _int(meta, p + "embedding_length") // max(heads, 1)
    return ModelShape(
        arch=arch,
        n_layers=_int(meta, p + "block_count"),
        n_kv_heads=_int(meta, p + "attention.head_count_kv", heads),
        key_length=_int(meta, p + "attention.key_length", head_dim),
        value_length=_int(meta, p + "attention.value_length", head_dim),
        context_length=_int(meta, p + "context_length", 0),
        file_bytes=path.stat().st_size,
    )
