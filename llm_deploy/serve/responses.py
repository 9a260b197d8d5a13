"""OpenAI-shaped response objects: what `Engine.chat.completions.create` and
`Engine.completions.create` return, field for field as the OpenAI API (and its Python SDK) names
them, so code written against `openai` reads them unchanged (`resp.choices[0].message.content`).

`to_dict()` gives the JSON body an OpenAI server sends (the HTTP layer serializes it as it is).
Extra fields follow vLLM and MLC-LLM: `stop_reason` on choices (the stop string or token id that
matched), `usage.extra` (time to first token, prefill and decode tokens/s).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


class _Json:
    _omit_if_none: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if not (f.name in self._omit_if_none and getattr(self, f.name) is None)
        }


def _plain(value: Any) -> Any:
    if isinstance(value, _Json):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- usage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTokensDetails(_Json):
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


@dataclass(frozen=True)
class Usage(_Json):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = field(default_factory=PromptTokensDetails)
    extra: dict[str, float] | None = None  # MLC-LLM: ttft_s, prefill/decode tokens per second, ...
    _omit_if_none: ClassVar[tuple[str, ...]] = ("extra",)


# -- logprobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopLogprob(_Json):
    token: str
    logprob: float
    bytes: list[int] | None = None


@dataclass(frozen=True)
class TokenLogprob(_Json):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class ChoiceLogprobs(_Json):
    """Chat logprobs: one entry per generated token."""

    content: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class CompletionLogprobs(_Json):
    """Legacy completions logprobs: parallel lists over the generated tokens."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = field(default_factory=list)


# -- chat ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage(_Json):
    role: str
    content: str | None


@dataclass(frozen=True)
class ChatChoice(_Json):
    index: int
    message: ChatMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class ChatCompletion(_Json):
    id: str
    choices: list[ChatChoice]
    created: int
    model: str
    usage: Usage | None = None
    object: str = "chat.completion"
    system_fingerprint: str | None = None


@dataclass(frozen=True)
class ChoiceDelta(_Json):
    role: str | None = None
    content: str | None = None
    _omit_if_none: ClassVar[tuple[str, ...]] = ("role", "content")


@dataclass(frozen=True)
class ChatChunkChoice(_Json):
    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class ChatCompletionChunk(_Json):
    id: str
    choices: list[ChatChunkChoice]
    created: int
    model: str
    usage: Usage | None = None  # only on the last chunk, with stream_options={"include_usage": True}
    object: str = "chat.completion.chunk"
    system_fingerprint: str | None = None


# -- completions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionChoice(_Json):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class Completion(_Json):
    """A whole completion, or (streaming) one chunk of it: OpenAI uses the same object for both."""

    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    usage: Usage | None = None
    object: str = "text_completion"
    system_fingerprint: str | None = None
