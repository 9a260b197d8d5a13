"""IRModule: one name -> function map holding graph functions, tensor programs and externs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from llm_deploy.compiler.expr import Attrs, BaseFunc, ExternFunc, Function, GlobalVar
from llm_deploy.compiler.struct_info import FuncInfo, ObjectInfo, StructInfo


class IRModule:
    """An immutable module. Passes return new modules (`with_function`, `without`)."""

    __slots__ = ("_funcs", "attrs")

    def __init__(
        self, functions: Mapping[str, BaseFunc] | None = None, attrs: Mapping[str, Any] | None = None
    ):
        funcs = dict(functions or {})
        for name, f in funcs.items():
            if not isinstance(f, BaseFunc):
                raise TypeError(f"module entry {name!r} is a {type(f).__name__}, not a function")
        object.__setattr__(self, "_funcs", funcs)
        object.__setattr__(self, "attrs", Attrs.of(attrs or {}))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("IRModule is immutable; use with_function / without")

    # -- mapping interface
    def __getitem__(self, name: str | GlobalVar) -> BaseFunc:
        key = name.name if isinstance(name, GlobalVar) else name
        try:
            return self._funcs[key]
        except KeyError:
            raise KeyError(
                f"module has no function {key!r}; it has {', '.join(self._funcs) or 'none'}"
            ) from None

    def __contains__(self, name: object) -> bool:
        key = name.name if isinstance(name, GlobalVar) else name
        return key in self._funcs

    def __iter__(self) -> Iterator[str]:
        return iter(self._funcs)

    def __len__(self) -> int:
        return len(self._funcs)

    def items(self):
        return self._funcs.items()

    def functions(self) -> dict[str, BaseFunc]:
        return dict(self._funcs)

    def graph_functions(self) -> dict[str, Function]:
        return {k: f for k, f in self._funcs.items() if isinstance(f, Function)}

    def get_global_var(self, name: str) -> GlobalVar:
        self[name]
        return GlobalVar(name)

    # -- functional updates
    def with_function(self, name: str, func: BaseFunc) -> IRModule:
        funcs = dict(self._funcs)
        funcs[name] = func
        return IRModule(funcs, dict(self.attrs.items()))

    def without(self, name: str) -> IRModule:
        funcs = dict(self._funcs)
        del funcs[name]
        return IRModule(funcs, dict(self.attrs.items()))

    def with_attrs(self, **attrs: Any) -> IRModule:
        return IRModule(self._funcs, dict(self.attrs.replace(**attrs).items()))

    def unique_name(self, hint: str) -> str:
        if hint not in self._funcs:
            return hint
        i = 1
        while f"{hint}{i}" in self._funcs:
            i += 1
        return f"{hint}{i}"

    def func_info(self, name: str) -> StructInfo:
        f = self[name]
        if isinstance(f, Function):
            return f.info
        if isinstance(f, ExternFunc):
            return FuncInfo(None, ObjectInfo(), pure=False)
        return FuncInfo(None, ObjectInfo(), pure=False)

    # -- equality and text
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IRModule):
            return NotImplemented
        return self._funcs == other._funcs and self.attrs == other.attrs

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        from llm_deploy.compiler.printer import module_to_str

        return module_to_str(self)

    def __repr__(self) -> str:
        return f"IRModule({', '.join(self._funcs)})"
