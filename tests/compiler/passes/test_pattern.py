"""Pattern analysis: what fusion may do with a tensor program, read from its loops alone."""

import pytest

from llm_deploy.compiler import tir
from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.pattern import Kind, analyze, is_reshape
from tests.compiler.passes.fusion_cases import PRIM_FUNCS, module
from tests.compiler.test_legalize import CASES
from tests.compiler.test_legalize import build as build_case

EXTRA = """
    @prim_func
    def halves(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 4), "float32"], Out2: Buffer[(n, 4), "float32"]):
        for i0 in range(n):
            for i1 in range(4):
                Out[i0, i1] = A[i0, i1]
                Out2[i0, i1] = A[i0, i1 + 4]

    @prim_func
    def scatter(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, 7 - i1] = A[i0, i1]
"""


def _func(name):
    text = module("", *(k for k in PRIM_FUNCS if k == name), extra=EXTRA if name not in PRIM_FUNCS else "")
    return parse(text)[name]


@pytest.mark.parametrize(
    "name, kind",
    [
        ("add", Kind.ELEMWISE),
        ("silu", Kind.ELEMWISE),
        ("scale", Kind.BROADCAST),
        ("permute_dims", Kind.INJECTIVE),
        ("take", Kind.INJECTIVE),
        ("rms_norm", Kind.REDUCTION),
        ("linear", Kind.OUT_EWISE_FUSABLE),
        ("halves", Kind.OPAQUE),
        ("scatter", Kind.OPAQUE),
    ],
)
def test_kinds(name, kind):
    assert analyze(_func(name)).kind == kind


def test_what_fusion_reads_off_a_pattern():
    take = analyze(_func("take"))
    assert take.inlinable and take.data_movement and take.has_lets and take.epilogue
    table, ids = take.inputs
    assert not table.identity and ids.broadcast and ids.reuse  # each id read for all 8 columns
    silu = analyze(_func("silu"))
    assert silu.inlinable and not silu.data_movement and silu.inputs[0].sites == 2
    linear = analyze(_func("linear"))
    assert linear.epilogue and not linear.inlinable
    assert all(a.reuse and a.in_reduction for a in linear.inputs)
    norm = analyze(_func("rms_norm"))
    x, w = norm.inputs
    assert norm.epilogue and x.in_reduction and not x.reuse and w.broadcast


def test_every_lowered_op_has_a_pattern_and_only_row_major_copies_are_reshapes():
    reshapes = set()
    for case in CASES:
        for f in legalize(build_case(case)).functions().values():
            if isinstance(f, tir.PrimFunc):
                pattern = analyze(f)
                assert pattern.kind in Kind
                if is_reshape(f):
                    reshapes.add(case.op)
    assert reshapes == {"reshape", "expand_dims", "squeeze"}
