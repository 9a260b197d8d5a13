"""The extern table, shared with the runtime (see `llm_deploy.runtime.externs`)."""

from llm_deploy.runtime.externs import EXTERNS, ExternDef, get_extern, register_extern

__all__ = ["EXTERNS", "ExternDef", "get_extern", "register_extern"]
