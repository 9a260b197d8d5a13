"""CPU kernels against numpy, in one run: matrix-vector GB/s, matrix-matrix GFLOP/s, launch cost.

    python bench/kernels.py [--rounds 7] [--threads N]

Our kernels are the default CPU schedules (llm_deploy.compiler.schedule) of the model's own
`linear` (X (n, K) times W (N, K) transposed, weights [out, in], symbolic n) compiled by the LLVM
target; numpy's `@` runs on its BLAS. Runs are interleaved, ours and numpy's, and each figure is
the median over rounds, so a noisy neighbour hurts both sides alike. Goals (issue 7): GEMV at
least 1.0x numpy, GEMM at least 0.8x, a tiny kernel's launch under 5 µs.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from collections.abc import Callable

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te
from llm_deploy.compiler.schedule import CPUTarget, schedule_cpu
from llm_deploy.targets.llvm.codegen import LLVMOptions, codegen


def linear(K: int, N: int):
    """The te of the `linear` lowering: Out[i, j] = sum_k X[i, k] * W[j, k], n symbolic."""
    n = S.var("n")
    X = te.placeholder((n, K), "float32", "A")
    W = te.placeholder((N, K), "float32", "B")
    k = te.reduce_axis(K, "k")
    Y = te.compute((n, N), lambda i, j: te.sum(X[i, k] * W[j, k], k), "Out")
    return te.create_prim_func([X, W, Y])


def tiny():
    """One float added: what a launch costs when the kernel does nothing."""
    A = te.placeholder((4,), "float32", "A")
    B = te.compute((4,), lambda i: A[i] + 1.0, "B")
    return te.create_prim_func([A, B])


def per_call(fn: Callable[[], object], min_time: float = 0.05) -> float:
    """Seconds per call of fn, over enough calls to take min_time."""
    fn()
    reps, elapsed = 1, 0.0
    while True:
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        elapsed = time.perf_counter() - t
        if elapsed >= min_time:
            return elapsed / reps
        reps *= 2


def interleaved(ours: Callable[[], object], theirs: Callable[[], object], rounds: int) -> tuple[float, float]:
    a, b = [], []
    for _ in range(rounds):
        a.append(per_call(ours))
        b.append(per_call(theirs))
    return statistics.median(a), statistics.median(b)


def gemv(kernel, K: int, N: int, rng: np.random.Generator, rounds: int) -> None:
    W = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((1, K)).astype(np.float32)
    out = np.empty((1, N), np.float32)
    kernel(x, W, out)
    assert np.allclose(out[0], W @ x[0], rtol=1e-4, atol=1e-3), (N, K)
    ours, theirs = interleaved(lambda: kernel(x, W, out), lambda: W @ x[0], rounds)
    gb = W.nbytes / 1e9
    print(
        f"matrix-vector {N}x{K} f32: ours {gb / ours:6.1f} GB/s ({ours * 1e6:7.1f} µs), "
        f"numpy {gb / theirs:6.1f} GB/s ({theirs * 1e6:7.1f} µs)  ratio {theirs / ours:.2f}x  (goal >= 1.0x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="threads of our parallel loops (default: all)")
    args = ap.parse_args()

    shapes = {"gemv_4096x4096": (4096, 4096), "gemv_1536x576": (576, 1536), "gemm": (576, 1536)}
    target = CPUTarget()
    funcs = {name: schedule_cpu(linear(K, N), target) for name, (K, N) in shapes.items() if name != "gemm"}
    funcs["gemm"] = funcs["gemv_1536x576"]
    funcs["tiny"] = schedule_cpu(tiny(), target)
    km = codegen(funcs, LLVMOptions(num_threads=args.threads))
    rng = np.random.default_rng(0)
    print(f"threads: ours {km.num_threads}; rounds {args.rounds}; medians\n")

    for name in ("gemv_4096x4096", "gemv_1536x576"):
        gemv(km[name], *shapes[name], rng, args.rounds)

    K, N = shapes["gemm"]
    M = 128
    W = rng.standard_normal((N, K)).astype(np.float32)
    Wt = np.ascontiguousarray(W.T)
    X = rng.standard_normal((M, K)).astype(np.float32)
    out = np.empty((M, N), np.float32)
    kernel = km["gemm"]
    kernel(X, W, out)
    assert np.allclose(out, X @ W.T, rtol=1e-4, atol=1e-3)
    ours, theirs = interleaved(lambda: kernel(X, W, out), lambda: X @ Wt, args.rounds)
    gf = 2 * M * N * K / 1e9
    print(
        f"matrix-matrix ({M}x{K})@({K}x{N}) f32: ours {gf / ours:6.1f} GFLOP/s ({ours * 1e3:6.2f} ms), "
        f"numpy {gf / theirs:6.1f} GFLOP/s ({theirs * 1e3:6.2f} ms)  ratio {theirs / ours:.2f}x  (goal >= 0.8x)"
    )

    a, b = np.zeros(4, np.float32), np.zeros(4, np.float32)
    kernel = km["tiny"]
    checked = statistics.median(per_call(lambda: kernel(a, b)) for _ in range(args.rounds))
    # the packed entry point: data pointers and dims prepared once, as a VM that keeps them does
    ptrs = (ctypes.c_void_p * 2)(a.ctypes.data, b.ctypes.data)
    dims = (ctypes.c_int64 * 1)()
    pa, pd = ctypes.addressof(ptrs), ctypes.addressof(dims)
    packed = statistics.median(per_call(lambda: kernel.call_packed(pa, pd)) for _ in range(args.rounds))
    print(
        f"launch of a tiny kernel: {checked * 1e6:.2f} µs checked call from Python, "
        f"{packed * 1e6:.2f} µs packed entry  (goal < 5 µs)"
    )


if __name__ == "__main__":
    main()
