"""Results -> docs/benchmarks.md and a PNG chart of aggregate tok/s against
concurrency. Every ratio is taken from figures of the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def chart(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, rounds, style in (
        ("through the path, batched worker", results["model"]["path_batched_rounds"], "o-"),
        ("batched engine in-process", results["model"]["inproc_batched_rounds"], "s--"),
        ("batched engine in-process, fast kernels (load-dependent)",
         results["model"].get("inproc_fast_rounds") or [], "d--"),
        ("through the path, llama worker (1 slot)", results["model"]["path_llama_rounds"], "^-"),
        ("llama_cpp.server (peer)", results["model"].get("peer_rounds") or [], "x:"),
    ):
        if rounds:
            ax.plot([r.clients for r in rounds], [r.aggregate for r in rounds], style, label=name)
    cpp = results["cpp"]
    if cpp.get("aggregate"):
        xs = sorted(cpp["aggregate"])
        label = "llama.cpp C++ (llama-batched-bench)" + ("" if cpp["measured"] else
                                                          ", issue figure, not this run")
        ax.plot(xs, [cpp["aggregate"][x] for x in xs], "k-.", label=label)
    ax.set_xlabel("concurrent clients / sequences")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_title(f"Aggregate throughput, {results['meta']['model']}, {results['meta']['cpu']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(results: dict[str, Any], chart_name: str) -> str:
    meta, lat, relay, m, cpp = (results[k] for k in ("meta", "latency", "relay", "model", "cpp"))
    lines = [
        "# Benchmarks",
        "",
        f"Written by `just bench{' --smoke' if meta['smoke'] else ''}` (ops/bench/) on "
        f"{meta['date']}. Machine: {meta['cpu']}, {meta['cores']} cores, no GPU. "
        f"Model: {meta['model']}, temperature 0, {meta['threads']} threads everywhere, "
        f"{meta['tokens']} tokens per stream. Every ratio below compares figures of this "
        "run. Load average at start / end: "
        f"{meta['load_start']} / {meta['load_end']}.",
        "",
    ]
    if meta["smoke"]:
        lines += ["**Smoke run: tiny sizes, the numbers mean nothing.**", ""]
    lines += meta.get("caveats", [])
    lines += [
        "## 1. Added latency of the path (echo engine)",
        "",
        f"{lat['requests']} requests one after another, TTFT = request sent -> first "
        "content chunk. In-process = calling the same EchoEngine.generate directly.",
        "",
        "| | TTFT p50 (ms) | TTFT p99 (ms) |",
        "|---|---|---|",
        f"| in-process engine | {_f(lat['inproc_p50_ms'], 2)} | {_f(lat['inproc_p99_ms'], 2)} |",
        f"| gateway + Redis + worker + pub/sub + SSE | {_f(lat['path_p50_ms'], 2)} | "
        f"{_f(lat['path_p99_ms'], 2)} |",
        f"| **added by the path** | **{_f(lat['added_p50_ms'], 2)}** | "
        f"**{_f(lat['added_p99_ms'], 2)}** |",
        "",
        f"Goal: p50 <= 2 ms, p99 <= 5 ms. Errors: {lat['errors']}.",
        "",
        "## 2. One stream with the real model",
        "",
        "tok/s = tokens after the first / time from first to last token (the decode "
        "pace as the client receives it); TTFT = request -> first token. Medians of "
        f"{meta['repeats']} streams.",
        "",
        "| path | TTFT p50 (ms) | tok/s | vs in-process llama-cpp-python | vs C++ |",
        "|---|---|---|---|---|",
    ]
    base = m["inproc_highlevel"].tok_s
    cpp_tg = cpp.get("tg_tok_s")
    cpp_note = "" if cpp["measured"] else " (issue figure, **not measured in this run**)"
    lines.append(f"| llama.cpp C++ (llama-bench tg{meta['tokens']}){cpp_note} | - | "
                 f"{_f(cpp_tg)} | {_ratio(cpp_tg, base)} | 1.00x |")
    for single in m["singles"]:
        lines.append(f"| {single.name} | {_f(single.ttft_ms)} | {_f(single.tok_s)} | "
                     f"{_ratio(single.tok_s, base)} | {_ratio(single.tok_s, cpp_tg)} |")
    if m.get("peer_skipped"):
        lines.append(f"| llama_cpp.server (the peer) | - | - | not run: {m['peer_skipped']} | |")
    lines += [
        "",
        "Goal: through the path >= 0.95x in-process llama-cpp-python; batched engine "
        ">= 0.9x the C++ figure.",
        "",
        "## 3. Relay capacity of one gateway process (echo engine)",
        "",
        "N SSE clients at once through one gateway process; each job's engine makes a "
        f"token every {relay[0].interval_ms if relay else '-'} ms (ECHO_CONCURRENT worker, all "
        "jobs at once). tokens/s = tokens delivered to clients / wall time of the round. "
        "Gateway CPU = its CPU seconds / wall (100% = one core).",
        "",
        "| clients | offered tok/s | delivered tok/s | errors | incomplete | gateway CPU | "
        "gateway RSS max (MiB) | worker CPU | TTFT p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in relay:
        lines.append(f"| {r.clients} | {r.offered_per_s:.0f} | {r.tokens_per_s:.0f} | "
                     f"{r.errors} | {r.incomplete} | {r.gateway_cpu_pct:.0f}% | "
                     f"{r.gateway_rss_mib:.0f} | {r.worker_cpu_pct:.0f}% | "
                     f"{_f(r.ttft_p50_ms)} |")
    lines += [
        "",
        "Goal: >= 20,000 tokens/s per gateway process, zero errors, memory bounded.",
        "",
        "## 4. Concurrent clients with the real model",
        "",
        f"![aggregate tok/s against concurrency]({chart_name})",
        "",
        "aggregate tok/s = tokens of all streams / wall time of the round (prefill "
        "included). completed = streams that ended with a finish_reason and all "
        f"{meta['tokens']} tokens.",
        "",
        "| path | clients | aggregate tok/s | x its 1-client figure | TTFT p50 (ms) | "
        "TTFT p95 (ms) | completed |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in ("path_batched_rounds", "inproc_batched_rounds", "inproc_fast_rounds",
                "path_llama_rounds", "peer_rounds"):
        rounds = m.get(key) or []
        one = next((r.aggregate for r in rounds if r.clients == 1), None)
        for r in rounds:
            errors = f" ({'; '.join(r.errors)[:80]})" if r.errors else ""
            lines.append(f"| {r.name} | {r.clients} | {r.aggregate:.1f} | "
                         f"{_ratio(r.aggregate, one)} | {_f(r.ttft_p50_ms)} | "
                         f"{_f(r.ttft_p95_ms)} | {r.completed}/{r.clients}{errors} |")
    if cpp.get("aggregate"):
        one = cpp["aggregate"].get(1)
        for n, v in sorted(cpp["aggregate"].items()):
            lines.append(f"| llama.cpp C++ (llama-batched-bench S_TG){cpp_note} | {n} | "
                         f"{v:.1f} | {_ratio(v, one)} | - | - | - |")
    lines += [
        "",
        "Goal: aggregate at 4 clients >= 1.8x single-stream, at 8 >= 2.3x.",
        "",
        "## 5. Worker memory",
        "",
        "| worker | RSS after its runs (MiB) | peak RSS (MiB) |",
        "|---|---|---|",
    ]
    for name, mem in m["memory"].items():
        lines.append(f"| {name} | {mem['rss_mib']:.0f} | {mem['peak_rss_mib']:.0f} |")
    lines += ["", *meta.get("notes", []), ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(out.stem + "-throughput.png")
    chart(results, png)
    out.write_text(markdown(results, png.name))
    return png
