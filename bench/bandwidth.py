"""The machine's read bandwidth as a native kernel sees it: the roofline decode is measured against.

    python bench/bandwidth.py --threads 2

A tensor program that sums a buffer far larger than the caches (8 float lanes per task, tasks
spread over the kernel pool's threads), compiled by our own LLVM target, so it streams memory the
way the decode kernels do. Prints GB/s (median of rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T

LANES = 8


def streaming_sum(chunks: int, chunk: int) -> T.PrimFunc:
    """Out[c, l] = sum_g A[c, 8g + l]: each parallel task streams its rows once."""
    A = T.Buffer("A", (chunks, chunk), "float32")
    Out = T.Buffer("Out", (chunks, LANES), "float32")
    acc = T.Buffer("acc", (LANES,), "float32", "local")
    c, g, l = S.var("c"), S.var("g"), S.var("l")
    body = T.Allocate(
        acc,
        T.seq(
            T.For(l, LANES, T.Store(acc, (l,), T.Imm(0.0, "float32")), "vectorized"),
            T.For(
                g,
                chunk // LANES,
                T.For(l, LANES, T.Store(acc, (l,), acc[l] + A[c, LANES * g + l]), "vectorized"),
            ),
            T.For(l, LANES, T.Store(Out, (c, l), acc[l]), "vectorized"),
        ),
    )
    return T.PrimFunc((A, Out), T.For(c, chunks, body, "parallel"), {"scheduled": True})


def stream_read_gbps(threads: int, mbytes: int = 256, rounds: int = 7) -> float:
    """Median read bandwidth (GB/s) of the streaming kernel over `mbytes` MB on `threads` threads."""
    from llm_deploy.targets.llvm.codegen import LLVMOptions, codegen

    chunk = 1 << 16  # floats per task: 256 KB
    chunks = mbytes * (1 << 20) // (4 * chunk)
    km = codegen({"stream": streaming_sum(chunks, chunk)}, LLVMOptions(num_threads=threads))
    a = np.ones((chunks, chunk), np.float32)
    out = np.empty((chunks, LANES), np.float32)
    kernel = km["stream"]
    kernel(a, out)  # warm: pages, pool threads
    if not np.allclose(out.sum(), a.size):
        raise AssertionError("the streaming kernel summed wrongly")
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        kernel(a, out)
        times.append(time.perf_counter() - t)
    return a.nbytes / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mbytes", type=int, default=256)
    args = parser.parse_args()
    print(f"streaming read, {args.threads} threads: {stream_read_gbps(args.threads, args.mbytes):.1f} GB/s")


if __name__ == "__main__":
    main()
