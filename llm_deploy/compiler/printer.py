"""Text form of the IR (placeholder until the printer lands: repr-based)."""


def expr_to_str(expr) -> str:
    return repr(expr)


def module_to_str(mod) -> str:
    return "\n".join(f"{k}: {v!r}" for k, v in mod.items())
