"""What fusion and memory planning do to a model: kernels launched per decode step, and the
activation memory planned for prefill and decode against allocating every binding on its own.

    python bench/fusion_memory.py [--model llama] [--prompt-tokens 16] [--decode-steps 4]

Both pipelines compile the same IR for the CPU: "unoptimized" (legalize and schedule only) and
the target's own ("llvm": clean-up, reshape views, fusion, then schedules and memory planning).
Kernel launches are the VM's count (`vm.stats["kernel_calls"]`) over real steps of a one-sequence
generation; memory figures are the plans' (upper bounds: n and b up to the context window), so
they do not depend on the step run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llm_deploy.compiler.passes.memory_plan import plan_function
from llm_deploy.compiler.pipeline import PIPELINES, build, run_passes


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--decode-steps", type=int, default=4)
    args = ap.parse_args()

    from llm_deploy.kv_cache import PagedKVCache
    from llm_deploy.models import MODELS, load_model
    from llm_deploy.models.llama import build_llama, weight_arrays

    model = load_model(args.model)
    config, options = model.config, MODELS[args.model].build
    ctx = options.context_window
    mod = build_llama(config, "float32", ctx)
    weights = weight_arrays(config, model.weights, "float32")

    print(f"model {args.model}: {config.num_hidden_layers} layers, context window {ctx}")
    print("\nactivation memory (upper bounds, n and b up to the context window):")
    print(
        f"{'function':10s} {'unfused, each binding':>24s} {'fused, each binding':>22s} {'fused + planned':>18s}"
    )
    optimized = run_passes(mod, PIPELINES["llvm"])
    plain = run_passes(mod, PIPELINES["unoptimized"])
    for fn in ("prefill", "decode"):
        plan = plan_function(optimized[fn])
        print(f"{fn:10s} {mib(plan_function(plain[fn]).separate_bytes):>24s} {mib(plan.separate_bytes):>22s} {mib(plan.total_bytes):>18s}"
              f"   ({len(plan.storage)} blocks; per call: {', '.join(plan.unplanned)})")  # fmt: skip

    print("\nkernels launched (VM count), one sequence:")
    for name in ("unoptimized", "llvm"):
        t = time.perf_counter()
        vm = build(mod, "llvm", pipeline=name).vm()
        built = time.perf_counter() - t
        cache = PagedKVCache(
            config.num_hidden_layers, config.num_key_value_heads, config.head_dim,
            page_size=options.kv_page_size, num_pages=ctx // options.kv_page_size,
        )  # fmt: skip
        cache.add_sequence(0)
        ids = (np.arange(args.prompt_tokens) % 1000 + 100).astype(np.int32)
        cache.begin_forward([0], [len(ids)])
        before = vm.stats["kernel_calls"]
        logits = vm["prefill"](ids, np.array([len(ids) - 1], np.int32), cache, *weights)
        cache.end_forward()
        prefill_calls = vm.stats["kernel_calls"] - before
        per_step, allocs = [], []
        for _ in range(args.decode_steps):
            nxt = np.array([int(logits[0].argmax())], np.int32)
            cache.begin_forward([0], [1])
            before, a0 = vm.stats["kernel_calls"], vm.stats["allocs"]
            t0 = time.perf_counter()
            logits = vm["decode"](nxt, cache, *weights)
            per_step.append(time.perf_counter() - t0)
            cache.end_forward()
            allocs.append(vm.stats["allocs"] - a0)
        calls = vm.stats["kernel_calls"] - before
        print(f"  {name:12s} prefill {prefill_calls:4d} kernels, decode {calls:4d} kernels/step, "
              f"allocations per decode step {allocs} (build {built:.0f} s, decode {1e3 * min(per_step):.1f} ms/step)")  # fmt: skip


if __name__ == "__main__":
    main()
