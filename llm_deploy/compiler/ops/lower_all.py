"""Importing this module registers the lowering of every op family (beside its deduction)."""

from llm_deploy.compiler.ops import (  # noqa: F401
    lower_attention,
    lower_create,
    lower_elementwise,
    lower_linalg,
    lower_manipulate,
    lower_nn,
    lower_reduce,
)
