"""The HTTP API's request bodies, as pydantic models of OpenAI's: FastAPI validates every request
against them (a mismatch is a 400 that names the field) and `/docs` shows them as they are.

Names, types and ranges follow OpenAI's API reference; vLLM's sampling extras (`top_k`, `min_p`,
`repetition_penalty`, `ignore_eos`, `stop_token_ids`, `include_stop_str_in_output`) are accepted
too. Types are strict (`"0.5"` is not a number) and unknown fields are refused, as OpenAI refuses
them: a misspelt parameter must not be silently ignored. Fields we do not support yet are declared,
so that a request setting them gets a 400 saying so (`UNSUPPORTED`) instead of "unknown field".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TOP_LOGPROBS = 20  # as SamplingParams allows; OpenAI's chat limit
MAX_N = 128  # OpenAI's limit on choices per request

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="Send a last chunk with the request's token usage.")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One turn. Extra fields (`refusal`, `tool_calls: null`, ... as SDKs echo assistant messages
    back) are ignored; `developer` is OpenAI's newer name for `system`."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_unless_assistant(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def to_engine(self) -> dict[str, Any]:
        """The message as the chat template takes it: a role and plain text."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class _Sampling(_Strict):
    """Parameters both endpoints share; None means "the model's default" (its chat_config.json)."""

    model: str | None = Field(None, description="The served model's id (GET /v1/models); may be left out.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=MAX_N, description="Choices to generate for the prompt.")
    stop: str | list[str] | None = Field(None, description="Text that ends a choice (left out of it).")
    seed: int | None = Field(None, description="Makes sampling reproducible.")
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        None, description="Token id (as a string) -> bias added to its logit."
    )
    user: str | None = Field(None, description="Accepted and ignored.")
    # vLLM's extras
    top_k: int | None = Field(None, ge=-1, description="0 or -1: off.")
    min_p: Probability | None = None
    repetition_penalty: float | None = Field(None, gt=0.0)
    ignore_eos: bool | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    include_stop_str_in_output: bool | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    logprobs: bool | None = Field(None, description="Report each generated token's log-probability.")
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Also report this many most likely tokens (needs logprobs).",
    )
    # Not supported yet: a request that sets them gets a 400.
    tools: list[dict[str, Any]] | None = Field(None, description="Not supported yet.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Not supported yet.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted and ignored (there are no tools).")
    functions: list[dict[str, Any]] | None = Field(None, description="Not supported yet.")
    function_call: str | dict[str, Any] | None = Field(None, description="Not supported yet.")
    response_format: dict[str, Any] | None = Field(None, description='Only {"type": "text"}.')


class CompletionRequest(_Sampling):
    """POST /v1/completions (OpenAI's legacy text completions)."""

    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="Text or token ids; one prompt per request."
    )
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Report log-probabilities, and this many top tokens."
    )
    echo: bool | None = Field(None, description="Not supported yet.")
    suffix: str | None = Field(None, description="Not supported yet.")
    best_of: int | None = Field(None, description="Not supported yet.")

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request (a list holding one prompt counts as that prompt)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise ValueError(f"prompt holds {len(p)} prompts; this server takes one prompt per request")
            return p[0]
        return p


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error | authentication_error | server_error")
    param: str | None = Field(None, description="The request field at fault, if one is.")
    code: str | None = Field(
        None, description="e.g. context_length_exceeded, model_not_found, invalid_api_key"
    )


class ErrorResponse(BaseModel):
    """Every error the server answers, as OpenAI's API answers it."""

    error: ErrorDetail


def unsupported_fields(body: BaseModel) -> list[str]:
    """Fields set to something other than what means "off" (those we would otherwise ignore)."""
    off = {"tools": [], "functions": [], "tool_choice": "none", "echo": False, "best_of": 1}
    found = []
    for name in UNSUPPORTED:
        value = getattr(body, name, None)
        if (
            value is None
            or value == off.get(name)
            or (name == "response_format" and value == {"type": "text"})
        ):
            continue
        found.append(name)
    return found


UNSUPPORTED = (
    "tools", "tool_choice", "functions", "function_call", "response_format",
    "echo", "suffix", "best_of",
)  # fmt: skip


def engine_kwargs(body: _Sampling, exclude: set[str]) -> dict[str, Any]:
    """The fields a client set, as keyword arguments for `Engine...create` (unset ones take the
    model's defaults there)."""
    skip = exclude | set(UNSUPPORTED) | {"stream", "stream_options", "model", "user", "parallel_tool_calls"}
    return {k: v for k, v in body.model_dump(exclude_none=True).items() if k not in skip}
