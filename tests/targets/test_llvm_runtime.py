"""Loading and calling compiled kernels: the object file round trip (a fresh process that cannot
import the compiler), host compatibility checks, argument checking, the packed ABI, the registry."""

import ctypes
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llm_deploy.targets import TARGETS, get_target
from llm_deploy.targets.llvm import (
    HostMismatchError,
    KernelCallError,
    KernelModule,
    check_host_compatible,
    load,
)
from llm_deploy.targets.llvm.host import host
from tests.targets.llvm_cases import CASES

CHILD = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoCompiler(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "llm_deploy.compiler" or name.startswith("llm_deploy.compiler."):
                raise ImportError("the compiler must not be needed to run kernels")

    sys.meta_path.insert(0, NoCompiler())
    import numpy as np
    from llm_deploy.targets.llvm import load

    folder = sys.argv[1]
    module = load(folder)
    inputs = np.load(f"{folder}/inputs.npz")
    a, b, w = inputs["a"], inputs["b"], inputs["w"]
    c = np.zeros((a.shape[0], w.shape[1]), np.float32)
    module["matmul"](a, w, c)
    e = np.zeros_like(a[:, :20])
    module["ew2d"](a[:, :20].copy(), b, e)
    h = np.zeros(6, np.float32)
    module["heavy_parallel"](h, 500)
    np.savez(f"{folder}/outputs.npz", c=c, e=e, h=h)
    assert not [m for m in sys.modules if m.startswith("llm_deploy.compiler")]
    print("ok", module.pool_stats()["workers"])
    """
)


def test_object_file_round_trip_in_a_fresh_process_without_the_compiler(llvm_module, tmp_path):
    llvm_module.save(tmp_path)
    rng = np.random.default_rng(0)
    a, b, w = (
        rng.standard_normal((70, 24), np.float32),
        rng.standard_normal((70, 20), np.float32),
        rng.standard_normal((24, 37), np.float32),
    )
    np.savez(tmp_path / "inputs.npz", a=a, b=b, w=w)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
    out = np.load(tmp_path / "outputs.npz")
    c, e, h = np.zeros((70, 37), np.float32), np.zeros((70, 20), np.float32), np.zeros(6, np.float32)
    llvm_module["matmul"](a, w, c)
    llvm_module["ew2d"](a[:, :20].copy(), b, e)
    llvm_module["heavy_parallel"](h, 500)
    np.testing.assert_array_equal(out["c"], c)
    np.testing.assert_array_equal(out["e"], e)
    np.testing.assert_array_equal(out["h"], h)


def test_loading_in_process_reuses_the_object_without_compiling(llvm_module, tmp_path):
    llvm_module.save(tmp_path, stem="k")
    module = load(tmp_path, stem="k", num_threads=2)
    assert module.ir is None and set(module.kernels) == set(llvm_module.kernels)
    a = np.arange(10, dtype=np.float32)
    out = np.zeros(20, np.float32)
    module["concat"](a, a[:10].copy(), out)
    np.testing.assert_array_equal(out, np.concatenate([a, a]))
    module.close()


def test_host_compatibility_is_checked_before_loading(llvm_module):
    h = host()
    check_host_compatible(h.triple, h.features)
    with pytest.raises(HostMismatchError, match=r"features this host \(.*\) lacks: made-up-feature"):
        check_host_compatible(h.triple, h.features + ",+made-up-feature")
    other = "aarch64-unknown-linux-gnu" if not h.triple.startswith("aarch64") else "x86_64-unknown-linux-gnu"
    with pytest.raises(HostMismatchError, match="code was built for"):
        check_host_compatible(other, "")
    manifest = llvm_module.manifest()
    manifest["features"] += ",+avx512-imaginary"
    with pytest.raises(HostMismatchError, match="avx512-imaginary"):
        KernelModule.from_manifest(llvm_module.object_code, manifest)
    manifest["format"] = "something else"
    with pytest.raises(ValueError, match="not an LLVM kernel manifest"):
        KernelModule.from_manifest(llvm_module.object_code, manifest)


def test_manifest_records_target_and_signatures(llvm_module):
    manifest = llvm_module.manifest()
    h = host()
    assert (manifest["triple"], manifest["cpu"], manifest["features"]) == (h.triple, h.cpu, h.features)
    (strided,) = [k for k in manifest["kernels"] if k["name"] == "strided"]
    assert strided == {
        "name": "strided",
        "params": [
            {"name": "even", "kind": "buffer", "dtype": "float32", "shape": ["n"]},
            {"name": "A", "kind": "buffer", "dtype": "float32", "shape": ["2 * n"]},
            {"name": "odd", "kind": "buffer", "dtype": "float32", "shape": ["n"]},
        ],
        "vars": ["n"],
    }


def test_arguments_are_checked_with_messages_that_say_what_and_where(llvm_module):
    k = llvm_module["ew2d"]
    a, b, c = (np.zeros((5, 20), np.float32) for _ in range(3))
    with pytest.raises(KernelCallError, match="takes 3 arguments, got 2"):
        k(a, b)
    with pytest.raises(
        KernelCallError,
        match=r"argument 1 \(B\) must be a C-contiguous float32 array of shape \(n, 20\).*found a float64",
    ):
        k(a, b.astype(np.float64), c)
    with pytest.raises(KernelCallError, match="found a non-contiguous float32 array"):
        k(a, np.zeros((20, 5), np.float32).T, c)
    with pytest.raises(
        KernelCallError,
        match=r"argument 2 \(C\).*with n=5 bound by earlier arguments, found a float32 array of shape \(6, 20\)",
    ):
        k(a, b, np.zeros((6, 20), np.float32))
    with pytest.raises(KernelCallError, match="found list"):
        k(a, b, [0.0] * 100)
    with pytest.raises(
        KernelCallError, match=r"argument 1 \(A\) must be a C-contiguous float32 array of shape \(2 \* n\)"
    ):
        llvm_module["strided"](np.zeros(4, np.float32), np.zeros(9, np.float32), np.zeros(4, np.float32))
    with pytest.raises(KernelCallError, match="scalar arguments must be ints"):
        llvm_module["scalar_param"](np.zeros(9, np.float32), np.zeros(4, np.float32), "3")
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        llvm_module["nope"]


def test_packed_abi_takes_pointer_and_var_arrays(llvm_module):
    case = CASES["ew2d"]
    a, b, c = case.make_args(np.random.default_rng(1), 9)
    ptrs = (ctypes.c_void_p * 3)(a.ctypes.data, b.ctypes.data, c.ctypes.data)
    values = (ctypes.c_int64 * 1)(9)
    llvm_module["ew2d"].call_packed(ctypes.addressof(ptrs), ctypes.addressof(values))
    np.testing.assert_allclose(c, case.reference(a, b, c)[0], rtol=1e-5, atol=1e-6)


def test_targets_registry_by_user_facing_name():
    assert set(TARGETS) == {"llvm", "webgpu", "vulkan"}
    t = get_target("llvm")
    assert t.options(num_threads=2).num_threads == 2
    module = t.codegen({"double": CASES["bin_add_float32"].func}, t.options(opt_level=1))
    x = np.arange(5, dtype=np.float32)
    out = np.zeros(5, np.float32)
    module["double"](x, x, out)
    np.testing.assert_array_equal(out, 2 * x)
    module.close()
    with pytest.raises(KeyError, match="unknown target 'cuda'; available: llvm, vulkan, webgpu"):
        get_target("cuda")
