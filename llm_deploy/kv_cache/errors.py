"""Errors of the paged KV cache, typed so that the engine can act on them.

Out of pages is an expected condition under load (the engine queues or rejects the request), so it
carries the numbers the engine needs; misuse (an unknown or duplicate sequence id, a step left open)
is a bug in the caller and says what was expected and what was found.
"""

from __future__ import annotations


class KVCacheError(Exception):
    """Base of every error the KV cache raises on purpose."""


class OutOfPagesError(KVCacheError):
    """The pool has fewer free pages than a request needs; the cache is left unchanged."""

    def __init__(self, needed: int, free: int, what: str = "this step") -> None:
        self.needed = needed
        self.free = free
        super().__init__(
            f"out of KV cache pages: {what} needs {needed} free page(s), the pool has {free} free; "
            "wait for a sequence to finish, remove one, or build with a larger cache"
        )


class SequenceError(KVCacheError, LookupError):
    """A sequence id that must exist does not, or one that must be new already exists."""
