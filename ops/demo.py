"""The demo: a private redis-server, one worker on the bundled model, the
gateway, then two streamed answers side by side: a raw completion
(/v1/completions, what a base model does well: it continues text) and a
chat answer (/v1/chat/completions, a chat template the base model was never
trained on). Keeps serving until Ctrl-C (--once: exit after the answers).
Run it as `sh ops/dev.sh demo`."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent


def wait_until(url: str, what: str, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                sys.exit(f"demo: a process exited early ({' '.join(map(str, p.args))})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"demo: {what} not ready after {timeout:.0f}s")


def raw_completion(client: OpenAI, model: str, text: str) -> None:
    """The base model's natural use: continue a text (no chat template)."""
    print("\n-- /v1/completions: a raw completion (what a base model does well)\n")
    print(text, end="", flush=True)
    stream = client.completions.create(
        model=model, prompt=text, max_tokens=48, temperature=0.7, seed=7, stream=True
    )
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].text, end="", flush=True)
    print()


def chat_answer(client: OpenAI, model: str, prompt: str) -> None:
    """A chat answer, streamed over SSE; a base model was not trained for chat,
    so expect less from it than from an instruction-tuned GGUF."""
    print(f"\n-- /v1/chat/completions: a streamed chat answer\n\n> {prompt}\n")
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            print(f"\n\n[{chunk.usage.completion_tokens} tokens streamed over SSE]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the streamed answer")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", 8080)))
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("REDIS_PORT", 6399)))
    parser.add_argument("--prompt", default="Write one sentence about the sea.")
    parser.add_argument(
        "--text", default="The old lighthouse keeper climbed the stairs and", help="raw prompt"
    )
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("demo: redis-server is missing; run `sh ops/dev.sh demo` to install it")
    data = Path(tempfile.mkdtemp(prefix="streamworker-demo-"))
    redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "GATEWAY_PORT": str(args.port),
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
        "PYTHONUNBUFFERED": "1",
    }
    logs = open(data / "services.log", "ab")
    procs = [
        subprocess.Popen(
            [
                "redis-server",
                str(ROOT / "redis.conf"),
                "--port",
                str(args.redis_port),
                "--dir",
                str(data),
                "--daemonize",
                "no",
            ],
            stdout=logs,
            stderr=logs,
        ),
    ]
    try:
        time.sleep(0.3)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "streamworker", "run"],
                env=env,
                stdout=logs,
                stderr=logs,
                cwd=ROOT,
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gateway"], env=env, stdout=logs, stderr=logs, cwd=ROOT
            )
        )
        base = f"http://127.0.0.1:{args.port}"
        print(f"demo: starting redis on :{args.redis_port}, a worker, and the gateway on {base}")
        print(f"demo: logs in {data / 'services.log'}")
        wait_until(base + "/ready", "the gateway and a worker", 180, procs)
        client = OpenAI(base_url=base + "/v1", api_key="demo")
        model = os.environ.get("MODEL_NAME", "gemma-3-270m")
        raw_completion(client, model, args.text)
        chat_answer(client, model, args.prompt)
        if args.once:
            return 0
        print(
            f"\ndemo: serving on {base}; try\n  curl -N {base}/v1/completions -d "
            '\'{"model":"gemma-3-270m","prompt":"Once upon a time","stream":true}\'\n'
            f"  curl -N {base}/v1/chat/completions -d "
            '\'{"model":"gemma-3-270m","messages":[{"role":"user","content":"Hi"}],'
            '"stream":true}\'\nCtrl-C to stop.'
        )
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


if __name__ == "__main__":
    sys.exit(main())
