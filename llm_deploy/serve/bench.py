"""`llm-deploy bench`: prefill and decode speed of one sequence, as llama-bench measures them."""

from __future__ import annotations

import resource
import statistics
import time

import numpy as np

from llm_deploy.runtime.model_runner import ModelRunner
from llm_deploy.serve.generate import prefill_chunked


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_once(runner: ModelRunner, prompt: list[int], gen_len: int, seq_id: int = 0) -> dict[str, float]:
    """Prefill `prompt`, then `gen_len` greedy decode steps (EOS ignored)."""
    runner.add_sequence(seq_id)
    try:
        t0 = time.perf_counter()
        logits = prefill_chunked(runner, seq_id, prompt, runner.prefill_chunk)
        token = int(logits[0].argmax())
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(gen_len):
            token = int(runner.decode([seq_id], [token])[0].argmax())
        decode_s = time.perf_counter() - t1
    finally:
        runner.remove_sequence(seq_id)
    return {"prefill_tps": len(prompt) / ttft, "decode_tps": gen_len / decode_s, "ttft_s": ttft}


def run_bench(
    runner: ModelRunner, prompt_len: int = 128, gen_len: int = 128, runs: int = 3
) -> dict[str, float]:
    """Median figures over `runs` runs after one warm-up; a fixed random prompt."""
    if prompt_len + gen_len > runner.context_window:
        raise ValueError(
            f"prompt_len + gen_len ({prompt_len + gen_len}) exceeds the context window ({runner.context_window})"
        )
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, runner.vocab_size, prompt_len)]
    run_once(runner, prompt[:8], 2)  # warm-up: pages, kernel pool threads
    results = [run_once(runner, prompt, gen_len) for _ in range(runs)]
    out = {key: round(statistics.median(r[key] for r in results), 4) for key in results[0]}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out
