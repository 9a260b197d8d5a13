"""Paged KV cache: page pools per layer, a sequence table with fork and rollback, forward steps.

Runtime code: imports numpy and the standard library only (artifacts run without the compiler).
"""

from llm_deploy.kv_cache.errors import KVCacheError, OutOfPagesError, SequenceError
from llm_deploy.kv_cache.externs import KV_EXTERNS
from llm_deploy.kv_cache.paged import PagedKVCache
from llm_deploy.kv_cache.reference_attention import append_kv, paged_attention
from llm_deploy.kv_cache.step import ForwardStep

__all__ = [
    "KV_EXTERNS",
    "ForwardStep",
    "KVCacheError",
    "OutOfPagesError",
    "PagedKVCache",
    "SequenceError",
    "append_kv",
    "paged_attention",
]
