"""Statistics: per request (timings, token counts) and for the engine (load, pages, work done).

Request timings are perf_counter differences, taken by the scheduler thread as it acts; the engine
snapshot is taken after every step, so reading it never waits for a forward.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestStats:
    """Timings of one request, in seconds since it arrived (perf_counter based)."""

    queue_s: float  # arrival -> admitted (first scheduled)
    ttft_s: float  # arrival -> first token
    prefill_s: float  # admitted -> first token
    decode_s: float  # first token -> finished
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache (not computed)
    completion_tokens: int
    preemptions: int

    @property
    def prefill_tokens_per_s(self) -> float:
        computed = self.prompt_tokens - self.cached_tokens
        return computed / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # The first token of each choice comes out of prefill; decode steps make the rest.
        return max(self.completion_tokens - 1, 0) / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "queue_s": self.queue_s,
            "ttft_s": self.ttft_s,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "preemptions": self.preemptions,
        }


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine, taken by the scheduler thread after every step."""

    running_requests: int
    waiting_requests: int
    running_sequences: int
    num_pages: int
    pages_used: int  # prefix cache pages included
    pages_free: int
    prefix_cache_entries: int
    prefix_cache_pages: int
    prompt_tokens: int  # prompt tokens computed by prefill (recomputation after preemption included)
    cached_tokens: int  # tokens taken from cached sequences instead of computed
    generated_tokens: int
    prefill_steps: int
    decode_steps: int
    decode_batch_sizes: dict[int, int]  # sequences in a decode forward -> how many such steps
    prefill_batch_sizes: dict[int, int]  # sequences in a prefill forward -> how many such steps
    preemptions: int
    finished_requests: int
    aborted_requests: int
    failed_requests: int
    idle: bool

    @property
    def max_decode_batch(self) -> int:
        return max(self.decode_batch_sizes, default=0)

    @property
    def mean_decode_batch(self) -> float:
        steps = sum(self.decode_batch_sizes.values())
        return sum(b * n for b, n in self.decode_batch_sizes.items()) / steps if steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return d | {"max_decode_batch": self.max_decode_batch, "mean_decode_batch": self.mean_decode_batch}


@dataclass
class Counters:
    """What the scheduler counts as it goes; `EngineCore` snapshots them into `EngineStats`."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_steps: int = 0
    decode_steps: int = 0
    decode_batch_sizes: Counter = field(default_factory=Counter)
    prefill_batch_sizes: Counter = field(default_factory=Counter)
    preemptions: int = 0
    finished: int = 0  # outcomes of requests, as `_finish` names them
    aborted: int = 0
    failed: int = 0
