"""The C++ limit: llama-bench and llama-batched-bench, built from the llama.cpp
that the installed llama-cpp-python sdist vendors (same source as the Python
engines), on the same model and threads. Building takes ~10 minutes on 2
cores, so it is opt-in (`just bench --build-cpp`); without a build the
report shows the issue's reference figures, marked as not measured here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# Measured on this machine when the issue was filed (not by this run).
REFERENCE = {"tg_tok_s": 55.0, "aggregate": {1: 55.0, 2: 79.0, 4: 121.0, 8: 155.0}}


def find(build_dir: Path) -> Path | None:
    binaries = build_dir / "bin"
    if (binaries / "llama-bench").exists() and (binaries / "llama-batched-bench").exists():
        return binaries
    return None


def build(build_dir: Path, work: Path) -> Path:
    """pip download the sdist, configure and build the two benchmarks (CPU)."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(work),
            f"llama-cpp-python=={VERSION}",
        ],
        check=True,
    )
    sdist = work / f"llama_cpp_python-{VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = work / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(build_dir),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_UI=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",
            # Built like the Python bindings (ops/dev.sh): ggml's AMX kernels
            # crash on Q4_K models on CPUs that have AMX, so they are left out
            # of both, and the comparison stays like for like.
            f"-DCMAKE_C_FLAGS={NO_AMX}",
            f"-DCMAKE_CXX_FLAGS={NO_AMX}",
        ],
        check=True,
    )
    subprocess.run(
        [
            "cmake",
            "--build",
            str(build_dir),
            "-j",
            "--target",
            "llama-bench",
            "llama-batched-bench",
        ],
        check=True,
    )
    found = find(build_dir)
    if found is None:
        raise RuntimeError("the build did not produce llama-bench")
    return found


def measure(binaries: Path, model: str, threads: int, tokens: int, levels: list[int]) -> dict:
    """tg tok/s of one sequence (llama-bench) and aggregate tok/s with 1..N
    sequences decoding together (llama-batched-bench, total tokens / time)."""
    out = subprocess.run(
        [
            str(binaries / "llama-bench"),
            "-m",
            model,
            "-p",
            "0",
            "-n",
            str(tokens),
            "-t",
            str(threads),
            "-r",
            "3",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    tg = json.loads(out)[0]["avg_ts"]
    out = subprocess.run(
        [
            str(binaries / "llama-batched-bench"),
            "-m",
            model,
            "-c",
            str(8192),
            "-b",
            "512",
            "-ub",
            "512",
            "-npp",
            "32",
            "-ntg",
            str(tokens),
            "-npl",
            ",".join(map(str, levels)),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "--output-format",
            "jsonl",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    aggregate = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            aggregate[int(row["pl"])] = float(row["speed_tg"])
    return {"tg_tok_s": tg, "aggregate": aggregate}
