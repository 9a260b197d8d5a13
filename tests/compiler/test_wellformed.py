"""The well-formedness checker: a table of hand-made bad modules, each caught with a message that
names the function and the offending binding, and good modules (hand-made and built) that pass."""

import dataclasses

import numpy as np
import pytest

from llm_deploy.compiler import ops
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
    If,
    MatchCast,
    Op,
    PrimValue,
    SeqExpr,
    ShapeExpr,
    Tuple,
    Var,
    VarBinding,
)
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.struct_info import ObjectInfo, ShapeInfo, TupleInfo, tensor
from llm_deploy.compiler.wellformed import WellFormedError, check, errors

n, m, k = S.var("n"), S.var("m"), S.var("k")
i, j = S.var("i"), S.var("j")
T4 = tensor((n, 4))
x = Var("x", T4)
cond = Var("cond", tensor((), "bool"))
Y5 = Var("y", tensor((n, 5)))


def call(op: str, *args, **attrs) -> Call:
    return Call(Op(op), args, Attrs.of(attrs))


def bind(name: str, value, info=T4, dataflow: bool = False) -> VarBinding:
    return VarBinding((DataflowVar if dataflow else Var)(name, info), value)


def df(*bindings) -> DataflowBlock:
    return DataflowBlock(bindings)


def blk(*bindings) -> BindingBlock:
    return BindingBlock(bindings)


def fn(*blocks, body=None, params=(x,), ret=None, pure=True) -> Function:
    """A function of `blocks` returning `body` (default: the last binding's var)."""
    if body is None:
        body = blocks[-1].bindings[-1].var if blocks else params[0]
    if ret is None:
        ret = body.info if isinstance(body, Var) else ObjectInfo()
    return Function(params, SeqExpr(blocks, body), ret, pure)


def module(main: Function, **others) -> IRModule:
    return IRModule({"main": main, **others})


# A tensor program C = A + B over (n, 4), and a function to call.
A, B, C = (T.Buffer(name, (n, 4)) for name in "ABC")
ADD = T.PrimFunc((A, B, C), T.For(i, n, T.For(j, 4, T.Store(C, (i, j), A[i, j] + B[i, j]))))
SCALE = T.PrimFunc((A, C, k), T.For(i, n, T.For(j, 4, T.Store(C, (i, j), A[i, j] * k))))
a = Var("a", T4)
EXP = Function((a,), SeqExpr((blk(bind("e", call("exp", a))),), Var("e", T4)), T4)
LOG = Function(
    (a,), SeqExpr((blk(bind("p", ops.call_extern("print", [a], ObjectInfo()), ObjectInfo())),), a), T4, False
)


def _store_with_wrong_arity() -> T.Store:
    s = T.Store(C, (i, j), A[i, j])
    object.__setattr__(s, "indices", (i,))  # the node's own check would refuse it
    return s


lv, lv1, gv = Var("lv", T4), Var("lv1", T4), Var("gv", T4)
dlv = DataflowVar("lv", T4)

BAD = {
    # -- scoping of vars
    "bound twice": (
        module(fn(blk(bind("lv", call("exp", x)), bind("lv", call("exp", x))))),
        r"main: binding lv .*lv is bound twice",
    ),
    "parameter twice": (module(fn(params=(x, x))), r"main: parameter 'x': parameter x is declared twice"),
    "binding shadows a parameter": (
        module(fn(blk(bind("x", call("exp", x))))),
        r"main: binding x .*x is bound twice",
    ),
    "use before definition": (
        module(fn(blk(bind("lv", call("exp", lv1)), bind("lv1", call("exp", x))))),
        r"main: binding lv .*lv1 is used before its binding",
    ),
    "undefined var": (
        module(fn(blk(bind("lv", call("add", x, Var("ghost", T4)))))),
        r"main: binding lv .*ghost is not defined",
    ),
    "use disagrees with binding": (
        module(fn(blk(bind("lv", call("exp", Var("x", tensor((m, 4)))))))),
        r"main: binding lv .*this use of x is .* but it was bound as",
    ),
    "dataflow var param": (
        module(fn(params=(DataflowVar("d", T4),))),
        r"main: parameter 'd': a parameter must be a Var",
    ),
    "dataflow var bound outside a dataflow block": (
        module(fn(blk(bind("lv", call("exp", x), dataflow=True)), body=x)),
        r"main: binding lv .*dataflow var lv is bound outside a dataflow block",
    ),
    "dataflow var escapes its block": (
        module(fn(df(bind("lv", call("exp", x), dataflow=True)), blk(bind("gv", call("exp", dlv))))),
        r"main: binding gv .*lv is a dataflow var used outside its dataflow block",
    ),
    "dataflow var returned": (
        module(fn(df(bind("lv", call("exp", x), dataflow=True)), body=dlv, ret=T4)),
        r"main: the function's return value: returns dataflow var lv",
    ),
    "branch-local var used after the If": (
        module(
            fn(
                blk(
                    bind(
                        "r",
                        If(
                            cond,
                            SeqExpr((blk(bind("inner", call("exp", x))),), Var("inner", T4)),
                            SeqExpr((), x),
                        ),
                    ),
                    bind("after", call("exp", Var("inner", T4))),
                ),
                params=(x, cond),
            )
        ),
        r"main: binding after .*inner is used outside the If branch that binds it",
    ),
    # -- symbolic vars
    "undefined symbolic var in a binding's info": (
        module(fn(blk(bind("lv", call("exp", x), tensor((k, 4)))))),
        r"main: binding lv .*symbolic var\(s\) k not defined",
    ),
    "undefined symbolic var in a ShapeExpr": (
        module(fn(blk(bind("lv", ShapeExpr((n, k)), ShapeInfo((n, k)))))),
        r"main: binding lv .*symbolic var\(s\) k not defined",
    ),
    "undefined symbolic var in a PrimValue": (
        module(fn(blk(bind("lv", call("exp", x)), bind("off", Tuple((lv, PrimValue(k + 1))), ObjectInfo())))),
        r"main: binding off .*symbolic var\(s\) k not defined",
    ),
    "parameter shape without a bare var": (
        module(fn(params=(Var("x", tensor((2 * n, 4))),))),
        r"main: parameter 'x': symbolic var\(s\) n not defined",
    ),
    "symbolic var used before the match_cast that defines it": (
        module(
            fn(
                blk(
                    bind("early", call("exp", x), tensor((k, 4))),
                    MatchCast(Var("late", tensor((k, 4))), x, tensor((k, 4))),
                )
            )
        ),
        r"main: binding early .*k not defined",
    ),
    "return info with a local symbolic var": (
        module(fn(blk(MatchCast(Var("lv", tensor((k, 4))), x, tensor((k, 4)))), ret=tensor((k, 4)))),
        r"main: the return info: symbolic var\(s\) k not defined",
    ),
    # -- purity
    "impure op in a dataflow block": (
        module(
            fn(
                df(bind("lv", ops.call_extern("print", [x], ObjectInfo()), ObjectInfo(), dataflow=True)),
                body=x,
            )
        ),
        r"main: binding lv .*impure call to call_extern\(print\) inside a dataflow block",
    ),
    "impure graph function in a dataflow block": (
        module(fn(df(bind("lv", Call(GlobalVar("log"), (x,)), dataflow=True)), body=x, pure=False), log=LOG),
        r"main: binding lv .*impure call to log inside a dataflow block",
    ),
    "pure function with an impure call": (
        module(fn(blk(bind("lv", ops.call_extern("print", [x], ObjectInfo()), ObjectInfo())), body=x)),
        r"main: binding lv: the function is declared pure but makes an impure call",
    ),
    # -- deduction
    "info inconsistent with deduction": (
        module(fn(blk(bind("lv", call("exp", x), tensor((n, 5)))))),
        r"main: binding lv .*lv is declared .*\(n, 5\).* but its value deduces .*\(n, 4\)",
    ),
    "dtype inconsistent with deduction": (
        module(fn(blk(bind("lv", call("less", x, x), T4)))),
        r"main: binding lv .*declared .*float32.* but its value deduces .*bool",
    ),
    "deduction fails": (
        module(fn(blk(bind("lv", call("add", x, Y5))), params=(x, Y5))),
        r"main: binding lv .*deduction fails: add: cannot broadcast",
    ),
    "call result inconsistent with the callee's signature": (
        module(fn(blk(bind("lv", Call(GlobalVar("exp"), (x,)), tensor((n, 8))))), exp=EXP),
        r"main: binding lv .*but its value deduces .*\(n, 4\)",
    ),
    "callee arity": (
        module(fn(blk(bind("lv", Call(GlobalVar("exp"), (x, x))))), exp=EXP),
        r"main: binding lv .*exp takes 1 argument\(s\), got 2",
    ),
    "callee argument mismatch": (
        module(
            fn(blk(bind("lv", Call(GlobalVar("exp"), (Constant(np.zeros((3, 5), "float32")),))))), exp=EXP
        ),
        r"main: binding lv .*exp: parameter a expects .*got",
    ),
    "match_cast var info differs": (
        module(fn(blk(MatchCast(Var("lv", tensor((m, 4))), x, tensor((m, 5)))))),
        r"main: binding lv .*the var is declared .* but the match_cast is to",
    ),
    "match_cast that can never match": (
        module(fn(blk(MatchCast(Var("lv", ShapeInfo((m,))), x, ShapeInfo((m,)))))),
        r"main: binding lv .*can never match",
    ),
    "missing op attribute": (
        module(fn(blk(bind("lv", call("astype", x))))),
        r"main: binding lv .*astype is missing required attribute\(s\) dtype",
    ),
    "unknown op": (
        module(fn(blk(bind("lv", call("frobnicate", x))))),
        r"main: binding lv .*no operator named 'frobnicate'",
    ),
    "nested call (not normalized)": (
        module(fn(blk(bind("lv", call("add", call("exp", x), x))))),
        r"main: binding lv .*nested Call must be bound to a var first",
    ),
    "tuple index out of range": (
        module(
            fn(
                blk(
                    bind("t", Tuple((x,)), TupleInfo((T4,))),
                    bind("lv", GetItem(Var("t", TupleInfo((T4,))), 3)),
                )
            )
        ),
        r"main: binding lv .*tuple index 3 out of range",
    ),
    # -- globals and cross-level calls
    "unknown GlobalVar": (
        module(fn(blk(bind("lv", Call(GlobalVar("nowhere"), (x,)))))),
        r"main: binding lv .*calls 'nowhere', which names no function of the module",
    ),
    "unknown GlobalVar operand": (
        module(fn(blk(bind("lv", ops.call_tir(GlobalVar("nowhere"), [x, x], T4))))),
        r"main: binding lv .*GlobalVar 'nowhere' names no function",
    ),
    "calling a tensor program directly": (
        module(fn(blk(bind("lv", Call(GlobalVar("add"), (x, x))))), add=ADD),
        r"main: binding lv .*add is a PrimFunc; call it through call_tir",
    ),
    "call_tir input count": (
        module(fn(blk(bind("lv", ops.call_tir(GlobalVar("add"), [x], T4)))), add=ADD),
        r"main: binding lv .*the tensor program takes 3 buffer\(s\), so with 1 output\(s\) it needs 2 input\(s\), got 1",
    ),
    "call_tir output count": (
        module(
            fn(
                blk(
                    bind(
                        "lv", ops.call_tir(GlobalVar("add"), [x, x], TupleInfo((T4, T4))), TupleInfo((T4, T4))
                    )
                ),
                body=x,
            ),
            add=ADD,
        ),
        r"main: binding lv .*needs 1 input\(s\), got 2",
    ),
    "call_tir shape_args count": (
        module(fn(blk(bind("lv", ops.call_tir(GlobalVar("scale"), [x], T4)))), scale=SCALE),
        r"main: binding lv .*takes 1 scalar param\(s\) \(k\), got 0 shape_args",
    ),
    "call_tir buffer rank": (
        module(
            fn(blk(bind("lv", ops.call_tir(GlobalVar("add"), [x, x], tensor((n,))), tensor((n,)))), body=x),
            add=ADD,
        ),
        r"main: binding lv .*buffer C is \(n, 4\) float32 but gets",
    ),
    "call_tir to a graph function": (
        module(fn(blk(bind("lv", ops.call_tir(GlobalVar("exp"), [x], T4)))), exp=EXP),
        r"main: binding lv .*call_tir must call a tensor program \(PrimFunc\) of the module, got a Function",
    ),
    "call_tir arguments not a tuple": (
        module(fn(blk(bind("lv", Call(Op("call_tir"), (GlobalVar("add"), x), sinfo_args=(T4,))))), add=ADD),
        r"main: binding lv .*call_tir's arguments must be a Tuple, got Var",
    ),
    "call_tir without an output info": (
        module(fn(blk(bind("lv", Call(Op("call_tir"), (GlobalVar("add"), Tuple((x, x))))))), add=ADD),
        r"main: binding lv .*call_tir needs exactly one output struct info, got 0",
    ),
    "call_extern of a non-extern": (
        module(
            fn(blk(bind("lv", Call(Op("call_extern_pure"), (x, Tuple((x,))), sinfo_args=(T4,))))), add=ADD
        ),
        r"main: binding lv .*call_extern_pure must call an ExternFunc, got a Var",
    ),
    "call_extern arguments not a tuple": (
        module(fn(blk(bind("lv", Call(Op("call_extern_pure"), (ExternFunc("f"), x), sinfo_args=(T4,)))))),
        r"main: binding lv .*call_extern_pure's arguments must be a Tuple",
    ),
    # -- If
    "If inside a dataflow block": (
        module(
            fn(
                df(bind("lv", If(cond, SeqExpr((), x), SeqExpr((), x)), dataflow=True)),
                body=x,
                params=(x, cond),
            )
        ),
        r"main: binding lv .*an If cannot appear inside a dataflow block",
    ),
    "If condition not a scalar": (
        module(fn(blk(bind("lv", If(x, SeqExpr((), x), SeqExpr((), x)))))),
        r"main: binding lv .*the If condition must be a bool/int scalar, got .*\(n, 4\)",
    ),
    "If condition a float scalar": (
        module(fn(blk(bind("lv", If(Constant(np.float32(1.0)), SeqExpr((), x), SeqExpr((), x)))))),
        r"main: binding lv .*the If condition must be a bool/int scalar, got .*float32",
    ),
    "If info inconsistent with its branches": (
        module(
            fn(blk(bind("lv", If(cond, SeqExpr((), x), SeqExpr((), x)), tensor((n, 5)))), params=(x, cond))
        ),
        r"main: binding lv .*declared .*\(n, 5\).* but its value deduces",
    ),
    "return info inconsistent with the body": (
        module(fn(ret=tensor((n, 5)))),
        r"main: the return info: declared .*\(n, 5\).* but the body returns",
    ),
    # -- tensor programs
    "tir loop var used outside its loop": (
        module(
            fn(),
            add=dataclasses.replace(
                ADD, body=T.Seq((T.For(i, n, T.Store(C, (i, 0), A[i, 0])), T.Store(C, (i, 1), A[i, 1])))
            ),
        ),
        r"add \(tensor program\): a store of C uses i outside its scope",
    ),
    "tir undefined loop extent": (
        module(fn(), add=dataclasses.replace(ADD, body=T.For(i, m, T.Store(C, (i, 0), A[i, 0])))),
        r"add \(tensor program\): the extent of loop i uses m outside its scope",
    ),
    "tir loop var redefined": (
        module(
            fn(), add=dataclasses.replace(ADD, body=T.For(i, n, T.For(i, 4, T.Store(C, (i, i), A[i, i]))))
        ),
        r"add \(tensor program\): loop var i is already defined",
    ),
    "tir let var used before its let": (
        module(
            fn(),
            add=dataclasses.replace(
                ADD,
                body=T.Seq((T.Store(C, (j, 0), A[0, 0]), T.Let(j, S.IntImm(1), T.Store(C, (j, 0), A[0, 0])))),
            ),
        ),
        r"add \(tensor program\): a store of C uses j outside its scope",
    ),
    "tir unknown buffer": (
        module(
            fn(),
            add=dataclasses.replace(ADD, body=T.For(i, n, T.Store(C, (i, 0), T.Buffer("D", (n, 4))[i, 0]))),
        ),
        r"add \(tensor program\): a load of buffer D, which is neither a parameter nor an allocation",
    ),
    "tir allocation out of scope": (
        module(
            fn(),
            add=dataclasses.replace(
                ADD,
                body=T.Seq(
                    (
                        T.Allocate(T.Buffer("tmp", (4,), scope="local"), T.Barrier()),
                        T.Store(C, (0, 0), T.Buffer("tmp", (4,), scope="local")[0]),
                    )
                ),
            ),
        ),
        r"add \(tensor program\): a load of buffer tmp, which is neither",
    ),
    "tir index arity": (
        module(fn(), add=dataclasses.replace(ADD, body=T.For(i, n, T.For(j, 4, _store_with_wrong_arity())))),
        r"add \(tensor program\): a store of C has 1 indices for 2 dims",
    ),
    "tir undefined symbol in a buffer shape": (
        module(fn(), add=T.PrimFunc((T.Buffer("A", (2 * n,)),), T.Barrier())),
        r"add \(tensor program\): buffer A's shape uses undefined n",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_module_is_caught_naming_the_binding(case):
    mod, pattern = BAD[case]
    with pytest.raises(WellFormedError, match=pattern):
        check(mod)


def test_errors_lists_every_problem_in_program_order():
    mod = module(
        fn(
            blk(
                bind("first", call("exp", Var("ghost", T4))),
                bind("second", call("exp", x), tensor((n, 5))),
            )
        )
    )
    problems = errors(mod)
    assert len(problems) == 2
    assert problems[0].startswith("main: binding first") and "ghost is not defined" in problems[0]
    assert problems[1].startswith("main: binding second") and "deduces" in problems[1]


# -- good modules


def test_hand_made_module_with_every_construct_passes():
    y = Var("y", tensor(ndim=2))
    ym = DataflowVar("ym", tensor((m, 4)))
    s = Var("s", tensor((m, 4)))
    r = Var("r", tensor(ndim=2))
    then = SeqExpr((blk(MatchCast(Var("kk", tensor((k, 4))), s, tensor((k, 4)))),), Var("kk", tensor((k, 4))))
    main = Function(
        (x, y, cond),
        SeqExpr(
            (
                df(
                    MatchCast(ym, y, tensor((m, 4))),
                    bind("d", call("add", ym, ym), tensor((m, 4)), dataflow=True),
                    bind("s", call("exp", DataflowVar("d", tensor((m, 4)))), tensor((m, 4))),
                    bind("t", ops.call_tir(GlobalVar("add"), [x, x], T4), T4),
                    bind("u", Call(GlobalVar("exp"), (Var("t", T4),)), T4),
                ),
                blk(
                    bind("r", If(cond, then, SeqExpr((), s)), tensor(ndim=2)),
                    bind("shp", ShapeExpr((n, 2 * n)), ShapeInfo((n, 2 * n))),
                    bind("p", ops.call_extern("print", [r, PrimValue(n + 1)], ObjectInfo()), ObjectInfo()),
                    bind("q", GetItem(Tuple((r, Var("u", T4))), 1), T4),
                ),
            ),
            Tuple((Var("q", T4), r)),
        ),
        TupleInfo((T4, tensor(ndim=2))),
        pure=False,
    )
    mod = IRModule({"main": main, "add": ADD, "exp": EXP, "log": LOG})
    assert errors(mod) == []
    check(mod)


def test_looser_binding_info_is_allowed():
    # A var may know less than deduction does (a base of the deduced info), never more.
    assert errors(module(fn(blk(bind("lv", call("exp", x), tensor(ndim=2)))))) == []
    assert errors(module(fn(blk(bind("lv", call("exp", x), ObjectInfo())), ret=ObjectInfo()))) == []


def test_tensor_program_with_allocation_let_and_parallel_loops_passes():
    tmp = T.Buffer("tmp", (4,), scope="local")
    idx = T.Buffer("idx", (n,), "int32")
    row = S.var("row")
    body = T.For(
        i,
        n,
        T.Let(
            row,
            T.cast("int64", idx[i]),
            T.Allocate(
                tmp,
                T.seq(
                    T.For(j, 4, T.Store(tmp, (j,), A[row, j] * 2.0), "vectorized"),
                    T.For(j, 4, T.Store(C, (i, j), T.select(tmp[j] > 0.0, tmp[j], T.intrin("exp", tmp[j])))),
                ),
            ),
        ),
        "parallel",
    )
    take = T.PrimFunc((A, idx, C), body)
    assert errors(IRModule({"take": take, "add": ADD, "scale": SCALE})) == []


def test_builder_modules_pass():
    y = Var("y", tensor(ndim=2))
    bb = BlockBuilder()
    add_gv = bb.add_func(ADD, "add")
    with bb.function("helper", [a]):
        with bb.dataflow():
            h = bb.emit_output(ops.multiply(a, ops.sigmoid(a)))
        bb.emit_func_output(h)
    with bb.function("main", [x, y, cond]):
        with bb.dataflow():
            ym = bb.match_cast(y, tensor((m, 4)), "ym")
            sq = bb.emit(ops.multiply(ym, ym))
            summed = bb.emit_output(ops.call_tir(add_gv, [x, x], T4), "summed")
            out = bb.emit_output(ops.add(sq, ym), "out")
        r = bb.if_(
            cond,
            lambda bb: bb.emit(ops.exp(bb.match_cast(out, tensor((k, 4))))),
            lambda bb: bb.emit(Call(GlobalVar("helper"), (out,))),
            "r",
        )
        bb.emit(ops.call_extern("print", [r], ObjectInfo()))
        bb.emit_func_output([summed, r])
    mod = bb.get()
    assert errors(mod) == []
    assert mod["main"].pure is False
