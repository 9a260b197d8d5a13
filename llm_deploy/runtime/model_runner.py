"""Runs a loaded artifact's model functions over a paged KV cache: the engine's only contact
with the compiled model.

    runner = ModelRunner(load_artifact("dist/llama"))
    runner.add_sequence(0)
    logits = runner.prefill([0], [prompt_ids])     # (1, vocab): the last token's logits
    logits = runner.decode([0], [next_id])          # (1, vocab)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm_deploy.kv_cache import PagedKVCache
from llm_deploy.runtime.artifact import Artifact
from llm_deploy.runtime.vm import Device, VirtualMachine


class ModelRunner:
    """The model's functions over one KV pool.

    The pool holds `num_pages` pages, or enough for `max_tokens` tokens (one sequence of that
    length), or by default one full context window of the build. Its pages are zeroed lazily by
    the OS (untouched pages take no memory), so a large default costs address space, not RSS;
    callers that know their need (a benchmark, an engine's batch) size it to that.
    """

    def __init__(
        self,
        artifact: Artifact,
        num_pages: int | None = None,
        max_tokens: int | None = None,
        vm: VirtualMachine | None = None,
    ):
        self.artifact = artifact
        cfg, opts = artifact.config, artifact.build_options
        self.vocab_size = cfg["vocab_size"]
        self.context_window = opts["context_window"]
        self.prefill_chunk = opts["prefill_chunk"]
        self.stop_token_ids = tuple(artifact.chat_config.get("stop_token_ids", ()))
        page_size = opts["kv_page_size"]
        if num_pages is not None and max_tokens is not None:
            raise ValueError("ModelRunner: give num_pages or max_tokens, not both")
        if max_tokens is not None and not 1 <= max_tokens <= self.context_window:
            raise ValueError(
                f"ModelRunner: max_tokens must be in 1..{self.context_window} (the context window), "
                f"got {max_tokens}"
            )
        # +1: a fork's copy-on-write of a shared last page needs one spare page.
        pages = num_pages or -(-(max_tokens or self.context_window) // page_size) + 1
        # Where the kernels run: the CPU, or the device a GPU target's kernels were loaded on,
        # which keeps the weights and the KV pools (and may need its own kind of cache).
        self.device = getattr(artifact.executable.kernels, "device", None) or Device()
        self.cache = getattr(self.device, "kv_cache_type", PagedKVCache)(
            cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_dim"],
            page_size=page_size, num_pages=pages, dtype=opts["kv_dtype"],
        )  # fmt: skip
        # `vm`: another VM over the artifact's program (tests and benchmarks swap kernels).
        self.vm = vm or artifact.executable.vm(device=self.device, fast_step=artifact.fast_step)
        self._prefill, self._decode, self._score = self.vm["prefill"], self.vm["decode"], self.vm["score"]
        self.params = [self.device.from_host(p, persistent=True) for p in artifact.params]  # once

    # -- sequences
    def add_sequence(self, seq_id: int) -> None:
        self.cache.add_sequence(seq_id)

    def remove_sequence(self, seq_id: int) -> None:
        self.cache.remove_sequence(seq_id)

    def fork_sequence(self, parent: int, child: int) -> None:
        self.cache.fork_sequence(parent, child)

    # -- forward steps
    def prefill(self, seq_ids: Sequence[int], token_lists: Sequence[Sequence[int]]) -> np.ndarray:
        """Append each sequence's tokens; logits of each sequence's last new token: (b, vocab)."""
        ids = np.fromiter((t for toks in token_lists for t in toks), dtype=np.int32)
        step = self.cache.begin_forward(list(seq_ids), [len(t) for t in token_lists])
        return self._run(self._prefill, ids, np.ascontiguousarray(step.last_token_indices, dtype=np.int32))

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """Append one token to each sequence; their next-token logits: (b, vocab)."""
        ids = np.asarray(tokens, dtype=np.int32)
        self.cache.begin_forward(list(seq_ids), [1] * len(ids))
        return self._run(self._decode, ids)

    def score(self, seq_id: int, tokens: Sequence[int]) -> np.ndarray:
        """Append tokens to one sequence; the logits after every one of them: (n, vocab)."""
        ids = np.asarray(tokens, dtype=np.int32)
        self.cache.begin_forward([seq_id], [len(ids)])
        return self._run(self._score, ids)

    def _run(self, fn, *inputs) -> np.ndarray:
        try:
            inputs = [self.device.from_host(a) for a in inputs]
            out = self.device.to_host(fn(*inputs, self.cache, *self.params))  # the step's one readback
        except BaseException:
            self.cache.cancel_forward()
            raise
        self.cache.end_forward()
        return out
