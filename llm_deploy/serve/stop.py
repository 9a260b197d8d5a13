"""When a sequence stops, and what text it may stream before it knows.

A stop string can arrive split over several tokens ("<|im" + "_end|>"), so text that could be the
start of a stop string is held back until the next tokens decide: it is released when it no longer
can be, and dropped when the stop string completes. The stream therefore never shows part of a stop
string, and the output is cut right before the first stop string, the same however the text was
split into tokens: the stop is where, reading character by character, a stop string first ends
(earliest start among those ending there).

Finish reasons follow OpenAI: "stop" for a stop string, a stop token id, or EOS (unless
`ignore_eos`); "length" when `max_tokens` tokens were generated. A stop token's own text is left
out of the output (vLLM's default), as is a stop string's, unless `include_stop_str_in_output`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from .detokenizer import Decoder, Detokenizer
from .sampler import SamplingParams


@dataclass(frozen=True)
class StopStep:
    """The text a step may stream, and why the sequence finished (None while it goes on).

    `stop_reason` is the stop string or stop token id that matched (vLLM's field), None for EOS
    and for "length".
    """

    text: str
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class StopChecker:
    """Per sequence: each step takes the token id and its decoded text delta."""

    def __init__(self, params: SamplingParams, eos_token_ids: Collection[int] = ()) -> None:
        self.params = params
        self.stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else frozenset(int(t) for t in eos_token_ids)
        )
        self.num_tokens = 0
        self.finish_reason: str | None = None
        self._held = ""  # text that could still be the start of a stop string
        self._longest = max((len(s) for s in params.stop), default=0)

    def is_stop_token(self, token_id: int) -> bool:
        return token_id in self.stop_ids

    def is_last_by_length(self) -> bool:
        """Whether the next token is the last one `max_tokens` allows."""
        return self.params.max_tokens is not None and self.num_tokens + 1 >= self.params.max_tokens

    def step(self, token_id: int, text: str) -> StopStep:
        if self.finish_reason is not None:
            raise RuntimeError(f"sequence already finished ({self.finish_reason}); no more tokens")
        self.num_tokens += 1
        include = self.params.include_stop_str_in_output
        if self.is_stop_token(token_id):
            # EOS is in stop_ids only when not ignored; report the explicit stop id, not EOS.
            reason = token_id if token_id in self.params.stop_token_ids else None
            return self._finish(self._held + (text if include else ""), "stop", reason)
        buffer = self._held + text
        match = self._find_stop(buffer)
        if match is not None:
            start, stop = match
            return self._finish(buffer[: start + len(stop) if include else start], "stop", stop)
        if self.params.max_tokens is not None and self.num_tokens >= self.params.max_tokens:
            return self._finish(buffer, "length", None)
        keep = self._held_back(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return StopStep(buffer[: len(buffer) - keep])

    def finish(self, reason: str = "abort") -> StopStep:
        """End the sequence from outside (cancelled, out of room): the held text is released."""
        if self.finish_reason is not None:
            return StopStep("", self.finish_reason, None)
        return self._finish(self._held, reason, None)

    def _finish(self, text: str, reason: str, stop_reason: str | int | None) -> StopStep:
        self.finish_reason = reason
        self._held = ""
        return StopStep(text, reason, stop_reason)

    def _find_stop(self, buffer: str) -> tuple[int, str] | None:
        """The stop string that ends first in `buffer` (ties: the one starting first), and where."""
        best: tuple[int, int, str] | None = None
        for s in self.params.stop:
            i = buffer.find(s)
            if i >= 0 and (best is None or (i + len(s), i) < best[:2]):
                best = (i + len(s), i, s)
        return None if best is None else (best[1], best[2])

    def _held_back(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop string.

        No stop string can start before it: the text from such a start to the end of the buffer
        would be a longer suffix that is a prefix of a stop string.
        """
        for n in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[len(buffer) - n :]
            if any(s.startswith(tail) for s in self.params.stop):
                return n
        return 0


class TextStream:
    """Token ids in, streamable text and the finish reason out: a `Detokenizer` and a `StopChecker`
    for one sequence, wired so the text of the final step also carries any incomplete character the
    detokenizer still held (as U+FFFD), and a stop token's text is never decoded into the output.
    """

    def __init__(
        self,
        tokenizer: Decoder | Callable[[list[int]], str],
        params: SamplingParams,
        eos_token_ids: Collection[int] = (),
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self.detokenizer = Detokenizer(tokenizer, prompt_ids)
        self.stop = StopChecker(params, eos_token_ids)

    @property
    def finish_reason(self) -> str | None:
        return self.stop.finish_reason

    def step(self, token_id: int) -> StopStep:
        if self.stop.is_stop_token(token_id) and not self.stop.params.include_stop_str_in_output:
            # The stop token is not decoded; bytes still pending before it come after the held text.
            pending = self.detokenizer.finish()
            step = self.stop.step(token_id, "")
            return StopStep(step.text + pending, step.finish_reason, step.stop_reason)
        text = self.detokenizer.step(token_id)
        if self.stop.is_stop_token(token_id) or self.stop.is_last_by_length():
            text += self.detokenizer.finish()
        return self.stop.step(token_id, text)

    def finish(self, reason: str = "abort") -> StopStep:
        """End from outside (cancelled, out of room): held text and pending bytes are released."""
        if self.stop.finish_reason is not None:
            return StopStep("", self.stop.finish_reason, None)
        step = self.stop.finish(reason)
        return StopStep(step.text + self.detokenizer.finish(), step.finish_reason, None)
