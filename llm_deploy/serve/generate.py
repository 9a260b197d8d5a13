"""One sequence, generated token by token: the small loop behind `chat --prompt` and `bench`.

The serving engine batches many sequences; this is the same steps for one, as free functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from llm_deploy.runtime.model_runner import ModelRunner
from llm_deploy.serve.sampler import Sampler, SamplingParams, SamplingState
from llm_deploy.serve.stop import TextStream


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tps(self) -> float:
        # The first token comes from prefill; decode steps produce the rest.
        steps = max(self.completion_tokens - 1, 0)
        return steps / self.decode_s if self.decode_s else 0.0


def prefill_chunked(runner: ModelRunner, seq_id: int, prompt_ids: Sequence[int], chunk: int):
    """Prefill in chunks of at most `chunk` tokens; the last chunk's logits (1, vocab)."""
    logits = None
    for start in range(0, len(prompt_ids), chunk):
        logits = runner.prefill([seq_id], [list(prompt_ids[start : start + chunk])])
    return logits


def generate(
    runner: ModelRunner,
    tokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    stats: GenerationStats | None = None,
    seq_id: int = 0,
) -> Iterator[str]:
    """Yield text deltas for `prompt_ids`; `stats` is filled as it goes. Frees the sequence's pages."""
    stats = stats if stats is not None else GenerationStats()
    if not prompt_ids:
        raise ValueError("the prompt is empty: nothing to condition on")
    window = runner.context_window
    max_tokens = params.max_tokens or window - len(prompt_ids)
    if len(prompt_ids) + max_tokens > window:
        max_tokens = window - len(prompt_ids)
    if max_tokens < 1:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context window is {window}")
    params = SamplingParams(**{**params.__dict__, "max_tokens": max_tokens})
    stream = TextStream(tokenizer, params, runner.stop_token_ids, prompt_ids)
    state = SamplingState.new(params, prompt_ids)
    sampler = Sampler()
    stats.prompt_tokens = len(prompt_ids)
    runner.add_sequence(seq_id)
    try:
        t0 = time.perf_counter()
        logits = prefill_chunked(runner, seq_id, prompt_ids, runner.prefill_chunk)
        stats.prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        while True:
            token = sampler.sample(logits, [state])[0].token
            stats.token_ids.append(token)
            stats.completion_tokens += 1
            step = stream.step(token)
            if step.text:
                yield step.text
            if step.finish_reason is not None:
                stats.finish_reason = step.finish_reason
                break
            logits = runner.decode([seq_id], [token])
        stats.decode_s = time.perf_counter() - t1
    finally:
        runner.remove_sequence(seq_id)
