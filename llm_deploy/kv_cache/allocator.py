"""Reference-counted page allocator: which pages of the pool are free, and who shares the rest.

A page is referenced once by every sequence whose page table holds it; fork shares pages by taking
references instead of copying. A page returns to the free list when its last reference is dropped.
The free list is a stack (last freed, first reused): freed pages are reused at once, which keeps the
working set small and makes reuse easy to exercise in tests.
"""

from __future__ import annotations

import numpy as np

from llm_deploy.kv_cache.errors import KVCacheError, OutOfPagesError


class PageAllocator:
    def __init__(self, num_pages: int) -> None:
        if num_pages < 1:
            raise ValueError(f"a page pool needs at least one page, got num_pages={num_pages}")
        self.num_pages = num_pages
        self._refcount = np.zeros(num_pages, dtype=np.int64)  # 0 <=> the page is on the free list
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out page 0 first

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def refcount(self, page: int) -> int:
        return int(self._refcount[page])

    def allocate(self, count: int) -> list[int]:
        """`count` fresh pages, each with one reference; all or nothing."""
        if count > len(self._free):
            raise OutOfPagesError(count, len(self._free))
        pages = [self._free.pop() for _ in range(count)]
        self._refcount[pages] = 1
        return pages

    def share(self, pages: list[int]) -> None:
        for p in pages:
            self._check_live(p, "share")
            self._refcount[p] += 1

    def release(self, pages: list[int]) -> None:
        for p in pages:
            self._check_live(p, "release")
            self._refcount[p] -= 1
            if self._refcount[p] == 0:
                self._free.append(p)

    def free_list(self) -> tuple[int, ...]:
        return tuple(self._free)

    def refcounts(self) -> np.ndarray:
        return self._refcount.copy()

    def _check_live(self, page: int, op: str) -> None:
        if self._refcount[page] <= 0:
            raise KVCacheError(f"cannot {op} page {page}: it is free (a page table refers to a freed page)")
