"""Where a decode step's kernel time goes: every kernel timed one by one, summed by kernel family.

    python bench/kernel_times.py                         # default model, 2 threads
    python bench/kernel_times.py --artifact dist/x --threads 1 --context 128 --steps 10

Runs the VM's instruction path (the low-overhead step off) with each kernel wrapped in a timer,
so small kernels carry a microsecond or two of Python each; the large ones (products, attention)
read true. Prints the step, the time inside kernels, and the families by total time.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", help="default: the default model, built once into the cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=128, help="prompt tokens before the decode steps")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    os.environ["LLMD_FAST_STEP"] = "0"

    from llm_deploy.build import ensure_artifact
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner
    from llm_deploy.runtime.vm import VirtualMachine

    artifact = load_artifact(
        args.artifact or ensure_artifact("llama", progress=False), num_threads=args.threads
    )
    runner = ModelRunner(artifact)
    times: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()

    def timed(name, kernel):
        def call(*a):
            t = time.perf_counter()
            kernel(*a)
            times[name] += time.perf_counter() - t
            calls[name] += 1

        return call

    module = artifact.executable.kernels
    kernels = {name: timed(name, module[name]) for name in module.kernels}
    vm = VirtualMachine(
        artifact.executable.program, kernels, runner.vm.externs, artifact.executable.constants
    )
    runner._decode = vm["decode"]
    runner.add_sequence(0)
    runner.prefill([0], [list(range(100, 100 + args.context))])
    for _ in range(3):
        runner.decode([0], [5])
    times.clear()
    calls.clear()
    t = time.perf_counter()
    for _ in range(args.steps):
        runner.decode([0], [5])
    step = (time.perf_counter() - t) / args.steps
    inside = sum(times.values()) / args.steps
    print(
        f"decode step {step * 1e3:.2f} ms, in kernels {inside * 1e3:.2f} ms, {sum(calls.values()) // args.steps} calls"
    )
    families: collections.Counter = collections.Counter()
    for name, total in times.items():
        families[re.sub(r"\d+$", "", name)] += total / args.steps  # add1, add2 -> add
    for name, total in families.most_common():
        print(f"  {name:48} {total * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
