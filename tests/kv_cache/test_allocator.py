from __future__ import annotations

import pytest

from llm_deploy.kv_cache.allocator import PageAllocator
from llm_deploy.kv_cache.errors import KVCacheError, OutOfPagesError


def test_refcounts_and_reuse():
    a = PageAllocator(4)
    assert a.allocate(2) == [0, 1]
    a.share([1])
    a.release([1])
    assert a.refcount(1) == 1 and a.free_pages == 2
    a.release([1])
    assert a.free_pages == 3
    assert a.allocate(1) == [1]  # the last page freed is the first reused


def test_allocation_is_all_or_nothing():
    a = PageAllocator(3)
    a.allocate(2)
    with pytest.raises(OutOfPagesError) as err:
        a.allocate(2)
    assert (err.value.needed, err.value.free, a.free_pages) == (2, 1, 1)


def test_releasing_a_free_page_is_an_error():
    a = PageAllocator(2)
    with pytest.raises(KVCacheError, match="cannot release page 1: it is free"):
        a.release([1])
