"""The paged KV cache's attention kernels as tensor programs of our IR (compiler side).

One kernel per layer call, in two phases over the same page table (no contiguous copy of any
sequence's K/V is ever made):

1. append: the step's new K/V (n, KV, d) go into the pools at `append_slots` (page * page_size +
   offset), cast to the pools' dtype;
2. ragged attention: new token t of sequence s = token_seq[t], at position p = positions[t],
   attends to keys 0..p of its own sequence: key j lives in page
   page_indices[page_indptr[s] + j // page_size] at offset j % page_size. That is causal within
   the step's new tokens and full over the cached prefix, for prefill chunks and decode tokens of
   many sequences in one launch (a decode step is the ragged case with one token per sequence).

Both phases in one program keep the op's contract (`kv_cache_attention` is pure: it writes what
begin_forward prepared, then reads it) and cost one launch per layer; phase 2 starts after every
append of phase 1, so a token sees the other new tokens of its sequence.

Attention runs per (token, kv head): the group of query heads that share a kv head reads each
key once. Keys go page by page (the page table is read once per page) and within a page in blocks
of at most BLOCK, with an online softmax in float32 (running max `m`, running sum `l`, output
accumulator rescaled per block), so memory per task is constant whatever the context length. A
token's result depends only on its own sequence's keys, visited in the same order whatever else
is in the batch and however its prompt was chunked: batch and chunk invariant, bit for bit.

The schedule is written here (the default CPU rules leave a program with parallel or vectorized
loops as it is): tokens (x kv heads) in parallel, head_dim vectorized, the q.k dot product in
LANES partial sums folded at the end.

This module imports the compiler; the runtime never imports it (artifacts carry the compiled
kernels).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.shape import SymVar
from llm_deploy.compiler.tir import Buffer, Imm, cast, intrin

BLOCK = 16  # keys per online-softmax block
F32 = "float32"


def _lanes(head_dim: int) -> int:
    """Partial sums of the dot product: the widest of 16, 8, 4, 2, 1 dividing head_dim."""
    return next(w for w in (16, 8, 4, 2, 1) if head_dim % w == 0)


def _tree_sum(values: list[T.Value]) -> T.Value:
    """Sum by halves (lane i + lane i + n/2, ...): each level is one vector add of the halves, so
    the partial sums of a dot product fold in ~2 log2(n) vector instructions, not n scalar adds."""
    while len(values) > 1:
        half = len(values) // 2
        values = [values[i] + values[i + half] for i in range(half)] + values[2 * half :]
    return values[0]


def paged_attention_func(
    num_heads: int, num_kv_heads: int, head_dim: int, dtype: str = F32, kv_dtype: str = F32
) -> T.PrimFunc:
    """Append K/V through the page table, then ragged causal GQA attention (see the module doc).

    params: q (n, H, d), k (n, KV, d), v (n, KV, d), k_pool and v_pool (num_pages, page_size, KV, d)
    [written in place], positions (n,) int32, append_slots (n,) int64, token_seq (n,) int32,
    page_indptr (b+1,) int32, page_indices (total_pages,) int32 -> out (n, H, d).
    """
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    H, KV, d = num_heads, num_kv_heads, head_dim
    n, pages, page_size = S.var("n"), S.var("num_pages"), S.var("page_size")
    b = _Buffers(
        q=Buffer("q", (n, H, d), dtype),
        k=Buffer("k", (n, KV, d), dtype),
        v=Buffer("v", (n, KV, d), dtype),
        k_pool=Buffer("k_pool", (pages, page_size, KV, d), kv_dtype),
        v_pool=Buffer("v_pool", (pages, page_size, KV, d), kv_dtype),
        positions=Buffer("positions", (n,), "int32"),
        append_slots=Buffer("append_slots", (n,), "int64"),
        token_seq=Buffer("token_seq", (n,), "int32"),
        page_indptr=Buffer("page_indptr", (S.var("indptr_len"),), "int32"),
        page_indices=Buffer("page_indices", (S.var("total_pages"),), "int32"),
        out=Buffer("out", (n, H, d), dtype),
    )
    params = tuple(getattr(b, f.name) for f in dataclasses.fields(b))
    return T.PrimFunc(params, T.seq(_append(b), _attention(b)), {"scheduled": True})


@dataclasses.dataclass(frozen=True)
class _Buffers:
    """The kernel's parameters, in call order (inputs, then the output)."""

    q: Buffer
    k: Buffer
    v: Buffer
    k_pool: Buffer
    v_pool: Buffer
    positions: Buffer
    append_slots: Buffer
    token_seq: Buffer
    page_indptr: Buffer
    page_indices: Buffer
    out: Buffer


def _append(b: _Buffers) -> T.Stmt:
    """k_pool[slot // page_size, slot % page_size] = k[t] for every new token t (and v alike).

    Tokens in parallel: begin_forward gives every new token its own slot.
    """
    n, _, kv, d = b.k.shape[0], *b.k.shape
    page_size = b.k_pool.shape[1]
    t, g, e, slot = SymVar("t"), SymVar("g"), SymVar("e"), SymVar("slot")
    at = (S.floordiv(slot, page_size), S.floormod(slot, page_size), g, e)
    dtype = b.k_pool.dtype
    store = T.seq(
        T.Store(b.k_pool, at, cast(dtype, b.k[t, g, e])),
        T.Store(b.v_pool, at, cast(dtype, b.v[t, g, e])),
    )
    body = T.Let(slot, b.append_slots[t], T.For(g, kv, T.For(e, d, store, "vectorized")))
    return T.For(t, n, body, "parallel")


def _attention(b: _Buffers) -> T.Stmt:
    """out[t, h] = softmax(q[t, h] . K[s, :p+1] / sqrt(d)) V[s, :p+1], online over key blocks."""
    n, num_heads, d = b.q.shape
    kv = b.k_pool.shape[2]
    page_size = b.k_pool.shape[1]
    H, KV, D = num_heads.value, kv.value, d.value  # type: ignore[attr-defined]
    G, W = H // KV, _lanes(D)
    tg, h, e, w, eo, o, pg, sb = (SymVar(x) for x in ("tg", "h", "e", "w", "eo", "o", "pg", "sb"))
    seq, length, base, page = (SymVar(x) for x in ("seq", "length", "base", "page"))
    t, g = S.floordiv(tg, KV), S.floormod(tg, KV)
    head = g * G + h  # query head h of kv head g's group

    qs = Buffer("q_scaled", (G, D), F32, "local")  # q / sqrt(d), in float32
    acc = Buffer("acc", (G, D), F32, "local")  # sum over seen keys of exp(s - m) * v
    m = Buffer("m", (G,), F32, "local")  # running max of the scores
    l = Buffer("l", (G,), F32, "local")  # running sum of exp(s - m)
    sc = Buffer("scores", (G, BLOCK), F32, "local")  # this block's scores, then their exps
    part = Buffer("partial", (W,), F32, "local")  # lanes of one dot product
    m_new = Buffer("m_new", (1,), F32, "local")
    scale = Buffer("rescale", (1,), F32, "local")

    lowest = Imm(float(np.finfo(np.float32).min), F32)
    inv_sqrt_d = Imm(1.0 / math.sqrt(D), F32)
    # Keys go page by page (one page-table read per page, none per key), and within a page in
    # blocks of BLOCK: key pg * page_size + sb * BLOCK + o sits at row sb * BLOCK + o of `page`.
    span = S.minimum(page_size, length - pg * page_size)  # keys in page pg
    count = S.minimum(BLOCK, span - sb * BLOCK)  # keys in block sb of the page
    row = sb * BLOCK + o

    def pool(buf: Buffer, lane: S.PrimExpr) -> T.Value:
        return cast(F32, buf[page, row, g, lane])

    init = T.For(
        h,
        G,
        T.seq(
            T.For(e, D, T.seq(
                T.Store(qs, (h, e), cast(F32, b.q[t, head, e]) * inv_sqrt_d),
                T.Store(acc, (h, e), Imm(0.0, F32)),
            ), "vectorized"),
            T.Store(m, (h,), lowest),
            T.Store(l, (h,), Imm(0.0, F32)),
        ),
    )  # fmt: skip

    dot = T.seq(
        T.For(w, W, T.Store(part, (w,), Imm(0.0, F32)), "vectorized"),
        T.For(eo, D // W, T.For(w, W, T.Store(
            part, (w,), part[w] + qs[h, eo * W + w] * pool(b.k_pool, eo * W + w)
        ), "vectorized")),
        T.Store(sc, (h, o), _tree_sum([part[i] for i in range(W)])),
    )  # fmt: skip
    scores = T.For(o, count, T.For(h, G, dot))

    softmax = T.For(h, G, T.seq(
        T.Store(m_new, (0,), m[h]),
        T.For(o, count, T.Store(m_new, (0,), T.binary("max", m_new[0], sc[h, o]))),
        T.Store(scale, (0,), intrin("exp", m[h] - m_new[0])),
        T.For(o, count, T.Store(sc, (h, o), intrin("exp", sc[h, o] - m_new[0])), "vectorized"),
        T.Store(l, (h,), l[h] * scale[0]),
        T.For(o, count, T.Store(l, (h,), l[h] + sc[h, o])),
        T.For(e, D, T.Store(acc, (h, e), acc[h, e] * scale[0]), "vectorized"),
        T.Store(m, (h,), m_new[0]),
    ))  # fmt: skip

    # head outermost: a head's accumulator row stays in registers across the block's keys
    weighted = T.For(h, G, T.For(o, count, T.For(
        e, D, T.Store(acc, (h, e), acc[h, e] + sc[h, o] * pool(b.v_pool, e)), "vectorized"
    )))  # fmt: skip

    blocks = T.For(sb, S.floordiv(span + (BLOCK - 1), BLOCK), T.seq(scores, softmax, weighted))
    pages = T.For(
        pg,
        S.floordiv(length + (page_size - 1), page_size),
        T.Let(page, b.page_indices[base + pg], blocks),
    )
    finish = T.For(h, G, T.For(
        e, D, T.Store(b.out, (t, head, e), cast(b.out.dtype, acc[h, e] / l[h])), "vectorized"
    ))  # fmt: skip

    body: T.Stmt = T.seq(init, pages, finish)
    for buf in (scale, m_new, part, sc, l, m, acc, qs):
        body = T.Allocate(buf, body)
    body = T.Let(
        seq, b.token_seq[t], T.Let(length, b.positions[t] + 1, T.Let(base, b.page_indptr[seq], body))
    )
    return T.For(tg, n * KV, body, "parallel")
