"""llm_deploy: compile Llama-family models with a shape-aware IR and serve them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncEngine", "Engine"]

if TYPE_CHECKING:
    from llm_deploy.serve.api import AsyncEngine, Engine

# Resolved on first use, so that `import llm_deploy` (and every submodule import) stays light.
_LAZY = {"Engine": "llm_deploy.serve.api", "AsyncEngine": "llm_deploy.serve.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm_deploy' has no attribute {name!r}")
