"""Legalize: every op lowered to a tensor program runs equal to the op, for several values of
each symbolic dim, with one PrimFunc per op however many call sites."""

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from llm_deploy.compiler import ops, tir, wellformed
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Call, Function, GlobalVar, Op, Var
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.shape import evaluate, var
from llm_deploy.compiler.testing import assert_roundtrip, assert_structural_equal
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.runtime.vm import VirtualMachine
from llm_deploy.targets.llvm.codegen import LLVMOptions, codegen
from tests.compiler.llama_layer import LayerConfig, build_decoder_layer, random_weights

n, m = var("n"), var("m")


@dataclass
class Case:
    """`op(*params)` emitted at two call sites; dims n and m take each value of `sizes`."""

    id: str
    op: str
    params: list[tuple]  # (shape, dtype) per parameter
    call: Callable[..., Call]
    sizes: list[dict] = field(default_factory=lambda: [{"n": 1, "m": 2}, {"n": 3, "m": 3}, {"n": 5, "m": 7}])
    gen: Callable | None = None  # gen(rng, shape, dtype) for special inputs
    rtol: float = 1e-5


def _case(id, params, call, op=None, **kw):
    return Case(id, op or id.split("-")[0], params, call, **kw)


F32 = "float32"
EW2 = [((n, 4), F32), ((4,), F32)]
EW1 = [((n, 4), F32)]


def _positive(rng, shape, dtype):
    return (rng.random(shape) + 0.5).astype(dtype)


def _ids(high):
    return lambda rng, shape, dtype: rng.integers(0, high, shape).astype(dtype)


CASES = [
    *(_case(name, EW2, getattr(ops, name)) for name in ("add", "subtract", "multiply", "divide", "maximum", "minimum")),
    _case("power", EW2, ops.power, gen=_positive),
    *(_case(name, EW2, getattr(ops, name)) for name in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")),
    _case("divide-int", [((n, 4), "int32"), ((n, 4), "int32")], ops.divide, gen=lambda rng, s, d: (rng.integers(1, 9, s) * rng.choice([-1, 1], s)).astype(d)),
    *(_case(name, EW1, getattr(ops, name)) for name in ("negative", "exp", "tanh", "sigmoid", "silu", "gelu", "abs", "cos", "sin")),
    *(_case(name, EW1, getattr(ops, name), gen=_positive) for name in ("log", "sqrt", "rsqrt")),
    _case("where", [((n, 4), "bool"), ((n, 4), F32), ((1, 4), F32)], ops.where, gen=None),
    _case("astype", EW1, lambda x: ops.astype(x, "int32")),
    _case("matmul", [((n, 8), F32), ((8, 5), F32)], ops.matmul),
    _case("matmul-batched", [((2, n, 8), F32), ((8, m), F32)], ops.matmul),
    _case("matmul-vector", [((8,), F32), ((2, 8, m), F32)], ops.matmul),
    _case("matmul-f16", [((n, 8), "float16"), ((8, 5), "float16")], ops.matmul, rtol=2e-3),
    _case("linear", [((n, 8), F32), ((6, 8), F32)], ops.linear),
    _case("permute_dims", [((n, 3, 4), F32)], lambda x: ops.permute_dims(x, (2, 0, 1))),
    _case("permute_dims-default", [((n, 3), F32)], ops.permute_dims),
    _case("reshape", [((n, 12), F32)], lambda x: ops.reshape(x, (n, 3, 4))),
    _case("reshape-flatten", [((n, 3, 4), F32)], lambda x: ops.reshape(x, (n * 12,))),
    _case("reshape-split", [((n, 12), F32)], lambda x: ops.reshape(x, (n * 4, 3))),
    _case("broadcast_to", [((1, 4), F32)], lambda x: ops.broadcast_to(x, (3, 2, 4))),
    _case("broadcast_to-symbolic", [((n, 1), F32), ((m,), F32)], lambda x, y: ops.broadcast_to(x, (n, m))),
    _case("expand_dims", EW1, lambda x: ops.expand_dims(x, [0, 2])),
    _case("squeeze", [((n, 1, 4), F32)], lambda x: ops.squeeze(x, 1)),
    _case("squeeze-all", [((1, 3, 1, 4), F32)], ops.squeeze),
    _case("concat", [((n, 4), F32), ((m, 4), F32), ((2, 4), F32)], lambda a, b, c: ops.concat([a, b, c], 0)),
    _case("concat-axis1", [((n, 2), F32), ((n, 3), F32)], lambda a, b: ops.concat([a, b], axis=-1)),
    _case("split", [((n, 6), F32)], lambda x: ops.split(x, 3, axis=1)),
    _case("split-points", [((n, 6), F32)], lambda x: ops.split(x, [2, 5], axis=1)),
    _case("strided_slice", [((n, 6), F32)], lambda x: ops.strided_slice(x, [1], [1], [6], [2])),
    _case("strided_slice-symbolic", [((m, 4), F32)], lambda x: ops.strided_slice(x, [0], [m - 1], [m]), sizes=[{"m": 1}, {"m": 4}]),
    _case("strided_slice-negative", [((n, 6), F32)], lambda x: ops.strided_slice(x, [1], [-4], [-1])),
    _case("take", [((10, 8), F32), ((n,), "int32")], ops.take, gen=_ids(10)),
    _case("take-axis1", [((3, 10), F32), ((n, 2), "int64")], lambda x, i: ops.take(x, i, axis=1), gen=_ids(10)),
    _case("sum", [((n, 4, 3), F32)], lambda x: ops.sum(x, 1)),
    _case("sum-all", [((n, 4), F32)], ops.sum),
    _case("mean", [((n, 4, 3), F32)], lambda x: ops.mean(x, (0, 2), keepdims=True)),
    _case("max", [((n, 5), F32)], lambda x: ops.max(x, -1)),
    _case("min", [((n, 5), F32)], lambda x: ops.min(x, 0, keepdims=True)),
    _case("argmax", [((n, 5), F32)], lambda x: ops.argmax(x, 1)),
    _case("argmax-all", [((n, 5), F32)], ops.argmax),
    _case("argmin", [((n, 5), F32)], lambda x: ops.argmin(x, 0, keepdims=True)),
    _case("softmax", [((n, 6), F32)], ops.softmax),
    _case("softmax-axis0", [((n, 6), F32)], lambda x: ops.softmax(x, 0)),
    _case("rms_norm", [((n, 16), F32), ((16,), F32)], lambda x, w: ops.rms_norm(x, w, 1e-5)),
    _case("rms_norm-f16", [((n, 16), "float16"), ((16,), "float16")], ops.rms_norm, rtol=2e-3),
    _case("layer_norm", [((n, 3, 4), F32), ((3, 4), F32), ((3, 4), F32)], lambda x, g, b: ops.layer_norm(x, g, b, axis=[1, 2])),
    _case("full", EW1, lambda x: ops.full((n, 3), 2.5)),
    _case("zeros", EW1, lambda x: ops.zeros((n, 2), "int32")),
    _case("ones", EW1, lambda x: ops.ones((2, n), "bool")),
    _case("arange", EW1, lambda x: ops.arange(n)),
    _case("arange-offset", [((n,), F32), ((m,), F32)], lambda x, y: ops.arange(m, m + n * 2, 2, dtype="int32")),
    _case("causal_mask", [((n,), F32), ((m,), F32)], lambda x, y: ops.causal_mask(n, n + m)),
    _case("causal_mask-float", EW1, lambda x: ops.causal_mask(n, dtype="float32")),
    _case("rope", [((n, 2, 8), F32), ((m,), F32)], lambda x, y: ops.rope(x, offset=m), sizes=[{"n": 1, "m": 0}, {"n": 4, "m": 9}], op="rope", rtol=1e-4),
    _case("rope-positions", [((n, 2, 8), F32), ((n,), "int32")], lambda x, p: ops.rope(x, 500000.0, positions=p, scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), gen=_ids(40), rtol=1e-4),
    _case("attention", [((n, 4, 8), F32), ((n, 2, 8), F32), ((n, 2, 8), F32)], ops.attention, rtol=1e-4),
    _case("attention-kv-cache", [((n, 4, 8), F32), ((m, 1, 8), F32), ((m, 1, 6), F32)], lambda q, k, v: ops.attention(q, k, v, scale=0.3), rtol=1e-4),
    _case("attention-batched", [((2, n, 2, 4), F32), ((2, m, 2, 4), F32), ((2, m, 2, 4), F32)], lambda q, k, v: ops.attention(q, k, v, causal=False), rtol=1e-4),
]  # fmt: skip


def build(case: Case):
    bb = BlockBuilder()
    params = [Var(f"p{k}", SI.tensor(shape, dtype)) for k, (shape, dtype) in enumerate(case.params)]
    with bb.function("main", params):
        with bb.dataflow():
            first = bb.emit_output(case.call(*params), "first")
            second = bb.emit_output(case.call(*params), "second")
        bb.emit_func_output([first, second])
    return bb.get()


def _inputs(case: Case, sizes: dict, rng):
    out = []
    for shape, dtype in case.params:
        concrete = tuple(evaluate(d, sizes) for d in SI.tensor(shape).shape)
        if case.gen is not None and (dtype.startswith("int") or case.gen is _positive):
            out.append(case.gen(rng, concrete, dtype))
        elif dtype == "bool":
            out.append(rng.random(concrete) < 0.5)
        else:
            out.append(rng.standard_normal(concrete).astype(dtype))
    return out


def _op_calls(mod, name):
    found = []
    for f in mod.graph_functions().values():
        for block in f.body.blocks:
            for b in block.bindings:
                if isinstance(b.value, Call) and b.value.op == Op(name):
                    found.append(b)
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_legalized_op_runs_equal_to_the_op(case):
    mod = build(case)
    lowered = legalize(mod)
    assert_roundtrip(lowered)  # well-formed, and its PrimFuncs print and parse back
    assert not _op_calls(lowered, case.op), f"{case.op} was not lowered"
    prim_funcs = [k for k, f in lowered.items() if isinstance(f, tir.PrimFunc)]
    assert prim_funcs == [case.op], "two call sites with one lowering share one PrimFunc"
    assert len(_op_calls(lowered, "call_tir")) == 2
    rng = np.random.default_rng(0)
    for sizes in case.sizes:
        args = _inputs(case, sizes, rng)
        expected = run(mod, "main", *args)
        got = run(lowered, "main", *args)
        for e, g in zip(expected, got):
            e = e if isinstance(e, tuple) else (e,)
            g = g if isinstance(g, tuple) else (g,)
            for x, y in zip(e, g):
                assert x.dtype == y.dtype and x.shape == y.shape
                np.testing.assert_allclose(
                    y, x, rtol=case.rtol, atol=case.rtol, err_msg=f"{case.id} at {sizes}"
                )


# The graph-level op families; ops of later layers (e.g. the KV cache's) may be externs only.
FAMILIES = ("elementwise", "manipulate", "linalg", "reduce", "nn", "create", "attention")


def test_every_op_of_the_families_has_a_lowering_and_a_case():
    family_ops = {name for name, op in ops.OPS.items() if op.infer.__module__.rsplit(".", 1)[-1] in FAMILIES}
    assert len(family_ops) > 50
    missing = sorted(name for name in family_ops if ops.OPS[name].legalize is None)
    assert not missing, f"ops without a lowering: {missing}"
    assert family_ops <= {c.op for c in CASES}, sorted(family_ops - {c.op for c in CASES})


def test_one_prim_func_per_distinct_lowering_named_after_the_op():
    x = Var("x", SI.tensor((n, 4)))
    y = Var("y", SI.tensor((n, 8)))
    bb = BlockBuilder()
    with bb.function("main", [x, y]):
        with bb.dataflow():
            a = bb.emit(ops.add(x, x))
            b = bb.emit(ops.add(a, x))  # same shapes: the same PrimFunc
            c = bb.emit(ops.add(y, y))  # other shapes: another one
            out = bb.emit_output(ops.concat([ops.exp(b), ops.exp(c)], axis=1))
        bb.emit_func_output(out)
    lowered = legalize(bb.get())
    assert sorted(k for k, f in lowered.items() if isinstance(f, tir.PrimFunc)) == [
        "add", "add1", "concat", "exp", "exp1",
    ]  # fmt: skip
    calls = {b.var.name: b.value.args[0] for b in _op_calls(lowered, "call_tir")}
    assert calls["lv"] == calls["lv1"] == GlobalVar("add") and calls["lv2"] == GlobalVar("add1")
    # legalizing again changes nothing; a module that already has the PrimFuncs reuses them
    assert legalize(lowered) == lowered


def test_partial_legalization_keeps_the_rest_and_struct_info():
    x = Var("x", SI.tensor((n, 8)))
    w = Var("w", SI.tensor((8, 8)))
    bb = BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            h = bb.emit(ops.matmul(x, w))
            out = bb.emit_output(ops.softmax(ops.silu(h)))
        bb.emit_func_output(out)
    mod = bb.get()
    partial = legalize(mod, ops=["silu", "softmax"])
    wellformed.check(partial)
    assert len(_op_calls(partial, "matmul")) == 1 and len(_op_calls(partial, "call_tir")) == 2
    before = [b.var for blk in mod["main"].body.blocks for b in blk.bindings]
    after = [b.var for blk in partial["main"].body.blocks for b in blk.bindings]
    assert before == after  # same vars, same struct info
    args = [np.random.default_rng(1).standard_normal(s).astype("float32") for s in ((3, 8), (8, 8))]
    np.testing.assert_allclose(run(partial, "main", *args), run(mod, "main", *args), rtol=1e-5)
    with pytest.raises(KeyError, match="unknown op"):
        legalize(mod, ops=["no_such_op"])


def test_unknown_shapes_stay_high_level():
    x = Var("x", SI.tensor(None, "float32", ndim=2))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(ops.exp(x))
        bb.emit_func_output(out)
    mod = bb.get()
    assert legalize(mod) == mod


def test_legalize_reaches_into_if_branches_and_non_dataflow_blocks():
    x = Var("x", SI.tensor((n, 4)))
    c = Var("c", SI.tensor((), "bool"))
    bb = BlockBuilder()
    with bb.function("main", [x, c]):
        y = bb.emit(ops.exp(x))
        r = bb.if_(c, lambda b: b.emit(ops.add(y, y)), lambda b: b.emit(ops.multiply(y, y)))
        bb.emit_func_output(r)
    mod = bb.get()
    lowered = legalize(mod)
    wellformed.check(lowered)
    assert {k for k, f in lowered.items() if isinstance(f, tir.PrimFunc)} == {"exp", "add", "multiply"}
    xv = np.random.default_rng(2).standard_normal((3, 4)).astype("float32")
    for cv in (True, False):
        np.testing.assert_allclose(
            run(lowered, "main", xv, np.array(cv)), run(mod, "main", xv, np.array(cv)), rtol=1e-6
        )
    assert isinstance(lowered["main"], Function)


@pytest.mark.parametrize("n_val", [1, 5, 17])
def test_legalized_llama_decoder_layer_matches_the_graph_level_layer(n_val):
    cfg = LayerConfig()  # hidden 64, 4 heads, 2 kv heads
    mod = build_decoder_layer(cfg)
    lowered = legalize(mod)
    wellformed.check(lowered)
    graph_ops = {b.value.op.name for b in _all_bindings(lowered) if isinstance(b.value, Call)}
    assert graph_ops == {"call_tir"}
    assert len([f for f in lowered.functions().values() if isinstance(f, tir.PrimFunc)]) < len(
        _all_bindings(mod)
    ), "repeated ops share PrimFuncs"
    weights = random_weights(cfg, seed=0)
    x = np.random.default_rng(n_val).standard_normal((n_val, cfg.hidden_size)).astype("float32")
    expected = run(mod, "decoder_layer", x, *weights.values())
    np.testing.assert_allclose(
        run(lowered, "decoder_layer", x, *weights.values()), expected, rtol=1e-4, atol=1e-5
    )


def _all_bindings(mod):
    return [b for f in mod.graph_functions().values() for blk in f.body.blocks for b in blk.bindings]


# -- before / expected, as IR text


def _legalized(before: str, ops=None):
    after = legalize(parse(before), ops)
    wellformed.check(after)
    return after


def test_text_elementwise_with_broadcast_and_a_shared_prim_func():

    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(4,), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            lv: Tensor[(n, 4), "float32"] = add(x, y)
            lv1: Tensor[(n, 4), "float32"] = add(lv, y)
            gv: Tensor[(n, 4), "float32"] = exp(lv1)
            output(gv)
        return gv
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(4,), "float32"]) -> Tensor[(n, 4), "float32"]:
        with dataflow():
            lv: Tensor[(n, 4), "float32"] = call_tir(add, (x, y), out_sinfo=Tensor[(n, 4), "float32"])
            lv1: Tensor[(n, 4), "float32"] = call_tir(add, (lv, y), out_sinfo=Tensor[(n, 4), "float32"])
            gv: Tensor[(n, 4), "float32"] = call_tir(exp, (lv1,), out_sinfo=Tensor[(n, 4), "float32"])
            output(gv)
        return gv

    @prim_func
    def add(A: Buffer[(n, 4), "float32"], B: Buffer[(4,), "float32"], Out: Buffer[(n, 4), "float32"]):
        for i in range(n):
            for j in range(4):
                Out[i, j] = A[i, j] + B[j]

    @prim_func
    def exp(A: Buffer[(n, 4), "float32"], Out: Buffer[(n, 4), "float32"]):
        for i in range(n):
            for j in range(4):
                Out[i, j] = exp(A[i, j])
"""
    after = _legalized(before)
    assert_structural_equal(after, expected)
    assert_roundtrip(after)


def test_text_partial_legalization_leaves_other_ops():

    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 8), "float32"], w: Tensor[(8, 8), "float32"]) -> Tensor[(n, 8), "float32"]:
        with dataflow():
            lv: Tensor[(n, 8), "float32"] = matmul(x, w, out_dtype=None)
            gv: Tensor[(n, 8), "float32"] = silu(lv)
            output(gv)
        return gv
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 8), "float32"], w: Tensor[(8, 8), "float32"]) -> Tensor[(n, 8), "float32"]:
        with dataflow():
            lv: Tensor[(n, 8), "float32"] = matmul(x, w, out_dtype=None)
            gv: Tensor[(n, 8), "float32"] = call_tir(silu, (lv,), out_sinfo=Tensor[(n, 8), "float32"])
            output(gv)
        return gv

    @prim_func
    def silu(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 8), "float32"]):
        for i in range(n):
            for j in range(8):
                Out[i, j] = A[i, j] * sigmoid(A[i, j])
"""
    assert_structural_equal(_legalized(before, ops=["silu"]), expected)


def test_text_reduction_gather_and_concat_patterns():

    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], ids: Tensor[(m,), "int32"], w: Tensor[(10, 4), "float32"]) -> Tensor[(n,), "float32"]:
        with dataflow():
            lv: Tensor[(m, 4), "float32"] = take(w, ids, axis=0)
            lv1: Tensor[(m + n, 4), "float32"] = concat((x, lv), axis=0)
            gv: Tensor[(n,), "float32"] = sum(x, axis=(1,), keepdims=False)
            output(gv)
        return gv
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], ids: Tensor[(m,), "int32"], w: Tensor[(10, 4), "float32"]) -> Tensor[(n,), "float32"]:
        with dataflow():
            lv: Tensor[(m, 4), "float32"] = call_tir(take, (w, ids), out_sinfo=Tensor[(m, 4), "float32"])
            lv1: Tensor[(m + n, 4), "float32"] = call_tir(concat, (x, lv), out_sinfo=Tensor[(m + n, 4), "float32"])
            gv: Tensor[(n,), "float32"] = call_tir(sum, (x,), out_sinfo=Tensor[(n,), "float32"])
            output(gv)
        return gv

    @prim_func
    def take(A: Buffer[(10, 4), "float32"], B: Buffer[(m,), "int32"], Out: Buffer[(m, 4), "float32"]):
        for i in range(m):
            for j in range(4):
                row = cast("int64", B[i])
                Out[i, j] = A[row, j]

    @prim_func
    def concat(A: Buffer[(n, 4), "float32"], B: Buffer[(m, 4), "float32"], Out: Buffer[(m + n, 4), "float32"]):
        for i in range(m + n):
            for j in range(4):
                if i < n:
                    Out[i, j] = A[i, j]
                else:
                    Out[i, j] = B[i - n, j]

    @prim_func
    def sum(A: Buffer[(n, 4), "float32"], Out: Buffer[(n,), "float32"]):
        for i in range(n):
            acc = alloc((1,), "float32", "local")
            acc[0] = float32(0.0)
            for k in range(4):
                acc[0] = acc[0] + A[i, k]
            Out[i] = acc[0]
"""
    assert_structural_equal(_legalized(before), expected)


def test_text_symbolic_operands_become_scalar_params():

    before = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(m,), "float32"]) -> Tensor[(n, m + n), "float32"]:
        with dataflow():
            gv: Tensor[(n, m + n), "float32"] = causal_mask(shape(n, m + n), prim(m), dtype="float32")
            output(gv)
        return gv
"""
    expected = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 4), "float32"], y: Tensor[(m,), "float32"]) -> Tensor[(n, m + n), "float32"]:
        with dataflow():
            gv: Tensor[(n, m + n), "float32"] = call_tir(causal_mask, (), shape(m, m), out_sinfo=Tensor[(n, m + n), "float32"])
            output(gv)
        return gv

    @prim_func
    def causal_mask(Out: Buffer[(n, m + n), "float32"], offset: Prim["int64"], m: Prim["int64"]):
        for i in range(n):
            for j in range(m + n):
                Out[i, j] = select(j <= i + offset, float32(0.0), float32(-3.4028234663852886e+38))
"""
    assert_structural_equal(_legalized(before), expected)


def test_tuple_valued_vars_split_then_concat():
    # concat's operand is a var holding split's tuple: call_tir reads its fields one by one
    x = Var("x", SI.tensor((n, 6)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            parts = bb.emit(ops.split(x, [2, 5], axis=1), "parts")
            out = bb.emit_output(ops.concat(parts, axis=1))
        bb.emit_func_output(out)
    mod = bb.get()
    lowered = legalize(mod)
    wellformed.check(lowered)
    assert [b.value.args[0] for b in _op_calls(lowered, "call_tir")] == [
        GlobalVar("split"),
        GlobalVar("concat"),
    ]
    xv = np.random.default_rng(3).standard_normal((4, 6)).astype("float32")
    np.testing.assert_array_equal(run(lowered, "main", xv), xv)


def test_every_lowered_op_compiles_for_the_cpu_and_runs_equal_on_the_vm():
    """The default programs are what the targets compile: each one through LLVM (unoptimized,
    to keep this fast; the target's own tests cover -O3) and run by the VM, against the op."""
    modules = {c.id: (build(c), legalize(build(c))) for c in CASES}
    kernels = {
        f"{cid.replace('-', '_')}__{name}": f
        for cid, (_, lowered) in modules.items()
        for name, f in lowered.items()
        if isinstance(f, tir.PrimFunc)
    }
    compiled = codegen(kernels, LLVMOptions(opt_level=0))
    rng = np.random.default_rng(0)
    for case in CASES:
        mod, lowered = modules[case.id]
        program, constants = lower_to_vm(lowered)
        prefix = case.id.replace("-", "_")
        mine = {k: compiled[f"{prefix}__{k}"] for k, f in lowered.items() if isinstance(f, tir.PrimFunc)}
        vm = VirtualMachine(json.loads(json.dumps(program)), mine, {}, constants)
        for sizes in case.sizes:
            args = _inputs(case, sizes, rng)
            for e, g in zip(run(mod, "main", *args), vm["main"](*args)):
                for x, y in zip(e if isinstance(e, tuple) else (e,), g if isinstance(g, tuple) else (g,)):
                    np.testing.assert_allclose(
                        y, x, rtol=case.rtol, atol=case.rtol, err_msg=f"{case.id} {sizes}"
                    )
