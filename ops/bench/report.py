"""Results -> docs/benchmarks.md and a PNG chart of aggregate tok/s against
concurrency. Every ratio is taken from figures of the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt

from ops.bench import grammar_figure
from ops.bench.model_figures import DEFAULT_NAME

NOTES = [
    "## Reading these numbers",
    "",
    "- **A shared 2-core VM.** Client, gateway, Redis, worker and llama.cpp's two threads "
    "share two cores, and other work may run on the machine during the run (see the load "
    "averages): repeated runs move single figures by 10-30%. llama.cpp's threads spin at "
    "barriers and between decodes, so any other busy process or thread on the two cores "
    "slows a decode step more than its own CPU share; through the path, the worker's "
    "event loop, Redis and the gateway are such processes.",
    "- **In-process figures run in fresh processes.** A llama.cpp context measured after "
    "another one in the same process ran up to 40% slower (the first one's threads and "
    "memory stay behind); each in-process measurement now has a process of its own.",
    "- **BATCH_INVARIANT.** On this CPU ggml's repacked Q4_K kernels multiply a batch's "
    "rows in groups of four and the rest one by one, and those round differently; a "
    "decode of 8 or more rows takes the llamafile (tinyBLAS) kernels for the Q5_0/Q8_0 "
    "tensors, which round differently again. With `BATCH_INVARIANT=true` (the default) "
    "the engine loads weights without repacking, decodes at most 7 rows per call (8 = "
    "4 + 4) and prefills each prompt in decodes of its own, cut at multiples of 128 "
    "tokens (short prompts that arrive together share a step's 128 tokens, one decode "
    "each, and start generating together): a sequence's numbers never depend on the "
    "others, and tests check it token for token (alone vs among 7 others, and against "
    "the single-sequence engine). With "
    "`false` every row and up to 128 prompt tokens go into one decode with the repacked "
    "kernels: the rows 'BATCH_INVARIANT=false' show what the guarantee costs (about 7% "
    "at 4 clients, a third at 8).",
    "- **Flash attention** is on in both engines (and in the llama engine's reference in "
    "the tests): a 4-row CPU decode took 30.6 ms with it vs 33.7 without.",
    "- **The C++ rows** are llama-batched-bench's S_TG: generation only, the prompts' "
    "processing excluded, while our aggregate includes each stream's prefill (its TTFT). "
    "At 4 clients that prefill is about 7% of the round.",
    "- **Where the first token's time goes** (batched engine in process, a ~20-token "
    "prompt, medians; measured while writing this suite): rendering and tokenizing 0.4 ms, "
    "hand-off to the decode thread 0.04 ms, the prefill decode ~37 ms, sampling the first "
    "token 0.3 ms. What the path added before this suite's changes came from the llama "
    "engine decoding the prompt's last token in a decode of its own (one more decode, "
    "~20 ms), a hop to a worker thread for the prompt's rendering (~2.5 ms while "
    "llama.cpp's threads spin), and in-process baselines measured in a process already "
    "slowed by an earlier context.",
    "- **Prefix reuse** needs every position of the sliding-window layers kept "
    "(`swa_full`): a window-sized cache reuses the cells of positions that left the "
    "window, so a prefix could not be taken back once its sequence moved on. That is "
    "the per-slot memory in figure 5; `PREFIX_CACHE=false` gives it back.",
    "- **The peer.** llama_cpp.server serves one request at a time: a new request "
    "interrupts the running stream, which ends without a finish_reason (the errors in "
    "its 4-client row).",
    "",
]


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def chart(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    for name, rounds, style in (
        (
            "through the path, default settings (4 slots)",
            results["model"].get("path_default_rounds") or [],
            "o-",
        ),
        (
            "through the path, BATCH_INVARIANT=false (8 slots)",
            results["model"].get("path_mixed_rounds") or [],
            "D-",
        ),
        ("batched engine in-process", results["model"]["inproc_batched_rounds"], "s--"),
        (
            "batched engine in-process, BATCH_INVARIANT=false",
            results["model"].get("inproc_fast_rounds") or [],
            "d--",
        ),
        ("llama_cpp.server (peer)", results["model"].get("peer_rounds") or [], "x:"),
    ):
        if rounds:
            ax.plot([r.clients for r in rounds], [r.aggregate for r in rounds], style, label=name)
    cpp = results["cpp"]
    if cpp.get("aggregate"):
        xs = sorted(cpp["aggregate"])
        label = "llama.cpp C++ (llama-batched-bench)" + (
            "" if cpp["measured"] else ", issue figure, not this run"
        )
        ax.plot(xs, [cpp["aggregate"][x] for x in xs], "k-.", label=label)
    ax.set_xlabel("concurrent clients / sequences")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_title(f"Aggregate throughput, {results['meta']['model']}, {results['meta']['cpu']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _goal(ok: bool | None, what: str) -> str:
    mark = "not measured" if ok is None else ("**met**" if ok else "**missed**")
    return f"- {what}: {mark}"


def verdicts(results: dict[str, Any]) -> list[str]:
    """Each speed goal against this run's figures."""
    lat, relay, m, cpp = (results[k] for k in ("latency", "relay", "model", "cpp"))
    highlevel = m["inproc_highlevel"]
    base = highlevel.tok_s
    by_name = {s.name: s for s in m["singles"]}
    path = by_name.get(DEFAULT_NAME)
    inproc = next(
        (s for n, s in by_name.items() if n.startswith("batched engine in-process (")), None
    )
    measured = cpp.get("measured")
    cpp_tg = cpp.get("tg_tok_s") if measured else None
    cpp_at = cpp.get("aggregate", {}) if measured else {}
    default = {r.clients: r for r in m.get("path_default_rounds") or []}
    mixed = {r.clients: r for r in m.get("path_mixed_rounds") or []}
    top = max(relay, key=lambda r: r.clients) if relay else None
    lines = ["## Speed goals in this run", ""]
    lines.append(
        _goal(
            lat["added_p50_ms"] <= 2 and lat["added_p99_ms"] <= 5,
            "added TTFT with the echo double, p50 <= 2 ms and p99 <= 5 ms: "
            f"{lat['added_p50_ms']:.2f} / {lat['added_p99_ms']:.2f} ms",
        )
    )
    if path and path.ttft_ms and highlevel.ttft_ms:
        added = path.ttft_ms - highlevel.ttft_ms
        lines.append(
            _goal(
                added <= 10,
                "added TTFT with the bundled model (default worker vs in-process "
                f"llama-cpp-python), p50 <= +10 ms: {path.ttft_ms:.1f} vs "
                f"{highlevel.ttft_ms:.1f} ms = {added:+.1f} ms",
            )
        )
    if path and base:
        lines.append(
            _goal(
                path.tok_s >= 0.95 * base,
                "one stream through the path (default settings) >= 0.95x in-process "
                f"llama-cpp-python: {_ratio(path.tok_s, base)}",
            )
        )
    if inproc:
        lines.append(
            _goal(
                None if cpp_tg is None else inproc.tok_s >= 0.9 * cpp_tg,
                f"batched engine, one stream, >= 0.9x C++ llama-bench: "
                f"{_ratio(inproc.tok_s, cpp_tg)}",
            )
        )
    for n, rounds, goal, what in (
        (4, default, 0.85, "default settings"),
        (8, mixed, 0.8, "BATCH_INVARIANT=false"),
    ):
        if n in rounds:
            ours, theirs = rounds[n].aggregate, cpp_at.get(n)
            lines.append(
                _goal(
                    None if not theirs else ours >= goal * theirs,
                    f"aggregate at {n} clients through the path ({what}) >= {goal}x C++ "
                    f"batched decode at {n}: {ours:.1f} vs {_f(theirs)} tok/s = "
                    f"{_ratio(ours, theirs)}",
                )
            )
    prefix = m.get("prefix") or {}
    if prefix.get("true") and prefix.get("false"):
        lines.append(
            _goal(
                prefix["true"] <= 0.25 * prefix["false"],
                f"TTFT of a request sharing a {prefix['context_tokens']:.0f}-token prefix "
                f"<= 0.25x without reuse: {prefix['true']:.1f} vs {prefix['false']:.1f} ms = "
                f"{_ratio(prefix['true'], prefix['false'])}",
            )
        )
    if top:
        lines.append(
            _goal(
                top.tokens_per_s >= 20000 and not any(r.errors for r in relay),
                f">= 20,000 tok/s relayed by one gateway, no errors: "
                f"{top.tokens_per_s:.0f} tok/s at {top.clients} clients, errors "
                f"{sum(r.errors for r in relay)}",
            )
        )
    every = [*default.values(), *mixed.values()]
    lines.append(
        _goal(
            all(r.completed == r.clients for r in every),
            "every stream through the path completes",
        )
    )
    lines.append(
        "- GPU figures (one stream >= 800 tok/s, 8 clients >= 3,000, 16 clients >= 4,000 "
        "on an H100): **not measured** (no GPU was lent to the session that ran this)"
    )
    return [*lines, ""]


def prefix_section(prefix: dict[str, Any]) -> list[str]:
    if not prefix:
        return []
    return [
        "## 7. Prefix reuse",
        "",
        f"A {prefix['context_tokens']:.0f}-token system prompt shared by every request, then "
        "a short question; a first request leaves the context in a slot, the next ones "
        "reuse it (PREFIX_CACHE=true, the default) or compute it again (false). Default "
        "worker through the path (BATCH_INVARIANT=true: whole 128-token chunks of the "
        "earlier prompt are reused, so answers are bit for bit those without the cache); "
        "median TTFT.",
        "",
        "| PREFIX_CACHE | TTFT p50 (ms) |",
        "|---|---|",
        f"| false | {_f(prefix.get('false'))} |",
        f"| true | {_f(prefix.get('true'))} |",
        f"| **ratio** | **{_ratio(prefix.get('true'), prefix.get('false'))}** |",
        "",
    ]


def step_bound_section(rows: list[dict[str, float]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## 8. A long prompt joining running streams",
        "",
        "In process, 7 streams generate while a ~2,000-token prompt joins. The gap "
        "between a running stream's tokens, before and while the prompt is prefilled: "
        "the bound on how long a joining prompt delays the others is one step holding "
        "at most 128 prompt tokens (PREFILL_CHUNK).",
        "",
        "| mode | gap before (ms, median) | longest gap during the prefill (ms) | "
        "prefill + first token of the long prompt (ms) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        mode = (
            "BATCH_INVARIANT=true (prompt chunk in a decode of its own)"
            if r["invariant"]
            else "BATCH_INVARIANT=false (prompt chunk inside the step)"
        )
        lines.append(
            f"| {mode} | {r['gap_before_ms']:.1f} | {r['gap_max_during_ms']:.1f} | "
            f"{r['prompt_ms']:.0f} |"
        )
    return [*lines, ""]


def memory_lines(memory: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "## 5. Worker memory",
        "",
        "| worker | RSS after its runs (MiB) | peak RSS (MiB) |",
        "|---|---|---|",
    ]
    for name, mem in memory.items():
        lines.append(f"| {name} | {mem['rss_mib']:.0f} | {mem['peak_rss_mib']:.0f} |")
    one = memory.get("batched engine, 1 slot")
    many = next(
        ((k, v) for k, v in memory.items() if k.startswith("batched engine, ") and v is not one),
        None,
    )
    if one and many:
        slots = int(many[0].split(", ")[1].split()[0])
        per = (many[1]["peak_rss_mib"] - one["peak_rss_mib"]) / max(slots - 1, 1)
        lines += [
            "",
            f"Each slot beyond the first: {per:.0f} MiB of peak RSS ({slots} slots vs 1; "
            "the prefix cache keeps every position of the sliding-window layers, "
            "so a slot holds its whole context's KV).",
        ]
    return [*lines, ""]


def relay_processes_section(rows: list[Any], cores: int, when: str = "") -> list[str]:
    """Figure 3b: the relay at one client count through 1, 2, ... gateway
    processes on one port (GATEWAY_WORKERS)."""
    if not rows:
        return []
    first = rows[0]
    lines = [
        "## 3b. Relay with several gateway processes (echo engine)",
        "",
        f"Figure 3 at {first.clients} clients ({first.tokens_per_stream} tokens each, one every "
        f"{first.interval_ms} ms), through 1 and more gateway processes on one port "
        "(`GATEWAY_WORKERS`, SO_REUSEPORT under the supervisor). Gateway CPU and RSS are all "
        f"its processes' together, the supervisor's included (100% = one core; the machine "
        f"has {cores}, shared with the worker, Redis and the load generator).",
        "",
    ]
    if when:
        lines += [when, ""]
    lines += [
        "| gateway processes | clients | delivered tok/s | errors | incomplete | gateway CPU | "
        "gateway RSS max (MiB) | worker CPU | Redis CPU | client CPU | TTFT p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.gateway_processes} | {r.clients} | {r.tokens_per_s:.0f} | {r.errors} | "
            f"{r.incomplete} | {r.gateway_cpu_pct:.0f}% | {r.gateway_rss_mib:.0f} | "
            f"{r.worker_cpu_pct:.0f}% | {r.redis_cpu_pct:.0f}% | {r.client_cpu_pct:.0f}% | "
            f"{_f(r.ttft_p50_ms)} |"
        )
    return [*lines, ""]


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
    lines += verdicts(results)
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
    lines.append(
        f"| llama.cpp C++ (llama-bench tg{meta['tokens']}){cpp_note} | - | "
        f"{_f(cpp_tg)} | {_ratio(cpp_tg, base)} | 1.00x |"
    )
    for single in m["singles"]:
        lines.append(
            f"| {single.name} | {_f(single.ttft_ms)} | {_f(single.tok_s)} | "
            f"{_ratio(single.tok_s, base)} | {_ratio(single.tok_s, cpp_tg)} |"
        )
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
        "CPU = a process's CPU seconds / wall (100% = one core; the machine has "
        f"{meta['cores']}). Per gateway core = delivered tok/s / gateway CPU share: what one "
        "fully busy gateway process would relay at the cost per token measured here.",
        "",
        "| clients | offered tok/s | delivered tok/s | errors | incomplete | gateway CPU | "
        "per gateway core tok/s | gateway RSS max (MiB) | worker CPU | Redis CPU | "
        "client CPU | TTFT p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in relay:
        lines.append(
            f"| {r.clients} | {r.offered_per_s:.0f} | {r.tokens_per_s:.0f} | "
            f"{r.errors} | {r.incomplete} | {r.gateway_cpu_pct:.0f}% | "
            f"{r.per_gateway_core:.0f} | {r.gateway_rss_mib:.0f} | "
            f"{r.worker_cpu_pct:.0f}% | {r.redis_cpu_pct:.0f}% | "
            f"{r.client_cpu_pct:.0f}% | {_f(r.ttft_p50_ms)} |"
        )
    lines += [
        "",
        "Goal: >= 20,000 tokens/s per gateway process, zero errors, memory bounded.",
        "",
        *relay_processes_section(results.get("relay_processes") or [], meta["cores"]),
        "## 4. Concurrent clients with the real model",
        "",
        f"![aggregate tok/s against concurrency]({chart_name})",
        "",
        "aggregate tok/s = tokens of all streams / wall time of the round (prefill "
        f"included); each row is the median of {meta['repeats']} rounds at that level "
        "(the round with the median aggregate, its TTFTs with it). completed = streams "
        "that ended with a finish_reason and all "
        f"{meta['tokens']} tokens. The C++ rows are llama-batched-bench's S_TG: generation "
        "only, the prompts' processing excluded, so they flatter the C++ side a little.",
        "",
        "| path | clients | aggregate tok/s | x its 1-client figure | TTFT p50 (ms) | "
        "TTFT p95 (ms) | completed |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in (
        "path_default_rounds",
        "path_mixed_rounds",
        "inproc_batched_rounds",
        "inproc_fast_rounds",
        "path_llama_rounds",
        "peer_rounds",
    ):
        rounds = m.get(key) or []
        one = next((r.aggregate for r in rounds if r.clients == 1), None)
        for r in rounds:
            errors = f" ({'; '.join(r.errors)[:80]})" if r.errors else ""
            lines.append(
                f"| {r.name} | {r.clients} | {r.aggregate:.1f} | "
                f"{_ratio(r.aggregate, one)} | {_f(r.ttft_p50_ms)} | "
                f"{_f(r.ttft_p95_ms)} | {r.completed}/{r.clients}{errors} |"
            )
    if cpp.get("aggregate"):
        one = cpp["aggregate"].get(1)
        for n, v in sorted(cpp["aggregate"].items()):
            lines.append(
                f"| llama.cpp C++ (llama-batched-bench S_TG){cpp_note} | {n} | "
                f"{v:.1f} | {_ratio(v, one)} | - | - | - |"
            )
    lines += [
        "",
        "Goals: 4 clients with default settings >= 0.85x C++ at 4; 8 clients with "
        "BATCH_INVARIANT=false >= 0.8x C++ at 8.",
        "",
        *memory_lines(m["memory"]),
    ]
    lines += [*grammar_figure.section(m.get("grammar") or [])]
    lines += ["", *prefix_section(m.get("prefix") or {})]
    lines += step_bound_section(m.get("step_bound") or [])
    lines += ["", *meta.get("notes", []), "", *NOTES, ""]
    return "\n".join(lines)


# Sections after this line in the report are the figures of the `--only-...`
# runs (retrieval, scheduling, cluster), pasted by hand: a full run keeps them.
KEEP_MARKER = "<!-- sections below come from their own runs; `just bench` keeps them -->"


def write(results: dict[str, Any], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(out.stem + "-throughput.png")
    chart(results, png)
    kept = ""
    if out.exists():
        old = out.read_text()
        if KEEP_MARKER in old:
            kept = old[old.index(KEEP_MARKER) :]
    text = markdown(results, png.name)
    out.write_text(text + ("\n" + kept if kept else ""))
    return png
