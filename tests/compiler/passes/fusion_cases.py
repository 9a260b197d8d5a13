"""Tensor programs as legalize writes them, for the fusion tests' IR texts."""

PRIM_FUNCS = {
    "linear": """
    @prim_func
    def linear(A: Buffer[(n, 8), "float32"], B: Buffer[(6, 8), "float32"], Out: Buffer[(n, 6), "float32"]):
        for i0 in range(n):
            for i1 in range(6):
                Out_acc = alloc((1,), "float32", "local")
                Out_acc[0] = float32(0.0)
                for k in range(8):
                    Out_acc[0] = Out_acc[0] + A[i0, k] * B[i1, k]
                Out[i0, i1] = Out_acc[0]
""",
    "add": """
    @prim_func
    def add(A: Buffer[(n, 6), "float32"], B: Buffer[(n, 6), "float32"], Out: Buffer[(n, 6), "float32"]):
        for i0 in range(n):
            for i1 in range(6):
                Out[i0, i1] = A[i0, i1] + B[i0, i1]
""",
    "silu": """
    @prim_func
    def silu(A: Buffer[(n, 6), "float32"], Out: Buffer[(n, 6), "float32"]):
        for i0 in range(n):
            for i1 in range(6):
                Out[i0, i1] = A[i0, i1] * sigmoid(A[i0, i1])
""",
    "multiply": """
    @prim_func
    def multiply(A: Buffer[(n, 6), "float32"], B: Buffer[(n, 6), "float32"], Out: Buffer[(n, 6), "float32"]):
        for i0 in range(n):
            for i1 in range(6):
                Out[i0, i1] = A[i0, i1] * B[i0, i1]
""",
    "rms_norm": """
    @prim_func
    def rms_norm(A: Buffer[(n, 8), "float32"], B: Buffer[(8,), "float32"], Out: Buffer[(n, 8), "float32"]):
        ms = alloc((n,), "float32", "global")
        for i0 in range(n):
            ms_acc = alloc((1,), "float32", "local")
            ms_acc[0] = float32(0.0)
            for k in range(8):
                ms_acc[0] = ms_acc[0] + A[i0, k] * A[i0, k]
            ms[i0] = ms_acc[0] / cast("float32", 8)
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = A[i0, i1] / sqrt(ms[i0] + float32(1e-05)) * B[i1]
""",
    "scale": """
    @prim_func
    def scale(A: Buffer[(n, 8), "float32"], B: Buffer[(8,), "float32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = A[i0, i1] * B[i1]
""",
    "silu8": """
    @prim_func
    def silu8(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = A[i0, i1] * sigmoid(A[i0, i1])
""",
    "linear66": """
    @prim_func
    def linear66(A: Buffer[(n, 6), "float32"], B: Buffer[(6, 6), "float32"], Out: Buffer[(n, 6), "float32"]):
        for i0 in range(n):
            for i1 in range(6):
                Out_acc = alloc((1,), "float32", "local")
                Out_acc[0] = float32(0.0)
                for k in range(6):
                    Out_acc[0] = Out_acc[0] + A[i0, k] * B[i1, k]
                Out[i0, i1] = Out_acc[0]
""",
    "permute_dims": """
    @prim_func
    def permute_dims(A: Buffer[(8, n), "float32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = A[i1, i0]
""",
    "exp": """
    @prim_func
    def exp(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = exp(A[i0, i1])
""",
    "add8": """
    @prim_func
    def add8(A: Buffer[(n, 8), "float32"], B: Buffer[(n, 8), "float32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = A[i0, i1] + B[i0, i1]
""",
    "negative": """
    @prim_func
    def negative(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = -A[i0, i1]
""",
    "take": """
    @prim_func
    def take(A: Buffer[(10, 8), "float32"], B: Buffer[(n,), "int32"], Out: Buffer[(n, 8), "float32"]):
        for i0 in range(n):
            for i1 in range(8):
                idx = cast("int64", B[i0])
                Out[i0, i1] = A[idx, i1]
""",
    "shift": """
    @prim_func
    def shift(A: Buffer[(n, 8), "float32"], Out: Buffer[(n, 8), "float32"], m: Prim["int64"]):
        for i0 in range(n):
            for i1 in range(8):
                Out[i0, i1] = A[i0, i1] + cast("float32", m)
""",
}


def module(main: str, *prim_funcs: str, extra: str = "") -> str:
    """A module text: `main` (and any `extra` functions) followed by the named tensor programs."""
    return "@module\nclass Module:" + main + extra + "".join(PRIM_FUNCS[name] for name in prim_funcs)
