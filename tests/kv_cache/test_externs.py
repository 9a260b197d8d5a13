"""The KV externs' calling convention and checks; the runtime package stands without the compiler."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llm_deploy.kv_cache import KV_EXTERNS, KVCacheError, PagedKVCache, paged_attention

attention, positions = KV_EXTERNS["kv_cache.attention"], KV_EXTERNS["kv_cache.positions"]


@pytest.fixture
def c() -> PagedKVCache:
    c = PagedKVCache(2, 2, 4, page_size=4, num_pages=8)
    c.add_sequence(0)
    c.add_sequence(1)
    c.begin_forward([0, 1], [3, 2])
    return c


def qkv(n=5, heads=4, kv=2, d=4, dtype=np.float32):
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal(s).astype(dtype) for s in ((n, heads, d), (n, kv, d), (n, kv, d)))


def test_positions(c):
    out = np.full(5, -1, np.int32)
    positions(c, np.zeros(5, np.int32), out)
    np.testing.assert_array_equal(out, [0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="has 5 new tokens, the model was given 4 token ids"):
        positions(c, np.zeros(4, np.int32), out)


def test_attention_writes_kv_into_the_layer_pools(c):
    q, k, v = qkv()
    out = np.zeros_like(q)
    attention(c, q, k, v, np.int64(1), out)  # the layer may come as a numpy scalar
    pages, offsets = np.divmod(c.append_slots, c.page_size)
    np.testing.assert_array_equal(c.k_pools[1][pages, offsets], k)
    np.testing.assert_array_equal(c.v_pools[1][pages, offsets], v)
    assert not c.k_pools[0].any()  # other layers untouched
    # a sequence's first new token sees only itself: its output is its own V row, per kv group
    np.testing.assert_allclose(out[0], np.repeat(v[0], 2, axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[3], np.repeat(v[3], 2, axis=0), rtol=1e-6)


def test_float16_activations(c):
    q, k, v = qkv(dtype=np.float16)
    out = np.zeros_like(q)
    attention(c, q, k, v, 0, out)
    ref = paged_attention(
        q, c.k_pools[0], c.v_pools[0], c.qo_indptr, c.page_indptr, c.page_indices, c.seq_lens
    )
    np.testing.assert_array_equal(out, ref.astype(np.float16))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda q, k, v, o: (q[:4], k, v, o), r"q must be \(n=5, H, d=4\)"),
        (lambda q, k, v, o: (q[:, :3], k, v, o[:, :3]), "H a multiple of 2 kv heads"),
        (lambda q, k, v, o: (q, k[:, :1], v, o), r"k: expected shape \(5, 2, 4\), got \(5, 1, 4\)"),
        (lambda q, k, v, o: (q, k, v[:3], o), r"v: expected shape \(5, 2, 4\)"),
        (lambda q, k, v, o: (q, k, v, o[:, :2]), r"out: expected shape \(5, 4, 4\)"),
    ],
)
def test_attention_shape_errors(c, change, match):
    q, k, v = qkv()
    args = change(q, k, v, np.zeros_like(q))
    with pytest.raises(ValueError, match=match):
        attention(c, *args[:3], 0, args[3])


def test_attention_layer_and_step_errors(c):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="layer 2 out of range for a 2-layer cache"):
        attention(c, q, k, v, 2, np.zeros_like(q))
    c.end_forward()
    with pytest.raises(KVCacheError, match="no forward step in progress"):
        attention(c, q, k, v, 0, np.zeros_like(q))


def test_runtime_does_not_import_the_compiler():
    code = (
        "import sys, llm_deploy.kv_cache; "
        "bad = sorted(m for m in sys.modules if m.startswith('llm_deploy.') and not m.startswith('llm_deploy.kv_cache')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
