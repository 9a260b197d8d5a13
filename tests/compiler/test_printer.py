"""The printer: every module of the example table round-trips, the text reads as documented,
floats and symbolic expressions come back exactly, names print qualified only where needed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import (
    Attrs,
    BindingBlock,
    Call,
    Constant,
    Function,
    GlobalVar,
    PrimValue,
    SeqExpr,
    Var,
    VarBinding,
)
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.parser import parse, parse_struct_info
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.printer import attr_to_str, expr_to_str, info_to_str, module_to_str
from llm_deploy.compiler.struct_info import (
    FuncInfo,
    ObjectInfo,
    PrimInfo,
    ShapeInfo,
    TensorInfo,
    TupleInfo,
    tensor,
)
from llm_deploy.compiler.testing import assert_roundtrip
from tests.compiler.ir_examples import EXAMPLES, NOT_WELL_FORMED

n, m = S.var("n"), S.var("m")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_module_round_trips(name):
    mod = EXAMPLES[name]()
    parsed = assert_roundtrip(mod, check_wellformed=name not in NOT_WELL_FORMED)
    assert module_to_str(parsed) == module_to_str(mod)


@pytest.mark.parametrize("name", sorted(set(EXAMPLES) - NOT_WELL_FORMED))
def test_every_example_round_trips_after_legalize(name):
    """Every lowering's PrimFuncs, beside the graph functions that call them."""
    assert_roundtrip(legalize(EXAMPLES[name]()))


def test_partly_legalized_decoder_layer_round_trips():
    mod = legalize(EXAMPLES["decoder_layer"](), ops=["add", "linear", "rope"])
    text = str(mod)
    assert "call_tir(linear, (h, wq)" in text and "= attention(q_rot, k_rot, v" in text
    assert "def rope(" in text and 'offset: Prim["int64"]' in text
    assert_roundtrip(mod)


def test_a_small_module_prints_exactly_like_this():
    x = Var("x", tensor((n, 4)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(ops.exp(x), "y")
            z = bb.emit_output(ops.softmax(y, axis=1), "z")
        bb.emit_func_output(z)
    assert str(bb.get()) == (
        "@module\n"
        "class Module:\n"
        "    @function\n"
        '    def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:\n'
        "        with dataflow():\n"
        '            y: Tensor[(n, 4), "float32"] = exp(x)\n'
        '            z: Tensor[(n, 4), "float32"] = softmax(y, axis=1)\n'
        "            output(z)\n"
        "        return z\n"
    )


def test_a_tensor_program_prints_exactly_like_this():
    A, B = T.Buffer("A", (n, 576)), T.Buffer("B", (n, 576))
    i, j = S.var("i"), S.var("j")
    body = T.For(i, n, T.For(j, 576, T.Store(B, (i, j), A[i, j] * 2.0), kind="vectorized"), kind="parallel")
    assert str(T.PrimFunc((A, B), body)) == (
        "@prim_func\n"
        'def main(A: Buffer[(n, 576), "float32"], B: Buffer[(n, 576), "float32"]):\n'
        "    for i in parallel(n):\n"
        "        for j in vectorized(576):\n"
        "            B[i, j] = A[i, j] * float32(2.0)\n"
    )


def test_str_of_expressions_and_functions_uses_the_text_form():
    x = Var("x", tensor((n, 4)))
    call = ops.call_tir(GlobalVar("k"), [x], tensor((n, 4)), shape_args=[n + 1])
    assert str(call) == 'call_tir(k, (x,), shape(n + 1), out_sinfo=Tensor[(n, 4), "float32"])'
    assert str(ops.rms_norm(x, x, 1e-6)) == "rms_norm(x, x, eps=1e-06, axis=-1)"
    assert expr_to_str(PrimValue(n * 2, "int32")) == 'prim(2 * n, "int32")'
    mod = EXAMPLES["match_cast_and_if"]()
    assert str(mod["main"]).startswith("@function\ndef main(")
    assert "if flag:" in str(mod["main"].body)


def test_builder_if_stays_in_one_block_with_the_bindings_around_it():
    """The builder no longer splits the enclosing block at an If, so no `with block():` shows."""
    text = str(EXAMPLES["match_cast_and_if"]())
    assert "with block()" not in text
    assert len(EXAMPLES["match_cast_and_if"]()["main"].body.blocks) == 2


def test_adjacent_and_empty_blocks_print_explicitly():
    text = str(EXAMPLES["hand_built_graph_shapes"]())
    assert text.count("with block():") == 2 and "            pass\n" in text
    assert "        with dataflow():\n            output()\n" in text


def test_names_print_qualified_only_where_the_bare_name_means_something_else():
    text = str(EXAMPLES["names_that_collide"]())
    assert 'y: Tensor[(n, 4), "float32"] = ops.add(add, exp)' in text  # a var is named add
    assert "call_tir(cls.add, (add,)" in text
    assert 'u: Tensor[(n, 4), "float32"] = cls.exp(add)' in text
    assert 'r: Tensor[(n, 4), "float32"] = ops.exp(x)' in text  # a graph function is named exp
    calls = str(EXAMPLES["calls_between_functions"]())
    assert "= helper(x)" in calls and "= ops.negative(h)" in calls and "= negative(y)" in calls


def test_struct_info_text():
    cases = {
        TensorInfo((n, 4), "float32"): 'Tensor[(n, 4), "float32"]',
        TensorInfo((n,), None): "Tensor[(n,)]",
        TensorInfo((), "int8"): 'Tensor[(), "int8"]',
        TensorInfo(None, "float16", 2): 'Tensor[ndim(2), "float16"]',
        TensorInfo(None, None, -1): "Tensor",
        TensorInfo(None, "bool"): 'Tensor["bool"]',
        ShapeInfo((n * 2 + 1, m // 4)): "Shape[(2 * n + 1, m // 4)]",
        ShapeInfo(ndim=3): "Shape[ndim(3)]",
        PrimInfo("int64", n - 1): 'Prim[n - 1, "int64"]',
        TupleInfo(()): "Tuple[()]",
        TupleInfo((ObjectInfo(),)): "Tuple[Object]",
        FuncInfo(
            (tensor((n,)),), ObjectInfo(), pure=False
        ): 'Callable[(Tensor[(n,), "float32"],), Object, "impure"]',
        FuncInfo(None, ShapeInfo()): "Callable[..., Shape]",
    }
    for info, text in cases.items():
        assert info_to_str(info) == text
        assert parse_struct_info(text) == info


# -- exactness: floats, symbolic expressions, attributes


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_float_constants_come_back_bit_for_bit(dtype):
    rng = np.random.default_rng(1)
    info = np.finfo(dtype)
    special = [
        0.0,
        -0.0,
        info.tiny,
        info.smallest_subnormal,
        -info.max,
        info.max,
        info.eps,
        np.inf,
        -np.inf,
        np.nan,
    ]
    uint = f"uint{info.bits}"
    with np.errstate(over="ignore"):
        data = np.concatenate(
            [
                np.array(special, dtype),
                rng.standard_normal(200).astype(dtype),
                (rng.standard_normal(100) * 10.0 ** rng.integers(-30, 30, 100)).astype(dtype),
                # every kind of bit pattern, NaNs with signs and payloads included
                rng.integers(0, np.iinfo(uint).max, 300, dtype=uint, endpoint=True).view(dtype),
            ]
        )
    x = Var("x", tensor((n,)))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(Constant(data)))
    parsed = assert_roundtrip(bb.get())
    back = parsed["main"].body.blocks[0].bindings[0].value.data
    assert back.dtype == data.dtype and back.tobytes() == data.tobytes()


def test_float32_constants_print_short():
    assert 'const([0.1, 1e-05, 3.4028235e+38], "float32")' in expr_to_str(
        Constant(np.array([0.1, 1e-5, 3.4028235e38], "float32"))
    )


_syms = st.sampled_from([n, m, S.var("k")])
_ints = st.integers(-40, 40).map(S.const)


def _combine(children):
    pos = st.integers(1, 9).map(S.const)
    return st.one_of(
        st.tuples(children, children).map(lambda t: t[0] + t[1]),
        st.tuples(children, children).map(lambda t: t[0] - t[1]),
        st.tuples(children, children).map(lambda t: t[0] * t[1]),
        st.tuples(children, pos).map(lambda t: t[0] // t[1]),
        st.tuples(children, pos).map(lambda t: t[0] % t[1]),
        st.tuples(children, _syms).map(lambda t: t[0] // t[1]),
        st.tuples(children, children).map(lambda t: S.minimum(t[0], t[1])),
        st.tuples(children, children).map(lambda t: S.maximum(t[0], t[1])),
    )


sym_exprs = st.recursive(st.one_of(_syms, _ints), _combine, max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(sym_exprs)
def test_symbolic_expressions_read_back_as_the_same_canonical_node(e):
    text = f'Prim[{S.to_str(e)}, "int64"]'
    assert parse_struct_info(text) == PrimInfo("int64", e), text


attr_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    sym_exprs,
)
attr_values = st.recursive(
    attr_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=5), children, max_size=3).map(Attrs.of),
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), attr_values, max_size=4))
def test_any_attribute_values_round_trip_through_a_call(attrs):
    """Calls of module functions keep attributes as given: any keys, any nesting, in order."""
    x = Var("x", tensor((n, m, S.var("k"))))
    f = Var("f", FuncInfo(None, ObjectInfo()))
    out = Var("out", ObjectInfo())
    binding = VarBinding(out, Call(f, (x,), Attrs.of(attrs)))
    func = Function((x, f), SeqExpr((BindingBlock((binding,)),), out), ObjectInfo())
    mod = IRModule({"main": func})
    assert parse(module_to_str(mod)) == mod


def test_non_finite_attribute_floats():
    assert attr_to_str(float("inf")) == 'float("inf")'
    assert attr_to_str((float("-inf"), -0.0, 1e-300)) == '(float("-inf"), -0.0, 1e-300)'


dims = st.lists(sym_exprs, max_size=3).map(tuple)
dtypes = st.sampled_from(["float32", "float16", "int64", "bool", None])
struct_infos = st.recursive(
    st.one_of(
        st.just(ObjectInfo()),
        st.builds(TensorInfo, st.one_of(st.none(), dims), dtypes, st.integers(-1, 3)),
        st.builds(ShapeInfo, st.one_of(st.none(), dims), st.integers(-1, 3)),
        st.builds(PrimInfo, st.sampled_from(["int64", "int32", "float32"]), st.one_of(st.none(), sym_exprs)),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda fs: TupleInfo(tuple(fs))),
        st.builds(
            FuncInfo, st.one_of(st.none(), st.lists(children, max_size=2).map(tuple)), children, st.booleans()
        ),
    ),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(struct_infos)
def test_any_struct_info_reads_back(info):
    assert parse_struct_info(info_to_str(info)) == info, info_to_str(info)


_A = T.Buffer("A", (8,), "float32")
_Q = T.Buffer("Q", (8,), "int32")
_i = S.var("i")
_leaves = st.one_of(
    st.just(_A[_i]),
    st.just(_Q[_i]),
    st.floats(allow_nan=False).map(lambda v: T.Imm(v, "float32")),
    st.integers(-5, 5).map(lambda v: T.Imm(v, "int32")),
    st.booleans().map(lambda v: T.Imm(v, "bool")),
    st.integers(-3, 3).map(S.const),
    st.just(_i),
    st.just(_i * 2 - 1),
    st.just(S.floordiv(_i, 3)),
)
tir_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.builds(T.Binary, st.sampled_from(sorted(T.BINARY_OPS)), children, children),
        st.builds(lambda name, a: T.Intrin(name, (a,)), st.sampled_from(sorted(T.INTRINSICS)), children),
        st.builds(T.Cast, st.sampled_from(["float16", "int64", "bool"]), children),
        st.builds(T.Select, children, children, children),
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(tir_values)
def test_any_loop_level_value_reads_back_with_its_structure(value):
    """Precedence and parentheses: the printed operators parse into the same tree."""
    func = T.PrimFunc((_A, _Q), T.For(_i, 8, T.Store(_A, (_i,), value)))
    mod = IRModule({"main": func})
    assert parse(module_to_str(mod)) == mod, str(func)
