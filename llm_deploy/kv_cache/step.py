"""One forward step over a flat ragged batch: the arrays that attention kernels read.

A step covers b sequences, each appending a_s >= 1 new tokens; the model sees the n = sum(a_s) new
tokens flattened in batch order (sequence 0's tokens, then sequence 1's, ...). Page tables are in
CSR form, as in FlashInfer and MLC-LLM, so one kernel launch serves prefill chunks and decode
tokens of many sequences at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

MIN_PADDED_PAGES = 16


@dataclass(frozen=True, eq=False)
class ForwardStep:
    """The batch of one step, prepared by `PagedKVCache.begin_forward`.

    seq_ids, append_lengths: the batch as given (b entries).
    positions           (n,)   int32  position of each new token in its own sequence
                                      (its cached length before the step, plus its index among the
                                      sequence's new tokens): the RoPE position.
    append_slots        (n,)   int64  page * page_size + offset: where the token's K/V is written in
                                      every layer's pools (page = slot // page_size).
    qo_indptr           (b+1,) int32  CSR over the n tokens: sequence i's new tokens are
                                      [qo_indptr[i], qo_indptr[i+1]).
    page_indptr         (b+1,) int32  CSR over page_indices: sequence i's page table (after the
    page_indices    (total,)   int32  append) is page_indices[page_indptr[i]:page_indptr[i+1]];
                                      its token t lives in page page_table[t // page_size] at
                                      offset t % page_size.
    seq_lens            (b,)   int32  length of each sequence after the append (keys to attend).
    last_token_indices  (b,)   int32  index in the flat batch of each sequence's last new token
                                      (= qo_indptr[1:] - 1): the rows whose logits are sampled.
    token_seq           (n,)   int32  index in the batch of each new token's sequence (the inverse
                                      of qo_indptr), so a kernel parallel over tokens finds its
                                      sequence's page table without a search.
    """

    seq_ids: tuple[int, ...]
    append_lengths: tuple[int, ...]
    positions: np.ndarray
    append_slots: np.ndarray
    qo_indptr: np.ndarray
    page_indptr: np.ndarray
    page_indices: np.ndarray
    seq_lens: np.ndarray
    last_token_indices: np.ndarray
    token_seq: np.ndarray

    @functools.cached_property
    def padded_page_indices(self) -> np.ndarray:
        """page_indices followed by zeros up to a power of two (at least MIN_PADDED_PAGES) entries.

        Kernels read page_indices only through page_indptr, so the padding is never read; what it
        buys is a length that changes rarely (not every page_size tokens), so that runtimes
        keyed by shapes (the VM's plans, a GPU's recorded dispatches) rebuild rarely."""
        total = len(self.page_indices)
        out = np.zeros(max(MIN_PADDED_PAGES, 1 << (total - 1).bit_length()), dtype=np.int32)
        out[:total] = self.page_indices
        return out

    @property
    def num_tokens(self) -> int:
        return int(self.qo_indptr[-1])

    @property
    def batch_size(self) -> int:
        return len(self.seq_ids)


def build_step(
    seq_ids: tuple[int, ...],
    append_lengths: tuple[int, ...],
    old_lengths: list[int],
    page_tables: list[list[int]],
    page_size: int,
) -> ForwardStep:
    """The step arrays for sequences whose page tables already hold pages for the new tokens."""
    if all(a == 1 for a in append_lengths):
        return _decode_step(seq_ids, append_lengths, old_lengths, page_tables, page_size)
    return _general_step(seq_ids, append_lengths, old_lengths, page_tables, page_size)


def _general_step(
    seq_ids: tuple[int, ...],
    append_lengths: tuple[int, ...],
    old_lengths: list[int],
    page_tables: list[list[int]],
    page_size: int,
) -> ForwardStep:
    lens = np.asarray(append_lengths, dtype=np.int64)
    old = np.asarray(old_lengths, dtype=np.int64)
    qo_indptr = np.concatenate([[0], np.cumsum(lens)])
    page_indptr = np.concatenate([[0], np.cumsum([len(t) for t in page_tables])])
    positions = np.concatenate([np.arange(o, o + a) for o, a in zip(old, lens)])
    # position -> page through each sequence's own table, looked up in the flat CSR array
    owner = np.repeat(np.arange(len(seq_ids)), lens)
    flat_tables = np.concatenate([np.asarray(t, dtype=np.int64) for t in page_tables])
    pages = flat_tables[page_indptr[owner] + positions // page_size]
    return ForwardStep(
        seq_ids=seq_ids,
        append_lengths=append_lengths,
        positions=positions.astype(np.int32),
        append_slots=(pages * page_size + positions % page_size).astype(np.int64),
        qo_indptr=qo_indptr.astype(np.int32),
        page_indptr=page_indptr.astype(np.int32),
        page_indices=flat_tables.astype(np.int32),
        seq_lens=(old + lens).astype(np.int32),
        last_token_indices=(qo_indptr[1:] - 1).astype(np.int32),
        token_seq=owner.astype(np.int32),
    )


def _decode_step(
    seq_ids: tuple[int, ...],
    append_lengths: tuple[int, ...],
    old_lengths: list[int],
    page_tables: list[list[int]],
    page_size: int,
) -> ForwardStep:
    """build_step when every sequence appends one token (decode): the same arrays from Python
    lists, without the ~15 numpy calls of the general case (a decode step's host time counts)."""
    b = len(seq_ids)
    slots = [t[o // page_size] * page_size + o % page_size for t, o in zip(page_tables, old_lengths)]
    indptr = [0]
    for t in page_tables:
        indptr.append(indptr[-1] + len(t))
    return ForwardStep(
        seq_ids=seq_ids,
        append_lengths=append_lengths,
        positions=np.array(old_lengths, dtype=np.int32),
        append_slots=np.array(slots, dtype=np.int64),
        qo_indptr=np.arange(b + 1, dtype=np.int32),  # one token per sequence, in batch order
        page_indptr=np.array(indptr, dtype=np.int32),
        page_indices=np.fromiter((p for t in page_tables for p in t), dtype=np.int32, count=indptr[-1]),
        seq_lens=np.array([o + 1 for o in old_lengths], dtype=np.int32),
        last_token_indices=np.arange(b, dtype=np.int32),
        token_seq=np.arange(b, dtype=np.int32),
    )
