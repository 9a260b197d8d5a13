"""Library functions as the WebGPU device runs them (the VM adapts its extern table through
`WebGPUDevice.adapt_extern`): the KV cache's per-step arrays are uploaded in the step's command
stream; anything without a device version runs on host copies (counted as a fallback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _positions(device: Any) -> Callable[..., None]:
    def positions(cache: Any, ids: Any, out: Any) -> None:
        n = cache.step.num_tokens
        if len(ids) != n:
            raise ValueError(
                f"kv_cache.positions: the step begun by begin_forward has {n} new tokens, "
                f"the model was given {len(ids)} token ids"
            )
        device.write(out, np.asarray(cache.positions, dtype=out.dtype))

    return positions


# extern name -> factory(device) -> fn(*inputs, *outputs)
GPU_EXTERNS: dict[str, Callable[[Any], Callable[..., None]]] = {
    "kv_cache.positions": _positions,
}
