"""WGSL codegen: what the shaders look like (dims in a uniform, f16 only where used, floor
division only where the sign is unknown, chunked bindings), how every dtype is held on the
device, and the errors for programs WebGPU cannot run, each naming the kernel and the reason."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te
from llm_deploy.compiler import tir as T
from llm_deploy.targets.webgpu.codegen import WebGPUOptions, codegen
from llm_deploy.targets.webgpu.wgsl import CodegenError
from tests.targets.webgpu_util import gpu  # noqa: F401

n = S.var("n")
i, j, k, bx, tx = (S.var(x) for x in ("i", "j", "k", "bx", "tx"))


def _map(dtype_in: str, dtype_out: str, fn, size=n) -> T.PrimFunc:
    A, B = T.Buffer("A", (size,), dtype_in), T.Buffer("B", (size,), dtype_out)
    return T.PrimFunc((A, B), T.For(i, size, T.Store(B, (i,), fn(A[i]))))


def _shader(f: T.PrimFunc, **options) -> str:
    return codegen({"k": f}, WebGPUOptions(**options)).specs[0]["shaders"][0]["code"]


def _bound(body: T.Stmt, threads: int = 1) -> T.Stmt:
    return T.For(bx, 1, T.For(tx, threads, body, "thread", "threadIdx.x"), "thread", "blockIdx.x")


def test_symbolic_dims_are_a_uniform_and_constant_kernels_have_none():
    code = _shader(_map("float32", "float32", lambda x: x + 1.0))
    assert "struct Dims { v_n: i32 }" in code and "var<uniform> dims: Dims;" in code
    code = _shader(_map("float32", "float32", lambda x: x + 1.0, size=8))
    assert "uniform" not in code and "enable f16" not in code


def test_f16_is_enabled_only_where_float16_is_used():
    assert _shader(_map("float16", "float16", lambda x: x * 2.0)).startswith("enable f16;")
    assert "f16" not in _shader(_map("float32", "int32", lambda x: T.cast("int32", x)))


def test_floor_division_uses_truncation_only_where_both_sides_are_provably_non_negative():
    A, B, idx = T.Buffer("A", (n, 4)), T.Buffer("B", (n, 4)), T.Buffer("idx", (n,), "int32")
    loop = T.For(i, n, T.For(j, 4, T.Store(B, (i, j), A[S.floordiv(4 * i + j, 4), S.floormod(j + 3, 4)])))
    code = _shader(T.PrimFunc((A, B), loop))
    assert "fdiv" not in code and "fmod" not in code
    slot = S.var("slot")
    gather = T.For(
        i,
        n,
        T.Let(
            slot,
            T.cast("int64", idx[i]),
            T.Store(B, (i, 0), A[S.floordiv(slot, 4), 0] + A[0, S.floormod(slot, 4)]),
        ),
    )
    code = _shader(T.PrimFunc((A, idx, B), gather))
    assert "fn fdiv" in code and "fn fmod" in code


def test_a_buffer_larger_than_one_binding_is_bound_as_chunks():
    f = _map("float32", "float32", lambda x: x + 1.0, size=600)  # 2400 bytes
    spec = codegen({"k": f}, WebGPUOptions(max_binding_bytes=1024)).specs[0]["shaders"][0]
    assert [(b["buffer"], b["chunks"], b["chunk_words"]) for b in spec["bindings"]] == [
        ("A", 3, 256),
        ("B", 3, 256),
    ]
    assert "fn ld_b_A(w: i32) -> f32" in spec["code"] and "fn st_b_B(w: i32, x: f32)" in spec["code"]
    assert "fn st_b_A" not in spec["code"]  # A is only read


def test_chunked_buffers_run(gpu):  # noqa: F811
    f = _map("int64", "int64", lambda x: x * 3 - 7, size=600)
    module = codegen({"k": f}, WebGPUOptions(max_binding_bytes=2048))  # 4800 bytes: 3 chunks
    assert module.specs[0]["shaders"][0]["bindings"][0]["chunks"] == 3
    a = np.arange(-300, 300, dtype=np.int64)
    out = gpu.alloc((600,), "int64")
    module["k"](gpu.from_host(a), out)
    np.testing.assert_array_equal(gpu.to_host(out), a * 3 - 7)


DTYPE_CASES = [
    ("bool", "bool", lambda x: T.intrin("not", x)),
    ("int8", "int8", lambda x: x * 3),  # wraps around like numpy
    ("uint8", "uint8", lambda x: x + 200),
    ("int16", "int16", lambda x: x * 300),
    ("uint16", "uint16", lambda x: x * 2),
    ("int64", "int64", lambda x: -x),
    ("uint32", "uint32", lambda x: T.binary("shr", x, T.Imm(3, "uint32"))),
    ("float16", "float16", lambda x: x * 0.5),
    ("float32", "bool", lambda x: T.binary("gt", x, 0.0)),
    ("int32", "float32", lambda x: T.cast("float32", x) / 2.0),
]


@pytest.mark.parametrize("din,dout,fn", DTYPE_CASES, ids=[f"{a}-{b}" for a, b, _ in DTYPE_CASES])
def test_every_dtype_round_trips_and_computes_like_numpy(din, dout, fn, gpu):  # noqa: F811
    from llm_deploy.compiler.tir_interpreter import run as interpret

    f = _map(din, dout, fn)
    module = codegen({"k": f})
    rng = np.random.default_rng(0)
    for size in (1, 37, 300):
        if din == "bool":
            a = rng.random(size) < 0.5
        elif np.dtype(din).kind == "f":
            a = rng.standard_normal(size).astype(din)
        else:
            info = np.iinfo(din)
            a = rng.integers(max(info.min, -1000), min(info.max, 1000), size).astype(din)
        expected = np.zeros(size, dout)
        interpret(f, a, expected)
        out = gpu.alloc((size,), dout)
        module["k"](gpu.from_host(a), out)
        got = gpu.to_host(out)
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=1e-3)


ERRORS = {
    "barrier inside a thread loop": (
        T.PrimFunc(
            (T.Buffer("A", (4,)),), _bound(T.seq(T.Barrier(), T.Store(T.Buffer("A", (4,)), (0,), 1.0)))
        ),
        {},
    ),
    "has a symbolic shape": (
        T.PrimFunc(
            (T.Buffer("A", (n,)),),
            _bound(
                T.Allocate(T.Buffer("t", (n,), "float32", "local"), T.Store(T.Buffer("A", (n,)), (0,), 1.0))
            ),
        ),
        {},
    ),
    "allocated inside a kernel": (
        T.PrimFunc(
            (T.Buffer("A", (4,)),),
            _bound(
                T.Allocate(T.Buffer("t", (4,), "float32", "global"), T.Store(T.Buffer("A", (4,)), (0,), 1.0))
            ),
        ),
        {},
    ),
    "scheduling is off": (_map("float32", "float32", lambda x: x), {"schedule": False}),
    "loop i .serial. at the top level is not bound to GPU threads": (
        T.PrimFunc(
            (T.Buffer("A", (4,)),),
            T.seq(
                _bound(T.Store(T.Buffer("A", (4,)), (0,), 1.0)),
                T.For(i, 4, T.Store(T.Buffer("A", (4,)), (i,), 2.0)),
            ),
        ),
        {},
    ),
    "storage buffers": (_map("float32", "float32", lambda x: x), {"max_storage_buffers": 1}),
    "exceeds the limits": (
        T.PrimFunc((T.Buffer("A", (512,)),), _bound(T.Store(T.Buffer("A", (512,)), (tx,), 1.0), 512)),
        {},
    ),
    "WebGPU has no dtype 'float64'": (_map("float64", "float64", lambda x: x), {}),
    "symbolic extent": (
        T.PrimFunc(
            (T.Buffer("A", (n,)),),
            T.For(
                bx,
                1,
                T.For(tx, n, T.Store(T.Buffer("A", (n,)), (tx,), 1.0), "thread", "threadIdx.x"),
                "thread",
                "blockIdx.x",
            ),
        ),
        {},
    ),
}


@pytest.mark.parametrize("message", list(ERRORS))
def test_programs_webgpu_cannot_run_are_errors_naming_the_kernel(message):
    f, options = ERRORS[message]
    with pytest.raises((CodegenError, TypeError), match=message):
        codegen({"bad": f}, WebGPUOptions(**options))
    with pytest.raises((CodegenError, TypeError), match="bad"):
        codegen({"bad": f}, WebGPUOptions(**options))


def test_the_shaders_of_a_module_are_one_wgsl_file_with_a_header_per_shader():
    A = te.placeholder((n, 40), "float32", "A")
    r = te.reduce_axis(40, "r")
    f = te.create_prim_func([A, te.compute((n,), lambda i: te.sum(A[i, r], axis=r), "B")])
    module = codegen({"sum": f, "copy": _map("float32", "float32", lambda x: x)})
    text = module.sources()
    assert text.count("// kernel sum shader 0") == 1 and text.count("// kernel copy shader 0") == 1
    assert text.count("@compute") == 2


def test_a_kernel_over_the_storage_buffer_limit_shares_one_binding_among_small_inputs(gpu):  # noqa: F811
    """Six inputs (two int index arrays among them) and an output under a limit of 4 bindings:
    the int arrays, then per-step float ones, are copied into one binding per dispatch."""
    m = S.var("m")
    xs = [T.Buffer(f"x{q}", (n,)) for q in range(3)]
    idx = [T.Buffer(f"i{q}", (n,), "int32") for q in range(2)]
    w = T.Buffer("w", (m, 2))
    out = T.Buffer("out", (n,))
    value = xs[0][i] * xs[1][i] - xs[2][i] + T.cast("float32", idx[0][i] * idx[1][i]) + w[0, 1]
    f = T.PrimFunc((*xs, *idx, w, out), T.For(i, n, T.Store(out, (i,), value)))
    module = codegen({"k": f}, WebGPUOptions(max_storage_buffers=4))
    shader = module.specs[0]["shaders"][0]
    assert shader["merged"] == ["x0", "x1", "i0", "i1"]  # binding order
    assert len(shader["bindings"]) + 1 == 4 and "b_merged" in shader["code"]
    rng = np.random.default_rng(0)
    for size in (1, 300):
        args = [rng.standard_normal(size).astype(np.float32) for _ in range(3)]
        args += [rng.integers(-9, 9, size).astype(np.int32) for _ in range(2)]
        args.append(rng.standard_normal((3, 2)).astype(np.float32))
        dev_out = gpu.alloc((size,), "float32")
        module["k"](*[gpu.from_host(a) for a in args], dev_out)
        expected = args[0] * args[1] - args[2] + (args[3] * args[4]).astype(np.float32) + args[5][0, 1]
        np.testing.assert_allclose(gpu.to_host(dev_out), expected, rtol=1e-5, atol=1e-5)
