"""Pieces of the page's runtime (llm_deploy/web/runtime, run under Node: the same module files the
browser loads) against the Python runtime they mirror: symbolic shape expressions, the paged KV
cache's step arrays, safetensors parsing."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from llm_deploy.kv_cache import PagedKVCache
from llm_deploy.kv_cache.externs import kv_step_arrays
from llm_deploy.runtime.symbolic import SymbolicError, compile_expr

HERE = Path(__file__).parent
EXPRS = [
    ("(64 * n + 255) // 256", {"n": 7}),
    ("2 * ((n + 31) // 32)", {"n": 33}),
    ("m // 4 + m % 4", {"m": -9}),  # Python's floor division and modulo on negatives
    ("-(n - 10) // 3", {"n": 2}),
    ("min(n, 16) * max(kv_pages, 1)", {"n": 40, "kv_pages": 3}),
    ("n * 4 - b", {"n": 3, "b": 5}),
    (12, {}),
    ("n + q", {"n": 1}),  # an unbound variable: an error
    ("n ** 2", {"n": 3}),  # not integer shape arithmetic: an error
]
CONFIG = {"numLayers": 2, "numKvHeads": 2, "headDim": 4, "pageSize": 4, "numPages": 12, "dtype": "float32"}
OPS = [
    ["add", 0], ["forward", [0], [6]], ["forward", [0], [1]], ["forward", [0], [1]], ["add", 1],
    ["forward", [1, 0], [9, 1]], ["popn", 0, 5], ["forward", [0, 1], [3, 1]], ["remove", 1],
    ["forward", [0], [2]],
]  # fmt: skip


def run_node(request: dict) -> dict:
    proc = subprocess.run(
        ["node", str(HERE / "runtime_units.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def python_steps() -> list[dict]:
    cache = PagedKVCache(2, 2, 4, page_size=4, num_pages=12)
    steps = []
    for op, *args in OPS:
        if op == "add":
            cache.add_sequence(args[0])
        elif op == "popn":
            cache.popn(*args)
        elif op == "remove":
            cache.remove_sequence(args[0])
        else:
            step = cache.begin_forward(*args)
            positions, slots, token_seq, indptr, indices = (a.tolist() for a in kv_step_arrays(cache))
            steps.append((positions, slots, token_seq, indptr, indices, step.last_token_indices.tolist()))
            cache.end_forward()
    return steps


def test_runtime_pieces_in_js_match_python():
    tensors = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "ids": np.array([3, -1, 7], dtype=np.int32),
        "slots": np.array([5, 2**40], dtype=np.int64),
        "half": np.array([0.5, -2.25], dtype=np.float16),
        "packed": np.arange(5, dtype=np.uint8),
    }
    request = {
        "exprs": EXPRS,
        "kv": {"config": CONFIG, "ops": OPS},
        "safetensors": base64.b64encode(save(tensors)).decode(),
    }
    out = run_node(request)

    for (text, env), js in zip(EXPRS, out["exprs"], strict=True):
        try:
            expected = compile_expr(text)(env)
        except SymbolicError:
            assert isinstance(js, str) and js.startswith("error:"), (text, js)
        else:
            assert js == expected, text

    for js, (positions, slots, token_seq, indptr, indices, last) in zip(
        out["steps"], python_steps(), strict=True
    ):
        assert js["positions"] == positions and js["appendSlots"] == slots and js["tokenSeq"] == token_seq
        assert js["pageIndptr"] == indptr and js["lastTokenIndices"] == last
        # kernels read page_indices only through page_indptr: the rest is padding
        total = indptr[-1]
        assert js["pageIndices"][:total] == indices[:total] and len(js["pageIndices"]) >= max(total, 16)

    for name, array in tensors.items():
        js = out["tensors"][name]
        assert js["dtype"] == array.dtype.name and js["shape"] == list(array.shape)
        assert bytes.fromhex(js["hex"]) == array.tobytes()
