"""Library functions as the WebGPU device runs them (`WebGPUDevice.adapt_extern` swaps them into
the VM's table), and the paged KV cache kept on the device.

The paged attention kernels read and write the cache's pools and step arrays. On the GPU the
pools live in device buffers for the cache's whole life (written only by the kernels), and the
step arrays (page tables, positions: a few ints per token) are uploaded once per step, in the
step's command stream. The page table itself stays on the host. The one thing the host does to
pool contents, copying a shared partial page before a forked sequence appends to it, is recorded
by `DevicePagedKVCache` and replayed on the device pools at the next step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from llm_deploy.kv_cache import PagedKVCache


class DevicePagedKVCache(PagedKVCache):
    """A paged KV cache whose pools a device holds: page copies are also queued for it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.page_copies: list[tuple[int, int, int]] = []  # (from page, to page, tokens)

    def _copy_last_page(self, seq: Any) -> None:
        old, filled = seq.pages[-1], seq.length % self.page_size
        super()._copy_last_page(seq)
        self.page_copies.append((old, seq.pages[-1], filled))


class _Pools:
    """Each cache's per-layer (k, v) pools on one device, created on first use."""

    def __init__(self, device: Any):
        self.device = device
        self.by_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def layer(self, cache: PagedKVCache, layer: int) -> tuple[Any, Any]:
        layers = self.by_cache.get(cache)
        if layers is None:
            layers = self.by_cache[cache] = {}
        if layer not in layers:
            up = self.device.from_host
            layers[layer] = (
                up(cache.k_pools[layer], persistent=True),
                up(cache.v_pools[layer], persistent=True),
            )
        return layers[layer]

    def replay_copies(self, cache: PagedKVCache) -> None:
        copies = getattr(cache, "page_copies", None)
        if not copies:
            return
        for k_pool, v_pool in self.by_cache.get(cache, {}).values():
            page_bytes = k_pool.nbytes // k_pool.shape[0]
            token_bytes = page_bytes // k_pool.shape[1]
            for src, dst, tokens in copies:
                for pool in (k_pool, v_pool):
                    self.device.copy(pool, src * page_bytes, pool, dst * page_bytes, tokens * token_bytes)
        copies.clear()


def _step_arrays(device: Any) -> Callable[..., tuple]:
    pools = _device_pools(device)

    def step_arrays(cache: PagedKVCache) -> tuple:
        from llm_deploy.kv_cache.externs import kv_step_arrays

        pools.replay_copies(cache)
        return tuple(device.from_host(np.ascontiguousarray(a)) for a in kv_step_arrays(cache))

    return step_arrays


def _layer_pools(device: Any) -> Callable[..., tuple]:
    pools = _device_pools(device)

    def layer_pools(cache: PagedKVCache, layer: int) -> tuple:
        layer = int(layer)
        if not 0 <= layer < cache.num_layers:
            raise ValueError(
                f"kv_cache.layer_pools: layer {layer} out of range for a {cache.num_layers}-layer cache"
            )
        return pools.layer(cache, layer)

    return layer_pools


def _positions(device: Any) -> Callable[..., None]:
    def positions(cache: PagedKVCache, ids: Any, out: Any) -> None:
        n = cache.step.num_tokens
        if len(ids) != n:
            raise ValueError(
                f"kv_cache.positions: the step begun by begin_forward has {n} new tokens, "
                f"the model was given {len(ids)} token ids"
            )
        device.write(out, np.asarray(cache.positions, dtype=out.dtype))

    return positions


def _device_pools(device: Any) -> _Pools:
    pools = getattr(device, "_kv_pools", None)
    if pools is None:
        pools = device._kv_pools = _Pools(device)
    return pools


# extern name -> factory(device) -> the device's function
GPU_EXTERNS: dict[str, Callable[[Any], Callable[..., Any]]] = {
    "kv_cache.positions": _positions,
    "kv_cache.step_arrays": _step_arrays,
    "kv_cache.layer_pools": _layer_pools,
}
