"""The thread pool compiled into every kernel module: parallel loops really run on several OS
threads, concurrent callers stay correct, and closing a module joins its workers."""

import os
import threading
import time

import numpy as np
import pytest

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.tir import Buffer, For, PrimFunc, Store
from llm_deploy.targets.llvm import KernelCallError
from llm_deploy.targets.llvm.codegen import codegen
from tests.targets.conftest import copy_args
from tests.targets.llvm_cases import CASES


def heavy_reference(n: int, K: int) -> np.ndarray:
    x = np.arange(K, dtype=np.float32)[None, :] * np.float32(0.001) + np.arange(n, dtype=np.float32)[:, None]
    return np.sin(x).sum(axis=1, dtype=np.float64)


def test_parallel_loop_runs_on_more_than_one_os_thread(llvm_module):
    """Each pool worker records its OS thread id (gettid) when it starts and counts the tasks it
    runs; a heavy parallel loop must run tasks on a worker, a thread other than the caller."""
    kernel = llvm_module["heavy_parallel"]
    llvm_module.set_num_threads(2)
    try:
        # The first parallel call starts the worker. Task counts are per slot and outlive the
        # workers of earlier tests, so the baseline is taken once this slot's worker exists: only
        # it can add to the count, and it records its thread id before it takes a task.
        kernel(np.zeros(8, np.float32), 10)
        before = llvm_module.pool_stats()["tasks"]
        assert len(before) == 2, "set_num_threads(2) must give one worker beside the caller"
        K, ran_on_worker = 100_000, False
        for _ in range(20):  # a loaded machine may wake the worker late; it must show up soon
            out = np.zeros(8, np.float32)
            kernel(out, K)
            stats = llvm_module.pool_stats()
            np.testing.assert_allclose(out, heavy_reference(8, K), rtol=1e-3)
            if stats["tasks"][1] > before[1]:
                ran_on_worker = True
                break
        assert ran_on_worker, f"no task ran on a worker thread: {stats}"
        assert stats["workers"] == 1
        (tid,) = stats["tids"]
        assert tid != threading.get_native_id()
        assert str(tid) in os.listdir("/proc/self/task"), "the worker is a live OS thread of this process"
    finally:
        llvm_module.set_num_threads()


def test_concurrent_callers_each_get_their_own_result(llvm_module):
    """The pool runs one job at a time; a caller that finds it busy runs its loop serially."""
    case, kernel = CASES["ew2d"], llvm_module["ew2d"]
    errors = []

    def caller(seed: int) -> None:
        for n in (3, 40, 300):
            args = case.make_args(np.random.default_rng(seed * 1000 + n), n)
            got = copy_args(args)
            for _ in range(20):
                kernel(*got)
                (want,) = case.reference(*args)
                if not np.allclose(got[2], want, rtol=1e-5, atol=1e-6):
                    errors.append((seed, n))

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_one_thread_runs_everything_on_the_caller(llvm_module):
    llvm_module.set_num_threads(1)
    try:
        out = np.zeros(4, np.float32)
        llvm_module["heavy_parallel"](out, 1000)
        np.testing.assert_allclose(out, heavy_reference(4, 1000), rtol=1e-4)
        assert llvm_module.pool_stats()["workers"] == 0
    finally:
        llvm_module.set_num_threads()


def test_close_joins_the_workers():
    n, i = S.var("n"), S.var("i")
    A = Buffer("A", (n,))
    module = codegen({"fill": PrimFunc((A,), For(i, n, Store(A, (i,), 2.0), kind="parallel"))}, None)
    module.set_num_threads(3)
    a = np.zeros(1000, np.float32)
    module["fill"](a)
    assert (a == 2.0).all()
    deadline = time.monotonic() + 10
    tids = [str(t) for t in module.pool_stats()["tids"]]
    while "0" in tids and time.monotonic() < deadline:  # workers record their ids as they start
        time.sleep(0.001)
        tids = [str(t) for t in module.pool_stats()["tids"]]
    assert len(tids) == 2 and "0" not in tids
    assert set(tids) <= set(os.listdir("/proc/self/task"))
    module.close()
    assert not set(tids) & set(os.listdir("/proc/self/task"))
    with pytest.raises(KernelCallError, match="its module was closed"):
        module["fill"](a)


def test_a_forked_child_computes_with_its_copy_of_the_pool(llvm_module):
    """The child inherits the pool's state but none of its threads: the caller runs every task
    nobody claims, and set_num_threads starts fresh workers in the child."""
    kernel = llvm_module["heavy_parallel"]
    llvm_module.set_num_threads(2)
    kernel(np.zeros(4, np.float32), 10)  # the parent's worker is running
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            want = heavy_reference(6, 2000)
            out = np.zeros(6, np.float32)
            kernel(out, 2000)
            ok = np.allclose(out, want, rtol=1e-4)
            llvm_module.set_num_threads(2)
            out[:] = 0
            kernel(out, 2000)
            status = 0 if ok and np.allclose(out, want, rtol=1e-4) else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    llvm_module.set_num_threads()
