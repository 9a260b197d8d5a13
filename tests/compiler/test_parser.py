"""The parser: modules written by hand parse to what the BlockBuilder (or tir nodes) build;
malformed text raises ParseError at the right line and column; the comparison helpers."""

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Call, Constant, GetItem, GlobalVar, PrimValue, ShapeExpr, Tuple, Var
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.parser import ParseError, parse, parse_function
from llm_deploy.compiler.printer import module_to_str
from llm_deploy.compiler.struct_info import ObjectInfo, PrimInfo, TensorInfo, tensor
from llm_deploy.compiler.testing import assert_roundtrip, assert_structural_equal, canonical
from tests.compiler.llama_layer import LayerConfig, build_decoder_layer

n, m = S.var("n"), S.var("m")

# ---------------------------------------------------------------------------------------------
# Modules written by hand, each beside the module the builder makes for it.

DECODER_LAYER = """
    @module
    class Module:
        @function
        def decoder_layer(
            x: Tensor[(n, 64), "float32"],
            input_norm: Tensor[(64,), "float32"],
            wq: Tensor[(64, 64), "float32"],
            wk: Tensor[(32, 64), "float32"],
            wv: Tensor[(32, 64), "float32"],
            wo: Tensor[(64, 64), "float32"],
            post_norm: Tensor[(64,), "float32"],
            w_gate: Tensor[(128, 64), "float32"],
            w_up: Tensor[(128, 64), "float32"],
            w_down: Tensor[(64, 128), "float32"],
        ) -> Tensor[(n, 64), "float32"]:
            with dataflow():
                h = rms_norm(x, input_norm, eps=1e-5)
                q_proj = linear(h, wq)
                q = reshape(q_proj, shape(n, 4, 16))
                k_proj = linear(h, wk)
                k = reshape(k_proj, shape(n, 2, 16))
                v_proj = linear(h, wv)
                v: Tensor[(n, 2, 16), "float32"] = reshape(v_proj, shape(n, 2, 16))
                q_rot = rope(q, prim(0))
                k_rot = rope(k, prim(0), theta=10000.0)
                attn = attention(q_rot, k_rot, v)
                attn_flat = reshape(attn, shape(n, 64))
                o = linear(attn_flat, wo)
                x1 = add(x, o)
                h2 = rms_norm(x1, post_norm, eps=1e-05, axis=-1)
                g = linear(h2, w_gate)
                gate = silu(g)
                up = linear(h2, w_up)
                prod = multiply(gate, up)
                mlp = linear(prod, w_down)
                out: Tensor[(n, 64), "float32"] = add(x1, mlp)
                output(out)
            return out
"""


def test_hand_written_decoder_layer_is_the_builders():
    assert_structural_equal(parse(DECODER_LAYER), build_decoder_layer(LayerConfig()))


def build_elementwise():
    x, y = Var("x", tensor((n, 4))), Var("y", tensor((4,)))
    bb = BlockBuilder()
    with bb.function("main", [x, y]):
        with bb.dataflow():
            a = bb.emit(ops.add(x, y), "a")
            b = bb.emit(ops.sigmoid(a), "b")
            c = bb.emit_output(ops.multiply(a, b), "c")
        d = bb.emit(ops.astype(c, "float16"), "d")
        bb.emit_func_output(d)
    return bb.get()


ELEMENTWISE = """
@function
def main(x: Tensor[(n, 4), "float32"], y: Tensor[(4,), "float32"]) -> Tensor[(n, 4), "float16"]:
    with dataflow():
        a = add(x, y)
        b: Tensor[(n, 4), "float32"] = sigmoid(a)
        c = multiply(a, b)
        output(c)
    d = astype(c, dtype="float16")
    return d
"""


def build_match_cast():
    x = Var("x", TensorInfo(None, "float32", 2))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        y = bb.match_cast(x, tensor((m, 8)), "y")
        z = bb.emit(ops.reshape(y, (m * 2, 4)), "z")
        bb.emit_func_output(Tuple((z, PrimValue(m))))
    return bb.get()


MATCH_CAST = """
@module
class Module:
    @function
    def main(x: Tensor[ndim(2), "float32"]):
        y = match_cast(x, Tensor[(m, 8), "float32"])
        z = reshape(y, shape(2 * m, 4))
        return (z, prim(m))
"""


def build_if():
    x = Var("x", tensor((n, 4)))
    c = Var("c", PrimInfo("bool"))
    bb = BlockBuilder()
    with bb.function("main", [x, c]):
        e = bb.emit(ops.exp(x), "e")
        r = bb.if_(
            c,
            lambda bb: bb.emit(ops.add(e, x), "t"),
            lambda bb: bb.emit(ops.negative(bb.match_cast(e, tensor((m, 4)), "e2")), "f"),
            "r",
        )
        bb.emit_func_output(bb.emit(ops.tanh(r), "out"))
    return bb.get()


IF = """
@function
def main(x: Tensor[(n, 4), "float32"], c: Prim["bool"]) -> Tensor[ndim(2), "float32"]:
    e = exp(x)
    if c:
        t = add(e, x)
        r: Tensor[ndim(2), "float32"] = t
    else:
        e2 = match_cast(e, Tensor[(m, 4), "float32"])
        f = negative(e2)
        r: Tensor[ndim(2), "float32"] = f
    out = tanh(r)
    return out
"""


def _add_kernel():
    A, B, C = (T.Buffer(name, (n, 576)) for name in "ABC")
    i, j = S.var("i"), S.var("j")
    store = T.Store(C, (i, j), A[i, j] + B[i, j])
    return T.PrimFunc((A, B, C), T.For(i, n, T.For(j, 576, store, kind="vectorized"), kind="parallel"))


def build_call_tir():
    bb = BlockBuilder()
    gv = bb.add_func(_add_kernel(), "add_kernel")
    x = Var("x", tensor((n, 576)))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(ops.call_tir(gv, [x, x], tensor((n, 576))), "y")
        bb.emit_func_output(y)
    return bb.get()


CALL_TIR = """
@module
class Module:
    @prim_func
    def add_kernel(A: Buffer[(n, 576), "float32"], B: Buffer[(n, 576), "float32"], C: Buffer[(n, 576), "float32"]):
        for i in parallel(n):
            for j in vectorized(576):
                C[i, j] = A[i, j] + B[i, j]

    @function
    def main(x: Tensor[(n, 576), "float32"]) -> Tensor[(n, 576), "float32"]:
        with dataflow():
            y = call_tir(add_kernel, (x, x), out_sinfo=Tensor[(n, 576), "float32"])
            output(y)
        return y
"""


def build_impure():
    cache, x = Var("cache", ObjectInfo()), Var("x", tensor((n, 4)))
    bb = BlockBuilder()
    with bb.function("step", [cache, x], attrs={"bounds": {"n": (1, 4096)}}):
        with bb.dataflow():
            y = bb.emit_output(ops.call_extern("fast_exp", [x], tensor((n, 4)), pure=True), "y")
        w = bb.emit(ops.call_extern("kv_append", [cache, y], ObjectInfo()), "w")
        bb.emit_func_output(Tuple((w, y)))
    return bb.get()


IMPURE = """
@module
class Module:
    @function
    def step(cache: Object, x: Tensor[(n, 4), "float32"]) -> Tuple[Object, Tensor[(n, 4), "float32"]]:
        attrs(bounds={"n": (1, 4096)})
        with dataflow():
            y = call_extern_pure(extern("fast_exp"), (x,), out_sinfo=Tensor[(n, 4), "float32"])
            output(y)
        w = call_extern(extern("kv_append"), (cache, y), out_sinfo=Object)
        return (w, y)
"""


def build_leaves():
    x = Var("x", tensor((n, 2)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        c = bb.emit(Constant(np.array([[1.0, 0.1], [-2.5, 1e-07]], "float32")), "c")
        i = bb.emit(Constant(np.array([1, -2, 3], "int32")), "i")
        t = bb.emit(Tuple((x, c, ShapeExpr((n, 2)))), "t")
        s = bb.emit(GetItem(t, 2), "s")
        z = bb.emit(ops.zeros(s), "z")
        bb.emit_func_output(Tuple((z, i, t)))
    return bb.get()


LEAVES = """
@function
def main(x: Tensor[(n, 2), "float32"]):
    c = const([[1.0, 0.1], [-2.5, 1e-07]], "float32")
    i = const([1, -2, 3], "int32")
    t = (x, c, shape(n, 2))
    s = t[2]
    z = zeros(s)
    return (z, i, t)
"""


def build_calls_between_functions():
    bb = BlockBuilder()
    a = Var("a", tensor((m, 3)))
    with bb.function("norm", [a]):
        bb.emit_func_output(bb.emit(ops.rms_norm(a, Constant(np.ones(3, "float32"))), "r"))
    x = Var("x", tensor((n, 3)))
    with bb.function("main", [x]):
        y = bb.emit(ops.exp(x), "y")
        bb.emit_func_output(bb.emit(Call(GlobalVar("norm"), (y,)), "z"))
    return bb.get()


# `main` calls `norm`, defined further down: its signature gives z's info (m := n).
CALLS = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 3), "float32"]):
        y = exp(x)
        z = norm(y)
        return z

    @function
    def norm(a: Tensor[(m, 3), "float32"]) -> Tensor[(m, 3), "float32"]:
        r = rms_norm(a, const([1.0, 1.0, 1.0], "float32"))
        return r
"""


def build_layout():
    x = Var("x", tensor((n, 8)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(ops.permute_dims(x), "t")
            p = bb.emit(ops.split(t, 2, axis=0), "p")
            f = bb.emit(ops.full((n, 4), 0.5), "f")
            r = bb.emit(ops.arange(n), "r")
            s = bb.emit(ops.strided_slice(x, axes=[1], begin=[2], end=[6]), "s")
            out = bb.emit_output(Tuple((p, f, r, s)), "out")
        bb.emit_func_output(out)
    return bb.get()


LAYOUT = """
@function
def main(x: Tensor[(n, 8), "float32"]):
    with dataflow():
        t = permute_dims(x)
        p = split(t, indices_or_sections=2)
        f = full(shape(n, 4), fill_value=0.5)
        r = arange(prim(0), prim(n), prim(1))
        s = strided_slice(x, shape(2), shape(6), axes=(1,))
        out = (p, f, r, s)
        output(out)
    return out
"""


def _softmax_kernel():
    X, Y = T.Buffer("X", (n, 64)), T.Buffer("Y", (n, 64))
    i, j, t, k = S.var("i"), S.var("j"), S.var("tx"), S.var("k")
    mx = T.Buffer("mx", (1,), "float32", "local")
    red = T.Buffer("red", (64,), "float32", "shared")
    body = T.For(
        i,
        n,
        T.For(
            t,
            64,
            T.Allocate(
                red,
                T.Allocate(
                    mx,
                    T.seq(
                        T.Store(red, (t,), X[i, t]),
                        T.Barrier(),
                        T.Store(mx, (0,), T.Imm(float("-inf"), "float32")),
                        T.For(k, 64, T.Store(mx, (0,), T.binary("max", mx[0], red[k])), kind="unrolled"),
                        T.Let(
                            j,
                            t,
                            T.IfThenElse(
                                T.binary("lt", j, 64),
                                T.Store(Y, (i, j), T.intrin("exp", X[i, j] - mx[0])),
                                T.Store(Y, (i, 0), T.Imm(0.0, "float32")),
                            ),
                        ),
                    ),
                ),
            ),
            kind="thread",
            thread="threadIdx.x",
        ),
        kind="thread",
        thread="blockIdx.x",
    )
    return T.PrimFunc((X, Y), body)


SOFTMAX_KERNEL = """
@prim_func
def main(X: Buffer[(n, 64), "float32"], Y: Buffer[(n, 64), "float32"]):
    for i in thread(n, "blockIdx.x"):
        for tx in thread(64, "threadIdx.x"):
            red = alloc((64,), "float32", "shared")
            mx = alloc((1,), "float32", scope="local")
            red[tx] = X[i, tx]
            barrier()
            mx[0] = float32(float("-inf"))
            for k in unrolled(64):
                mx[0] = max(mx[0], red[k])
            j = tx
            if j < 64:
                Y[i, j] = exp(X[i, j] - mx[0])
            else:
                Y[i, 0] = 0.0
"""


def _dequant_kernel():
    Q = T.Buffer("Q", (n, 8), "uint32")
    S_ = T.Buffer("scale", (n,), "float16")
    W = T.Buffer("W", (n, 64), "float16")
    i, j = S.var("i"), S.var("j")
    nib = T.binary("bitand", T.binary("shr", Q[i, j // 8], T.cast("uint32", j % 8 * 4)), T.Imm(15, "uint32"))
    value = (T.cast("float16", nib) - T.Imm(7.0, "float16")) * S_[i]
    return T.PrimFunc((Q, S_, W), T.For(i, n, T.For(j, 64, T.Store(W, (i, j), value))))


DEQUANT_KERNEL = """
@prim_func
def main(Q: Buffer[(n, 8), "uint32"], scale: Buffer[(n,), "float16"], W: Buffer[(n, 64), "float16"]):
    for i in range(n):
        for j in range(64):
            W[i, j] = (cast("float16", Q[i, j // 8] >> cast("uint32", 4 * (j % 8)) & uint32(15)) - 7.0) * scale[i]
"""

HAND_WRITTEN = {
    "elementwise": (ELEMENTWISE, build_elementwise),
    "match_cast": (MATCH_CAST, build_match_cast),
    "if": (IF, build_if),
    "call_tir": (CALL_TIR, build_call_tir),
    "impure": (IMPURE, build_impure),
    "leaves": (LEAVES, build_leaves),
    "calls": (CALLS, build_calls_between_functions),
    "layout": (LAYOUT, build_layout),
    "softmax_kernel": (SOFTMAX_KERNEL, lambda: IRModule({"main": _softmax_kernel()})),
    "dequant_kernel": (DEQUANT_KERNEL, lambda: IRModule({"main": _dequant_kernel()})),
}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_module_is_the_built_one(name):
    text, build = HAND_WRITTEN[name]
    parsed, expected = parse(text), build()
    assert parsed == expected, module_to_str(parsed)
    assert_roundtrip(parsed)


def test_match_cast_binds_a_new_symbolic_variable():
    func = parse(MATCH_CAST)["main"]
    cast = func.body.blocks[0].bindings[0]
    assert cast.info == tensor((m, 8)) and cast.var.info == tensor((m, 8))
    # m is defined from here on: the next binding's deduced shape uses it.
    assert func.body.blocks[0].bindings[1].var.info == tensor((2 * m, 4))
    assert func.ret_info.fields[1] == PrimInfo("int64")  # m leaves the function erased


def test_if_result_is_the_var_both_branches_assign():
    binding = parse(IF)["main"].body.blocks[0].bindings[1]
    assert binding.var.name == "r" and binding.var.info == TensorInfo(None, "float32", 2)
    assert binding.value.then_branch.body.name == "t" and binding.value.else_branch.body.name == "f"


# ---------------------------------------------------------------------------------------------
# Malformed text: (text, line, column, words the message must contain)

BASE = """@function
def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
    with dataflow():
        y: Tensor[(n, 4), "float32"] = exp(x)
        output(y)
    return y
"""


def _edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


MALFORMED = [
    (_edit("exp(x)", "exp(x"), 4, 43, "invalid syntax"),
    (_edit("exp(x)", "frobnicate(x)"), 4, 40, "unknown op or function 'frobnicate'"),
    (_edit("exp(x)", "exp(z)"), 4, 44, "unknown variable 'z'"),
    (_edit("exp(x)", "add(x)"), 4, 40, "add takes 2 operand(s), got 1"),
    (_edit("exp(x)", "softmax(x, axs=1)"), 4, 51, "softmax has no attribute 'axs'"),
    (_edit("exp(x)", "astype(x)"), 4, 40, "astype needs the attribute dtype"),
    (_edit('y: Tensor[(n, 4), "float32"]', 'y: Tensor[(n, 4), "float33"]'), 4, 27, "unknown dtype 'float33'"),
    (
        _edit('y: Tensor[(n, 4), "float32"]', 'y: Tensor[(k, 4), "float32"]'),
        4,
        20,
        "unknown symbolic variable 'k'",
    ),
    (_edit("y: Tensor", "x: Tensor").replace("output(y)", "output(x)"), 4, 9, "'x' is already bound"),
    (_edit("output(y)", "output(y, q)"), 5, 19, "output 'q' is not bound in this dataflow block"),
    (_edit("        output(y)\n", ""), 4, 9, "ends with output(...)"),
    (_edit("    return y\n", ""), 3, 5, "a function ends with `return value`"),
    (_edit('y: Tensor[(n, 4), "float32"]', "y: Tensr[(n, 4)]"), 4, 12, "expected a struct info"),
    (_edit("exp(x)", "add(x, 1)"), 4, 47, "a bare number is not a value"),
    (_edit("exp(x)", "match_cast(x)"), 4, 40, "expected match_cast(value, StructInfo)"),
    (_edit("@function", "@fun"), 1, 2, "expected @function"),
    (_edit("exp(x)", "x[n]"), 4, 42, "expected an integer tuple index"),
    (_edit("exp(x)", 'const([[1.0], [2.0, 3.0]], "float32")'), 4, 46, "inhomogeneous"),
    (_edit("        y:", "      y:"), 5, 9, "unexpected indent"),
    (_edit("def main(x:", "def main(x: Tensor, x:"), 2, 21, "'x' is already bound"),
    (BASE.replace("exp(x)", "negative(x)") + BASE, 8, 1, "already defines 'main'"),
    (BASE + "x = 1\n", 7, 1, "expected a @function or @prim_func definition"),
    (
        BASE.replace("    with dataflow():\n", "    with dataflow():\n        z = exp(x)\n").replace(
            "return y", "return z"
        ),
        7,
        12,
        "unknown variable 'z'",
    ),
    (
        "@function\ndef main(c: Prim['bool']):\n    if c:\n        r = c\n    return r\n",
        3,
        5,
        "needs an else branch",
    ),
    (
        "@function\ndef main(c: Prim['bool']):\n    if c:\n        r = c\n    else:\n        s = c\n    return r\n",
        6,
        9,
        "both branches must assign the If's result 'r'",
    ),
]

TIR_BASE = """@prim_func
def main(A: Buffer[(n, 4), "float32"], B: Buffer[(n, 4), "float32"]):
    for i in range(n):
        for j in range(4):
            B[i, j] = exp(A[i, j])
"""


def _tir(old: str, new: str) -> str:
    assert old in TIR_BASE
    return TIR_BASE.replace(old, new)


MALFORMED += [
    (_tir("B[i, j] =", "C[i, j] ="), 5, 13, "unknown buffer 'C'"),
    (_tir("A[i, j]", "A[i]"), 5, 27, "A has 2 dim(s) but is indexed with 1"),
    (_tir("A[i, j]", "A[B[i, j], j]"), 5, 29, "an index is an integer index expression"),
    (_tir("range(n)", "range(0, n)"), 3, 14, "loops start at 0"),
    (_tir("exp(A[i, j])", "expo(A[i, j])"), 5, 23, "unknown intrinsic 'expo'"),
    (_tir("exp(A[i, j])", "float32(A[i, j])"), 5, 31, "convert a value with cast"),
    (_tir("            B[i, j] = exp(A[i, j])", "            k = i"), 5, 13, "none follow"),
    (_tir("exp(A[i, j])", "exp(A[i, q])"), 5, 32, "unknown variable 'q'"),
    (_tir("range(4)", "vectorised(4)"), 4, 18, "expected range(n), parallel(n)"),
]


@pytest.mark.parametrize("text, line, col, words", MALFORMED, ids=[f"case{i}" for i in range(len(MALFORMED))])
def test_malformed_text_raises_parse_error_at_the_culprit(text, line, col, words):
    with pytest.raises(ParseError) as info:
        parse(text)
    err = info.value
    assert words in err.message, str(err)
    assert (err.line, err.col) == (line, col), str(err)


def test_the_table_of_malformed_texts_is_large_enough():
    assert len(MALFORMED) >= 15


def test_parse_error_shows_the_line_and_a_caret():
    with pytest.raises(ParseError) as info:
        parse(_edit("exp(x)", "exp(z)"))
    text = str(info.value)
    assert text.startswith("line 4, column 44: unknown variable 'z'")
    assert text.endswith('        y: Tensor[(n, 4), "float32"] = exp(z)\n' + " " * 47 + "^")


def test_columns_count_the_indentation_removed_from_indented_text_and_characters_not_bytes():
    text = "\n".join("        " + line for line in _edit("exp(x)", 'exp(zé, "ü")').splitlines())
    with pytest.raises(ParseError) as info:
        parse(text)
    assert (info.value.line, info.value.col) == (4, 8 + 44)
    text = _edit("exp(x)", 'add(StringImm, "é", qq)').replace("StringImm", '"ä"')
    with pytest.raises(ParseError) as info:
        parse(text)
    assert info.value.col == text.splitlines()[3].index("qq") + 1


# ---------------------------------------------------------------------------------------------
# Name resolution and deduction details


def test_qualified_names_and_shadowing():
    text = """
    @module
    class Module:
        @function
        def exp(x: Tensor[(n,), "float32"]) -> Tensor[(n,), "float32"]:
            y = ops.exp(x)
            return y

        @function
        def main(x: Tensor[(n,), "float32"]):
            a = exp(x)
            b = ops.exp(x)
            c = cls.exp(x)
            return (a, b, c)
    """
    main = parse(text)["main"]
    ops_of = [b.value.op for b in main.body.blocks[0].bindings]
    assert [type(o).__name__ for o in ops_of] == ["GlobalVar", "Op", "GlobalVar"]


def test_an_op_named_like_a_tensor_program_stays_the_op():
    """`add(x, y)` means the op even when a prim_func is named add: prim_funcs go through call_tir."""
    text = CALL_TIR.replace("add_kernel", "add").replace(
        "            output(y)", "            z = add(y, y)\n            output(y)"
    )
    main = parse(text)["main"]
    call = main.body.blocks[0].bindings[1].value
    assert call.op.name == "add" and type(call.op).__name__ == "Op"


def test_deduction_errors_are_parse_errors_at_the_binding():
    text = _edit("exp(x)", "add(x, w)").replace(
        'x: Tensor[(n, 4), "float32"])', 'x: Tensor[(n, 4), "float32"], w: Tensor[(3,), "float32"])'
    )
    with pytest.raises(ParseError) as info:
        parse(text)
    assert "broadcast" in info.value.message and (info.value.line, info.value.col) == (4, 40)


def test_defaults_of_attributes_are_filled_in_registry_order():
    parsed = parse(_edit('y: Tensor[(n, 4), "float32"] = exp(x)', "y = sum(x, keepdims=True)"))
    binding = parsed["main"].body.blocks[0].bindings[0]
    assert list(binding.value.attrs.items()) == [("axis", None), ("keepdims", True)]
    assert binding.var.info == tensor((1, 1))


def test_purity_is_deduced_when_not_declared_and_kept_when_declared():
    assert parse(IMPURE)["step"].pure is False
    declared = IMPURE.replace("    @function\n", "    @function(pure=True)\n")
    assert parse(declared)["step"].pure is True


def test_parse_function_and_top_level_definitions():
    func = parse_function(SOFTMAX_KERNEL)
    assert isinstance(func, T.PrimFunc)
    with pytest.raises(ParseError, match="exactly one function"):
        parse_function(CALLS)


# ---------------------------------------------------------------------------------------------
# Comparison helpers


def test_structural_equality_ignores_names_by_position_of_definition():
    renamed = (
        ELEMENTWISE.replace("x", "inp")
        .replace(" a ", " first ")
        .replace("(a,", "(first,")
        .replace("(a)", "(first)")
        .replace("n,", "seq,")
    )
    assert parse(renamed) != build_elementwise()
    assert_structural_equal(parse(renamed), build_elementwise())
    assert_structural_equal(build_elementwise(), renamed)


def test_structural_equality_reports_the_difference_with_both_texts():
    wrong = ELEMENTWISE.replace("sigmoid(a)", "tanh(a)")
    with pytest.raises(AssertionError) as info:
        assert_structural_equal(build_elementwise(), wrong)
    message = str(info.value)
    assert "modules differ at module['main'].body.blocks[0].bindings[1].value.op.name" in message
    assert "expected has 'tanh', actual has 'sigmoid'" in message
    assert '-            v3: Tensor[(s0, 4), "float32"] = tanh(v2)' in message
    assert '+            v3: Tensor[(s0, 4), "float32"] = sigmoid(v2)' in message
    assert "--- expected ---" in message and "--- actual ---" in message
    assert 'b: Tensor[(n, 4), "float32"] = tanh(a)' in message


def test_alpha_equivalence_does_not_confuse_distinct_vars():
    """Swapping two uses is a real difference even though the names are all positional."""
    swapped = ELEMENTWISE.replace("multiply(a, b)", "multiply(b, a)")
    with pytest.raises(AssertionError, match="modules differ"):
        assert_structural_equal(build_elementwise(), swapped)
    assert canonical(parse(ELEMENTWISE)) == canonical(build_elementwise())


def test_assert_roundtrip_reports_what_the_text_loses():
    """A use whose info differs from its binding's (ill-formed) cannot survive the text."""
    mod = build_elementwise()
    func = mod["main"]
    stale = Var("d", tensor((n, 5), "float16"))
    from dataclasses import replace

    broken = mod.with_function("main", replace(func, body=replace(func.body, body=stale)))
    with pytest.raises(
        AssertionError, match="changed in a print/parse round trip at module\\['main'\\].body.body.info"
    ):
        assert_roundtrip(broken)
