"""Evaluate the symbolic shape expressions stored in a VM program, without the compiler.

The compiler writes each expression in its text form (`2 * n + (m // 4)`, `min(n, 16)`); the
runtime turns it once, at load, into a closure over a dict of symbolic values. Only integer
arithmetic is accepted, so a manifest can never run arbitrary code.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping

Env = Mapping[str, int]
Evaluator = Callable[[Env], int]

_BINOPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_CALLS: dict[str, Callable[[int, int], int]] = {"min": min, "max": max}


class SymbolicError(ValueError):
    pass


def compile_expr(text: str | int) -> Evaluator:
    """A closure computing `text` from the symbolic values bound so far."""
    if isinstance(text, int):
        value = text
        return lambda env: value
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise SymbolicError(f"bad symbolic expression {text!r}: {e.msg}") from None
    return _compile(tree, text)


def _compile(node: ast.expr, text: str) -> Evaluator:
    match node:
        case ast.Constant(value=int() as v) if not isinstance(v, bool):
            return lambda env: v
        case ast.Name(id=name):

            def lookup(env: Env) -> int:
                try:
                    return env[name]
                except KeyError:
                    raise SymbolicError(f"symbolic variable {name!r} is not bound (in {text!r})") from None

            return lookup
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            inner = _compile(operand, text)
            return lambda env: -inner(env)
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINOPS:
            fn, a, b = _BINOPS[type(op)], _compile(left, text), _compile(right, text)
            return lambda env: fn(a(env), b(env))
        case ast.Call(func=ast.Name(id=fname), args=[x, y], keywords=[]) if fname in _CALLS:
            fn, a, b = _CALLS[fname], _compile(x, text), _compile(y, text)
            return lambda env: fn(a(env), b(env))
    raise SymbolicError(f"not an integer shape expression: {text!r}")


def free_names(text: str | int) -> set[str]:
    if isinstance(text, int):
        return set()
    return {
        n.id for n in ast.walk(ast.parse(text, mode="eval")) if isinstance(n, ast.Name) and n.id not in _CALLS
    }
