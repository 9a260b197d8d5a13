"""Our HTTP server beside llama.cpp's (`python -m llama_cpp.server`) on the same GGUF, same threads:
output tokens per second and time to first token at 1, 4 and 16 concurrent streaming clients.

    python bench/serve.py                          # default model, clients 1,4,16, 2 rounds
    python bench/serve.py --artifact dist/x --clients 1,4,16 --prompt-len 64 --gen-len 32 --threads 2

Both servers are started once and stay up; each round runs every client count against each server
in turn (interleaved, so a noisy neighbour hurts both alike) and the medians over rounds are
reported, with our ratio to llama.cpp. Every client streams `--requests` completions one after
another, each prompt different (no prefix cache help for either side), greedy, with the end of
text banned so that every request generates exactly `--gen-len` tokens.

Throughput is all output tokens over the wall time of the run; TTFT is per request, from sending
it to its first text. llama.cpp's server answers one request at a time (no batching); ours batches.
llama-cpp-python comes from the wheel cache of bench/peers.py (built on first use: ~16 min).
Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np
from peers import ensure_llama_cpp  # bench/ is this script's folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_llama_cpp_server() -> None:
    """llama-cpp-python and its server's extra dependencies (not its fastapi/uvicorn pins)."""
    ensure_llama_cpp()
    missing = []
    for module, package in (
        ("sse_starlette", "sse-starlette"),
        ("starlette_context", "starlette-context<0.4"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


class Server:
    """A server process on a free port; `url` once it answers /v1/models."""

    def __init__(self, name: str, cmd: list[str], port: int, log) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}; see its log")
            try:
                if httpx.get(self.url + "/v1/models", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} server did not come up in {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_request(http: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int, float]:
    """(time to first text, output tokens, total time) of one streamed completion."""
    start = time.perf_counter()
    first, usage = None, None
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any(c.get("text") for c in chunk.get("choices", ())):
                first = first or time.perf_counter()
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else body["max_tokens"]
    return (first or end) - start, tokens, end - start


async def run_load(url: str, prompts: list[list[str]], gen_len: int, ban: dict) -> dict:
    """Each client sends its prompts one after another; all clients at once."""

    async def client(mine: list[str]) -> list[tuple[float, int, float]]:
        out = []
        for prompt in mine:
            body = {
                "prompt": prompt,
                "max_tokens": gen_len,
                "temperature": 0,
                "stream": True,
                "logit_bias": ban,
            }
            out.append(await one_request(http, url, body))
        return out

    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:
        start = time.perf_counter()
        results = await asyncio.gather(*(client(p) for p in prompts))
        wall = time.perf_counter() - start
    flat = [r for rs in results for r in rs]
    ttfts = sorted(r[0] for r in flat)
    return {
        "output_tps": sum(r[1] for r in flat) / wall,
        "ttft_s": statistics.median(ttfts),
        "ttft_p90_s": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
        "wall_s": wall,
    }


def make_prompts(tokenizer, n: int, length: int, seed: int) -> list[str]:
    """`n` different texts of about `length` tokens (random in-vocabulary tokens, decoded)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(1000, 20000, length).tolist()
        out.append(tokenizer.decode(ids))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--artifact", help="our artifact (default: the default model, built once into the cache)"
    )
    parser.add_argument("--quantization", help="when building the default model (default: the preset's)")
    parser.add_argument("--gguf", help="the GGUF llama.cpp loads (default: the default model's)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=1, help="requests per client, one after another")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="median over this many interleaved rounds")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--peers", default="llama.cpp", help="'' for ours alone")
    parser.add_argument("--log", default="bench_serve.log", help="the servers' output")
    args = parser.parse_args()

    from llm_deploy.build import ensure_artifact
    from llm_deploy.models import MODELS
    from llm_deploy.runtime.artifact import load_artifact

    artifact = args.artifact or str(ensure_artifact("llama", "llvm", args.quantization))
    gguf = args.gguf or str(MODELS["llama"].gguf_path())
    loaded = load_artifact(artifact)
    tokenizer = loaded.tokenizer
    ban = {
        str(t): -100 for t in loaded.chat_config.get("stop_token_ids", ())
    }  # every request runs to gen_len
    context = args.prompt_len + args.gen_len + 64
    counts = [int(c) for c in args.clients.split(",")]

    log = open(args.log, "w")  # noqa: SIM115 (open for the servers' lifetime)
    port = free_port()
    servers = [
        Server(
            "ours",
            [sys.executable, "-m", "llm_deploy.cli", "serve", artifact, "--port", str(port),
             "--num-threads", str(args.threads), "--log-level", "warning", "--max-num-seqs", str(max(counts))],
            port, log,
        )
    ]  # fmt: skip
    if "llama.cpp" in args.peers:
        ensure_llama_cpp_server()
        port = free_port()
        servers.append(
            Server(
                "llama.cpp",
                [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port),
                 "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                 "--n_ctx", str(context), "--n_batch", str(max(args.prompt_len, 64)),
                 "--interrupt_requests", "False"],  # queue concurrent requests, as ours does
                port, log,
            )
        )  # fmt: skip
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for s in servers:
            s.wait_ready()
            asyncio.run(run_load(s.url, [make_prompts(tokenizer, 1, args.prompt_len, 0)], 4, ban))  # warm up
        for r in range(args.rounds):
            for n in counts:
                prompts = make_prompts(tokenizer, n * args.requests, args.prompt_len, seed=1000 * r + n)
                per_client = [prompts[i::n] for i in range(n)]
                for s in servers:
                    res = asyncio.run(run_load(s.url, per_client, args.gen_len, ban))
                    results.setdefault((s.name, n), []).append(res)
                    print(
                        f"round {r + 1}/{args.rounds} {s.name:9} {n:2} clients: {json.dumps(res)}",
                        file=sys.stderr,
                    )
    finally:
        for s in servers:
            s.stop()
        log.close()

    keys = ["output_tps", "ttft_s", "ttft_p90_s"]
    median = {k: {m: statistics.median(x[m] for x in v) for m in keys} for k, v in results.items()}
    print(
        f"\nprompt {args.prompt_len} tokens, {args.gen_len} generated, {args.requests} request(s) per client, "
        f"{args.threads} threads, median of {args.rounds} rounds"
    )
    print(f"{'server':10}{'clients':>8}" + "".join(f"{k:>14}" for k in keys))
    for (name, n), m in median.items():
        print(f"{name:10}{n:>8}" + "".join(f"{m[k]:>14.2f}" for k in keys))
    if len(servers) > 1:
        for n in counts:
            ours, peer = median[("ours", n)], median[("llama.cpp", n)]
            print(f"{'ours/llama.cpp':14}{n:>4}" + "".join(f"{ours[k] / peer[k]:>13.2f}x" for k in keys))
    print(json.dumps({"median": {f"{name}@{n}": m for (name, n), m in median.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
