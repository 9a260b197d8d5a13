"""Perplexity of a built model on a text: the quality gate of the quantization formats.

The tokens are scored in chunks through the model's `score` function, one sequence whose KV
cache carries the context from chunk to chunk, so every token is predicted from all the tokens
before it (up to the context window) exactly as generation would see them, at the memory cost of
one chunk's logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_nll(runner, ids: Sequence[int], chunk: int = 256, seq_id: int = 0) -> np.ndarray:
    """-log p(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1, scored `chunk` tokens at a time."""
    if len(ids) > runner.context_window:
        raise ValueError(f"{len(ids)} tokens do not fit the context window of {runner.context_window}")
    runner.add_sequence(seq_id)
    out = []
    try:
        for start in range(0, len(ids) - 1, chunk):
            piece = list(ids[start : start + chunk])
            targets = np.asarray(ids[start + 1 : start + 1 + len(piece)])  # the next token of each
            lp = log_softmax(runner.score(seq_id, piece)[: len(targets)])  # (len(targets), vocab)
            out.append(-lp[np.arange(len(targets)), targets])
    finally:
        runner.remove_sequence(seq_id)
    return np.concatenate(out)


def perplexity(runner, ids: Sequence[int], chunk: int = 256) -> float:
    """exp(mean negative log-likelihood) of `ids` after their first token."""
    return float(np.exp(token_nll(runner, ids, chunk).mean()))
