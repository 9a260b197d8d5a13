"""Test helpers for the IR: round trips through the text form, and structural comparison of a
module with expected text, as pass tests write it ("this module, after this pass, is that one").

    assert_roundtrip(mod)                       # print, parse, equal, well-formed
    assert_structural_equal(after, '''
        @module
        class Module:
            @function
            def main(x: Tensor[(n, 4), "float32"]) -> Tensor[(n, 4), "float32"]:
                ...
    ''')

The comparison is alpha-equivalence: vars, symbolic vars, loop vars and buffers match by their
position of definition, not by name, so expected text need not guess generated names (`lv3`).
Function names, op names and attribute values (including the names inside a `bounds` attribute)
compare as written.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any

import numpy as np

from llm_deploy.compiler.expr import Attrs, BaseFunc, Constant, Expr
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.parser import ParseError, parse
from llm_deploy.compiler.printer import expr_to_str, info_to_str, module_to_str, tir_value_to_str
from llm_deploy.compiler.struct_info import StructInfo

ModuleLike = IRModule | BaseFunc | str


def as_module(value: ModuleLike) -> IRModule:
    """An IRModule from a module, a lone function (named `main`) or text."""
    if isinstance(value, IRModule):
        return value
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, BaseFunc):
        return IRModule({"main": value})
    raise TypeError(f"expected an IRModule, a function or IR text, got {type(value).__name__}")


def assert_roundtrip(mod: IRModule | BaseFunc, check_wellformed: bool = True) -> IRModule:
    """print -> parse gives back an equal module, and that module is well-formed; returns it."""
    mod = as_module(mod)
    text = module_to_str(mod)
    try:
        parsed = parse(text)
    except ParseError as e:
        raise AssertionError(f"the printed module does not parse back: {e}\n\n{_numbered(text)}") from None
    if parsed != mod:
        where = first_difference(mod, parsed) or "(no difference found field by field)"
        again = module_to_str(parsed)
        diff = _diff(text, again, "printed", "printed again after parsing")
        if not diff:
            diff = "(both print the same text: the printer loses this difference)\n" + _numbered(text)
        raise AssertionError(f"the module changed in a print/parse round trip at {where}\n{diff}")
    wellformed = _wellformed() if check_wellformed else None
    if wellformed is not None:
        wellformed.check(parsed)
    return parsed


def assert_structural_equal(actual: ModuleLike, expected: ModuleLike) -> None:
    """`actual` equals `expected` up to the names of vars, symbolic vars and buffers."""
    actual_mod, expected_mod = as_module(actual), as_module(expected)
    a, b = canonical(actual_mod, "actual"), canonical(expected_mod, "expected")
    if a == b:
        return
    where = first_difference(b, a, "expected", "actual") or "(no difference found field by field)"
    raise AssertionError(
        f"modules differ at {where}\n"
        "--- diff, names by position of definition (v = var, s = symbolic var, b = buffer) ---\n"
        f"{_diff(module_to_str(b), module_to_str(a), 'expected', 'actual')}\n"
        f"--- expected ---\n{module_to_str(expected_mod)}\n--- actual ---\n{module_to_str(actual_mod)}"
    )


def canonical(mod: IRModule, what: str = "module") -> IRModule:
    """`mod` with every var, symbolic var and buffer renamed by its position of definition."""
    text = module_to_str(mod)
    try:
        return parse(text, canonical_names=True)
    except ParseError as e:
        raise AssertionError(
            f"the {what} module does not read back from its text: {e}\n\n{_numbered(text)}"
        ) from None


# ---------------------------------------------------------------------------------------------


def first_difference(
    a: Any, b: Any, a_name: str = "a", b_name: str = "b", path: str = "module"
) -> str | None:
    """The path of the first node where `a` and `b` differ, with both values, or None."""
    if _same(a, b):
        return None
    if type(a) is not type(b):
        return f"{path}: {a_name} has {_show(a)} ({type(a).__name__}), {b_name} has {_show(b)} ({type(b).__name__})"
    if isinstance(a, IRModule):
        if set(a) != set(b):
            return f"{path}: {a_name} has functions {sorted(a)}, {b_name} has {sorted(b)}"
        for name in a:
            found = first_difference(a[name], b[name], a_name, b_name, f"{path}[{name!r}]")
            if found:
                return found
        return first_difference(a.attrs, b.attrs, a_name, b_name, f"{path}.attrs")
    if isinstance(a, Attrs):
        return first_difference(dict(a.items()), dict(b.items()), a_name, b_name, path)
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{path}: {a_name} has keys {list(a)}, {b_name} has {list(b)}"
        for k in a:
            found = first_difference(a[k], b[k], a_name, b_name, f"{path}[{k!r}]")
            if found:
                return found
    if isinstance(a, tuple):
        if len(a) != len(b):
            return f"{path}: {a_name} has {len(a)} items, {b_name} has {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, a_name, b_name, f"{path}[{i}]")
            if found:
                return found
    if dataclasses.is_dataclass(a) and not isinstance(a, Constant):
        for f in dataclasses.fields(a):
            found = first_difference(
                getattr(a, f.name), getattr(b, f.name), a_name, b_name, f"{path}.{f.name}"
            )
            if found:
                return found
    return f"{path}: {a_name} has {_show(a)}, {b_name} has {_show(b)}"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def _show(x: Any) -> str:
    try:
        if isinstance(x, StructInfo):
            text = info_to_str(x)
        elif isinstance(x, Expr):
            text = expr_to_str(x)
        elif isinstance(x, np.ndarray):
            text = f"array{x.shape} {x.dtype}"
        else:
            from llm_deploy.compiler import tir as T

            text = tir_value_to_str(x) if isinstance(x, T.TExpr) else repr(x)
    except Exception:
        text = repr(x)
    return text if len(text) <= 200 else text[:197] + "..."


def _diff(a: str, b: str, a_name: str, b_name: str) -> str:
    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), a_name, b_name, lineterm=""))


def _numbered(text: str) -> str:
    return "\n".join(f"{i:4d} | {line}" for i, line in enumerate(text.splitlines(), 1))


def _wellformed():
    """The well-formedness checker, when the tree has one (it is optional for this helper)."""
    try:
        return importlib.import_module("llm_deploy.compiler.wellformed")
    except ModuleNotFoundError as e:
        if e.name != "llm_deploy.compiler.wellformed":
            raise
        return None
