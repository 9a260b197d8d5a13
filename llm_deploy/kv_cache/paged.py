"""The paged KV cache: per-layer K/V page pools and a host-side table from sequences to pages.

Memory is a fixed pool of pages (page_size tokens each) shared by all sequences, as in vLLM and
MLC-LLM. Each sequence owns a page table; a sequence of length L holds ceil(L / page_size) pages,
all full except perhaps the last. Fork shares the parent's pages by reference count. Only the
partial last page is ever written (appends), so full pages are safely shared forever, and a shared
partial page is copied before either side appends into it (copy on write).

A step is two-phase: `begin_forward` allocates pages and prepares the step arrays (all or nothing),
the model runs and writes K/V into the new slots, `end_forward` commits the new lengths. If the
model fails, `cancel_forward` drops the step and its new pages; the cached tokens are untouched.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from llm_deploy.kv_cache.allocator import PageAllocator
from llm_deploy.kv_cache.errors import KVCacheError, OutOfPagesError, SequenceError
from llm_deploy.kv_cache.step import ForwardStep, build_step

DTYPES = ("float16", "float32")


@dataclass
class _Sequence:
    length: int = 0
    pages: list[int] = field(default_factory=list)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def lazy_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros in a private anonymous mapping: the OS provides each page on first touch, so pages
    no sequence reaches take no memory (malloc's calloc may hand out touched, re-zeroed memory)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buffer, dtype).reshape(shape)


def _dtype(dtype: str | np.dtype | type) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise ValueError(f"KV cache dtype must be one of {', '.join(DTYPES)}, got {dt.name!r}")
    return dt


class PagedKVCache:
    """K/V pools of shape (num_pages, page_size, num_kv_heads, head_dim), one pair per layer.

    Size it by `num_pages` or by `memory_budget_bytes` (exactly one of them): the budget buys
    floor(budget / bytes_per_page) pages, where a page holds K and V of page_size tokens in every
    layer.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int = 16,
        num_pages: int | None = None,
        memory_budget_bytes: int | None = None,
        dtype: str = "float32",
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
            ("page_size", page_size),
        ):
            if value < 1:
                raise ValueError(f"PagedKVCache: {name} must be >= 1, got {value}")
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.page_size = page_size
        self.dtype = _dtype(dtype)
        per_page = self.bytes_per_page(num_layers, num_kv_heads, head_dim, page_size, self.dtype.name)
        if (num_pages is None) == (memory_budget_bytes is None):
            raise ValueError(
                "PagedKVCache: give exactly one of num_pages or memory_budget_bytes, got "
                f"num_pages={num_pages}, memory_budget_bytes={memory_budget_bytes}"
            )
        if memory_budget_bytes is not None:
            num_pages = memory_budget_bytes // per_page
            if num_pages < 1:
                raise ValueError(
                    f"PagedKVCache: a memory budget of {memory_budget_bytes} bytes holds no page; one page "
                    f"({num_layers} layers x K,V x {page_size} tokens x {num_kv_heads} heads x {head_dim} "
                    f"x {self.dtype.name}) takes {per_page} bytes"
                )
        assert num_pages is not None
        if num_pages < 1:
            raise ValueError(f"PagedKVCache: num_pages must be >= 1, got {num_pages}")
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.k_pools = [lazy_zeros(shape, self.dtype) for _ in range(num_layers)]
        self.v_pools = [lazy_zeros(shape, self.dtype) for _ in range(num_layers)]
        self._alloc = PageAllocator(num_pages)
        self._seqs: dict[int, _Sequence] = {}
        self._step: ForwardStep | None = None

    @staticmethod
    def bytes_per_page(
        num_layers: int, num_kv_heads: int, head_dim: int, page_size: int = 16, dtype: str = "float32"
    ) -> int:
        """Bytes of K and V for page_size tokens in every layer: the unit a memory budget buys."""
        return 2 * num_layers * page_size * num_kv_heads * head_dim * _dtype(dtype).itemsize

    # -- pool accounting ------------------------------------------------------------------------

    @property
    def num_pages(self) -> int:
        return self._alloc.num_pages

    @property
    def free_pages(self) -> int:
        return self._alloc.free_pages

    @property
    def pages_in_use(self) -> int:
        return self.num_pages - self.free_pages

    @property
    def memory_bytes(self) -> int:
        return sum(p.nbytes for p in self.k_pools) + sum(p.nbytes for p in self.v_pools)

    def pages_for_tokens(self, num_tokens: int) -> int:
        """Pages a new sequence of num_tokens tokens takes (for admitting a request)."""
        return _ceil_div(num_tokens, self.page_size)

    def pages_needed(self, seq_ids: Sequence[int], append_lengths: Sequence[int]) -> int:
        """Free pages `begin_forward(seq_ids, append_lengths)` would take (new pages + copies)."""
        ids, lens = self._check_batch(seq_ids, append_lengths)
        return sum(new + cow for new, cow in self._plan(ids, lens))

    def can_allocate(self, seq_ids: Sequence[int], append_lengths: Sequence[int]) -> bool:
        return self.pages_needed(seq_ids, append_lengths) <= self.free_pages

    # -- sequences ------------------------------------------------------------------------------

    @property
    def seq_ids(self) -> tuple[int, ...]:
        return tuple(self._seqs)

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    def seq_length(self, seq_id: int) -> int:
        return self._get(seq_id).length

    def page_table(self, seq_id: int) -> tuple[int, ...]:
        return tuple(self._get(seq_id).pages)

    def page_refcount(self, page: int) -> int:
        return self._alloc.refcount(page)

    def add_sequence(self, seq_id: int) -> None:
        self._no_step("add_sequence")
        self._new_id(seq_id, "add_sequence")
        self._seqs[seq_id] = _Sequence()

    def remove_sequence(self, seq_id: int) -> None:
        """Forget a sequence and release its pages (shared ones stay with the other holders)."""
        self._no_step("remove_sequence")
        seq = self._get(seq_id)
        self._alloc.release(seq.pages)
        del self._seqs[seq_id]

    def fork_sequence(self, parent_id: int, child_id: int) -> None:
        """A child with the parent's tokens, sharing all its pages; takes no free page."""
        self._no_step("fork_sequence")
        parent = self._get(parent_id)
        self._new_id(child_id, "fork_sequence")
        self._alloc.share(parent.pages)
        self._seqs[child_id] = _Sequence(parent.length, list(parent.pages))

    def popn(self, seq_id: int, n: int) -> None:
        """Roll back the last n tokens; pages left empty are released.

        Nothing is written, so a shared page is never touched: a page left partial and shared is
        copied on the next append, like any shared partial page.
        """
        self._no_step("popn")
        seq = self._get(seq_id)
        if not 0 <= n <= seq.length:
            raise ValueError(f"popn: cannot remove {n} tokens from sequence {seq_id} of length {seq.length}")
        seq.length -= n
        self._trim(seq)

    # -- forward steps --------------------------------------------------------------------------

    @property
    def step(self) -> ForwardStep:
        """The step begun by `begin_forward` and not yet ended."""
        if self._step is None:
            raise KVCacheError(
                "no forward step in progress: call begin_forward(seq_ids, append_lengths) first"
            )
        return self._step

    @property
    def in_step(self) -> bool:
        return self._step is not None

    @property
    def positions(self) -> np.ndarray:
        return self.step.positions

    @property
    def append_slots(self) -> np.ndarray:
        return self.step.append_slots

    @property
    def qo_indptr(self) -> np.ndarray:
        return self.step.qo_indptr

    @property
    def page_indptr(self) -> np.ndarray:
        return self.step.page_indptr

    @property
    def page_indices(self) -> np.ndarray:
        return self.step.page_indices

    @property
    def seq_lens(self) -> np.ndarray:
        return self.step.seq_lens

    @property
    def last_token_indices(self) -> np.ndarray:
        return self.step.last_token_indices

    def begin_forward(self, seq_ids: Sequence[int], append_lengths: Sequence[int]) -> ForwardStep:
        """Allocate pages for the new tokens and prepare the step arrays (see ForwardStep).

        All or nothing: raises OutOfPagesError, with the cache unchanged, if the pool cannot hold
        the new tokens (and the copies of shared partial pages they write into).
        """
        self._no_step("begin_forward")
        ids, lens = self._check_batch(seq_ids, append_lengths)
        plan = self._plan(ids, lens)
        needed = sum(new + cow for new, cow in plan)
        if needed > self.free_pages:
            raise OutOfPagesError(needed, self.free_pages, f"begin_forward({list(ids)}, {list(lens)})")
        seqs = [self._seqs[i] for i in ids]
        for seq, (new, cow) in zip(seqs, plan):
            if cow:
                self._copy_last_page(seq)
            seq.pages.extend(self._alloc.allocate(new))
        self._step = build_step(ids, lens, [s.length for s in seqs], [s.pages for s in seqs], self.page_size)
        return self._step

    def end_forward(self) -> None:
        """Commit the step: the new tokens (their K/V written by the model) become cached."""
        step = self.step
        for seq_id, a in zip(step.seq_ids, step.append_lengths):
            self._seqs[seq_id].length += a
        self._step = None

    def cancel_forward(self) -> None:
        """Abandon the step: its new pages are released; the cached tokens are as before it."""
        step = self.step
        for seq_id in step.seq_ids:
            self._trim(self._seqs[seq_id])
        self._step = None

    # -- consistency ----------------------------------------------------------------------------

    def validate(self) -> None:
        """Check the bookkeeping invariants (used by tests after every operation)."""
        counts = np.zeros(self.num_pages, dtype=np.int64)
        for seq_id, seq in self._seqs.items():
            expected = _ceil_div(seq.length, self.page_size)
            if self._step is None and len(seq.pages) != expected:
                raise KVCacheError(
                    f"sequence {seq_id} of length {seq.length} holds {len(seq.pages)} pages, expected {expected}"
                )
            np.add.at(counts, seq.pages, 1)
        refs = self._alloc.refcounts()
        if not np.array_equal(counts, refs):
            bad = np.flatnonzero(counts != refs)
            raise KVCacheError(f"page refcounts disagree with the page tables at pages {bad.tolist()}")
        free = self._alloc.free_list()
        if sorted(free) != np.flatnonzero(refs == 0).tolist():
            raise KVCacheError("the free list is not exactly the unreferenced pages")

    # -- internals ------------------------------------------------------------------------------

    def _get(self, seq_id: int) -> _Sequence:
        try:
            return self._seqs[seq_id]
        except KeyError:
            known = ", ".join(map(str, self._seqs)) or "none"
            raise SequenceError(f"unknown sequence id {seq_id!r}; sequences in the cache: {known}") from None

    def _new_id(self, seq_id: int, op: str) -> None:
        if not isinstance(seq_id, (int, np.integer)) or isinstance(seq_id, bool):
            raise TypeError(f"{op}: sequence ids are ints, got {seq_id!r} ({type(seq_id).__name__})")
        if seq_id in self._seqs:
            raise SequenceError(f"{op}: sequence id {seq_id} is already in the cache")

    def _no_step(self, op: str) -> None:
        if self._step is not None:
            raise KVCacheError(
                f"{op}: a forward step over sequences {list(self._step.seq_ids)} is in progress; "
                "call end_forward() or cancel_forward() first"
            )

    def _check_batch(
        self, seq_ids: Sequence[int], append_lengths: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ids, lens = tuple(int(i) for i in seq_ids), tuple(int(a) for a in append_lengths)
        if len(ids) != len(lens):
            raise ValueError(f"{len(ids)} sequence ids but {len(lens)} append lengths")
        if not ids:
            raise ValueError("a forward step needs at least one sequence")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise SequenceError(f"sequence ids {dup} appear more than once in the batch {list(ids)}")
        for i, a in zip(ids, lens):
            self._get(i)
            if a < 1:
                raise ValueError(f"sequence {i}: append length must be >= 1, got {a}")
        return ids, lens

    def _plan(self, ids: tuple[int, ...], lens: tuple[int, ...]) -> list[tuple[int, int]]:
        """(new pages, copies of a shared last page) per sequence, in the order begin_forward acts.

        Copies are counted as they will happen: once a sharer of a partial page has copied it,
        the page has one holder fewer, and the last holder appends in place.
        """
        copied: dict[int, int] = {}
        plan = []
        for i, a in zip(ids, lens):
            seq = self._seqs[i]
            cow = 0
            if seq.length % self.page_size:
                last = seq.pages[-1]
                if self._alloc.refcount(last) - copied.get(last, 0) > 1:
                    copied[last] = copied.get(last, 0) + 1
                    cow = 1
            plan.append((_ceil_div(seq.length + a, self.page_size) - len(seq.pages), cow))
        return plan

    def _copy_last_page(self, seq: _Sequence) -> None:
        old = seq.pages[-1]
        (new,) = self._alloc.allocate(1)
        filled = seq.length % self.page_size
        for pool in (*self.k_pools, *self.v_pools):
            pool[new, :filled] = pool[old, :filled]
        self._alloc.release([old])
        seq.pages[-1] = new

    def _trim(self, seq: _Sequence) -> None:
        keep = _ceil_div(seq.length, self.page_size)
        self._alloc.release(seq.pages[keep:])
        del seq.pages[keep:]
