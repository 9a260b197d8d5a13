"""A table of modules covering every node of the IR, for the text-form tests (round trips, fuzz).

Graph functions come from the BlockBuilder (as passes and models build them) or, for shapes the
builder never makes (adjacent blocks, nested calls, local functions), from the nodes directly.
Tensor programs come from `te` and from tir nodes directly.

    EXAMPLES: dict[str, Callable[[], IRModule]]
    NOT_WELL_FORMED: names of the examples that break IR rules on purpose (they still print)

A NaN immediate (tir.Imm) compares unequal to itself, so no module holding one equals even its
own copy; NaN constants (Constant) compare by bytes and are in the table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llm_deploy.compiler import ops, te
from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import (
    Attrs,
    BindingBlock,
    Call,
    Constant,
    DataflowBlock,
    DataflowVar,
    ExternFunc,
    Function,
    GetItem,
    GlobalVar,
    Op,
    PrimValue,
    SeqExpr,
    ShapeExpr,
    StringImm,
    Tuple,
    Var,
    VarBinding,
)
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.struct_info import (
    FuncInfo,
    ObjectInfo,
    PrimInfo,
    ShapeInfo,
    TensorInfo,
    TupleInfo,
    tensor,
)
from tests.compiler.llama_layer import LayerConfig, build_decoder_layer

n, m, b = S.var("n"), S.var("m"), S.var("b")
EXAMPLES: dict[str, Callable[[], IRModule]] = {}
# Nested calls and an impure call in a pure function: text must still carry them faithfully.
NOT_WELL_FORMED = {"hand_built_graph_shapes"}


def example(fn: Callable[[], IRModule]) -> Callable[[], IRModule]:
    EXAMPLES[fn.__name__] = fn
    return fn


# ---------------------------------------------------------------------------------------------
# Graph functions built with the BlockBuilder


@example
def elementwise_chain() -> IRModule:
    x, y = Var("x", tensor((n, 4))), Var("y", tensor((1, 4)))
    bb = BlockBuilder()
    with bb.function("main", [x, y]):
        with bb.dataflow():
            a = bb.emit(ops.add(x, y))
            e = bb.emit(ops.exp(a))
            c = bb.emit(ops.less(e, x))
            w = bb.emit(ops.where(c, e, x))
            out = bb.emit_output(ops.astype(w, "float16"))
        bb.emit_func_output(out)
    return bb.get()


@example
def decoder_layer() -> IRModule:
    return build_decoder_layer(LayerConfig())


@example
def decoder_layer_llama3_rope() -> IRModule:
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    return build_decoder_layer(LayerConfig(rope_scaling=scaling, rms_norm_eps=1e-6), name="layer")


@example
def match_cast_and_if() -> IRModule:
    x = Var("x", TensorInfo(None, "float32", 2))
    flag = Var("flag", PrimInfo("bool"))
    bb = BlockBuilder()
    with bb.function("main", [x, flag]):
        y = bb.match_cast(x, tensor((m, 4)), "y")
        r = bb.if_(
            flag,
            lambda bb: bb.emit(ops.exp(y), "t"),
            lambda bb: bb.emit(ops.negative(bb.emit(ops.sqrt(y), "s")), "e"),
            "r",
        )
        with bb.dataflow():
            z = bb.emit(ops.multiply(r, r))
            k = bb.match_cast(z, tensor((m, 4)), "k")
            out = bb.emit_output(ops.sum(k, axis=1, keepdims=True))
        bb.emit_func_output(out)
    return bb.get()


@example
def layout_ops_with_every_attr_kind() -> IRModule:
    x = Var("x", tensor((n, 8, 6)))
    idx = Var("idx", tensor((b,), "int32"))
    rows = Var("rows", tensor((m,), "int64"))
    bb = BlockBuilder()
    with bb.function("main", [x, idx, rows], attrs={"bounds": {"n": (1, 2048), "b": (1, float("inf"))}}):
        with bb.dataflow():
            p = bb.emit(ops.permute_dims(x, (2, 0, 1)))
            r = bb.emit(ops.reshape(x, (n * 8, 6)))
            s = bb.emit(ops.strided_slice(x, axes=(0, 2), begin=(n - 1, 0), end=(n, 6), strides=(1, 2)))
            sp = bb.emit(ops.split(x, (2, 5), axis=1))
            part = bb.emit(GetItem(sp, 1))
            cat = bb.emit(ops.concat([part, part], axis=1))
            t = bb.emit(ops.take(r, idx, axis=0))
            sm = bb.emit(ops.softmax(t, axis=-1))
            mx = bb.emit(ops.max(cat, axis=(1, 2)))
            am = bb.emit(ops.argmax(x, axis=2, keepdims=True))
            f = bb.emit(ops.full((n, m + 1), -0.5, "float32"))
            ar = bb.emit(ops.arange(n, dtype="int32"))
            cm = bb.emit(ops.causal_mask(n, m + n))
            sq = bb.emit(ops.squeeze(ops.expand_dims(p, 0), axis=None))
            out = bb.emit_output(Tuple((sm, mx, am, f, ar, cm, sq, s, StringImm('done "quoted" \u00e9'))))
        bb.emit_func_output(out)
    return bb.get()


@example
def cross_level_calls() -> IRModule:
    """call_tir into te kernels, with shape_args; call_extern (impure) and a pure extern."""
    A = te.placeholder((n, 64), "float32", "A")
    W = te.placeholder((64, 32), "float32", "W")
    k = te.reduce_axis(64, "k")
    C = te.compute((n, 32), lambda i, j: te.sum(A[i, k] * W[k, j], axis=k), "C")
    X = te.placeholder((n, 32), "float32", "X")
    row_max = te.reduce_axis(32, "r")
    M = te.compute((n,), lambda i: te.max(X[i, row_max], axis=row_max), "M")
    off = S.var("off")
    Y = te.compute(
        (n, 32),
        lambda i, j: te.if_then_else(X[i, j] > M[i], T.intrin("exp", X[i, j] - M[i + off - off]), 0.0),
        "Y",
    )
    bb = BlockBuilder()
    mm = bb.add_func(te.create_prim_func([A, W, C]), "matmul")
    act = bb.add_func(te.create_prim_func([X, Y], scalar_params=[off]), "exp_above_max")
    x, w = Var("x", tensor((n, 64))), Var("w", tensor((64, 32)))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(ops.call_tir(mm, [x, w], tensor((n, 32))))
            z = bb.emit(ops.call_tir(act, [y], tensor((n, 32)), shape_args=[n]))
            p = bb.emit_output(ops.call_extern("vendor_gemm", [z, w], tensor((n, 64)), pure=True))
        q = bb.emit(ops.call_extern("debug_print", [p, StringImm("p")], ObjectInfo()))
        bb.emit_func_output(Tuple((p, q)))
    return bb.get()


@example
def calls_between_functions() -> IRModule:
    bb = BlockBuilder()
    x = Var("x", tensor((n, 4)))
    with bb.function("helper", [x]):
        bb.emit_func_output(bb.emit(ops.exp(x)))
    # A graph function named like an op: the op must print qualified where it is used.
    v = Var("v", tensor((m,), "int64"))
    with bb.function("negative", [v]):
        bb.emit_func_output(bb.emit(ops.add(v, v)))
    x2 = Var("x", tensor((n, 4)))
    y = Var("y", tensor((7,), "int64"))
    with bb.function("main", [x2, y]):
        h = bb.emit(Call(GlobalVar("helper"), (x2,)), "h")
        neg = bb.emit(ops.negative(h), "neg")
        twice = bb.emit(Call(GlobalVar("negative"), (y,)), "twice")
        bb.emit_func_output(Tuple((neg, twice)))
    return bb.get()


@example
def constants_and_leaves() -> IRModule:
    rng = np.random.default_rng(0)
    consts = [
        np.array([[1.0, 0.1], [float("inf"), -0.0]], "float32"),
        np.array([1.0 / 3, np.nan, -np.inf, 1e-30, 3.4028235e38], "float32"),
        rng.standard_normal((3, 2)).astype("float64"),
        rng.standard_normal((2, 3)).astype("float16"),
        np.array([[True, False]]),
        np.arange(-3, 3, dtype="int8").reshape(2, 3),
        np.array([2**63 - 1, -(2**63)], "int64"),
        np.array(np.uint32(4000000000)),
        np.array(2.5, "float32"),
        np.zeros((0, 3), "float32"),
        np.zeros((2, 0, 1), "int32"),
    ]
    x = Var("x", tensor((n, m)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        vals = [bb.emit(Constant(c), "c") for c in consts]
        pv = bb.emit(PrimValue(n * 2 + 1), "pv")
        pv32 = bb.emit(PrimValue(S.const(7), "int32"), "pv32")
        sh = bb.emit(ShapeExpr((n, m * 4, n // 2, S.minimum(n, 16))), "sh")
        tup = bb.emit(Tuple((x, Tuple(()), Tuple((pv,)))), "tup")
        item = bb.emit(GetItem(tup, 2), "item")
        bb.emit_func_output(Tuple((*vals, pv32, sh, item, StringImm(""))))
    return bb.get()


@example
def impure_function_and_module_attrs() -> IRModule:
    cache = Var("cache", ObjectInfo())
    x = Var("x", tensor((n, 4)))
    bb = BlockBuilder()
    with bb.function("step", [cache, x], attrs={"global_symbol": "step", "num_input": 1}):
        w = bb.emit(ops.call_extern("kv_write", [cache, x], ObjectInfo()), "w")
        bb.emit_func_output(Tuple((w, x)))
    mod = bb.get().with_attrs(target={"kind": "llvm", "mattr": ("+avx2",)}, **{"tvm.version": "x"})
    return mod.with_function("library_fn", ExternFunc("lib_symbol"))


# ---------------------------------------------------------------------------------------------
# Graph shapes the builder never makes, built from nodes


@example
def hand_built_graph_shapes() -> IRModule:
    n4 = tensor((n, 4))
    x = Var("x", n4)
    f = Var("f", FuncInfo((n4,), n4))
    a, c = DataflowVar("a", n4), Var("c", n4)
    # A local function, adjacent plain blocks, an empty block, nested (unnormalized) calls,
    # a call of a function-typed var, sinfo_args on an op call, odd attribute keys.
    inner_x = Var("ix", n4)
    inner = Function((inner_x,), SeqExpr((), inner_x), n4)
    g = Var("g", inner.info)
    weird = Call(
        ExternFunc("ext"),
        (x, GlobalVar("kernel")),
        Attrs.of({"out_sinfo": 1, "with space": (1, None, 2.5, "s"), "ok": {"nested": {"deep": n + 1}}}),
        (n4, TupleInfo((n4, ShapeInfo(ndim=2)))),
    )
    body = SeqExpr(
        (
            BindingBlock((VarBinding(g, inner),)),
            BindingBlock((VarBinding(Var("d", n4), Call(Op("exp"), (Call(Op("negative"), (x,)),))),)),
            BindingBlock(()),
            DataflowBlock((VarBinding(a, Call(f, (x,))), VarBinding(c, Call(g, (a,))))),
            DataflowBlock(()),
            BindingBlock((VarBinding(Var("w", ObjectInfo()), weird),)),
        ),
        c,
    )
    func = Function((x, f), body, n4, pure=True, attrs={"a.b": True, "f": -1.5e-300})
    kernel = T.PrimFunc(
        (T.Buffer("X", (n, 4)), T.Buffer("Y", (n, 4))),
        T.Store(T.Buffer("Y", (n, 4)), (0, 0), T.Imm(1.0, "float32")),
    )
    return IRModule({"main": func, "kernel": kernel})


@example
def struct_info_variety() -> IRModule:
    infos = [
        TensorInfo(None, None, -1),
        TensorInfo(None, "int32", -1),
        TensorInfo(None, None, 3),
        TensorInfo(None, "bool", 0),
        TensorInfo((), "float32"),
        TensorInfo((n, n * m - 1, n // 4, n % 3, S.maximum(n, m), S.minimum(n * 2, 8)), None),
        ShapeInfo(),
        ShapeInfo(ndim=0),
        ShapeInfo((n, 2)),
        ShapeInfo(()),
        PrimInfo("int64"),
        PrimInfo("float16"),
        PrimInfo("int64", n - m),
        TupleInfo(()),
        TupleInfo((ObjectInfo(),)),
        TupleInfo((TupleInfo((tensor((n,)),)), ObjectInfo())),
        FuncInfo(None, ObjectInfo(), pure=False),
        FuncInfo((), tensor((n,))),
        FuncInfo((tensor((n,)),), TupleInfo(()), pure=False),
        ObjectInfo(),
    ]
    params = [Var(f"p{i}", info) for i, info in enumerate([tensor((n, m)), *infos])]
    bb = BlockBuilder()
    with bb.function("main", params):
        bb.emit_func_output(Tuple(tuple(params)))
    return bb.get()


@example
def names_that_collide() -> IRModule:
    """Vars named like ops and module functions; a prim_func named like an op."""
    n4 = tensor((n, 4))
    add_var, exp_var = Var("add", n4), Var("exp", n4)
    body = SeqExpr(
        (
            BindingBlock(
                (
                    VarBinding(Var("y", n4), Call(Op("add"), (add_var, exp_var))),
                    VarBinding(
                        Var("z", n4),
                        Call(Op("call_tir"), (GlobalVar("add"), Tuple((add_var,))), sinfo_args=(n4,)),
                    ),
                    VarBinding(Var("o", ObjectInfo()), Op("exp")),
                    VarBinding(Var("gv", ObjectInfo()), GlobalVar("exp")),
                    VarBinding(Var("u", n4), Call(GlobalVar("exp"), (add_var,))),
                )
            ),
        ),
        Var("y", n4),
    )
    main = Function((add_var, exp_var), body, n4)
    x = Var("x", n4)
    exp_fn = Function(
        (x,), SeqExpr((BindingBlock((VarBinding(Var("r", n4), Call(Op("exp"), (x,))),)),), Var("r", n4)), n4
    )
    kernel = T.PrimFunc((T.Buffer("A", (n, 4)), T.Buffer("B", (n, 4))), T.Barrier())
    return IRModule({"main": main, "exp": exp_fn, "add": kernel})


# ---------------------------------------------------------------------------------------------
# Tensor programs from tir nodes


def _every_stmt_kind() -> T.PrimFunc:
    A = T.Buffer("A", (n, 576), "float32")
    B = T.Buffer("B", (n, 576), "float16", "shared")
    Q = T.Buffer("Q", (n // 8,), "uint32")
    C = T.Buffer("C", (n, 576), "float32")
    D = T.Buffer("D", (), "int32")
    off = S.var("off")
    i, j, t, k, tok = S.var("i"), S.var("j"), S.var("tx"), S.var("k"), S.var("tok")
    acc = T.Buffer("acc", (1,), "float32", "local")
    tile = T.Buffer("tile", (64, 8), "float16", "shared")
    load = A[i, j]
    value = T.select(
        T.binary("and", load > 0.0, T.intrin("not", T.binary("eq", i, off))),
        T.intrin("exp", load) * T.Imm(0.5, "float32") + T.intrin("sqrt", T.intrin("abs", load)) / 3.0,
        T.binary("pow", -T.cast("float32", B[i, j]), T.Imm(2.0, "float32")),
    )
    nibble = T.binary(
        "bitand", T.binary("shr", Q[i // 8], T.cast("uint32", (j % 8) * 4)), T.Imm(15, "uint32")
    )
    stmts = T.seq(
        T.For(
            i,
            n,
            T.For(
                j,
                576,
                T.seq(
                    T.Store(C, (i, j), value),
                    T.Store(C, (i, j), T.cast("float32", nibble) - T.Imm(8.0, "float32")),
                    T.Let(
                        tok,
                        T.binary("add", i, 1),
                        T.Store(C, (i, tok % 576), T.binary("min", C[i, j], T.Imm(float("inf"), "float32"))),
                    ),
                ),
                kind="vectorized",
            ),
            kind="parallel",
        ),
        T.For(
            t,
            64,
            T.Allocate(
                tile,
                T.seq(
                    T.Store(tile, (t, 0), T.Imm(-0.0, "float16")),
                    T.Barrier(),
                    T.IfThenElse(
                        T.binary("lt", t, 32),
                        T.Store(B, (t, 0), tile[t, 0]),
                        T.IfThenElse(T.binary("ge", t, 48), T.Store(B, (t, 1), tile[t, 1]), T.Seq(())),
                    ),
                ),
            ),
            kind="thread",
            thread="threadIdx.x",
        ),
        T.Allocate(
            acc,
            T.seq(
                T.Store(acc, (0,), T.Imm(0.0, "float32")),
                T.For(
                    k,
                    4,
                    T.Store(acc, (0,), T.binary("max", acc[0], A[0, k * 3 + off])),
                    kind="unrolled",
                ),
                T.Store(D, (), T.cast("int32", acc[0]) + T.Imm(-2, "int32")),
            ),
        ),
        T.Let(
            tok,
            T.binary("floordiv", T.cast("int64", D[()]), 2),
            T.Store(D, (), T.cast("int32", T.binary("floormod", tok * 2, off + 1))),
        ),
    )
    return T.PrimFunc((A, B, Q, C, D, off), stmts, attrs={"tir.noalias": True, "kernel_name": "every"})


def _non_canonical_sequences() -> T.PrimFunc:
    """Seq forms the plain block syntax cannot show: nested, single, empty; lets mid-block."""
    X = T.Buffer("X", (4,), "int64")
    i, k = S.var("i"), S.var("k")
    store = T.Store(X, (0,), 1)
    body = T.Seq(
        (
            T.Seq((store,)),
            T.Seq((T.Seq(()), store)),
            T.Let(k, S.const(3), T.Seq((T.Store(X, (k,), k),))),
            T.Allocate(T.Buffer("tmp", (2,), "int64", "local"), T.Seq(())),
            T.For(i, 2, T.Seq(())),
            T.IfThenElse(T.Imm(True, "bool"), T.Seq(()), T.Seq(())),
            T.Let(k, T.Imm(2, "int64"), T.Let(i, k * 2, store)),
        )
    )
    return T.PrimFunc((X,), body)


def _value_forms() -> T.PrimFunc:
    """Values that look alike in text: index arithmetic vs explicit binaries, Imm vs casts."""
    X = T.Buffer("X", (8,), "float64")
    Y = T.Buffer("Y", (8,), "int64")
    i = S.var("i")
    stores = [
        T.Store(Y, (i,), i * 2 + 1),
        T.Store(Y, (i,), T.Binary("mul", i, S.const(2))),
        T.Store(Y, (i,), T.Binary("sub", T.Binary("add", i, S.const(1)), i)),
        T.Store(Y, (i,), T.Imm(5, "int64")),
        T.Store(Y, (i,), T.Intrin("neg", (i,))),
        T.Store(Y, (i,), S.const(-3)),
        T.Store(Y, (i,), T.Binary("pow", T.Binary("pow", i, S.const(2)), S.const(3))),
        T.Store(Y, (i,), T.Binary("pow", i, T.Binary("pow", S.const(2), S.const(3)))),
        T.Store(Y, (i,), T.Binary("sub", i, T.Binary("sub", S.const(1), i))),
        T.Store(Y, (i,), T.Binary("shl", S.const(1), T.Binary("bitor", i, S.const(1)))),
        T.Store(Y, (i,), T.Binary("bitxor", T.Binary("bitand", i, i), S.const(-1))),
        T.Store(Y, (i,), T.Binary("min", S.const(0), i)),
        T.Store(Y, (i,), S.minimum(i, 3)),
        T.Store(X, (i,), T.Intrin("neg", (T.Imm(0.5, "float64"),))),
        T.Store(X, (i,), T.Imm(-0.5, "float64")),
        T.Store(X, (i,), T.Imm(0.1, "float64") * T.Imm(1e-300, "float64") - T.Imm(float("-inf"), "float64")),
        T.Store(X, (i,), T.Cast("float64", T.Imm(1.5, "float32"))),
        T.Store(X, (i,), T.Imm(1.5, "float32")),
        T.Store(X, (i,), T.Intrin("neg", (T.Intrin("neg", (X[i],)),))),
        T.Store(X, (i,), T.Intrin("round", (T.Intrin("tanh", (X[i],)),))),
        T.Store(
            Y,
            (i,),
            T.Select(T.Binary("or", T.Binary("lt", i, S.const(2)), T.Imm(False, "bool")), i, S.const(0)),
        ),
        T.Store(
            Y,
            (i,),
            T.Cast("int64", T.Intrin("not", (T.Binary("and", T.Imm(True, "bool"), T.Binary("ne", i, i)),))),
        ),
        T.Store(Y, (i,), T.Cast("int64", T.Binary("eq", T.Binary("lt", i, S.const(1)), T.Imm(True, "bool")))),
        T.Store(Y, (i,), T.Binary("floordiv", T.Cast("int64", X[i]), S.const(2))),
    ]
    return T.PrimFunc((X, Y), T.For(i, 8, T.Seq(tuple(stores))))


@example
def tensor_programs() -> IRModule:
    x = te.placeholder((n, 16), "float32", "x")
    r = te.reduce_axis(16, "r")
    s = te.compute((n,), lambda i: te.sum(x[i, r] * x[i, r], axis=r), "s")
    y = te.compute((n, 16), lambda i, j: x[i, j] * T.intrin("rsqrt", s[i] / 16.0 + 1e-5), "y")
    return IRModule(
        {
            "every_stmt_kind": _every_stmt_kind(),
            "non_canonical_sequences": _non_canonical_sequences(),
            "value_forms": _value_forms(),
            "rms_norm_te": te.create_prim_func([x, y]),
        }
    )


@example
def empty_module() -> IRModule:
    return IRModule()
