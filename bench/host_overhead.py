"""Host overhead of one decode step: the time that is not spent inside kernels, and where it goes.

    python bench/host_overhead.py                  # default model, 2 threads, fast step on and off
    python bench/host_overhead.py --artifact dist/x --threads 1 --steps 50 --context 128

Three measurements per mode (the low-overhead step on, then off), each the median of `--steps`
decode steps of one sequence after a `--context`-token prefill:
- step: `ModelRunner.decode` as the engine calls it (cache bookkeeping, VM, kernels, readback);
- host: the same step with every kernel replaced by a native no-op (same arguments, same checks),
  so what remains is exactly the host's work;
- kernels = step - host;
- host cpu: the host-only step in this process's CPU time (robust on a busy machine).
Then a profile of the host-only step (`--profile`) shows where the host time goes.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import ctypes
import pstats
import statistics
import time

import llvmlite.binding as llvm


def noop_address() -> tuple[object, int]:
    """A native function that returns at once; any arguments (the C convention lets callers pass
    more than a callee reads), so it stands in for both kernel entry points."""
    from llm_deploy.targets.llvm.host import host, init_llvm, target_machine

    init_llvm()
    mod = llvm.parse_assembly("define void @llmd_noop() {\n  ret void\n}\n")
    mod.triple = host().triple
    engine = llvm.create_mcjit_compiler(mod, target_machine(host()))
    engine.finalize_object()
    return engine, engine.get_function_address("llmd_noop")


def noop_kernels(module, address: int) -> dict:
    """The module's kernels, with the same signatures and checks, calling the no-op instead."""
    out = {}
    for name, k in module.kernels.items():
        c = copy.copy(k)
        nbufs, nvars = len(k.signature.buffers), len(k.signature.vars)
        c.address = address
        c._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(address)
        c._py = ctypes.CFUNCTYPE(None, *([ctypes.py_object] * nbufs + [ctypes.c_int64] * nvars))(address)
        out[name] = c
    return out


def time_steps(runner, steps: int, context: int, clock=time.perf_counter) -> float:
    """Median seconds of one decode step after a `context`-token prefill (sequence 0)."""
    runner.add_sequence(0)
    try:
        runner.prefill([0], [list(range(100, 100 + context))])
        for _ in range(3):
            runner.decode([0], [5])
        times = []
        for _ in range(steps):
            t = clock()
            runner.decode([0], [5])
            times.append(clock() - t)
    finally:
        runner.remove_sequence(0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", help="artifact folder (default: the default model, built if needed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="profile the host-only fast step")
    args = parser.parse_args()

    from llm_deploy.build import ensure_artifact
    from llm_deploy.runtime.artifact import load_artifact
    from llm_deploy.runtime.executable import default_externs
    from llm_deploy.runtime.model_runner import ModelRunner
    from llm_deploy.runtime.vm import VirtualMachine

    folder = args.artifact or ensure_artifact("llama")
    art = load_artifact(folder, num_threads=args.threads)
    engine, address = noop_address()
    noops = noop_kernels(art.executable.kernels, address)
    max_tokens = args.context + args.steps + 8
    print(f"{folder}: decode, {args.threads} threads, context {args.context}, median of {args.steps} steps")
    print(f"{'fast step':>10} {'step ms':>9} {'host ms':>9} {'host cpu ms':>12} {'kernels ms':>11}")
    for fast in (True, False):
        exe = art.executable
        runner = ModelRunner(art, max_tokens=max_tokens, vm=exe.vm(fast_step=fast))
        step = time_steps(runner, args.steps, args.context)
        host_vm = VirtualMachine(exe.program, noops, default_externs(), exe.constants, fast_step=fast)
        host_runner = ModelRunner(art, max_tokens=max_tokens, vm=host_vm)
        host = time_steps(host_runner, args.steps, args.context)
        # CPU time of this process alone: what a busy machine's other processes cannot inflate
        host_cpu = time_steps(host_runner, args.steps, args.context, time.process_time)
        print(
            f"{'on' if fast else 'off':>10} {step * 1e3:9.2f} {host * 1e3:9.3f} {host_cpu * 1e3:12.3f}"
            f" {(step - host) * 1e3:11.2f}"
        )
        if args.profile and fast:
            prof = cProfile.Profile()
            prof.enable()
            time_steps(host_runner, args.steps, args.context)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    del engine


if __name__ == "__main__":
    main()
