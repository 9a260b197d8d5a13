"""Where a decode step's kernel time goes: the step's own launch list replayed natively, whole and
one kernel family at a time.

    python bench/kernel_times.py                         # default model, 2 threads, context 192
    python bench/kernel_times.py --artifact dist/x --threads 1 --context 512

The fast step (runtime/plan.py) turns a decode step into one native loop over checked launches.
This script builds that plan for a real step, then times the loop over all its launches and over
each family's launches alone (same buffers, same weights, no Python between kernels), median of
--repeat runs. Kernels of one family run back to back, so their weights compete for the caches as
they do in the step; the families' sum comes out a little under the whole step.
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", help="default: the default model, built once into the cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=192, help="tokens in the cache before the step")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()

    from llm_deploy.build import ensure_artifact
    from llm_deploy.runtime import plan as planning
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.model_runner import ModelRunner

    artifact = load_artifact(
        args.artifact or ensure_artifact("llama", progress=False), num_threads=args.threads
    )
    runner = ModelRunner(artifact, max_tokens=args.context + 16)
    runner.add_sequence(0)
    runner.prefill([0], [list(range(100, 100 + args.context - 1))])
    decode = runner.vm["decode"]
    if not isinstance(decode, planning.PlannedFunction):
        raise SystemExit("this artifact's decode has no fast step (LLMD_FAST_STEP=0?)")

    # One step's arguments, as ModelRunner.decode makes them, kept alive while the plan replays.
    ids = runner.device.from_host(np.asarray([5], np.int32))
    runner.cache.begin_forward([0], [1])
    step_args = (ids, runner.cache, *runner.params)
    found = decode.plan_for(*step_args)
    if found is None:
        raise SystemExit(f"decode cannot be planned: {decode.unplannable}")
    plan, leaves = found
    _allocs = decode.bind_objects(plan, leaves)  # held: the launches write into them
    run, data_offset = decode.runner

    family = {
        artifact.executable.kernels[n].address: re.sub(r"\d+$", "", n)
        for n in artifact.executable.kernels.kernels
    }
    launches = [(family[fn], words) for fn, words in plan.launches()]

    def median_ms(chosen: list) -> float:
        code = np.concatenate([words for _, words in chosen])
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            run(code.ctypes.data, len(chosen), plan.objs_address, data_offset, plan.bufs_address)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    whole = median_ms(launches)
    runner.cache.end_forward()
    counts = collections.Counter(f for f, _ in launches)
    print(
        f"decode step at context {args.context}, {args.threads} threads: {len(launches)} launches, {whole:.3f} ms"
    )
    rows = [(name, median_ms([x for x in launches if x[0] == name])) for name in counts]
    for name, ms in sorted(rows, key=lambda r: -r[1]):
        print(
            f"  {name:44} x{counts[name]:<4} {ms:7.3f} ms  {ms / counts[name] * 1e3:8.1f} us/launch  {ms / whole:6.1%}"
        )


if __name__ == "__main__":
    main()
