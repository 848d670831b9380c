"""`just bench [--smoke] [--build-cpp]`: run every figure, write the report.

Everything runs on this machine against 127.0.0.1 with bounded load: a
private redis-server, the gateway and workers as child processes (the test
harness's wrappers), the peer llama_cpp.server, and the C++ benchmarks when
they are built. --smoke runs each figure at tiny sizes (CI keeps it working).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `tests.harness` and the packages, from any cwd

from ops.bench import (  # noqa: E402
    cluster,
    cpp,
    echo_figures,
    grammar_figure,
    load,
    model_figures,
    report,
    scheduling,
    stack,
)
from streamworker.engines.model_file import resolve_model_path  # noqa: E402


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def relay_processes_only(smoke: bool) -> int:
    """Figure 3b alone, printed as its report section (a run of the whole
    suite also writes it into docs/benchmarks.md)."""
    start = load.loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, stack.redis(Path(tmp)) as server:
        rows = echo_figures.relay_by_processes(
            server,
            Path(tmp),
            10 if smoke else 1000,
            [1, 2],
            tokens=10 if smoke else 300,
            interval_ms=20.0,
        )
    when = (
        f"Run alone (`just bench --only-relay-processes`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}; load average at "
        f"start / end: {start} / {load.loadavg()}."
    )
    print("\n".join(report.relay_processes_section(rows, os.cpu_count() or 1, when)))
    return 0


def grammar_only(smoke: bool) -> int:
    """Figure 6 alone, printed as its report section (a run of the whole
    suite also writes it into docs/benchmarks.md)."""
    threads = os.cpu_count() or 1
    start = load.loadavg()
    rows = grammar_figure.grammar_cost(
        str(resolve_model_path(os.environ.get("MODEL_PATH", ""))),
        threads,
        4096,
        tokens=8 if smoke else 64,
        repeats=1 if smoke else 3,
        streams=2 if smoke else 4,
        json_tokens=8 if smoke else 128,
    )
    when = (
        f"Run alone (`just bench --only-grammar`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, {threads} "
        f"threads; load average at start / end: {start} / {load.loadavg()}."
    )
    print("\n".join(grammar_figure.section(rows, when)))
    return 0


def cluster_only(smoke: bool) -> int:
    """One Redis vs a 3-master Redis Cluster, printed as its report section
    (docs/benchmarks.md keeps the last one pasted in)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results = cluster.run(Path(tmp), smoke)
    when = (
        f"Run alone (`just bench --only-cluster`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
        f"{os.cpu_count()} cores; load average at start / end: "
        f"{results['loadavg_start']} / {results['loadavg_end']}."
    )
    print("\n".join(cluster.section(results, when)))
    return 0


def scheduling_only(smoke: bool) -> int:
    """Tiers, fair shares and the scheduler's overhead (echo), printed as its
    report section (docs/benchmarks.md keeps the last one pasted in)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results = scheduling.run(Path(tmp), smoke)
    when = (
        f"Run alone (`just bench --only-scheduling`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
        f"{os.cpu_count()} cores; load average at start / end: "
        f"{results['loadavg_start']} / {results['loadavg_end']}."
    )
    print("\n".join(scheduling.section(results, when)))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="just bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the suite runs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument(
        "--cpp-build-dir",
        type=Path,
        default=ROOT / ".run" / "llama.cpp-build",
        help="where llama-bench is (or is built with --build-cpp)",
    )
    ap.add_argument(
        "--build-cpp",
        action="store_true",
        help="build llama-bench from the llama-cpp-python sdist (~10 min, 2 cores)",
    )
    ap.add_argument("--no-peer", action="store_true", help="skip llama_cpp.server")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from the last run's saved results",
    )
    ap.add_argument(
        "--only-relay-processes",
        action="store_true",
        help="run only figure 3b (relay through 1 and 2 gateway processes) and print it",
    )
    ap.add_argument(
        "--only-grammar",
        action="store_true",
        help="run only figure 6 (the cost of a JSON-schema grammar) and print it",
    )
    ap.add_argument(
        "--only-cluster",
        action="store_true",
        help="run only the Redis Cluster figures (one Redis vs 3 masters) and print them",
    )
    ap.add_argument(
        "--only-scheduling",
        action="store_true",
        help="run only the scheduling figures (tiers, fair shares, overhead) and print them",
    )
    args = ap.parse_args(argv)
    if args.only_scheduling:
        return scheduling_only(args.smoke)
    if args.only_cluster:
        return cluster_only(args.smoke)
    if args.only_grammar:
        return grammar_only(args.smoke)
    saved = ROOT / ".run" / "bench-results.pickle"
    if args.only_relay_processes:
        return relay_processes_only(args.smoke)
    if args.report_only:
        with open(saved, "rb") as f:
            report.write(pickle.load(f), args.out)  # our own file from the last run
        return 0

    smoke = args.smoke
    threads = os.cpu_count() or 1
    tokens = 8 if smoke else 64
    repeats = 1 if smoke else 3
    levels = [1, 2] if smoke else [1, 2, 4, 8]
    n_ctx = 4096
    model_path = str(resolve_model_path(os.environ.get("MODEL_PATH", "")))
    model_env = {
        "MODEL_N_THREADS": str(threads),
        "MODEL_N_CTX": str(n_ctx),
        "MODEL_PATH": model_path,
    }
    meta = {
        "smoke": smoke,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_name(),
        "cores": threads,
        "threads": threads,
        "tokens": tokens,
        "repeats": repeats,
        "model": Path(model_path).name,
        "load_start": load.loadavg(),
        "notes": [],
        "caveats": [],
    }
    results: dict = {"meta": meta}

    def step(what: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {what}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        with stack.redis(workdir) as server:
            step("figure 1: added latency (echo)")
            results["latency"] = echo_figures.added_latency(server, workdir, 10 if smoke else 300)
            step("figure 3: relay capacity (echo)")
            results["relay"] = echo_figures.relay_capacity(
                server,
                workdir,
                [5, 10] if smoke else [100, 500, 1000],
                tokens=10 if smoke else 300,
                interval_ms=20.0,
            )

            step("figure 3b: relay through 1 and 2 gateway processes (echo)")
            results["relay_processes"] = echo_figures.relay_by_processes(
                server,
                workdir,
                10 if smoke else 1000,
                [1, 2],
                tokens=10 if smoke else 300,
                interval_ms=20.0,
            )

            m: dict = {"memory": {}}
            # In-process figures each run in a fresh process (model_figures.isolated).
            step("figure 2: in-process llama-cpp-python")
            highlevel = model_figures.isolated(
                model_figures.inprocess_highlevel, model_path, threads, n_ctx, tokens, repeats
            )
            m["inproc_highlevel"] = highlevel
            step("figures 2+4: in-process batched engine")
            inproc_single, m["inproc_batched_rounds"] = model_figures.isolated(
                model_figures.inprocess_batched, model_path, threads, n_ctx, tokens, repeats, levels
            )
            step("figures 2+4: in-process batched engine, BATCH_INVARIANT=false")
            fast_single, m["inproc_fast_rounds"] = model_figures.isolated(
                model_figures.inprocess_batched,
                model_path,
                threads,
                n_ctx,
                tokens,
                repeats,
                levels,
                batch_invariant=False,
            )
            step("figures 2+4+5: the default worker through the path")
            default_single, m["path_default_rounds"], mem = model_figures.through_path(
                server,
                workdir,
                model_figures.DEFAULT_NAME,
                model_env,
                tokens,
                repeats,
                [n for n in levels if n <= 4],
            )
            m["memory"]["default worker (batched, auto = 4 slots)"] = mem
            step(f"figures 2+4+5: batched worker, {max(levels)} slots, BATCH_INVARIANT=false")
            mixed_single, m["path_mixed_rounds"], mem = model_figures.through_path(
                server,
                workdir,
                f"through the path, batched worker ({max(levels)} slots, BATCH_INVARIANT=false)",
                {
                    **model_env,
                    "ENGINE": "batched",
                    "WORKER_CONCURRENCY": str(max(levels)),
                    "BATCH_INVARIANT": "false",
                },
                tokens,
                repeats,
                levels,
            )
            m["memory"][f"batched engine, {max(levels)} slots"] = mem
            step("figure 5: batched worker, 1 slot")
            _, _, mem = model_figures.through_path(
                server,
                workdir,
                "batched worker, 1 slot",
                {**model_env, "ENGINE": "batched", "WORKER_CONCURRENCY": "1"},
                tokens,
                1,
                [],
            )
            m["memory"]["batched engine, 1 slot"] = mem
            step("figure 2: llama worker (1 slot) through the path")
            llama_single, m["path_llama_rounds"], mem = model_figures.through_path(
                server,
                workdir,
                "through the path, llama worker (1 slot)",
                {**model_env, "ENGINE": "llama", "WORKER_CONCURRENCY": "1"},
                tokens,
                repeats,
                [],
            )
            m["memory"]["llama engine, 1 slot"] = mem
            step("figure 7: a shared 1,000-token prefix, with and without the prefix cache")
            m["prefix"] = model_figures.prefix_ttft(server, workdir, model_env, repeats + 1)
        step("figure 8: how long a joining long prompt holds up the others")
        m["step_bound"] = [
            model_figures.isolated(model_figures.step_bound, model_path, threads, n_ctx, inv, smoke)
            for inv in (True, False)
        ]
        step("figure 6: the cost of a JSON-schema grammar (in process)")
        m["grammar"] = grammar_figure.grammar_cost(
            model_path,
            threads,
            n_ctx,
            tokens,
            repeats,
            streams=2 if smoke else 4,
            json_tokens=tokens if smoke else 128,
        )
        singles = [highlevel, inproc_single, fast_single, default_single, mixed_single]
        singles.append(llama_single)
        why_not = "--no-peer" if args.no_peer else stack.peer_available()
        if why_not is None:
            step("figures 2+4: llama_cpp.server (peer)")
            peer_levels = [1, 2] if smoke else [1, 4]
            peer_single, m["peer_rounds"] = model_figures.peer(
                model_path, threads, n_ctx, workdir, tokens, repeats, peer_levels
            )
            singles.append(peer_single)
        else:
            m["peer_skipped"] = why_not
        m["singles"] = singles
        results["model"] = m

    binaries = cpp.find(args.cpp_build_dir)
    if binaries is None and args.build_cpp:
        step("building llama-bench from the llama-cpp-python sdist")
        binaries = cpp.build(args.cpp_build_dir, ROOT / ".run" / "llama.cpp-src")
    if binaries is not None:
        step("C++ limit: llama-bench, llama-batched-bench")
        results["cpp"] = {
            **cpp.measure(binaries, model_path, threads, tokens, levels),
            "measured": True,
        }
    else:
        results["cpp"] = {**cpp.REFERENCE, "measured": False}
        meta["notes"].append(
            "The C++ figures are the issue's, measured on this machine type when it was "
            "filed, **not in this run**: llama-bench was not built (`just bench --build-cpp`)."
        )
    meta["load_end"] = load.loadavg()
    png = report.write(results, args.out)
    if not smoke:
        saved.parent.mkdir(exist_ok=True)
        with open(saved, "wb") as f:
            pickle.dump(results, f)
    step(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
