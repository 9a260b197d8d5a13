"""Which loops carry no dependence (the legality test behind parallel, vectorize, fission,
reorder): disjoint writes per iteration are proved, anything else is reported."""

import pytest

from llm_deploy.compiler.parser import parse_function
from llm_deploy.compiler.schedule.deps import why_dependent
from llm_deploy.compiler.schedule.ir import find_loop

BLOCK = """
@prim_func
def main(A: Buffer[(n, 8), "float32"], W: Buffer[(6, 8), "float32"], Out: Buffer[(n, 6), "float32"]):
    for jo in range(2):
        for io in range(n // 4):
            acc = alloc((4, 3, 1), "float32", "local")
            for k in range(8):
                for ii in range(4):
                    for ji in range(3):
                        acc[ii, ji, 0] = acc[ii, ji, 0] + A[4 * io + ii, k] * W[3 * jo + ji, k]
            for ii2 in range(4):
                for ji2 in range(3):
                    Out[4 * io + ii2, 3 * jo + ji2] = acc[ii2, ji2, 0]
"""

FUSED = """
@prim_func
def main(A: Buffer[(n, 9, 64), "float32"], Out: Buffer[(n, 9, 64), "float32"]):
    for f in range(9 * n):
        for v in range(64):
            Out[f // 9, f % 9, v] = A[f // 9, f % 9, v]
"""

OVERLAP = """
@prim_func
def main(A: Buffer[(n, 8), "float32"], Out: Buffer[(n + 8,), "float32"]):
    for i in range(n):
        for k in range(8):
            Out[i + k] = A[i, k]
"""

GATHER = """
@prim_func
def main(A: Buffer[(n,), "float32"], ids: Buffer[(n,), "int32"], Out: Buffer[(n,), "float32"]):
    for i in range(n):
        idx = cast("int64", ids[i])
        Out[idx] = A[i]
"""


@pytest.mark.parametrize(
    "text, loop, independent",
    [
        (BLOCK, "jo", True),  # Out's column 3*jo + ji: ji spans less than the stride 3
        (BLOCK, "io", True),
        (BLOCK, "ii", True),  # acc[ii, ...] and the private acc of each io
        (BLOCK, "ji", True),
        (BLOCK, "k", False),  # the reduction: every k updates the same acc elements
        (FUSED, "f", True),  # (f // 9) * 576 + (f % 9) * 64 is 64 * f: the flat offset proves it
        (FUSED, "v", True),
        (OVERLAP, "i", False),  # Out[i + k]: iterations i and i + 1 share elements
        (OVERLAP, "k", True),  # with i fixed, each k writes its own element
        (GATHER, "i", False),  # a computed index proves nothing
    ],
)
def test_independence(text, loop, independent):
    f = parse_function(text)
    reason = why_dependent(find_loop(f, loop))
    assert (reason is None) == independent, reason
    if not independent:
        assert loop in reason


def test_within_a_nest_outer_loops_vary_too():
    f = parse_function(OVERLAP)
    i = find_loop(f, "i")
    assert why_dependent(find_loop(f, "k")) is None
    assert "Out" in why_dependent(find_loop(f, "k"), within=i)
