"""The server's Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).

Counters and latency histograms are kept by the server as requests end; the engine's load (queue,
running sequences, KV pages) is read from its last step snapshot when scraped. Written by hand:
a dozen lines of format do not need a client library and its process-global registry.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from llm_deploy.serve.stats import EngineStats

PREFIX = "llm_deploy_"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for le, n in zip([*map(_num, self.buckets), "+Inf"], self.counts):
            running += n
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        return [*out, f"{name}_sum {_num(self.total)}", f"{name}_count {running}"]


# name -> (help, EngineStats field): the engine's state at its last step.
ENGINE_GAUGES = {
    "num_requests_running": ("Requests admitted to the batch.", "running_requests"),
    "num_requests_waiting": ("Requests queued for admission.", "waiting_requests"),
    "num_sequences_running": ("Sequences (choices) in the batch.", "running_sequences"),
    "kv_pages_total": ("KV cache pages in the pool.", "num_pages"),
    "kv_pages_used": ("KV cache pages in use (prefix cache included).", "pages_used"),
    "kv_pages_free": ("KV cache pages free.", "pages_free"),
    "prefix_cache_pages": ("KV cache pages held by cached prefixes.", "prefix_cache_pages"),
}
ENGINE_COUNTERS = {
    "prompt_tokens_computed_total": ("Prompt tokens computed by prefill.", "prompt_tokens"),
    "prompt_tokens_cached_total": ("Prompt tokens served from the prefix cache.", "cached_tokens"),
    "generation_tokens_total": ("Tokens generated.", "generated_tokens"),
    "preemptions_total": ("Requests preempted for lack of KV pages.", "preemptions"),
}


@dataclass
class Metrics:
    """What the server records; `render` adds the engine's snapshot and writes the text format."""

    requests: Counter = field(default_factory=Counter)  # (endpoint, status code) -> answered
    prompt_tokens: int = 0  # as billed in usage (cached ones included)
    completion_tokens: int = 0
    ttft: Histogram = field(default_factory=Histogram)
    e2e: Histogram = field(default_factory=Histogram)
    queue: Histogram = field(default_factory=Histogram)

    def request_done(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def usage(self, prompt_tokens: int, completion_tokens: int, extra: dict | None, e2e_s: float) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.e2e.observe(e2e_s)
        if extra:
            self.ttft.observe(extra["ttft_s"])
            self.queue.observe(extra["queue_s"])

    def render(self, stats: EngineStats, in_flight: int) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, lines: list[str]) -> None:
            out.extend([f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}", *lines])

        metric(
            "requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status code.",
            [
                f'{PREFIX}requests_total{{endpoint="{e}",status="{s}"}} {n}'
                for (e, s), n in sorted(self.requests.items())
            ],
        )
        metric(
            "requests_in_flight",
            "gauge",
            "Completion requests being answered.",
            [f"{PREFIX}requests_in_flight {in_flight}"],
        )
        metric("usage_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", [f"{PREFIX}usage_prompt_tokens_total {self.prompt_tokens}"])  # fmt: skip
        metric("usage_completion_tokens_total", "counter", "Tokens generated for finished requests.", [f"{PREFIX}usage_completion_tokens_total {self.completion_tokens}"])  # fmt: skip
        for name, (help_text, attr) in ENGINE_GAUGES.items():
            metric(name, "gauge", help_text, [f"{PREFIX}{name} {getattr(stats, attr)}"])
        for name, (help_text, attr) in ENGINE_COUNTERS.items():
            metric(name, "counter", help_text, [f"{PREFIX}{name} {getattr(stats, attr)}"])
        for name, hist, help_text in (
            ("time_to_first_token_seconds", self.ttft, "Arrival to first token."),
            ("request_latency_seconds", self.e2e, "Arrival to last token, as the server saw it."),
            ("queue_time_seconds", self.queue, "Arrival to admission into the batch."),
        ):
            metric(name, "histogram", help_text, hist.lines(PREFIX + name))
        return "\n".join(out) + "\n"


def _num(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)
