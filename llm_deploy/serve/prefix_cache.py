"""Finished sequences kept in the KV cache so that later prompts starting the same way skip work.

Chat requests repeat long prefixes (a system prompt, the conversation so far). When a sequence
finishes, its cache sequence is not removed but parked here with the tokens it holds; a new request
forks the entry sharing the longest common prefix with its prompt and rolls the fork back to that
length (`fork_sequence` + `popn`). Full pages are then shared by reference; a shared partial last
page is copied by the cache on the first append (copy on write), so reuse is exact to the token.

Entries are evicted least recently used, when the engine needs pages or holds more than
`max_entries`. Pages shared with live sequences stay alive after eviction (reference counts).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from llm_deploy.kv_cache import PagedKVCache


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(a.shape[0], b.shape[0])
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class PrefixCache:
    def __init__(self, cache: PagedKVCache, max_entries: int = 16) -> None:
        if max_entries < 0:
            raise ValueError(f"PrefixCache: max_entries must be >= 0, got {max_entries}")
        self.cache = cache
        self.max_entries = max_entries
        self._entries: OrderedDict[int, np.ndarray] = OrderedDict()  # seq id -> tokens; LRU first

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def seq_ids(self) -> tuple[int, ...]:
        return tuple(self._entries)

    def insert(self, seq_id: int, tokens: Sequence[int]) -> None:
        """Take over `seq_id` (a cache sequence holding exactly `tokens`); the cache owns it now."""
        toks = np.asarray(tokens, dtype=np.int64)
        if self.cache.seq_length(seq_id) != toks.shape[0]:
            raise ValueError(
                f"PrefixCache.insert: sequence {seq_id} holds {self.cache.seq_length(seq_id)} tokens, "
                f"{toks.shape[0]} given"
            )
        if toks.shape[0] == 0 or self.max_entries == 0:
            self.cache.remove_sequence(seq_id)
            return
        for other, held in list(self._entries.items()):
            shared = common_prefix(held, toks)
            if shared == toks.shape[0]:  # an entry already covers it: keep that one, fresher
                self._entries.move_to_end(other)
                self.cache.remove_sequence(seq_id)
                return
            if shared == held.shape[0]:  # the new one covers this entry
                self._drop(other)
        self._entries[seq_id] = toks
        while len(self._entries) > self.max_entries:
            self.evict_one()

    def match(self, tokens: Sequence[int]) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with `tokens`, and that length ((None, 0) if none)."""
        toks = np.asarray(tokens, dtype=np.int64)
        best: tuple[int | None, int] = (None, 0)
        for seq_id, held in self._entries.items():
            shared = common_prefix(held, toks)
            if shared > best[1]:
                best = (seq_id, shared)
        return best

    def touch(self, seq_id: int) -> None:
        self._entries.move_to_end(seq_id)

    def evict_one(self) -> bool:
        """Drop the least recently used entry; False if there is none."""
        if not self._entries:
            return False
        self._drop(next(iter(self._entries)))
        return True

    def clear(self) -> None:
        while self.evict_one():
            pass

    @property
    def pages(self) -> int:
        """Distinct pages the entries hold (some may be shared with live sequences too)."""
        return len(self._page_counts())

    @property
    def evictable_pages(self) -> int:
        """Pages that clearing the cache would free: held by entries and by nothing else."""
        return sum(1 for p, n in self._page_counts().items() if self.cache.page_refcount(p) == n)

    def _page_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for seq_id in self._entries:
            for p in self.cache.page_table(seq_id):
                counts[p] = counts.get(p, 0) + 1
        return counts

    def _drop(self, seq_id: int) -> None:
        del self._entries[seq_id]
        self.cache.remove_sequence(seq_id)
