"""The Python API: `Engine` and `AsyncEngine`, OpenAI-shaped, as MLC-LLM's MLCEngine/AsyncMLCEngine.

    from llm_deploy import Engine
    engine = Engine("llama")        # an artifact folder, a preset name, an HF folder or a GGUF file
    resp = engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=32)
    print(resp.choices[0].message.content, resp.usage)
    for chunk in engine.chat.completions.create(messages=..., stream=True):
        print(chunk.choices[0].delta.content or "", end="")
    engine.completions.create(prompt="The capital of France is", max_tokens=8, temperature=0)

    engine = AsyncEngine("llama")   # the same, with coroutines:
    resp = await engine.chat.completions.create(messages=...)
    async for chunk in await engine.chat.completions.create(messages=..., stream=True): ...

Both take the OpenAI parameters (temperature, top_p, n, stop, max_tokens / max_completion_tokens,
seed, logprobs, top_logprobs, logit_bias, frequency_penalty, presence_penalty, stream_options) and
vLLM's extras (top_k, min_p, repetition_penalty, ignore_eos, stop_token_ids,
include_stop_str_in_output), plus `request_id`. Parameters left out take the artifact's defaults
(`chat_config.json` "default_sampling"), as MLC-LLM does. A stream that is closed early, or whose
task is cancelled, cancels its request. This layer only translates: the engine does the work.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_deploy.serve.engine import EngineCore, EngineStats
from llm_deploy.serve.request import RequestOutput
from llm_deploy.serve.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChoiceDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llm_deploy.serve.sampler import SampleResult, SamplingParams

DEFAULT_CONTEXTS = 4  # default KV pool: this many full context windows of pages

_SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))
# OpenAI parameters shared by both endpoints, and vLLM's extras; all map 1:1 onto SamplingParams.
_COMMON = frozenset(
    {"temperature", "top_p", "n", "stop", "max_tokens", "seed", "logit_bias"}
    | {"frequency_penalty", "presence_penalty", "top_k", "min_p", "repetition_penalty"}
    | {"ignore_eos", "stop_token_ids", "include_stop_str_in_output"}
)
_ACCEPTED_AND_IGNORED = frozenset({"user", "model", "stream_options", "request_id"})
# Accepted only at the value that means "off".
_OFF_ONLY = {
    "chat": {"tools": None, "tool_choice": None, "response_format": None, "functions": None},
    "completion": {"echo": False, "suffix": None, "best_of": None},
}


class Engine:
    """An engine over one model, served by a background scheduler thread; see the module docstring.

    `model`: an artifact folder, a loaded `Artifact`, or anything `llm-deploy build` takes (built
    once into the artifact cache). The KV pool is `num_pages` pages, or what `kv_cache_bytes` buys,
    or DEFAULT_CONTEXTS full context windows. `max_num_seqs` caps a decode batch;
    `prefix_cache_entries=0` turns prefix reuse off.
    """

    def __init__(
        self,
        model: Any = "llama",
        *,
        device: str | None = None,
        quantization: str | None = None,
        num_pages: int | None = None,
        kv_cache_bytes: int | None = None,
        max_num_seqs: int = 64,
        prefix_cache_entries: int = 16,
        num_threads: int | None = None,
    ) -> None:
        from llm_deploy.runtime.model_runner import ModelRunner

        self.artifact = _load_artifact(model, device, quantization, num_threads)
        runner = ModelRunner(self.artifact, num_pages=_pool_pages(self.artifact, num_pages, kv_cache_bytes))
        self.tokenizer = self.artifact.tokenizer
        self.model = self.artifact.manifest.get("model") or str(model)
        self.core = EngineCore(
            runner, self.tokenizer, max_num_seqs=max_num_seqs, prefix_cache_entries=prefix_cache_entries
        )
        defaults = self.artifact.chat_config.get("default_sampling", {})
        self.default_sampling = {k: v for k, v in defaults.items() if k in _SAMPLING_FIELDS}
        self._finalizer = weakref.finalize(self, self.core.close)
        self.chat = _Namespace(completions=self._chat_completions())
        self.completions = self._completions()

    def _chat_completions(self) -> ChatCompletions:
        return ChatCompletions(self)

    def _completions(self) -> Completions:
        return Completions(self)

    def stats(self) -> EngineStats:
        return self.core.stats()

    def close(self) -> None:
        """Stop the scheduler thread; unfinished requests fail. Also done when the engine is
        garbage collected."""
        self._finalizer()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- request translation (shared by both endpoints, sync and async)

    def _prepare(self, kind: str, prompt_ids: list[int], kwargs: dict[str, Any]) -> _Prepared:
        for name, off in _OFF_ONLY[kind].items():
            value = kwargs.pop(name, off)
            if value != off:
                raise ValueError(f"{name}={value!r} is not supported by this engine")
        if kind == "chat":
            allowed = _COMMON | {"logprobs", "top_logprobs", "max_completion_tokens"}
        else:
            allowed = _COMMON | {"logprobs"}
        unknown = sorted(set(kwargs) - allowed - _ACCEPTED_AND_IGNORED)
        if unknown:
            raise TypeError(f"create() got unexpected keyword arguments: {', '.join(unknown)}")
        given = {k: v for k, v in kwargs.items() if v is not None and k in allowed}
        if "max_completion_tokens" in given:
            given["max_tokens"] = given.pop("max_completion_tokens")
        if kind == "completion" and "logprobs" in given:  # legacy: an int, how many top logprobs
            given["top_logprobs"] = int(given["logprobs"])
            given["logprobs"] = True
        params = SamplingParams(**(self.default_sampling | given))
        stream_options = kwargs.get("stream_options") or {}
        return _Prepared(
            kind=kind,
            prompt_ids=prompt_ids,
            params=params,
            request_id=kwargs.get("request_id") or uuid.uuid4().hex,
            model=kwargs.get("model") or self.model,
            include_usage=bool(stream_options.get("include_usage", False)),
            created=int(time.time()),
        )

    def _chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        if not messages:
            raise ValueError("messages is empty: a chat needs at least one message")
        return self.tokenizer.apply_chat_template([_plain_message(m) for m in messages])

    def _text_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        ids = list(prompt)
        if not all(isinstance(t, int) for t in ids):
            raise ValueError("prompt must be a string or a list of token ids (one prompt per request)")
        return ids


class AsyncEngine(Engine):
    """`Engine` for asyncio code: `create` is a coroutine; with stream=True it returns an async
    iterator of chunks. The scheduler still runs in its own thread, so the event loop never blocks."""

    def _chat_completions(self) -> AsyncChatCompletions:  # type: ignore[override]
        return AsyncChatCompletions(self)

    def _completions(self) -> AsyncCompletions:  # type: ignore[override]
        return AsyncCompletions(self)

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Namespace:
    completions: Any


@dataclass(frozen=True)
class _Prepared:
    kind: str  # "chat" | "completion"
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    model: str
    include_usage: bool
    created: int


# -- the endpoints ---------------------------------------------------------------------------------


class ChatCompletions:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self, *, messages: Sequence[Mapping[str, Any]], stream: bool = False, **kwargs: Any
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        prep = self._engine._prepare("chat", self._engine._chat_prompt(messages), kwargs)
        return _run(self._engine, prep, stream)


class Completions:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self, *, prompt: str | Sequence[int], stream: bool = False, **kwargs: Any
    ) -> Completion | Iterator[Completion]:
        prep = self._engine._prepare("completion", self._engine._text_prompt(prompt), kwargs)
        return _run(self._engine, prep, stream)


class AsyncChatCompletions(ChatCompletions):
    async def create(  # type: ignore[override]
        self, *, messages: Sequence[Mapping[str, Any]], stream: bool = False, **kwargs: Any
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        prep = self._engine._prepare("chat", self._engine._chat_prompt(messages), kwargs)
        return await _arun(self._engine, prep, stream)


class AsyncCompletions(Completions):
    async def create(  # type: ignore[override]
        self, *, prompt: str | Sequence[int], stream: bool = False, **kwargs: Any
    ) -> Completion | AsyncIterator[Completion]:
        prep = self._engine._prepare("completion", self._engine._text_prompt(prompt), kwargs)
        return await _arun(self._engine, prep, stream)


def _run(engine: Engine, prep: _Prepared, stream: bool) -> Any:
    handle = engine.core.submit(prep.prompt_ids, prep.params, prep.request_id)
    fmt = _Formatter(engine, prep)
    if stream:
        return _chunks(handle, fmt)
    for out in handle:
        fmt.add(out)
    return fmt.result()


def _chunks(handle: Any, fmt: _Formatter) -> Iterator[Any]:
    try:
        yield from fmt.start()
        for out in handle:
            yield from fmt.chunks(out)
    finally:
        handle.cancel()  # a no-op once finished


async def _arun(engine: Engine, prep: _Prepared, stream: bool) -> Any:
    handle = engine.core.submit_async(prep.prompt_ids, prep.params, prep.request_id)
    fmt = _Formatter(engine, prep)
    if stream:
        return _achunks(handle, fmt)
    try:
        async for out in handle:
            fmt.add(out)
    finally:
        handle.cancel()  # the task was cancelled while waiting
    return fmt.result()


async def _achunks(handle: Any, fmt: _Formatter) -> AsyncIterator[Any]:
    try:
        for chunk in fmt.start():
            yield chunk
        async for out in handle:
            for chunk in fmt.chunks(out):
                yield chunk
    finally:
        handle.cancel()


# -- engine outputs -> OpenAI objects ---------------------------------------------------------------


@dataclass
class _Choice:
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: list[SampleResult] = dataclasses.field(default_factory=list)


class _Formatter:
    """Accumulates a request's outputs into its final response, or turns each into stream chunks."""

    def __init__(self, engine: Engine, prep: _Prepared) -> None:
        self.tokenizer = engine.tokenizer
        self.prep = prep
        self.choices = [_Choice() for _ in range(prep.params.n)]
        self.usage: Usage | None = None
        prefix = "chatcmpl-" if prep.kind == "chat" else "cmpl-"
        self.id = prefix + prep.request_id

    def add(self, out: RequestOutput) -> None:
        for d in out.deltas:
            c = self.choices[d.index]
            c.text += d.text
            c.logprobs.extend(d.logprobs or ())
            if d.finish_reason is not None:
                c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
        if out.finished and out.stats is not None:
            s = out.stats
            self.usage = Usage(
                s.prompt_tokens,
                s.completion_tokens,
                s.prompt_tokens + s.completion_tokens,
                PromptTokensDetails(s.cached_tokens),
                s.to_dict(),
            )

    def result(self) -> ChatCompletion | Completion:
        p = self.prep
        if p.kind == "chat":
            chat_choices = [
                ChatChoice(i, ChatMessage("assistant", c.text), c.finish_reason, self._chat_logprobs(c.logprobs), c.stop_reason)
                for i, c in enumerate(self.choices)
            ]  # fmt: skip
            return ChatCompletion(self.id, chat_choices, p.created, p.model, self.usage)
        text_choices = [
            CompletionChoice(i, c.text, c.finish_reason, self._completion_logprobs(c.logprobs, 0), c.stop_reason)
            for i, c in enumerate(self.choices)
        ]  # fmt: skip
        return Completion(self.id, text_choices, p.created, p.model, self.usage)

    def start(self) -> list[Any]:
        """Chunks sent before any token: the assistant role, for chat (as OpenAI does)."""
        if self.prep.kind != "chat":
            return []
        choices = [
            ChatChunkChoice(i, ChoiceDelta(role="assistant", content="")) for i in range(len(self.choices))
        ]
        return [self._chunk(choices)]

    def chunks(self, out: RequestOutput) -> list[Any]:
        offsets = [len(c.text) for c in self.choices]
        self.add(out)
        choices: list[Any] = []
        for d in out.deltas:
            if not (d.text or d.finish_reason or d.logprobs):
                continue
            stop = d.stop_reason if d.finish_reason else None
            if self.prep.kind == "chat":
                delta = ChoiceDelta(content=d.text) if d.text else ChoiceDelta()
                logprobs = self._chat_logprobs(list(d.logprobs or ()))
                choices.append(ChatChunkChoice(d.index, delta, d.finish_reason, logprobs, stop))
            else:
                logprobs = self._completion_logprobs(list(d.logprobs or ()), offsets[d.index])
                choices.append(CompletionChoice(d.index, d.text, d.finish_reason, logprobs, stop))
        chunks = [self._chunk(choices)] if choices else []
        if out.finished and self.prep.include_usage:
            chunks.append(self._chunk([], self.usage))
        return chunks

    def _chunk(self, choices: list[Any], usage: Usage | None = None) -> Any:
        p = self.prep
        kind = ChatCompletionChunk if p.kind == "chat" else Completion
        return kind(self.id, choices, p.created, p.model, usage)

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        raw = token_bytes(self.tokenizer, token_id)
        return raw.decode("utf-8", errors="replace"), list(raw)

    def _chat_logprobs(self, results: list[SampleResult]) -> ChoiceLogprobs | None:
        if not self.prep.params.logprobs:
            return None
        content = []
        for r in results:
            text, raw = self._token(r.token)
            tops = [TopLogprob(*self._token_lp(t, lp)) for t, lp in r.top_logprobs or ()]
            content.append(TokenLogprob(text, float(r.logprob or 0.0), raw, tops))
        return ChoiceLogprobs(content)

    def _token_lp(self, token_id: int, logprob: float) -> tuple[str, float, list[int]]:
        text, raw = self._token(token_id)
        return text, logprob, raw

    def _completion_logprobs(self, results: list[SampleResult], offset: int) -> CompletionLogprobs | None:
        if not self.prep.params.logprobs:
            return None
        out = CompletionLogprobs(top_logprobs=[] if self.prep.params.top_logprobs else None)
        for r in results:
            text, _ = self._token(r.token)
            out.tokens.append(text)
            out.token_logprobs.append(float(r.logprob or 0.0))
            out.text_offset.append(offset)
            offset += len(text)
            if out.top_logprobs is not None:
                out.top_logprobs.append({self._token(t)[0]: lp for t, lp in r.top_logprobs or ()})
        return out


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (the printable stand-in character -> the byte it stands for)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    stand_ins = [*printable, *(256 + i for i in range(len(others)))]
    return {chr(c): b for c, b in zip(stand_ins, [*printable, *others])}


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes a token stands for, as OpenAI's logprobs report them: a byte-level BPE token may
    hold part of a UTF-8 character, which decoding it alone would turn into U+FFFD."""
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend", None)
    piece = tokenizer.id_to_token(token_id) if backend is not None else None
    if piece is not None and isinstance(backend.decoder, decoders.ByteLevel):
        alphabet = _byte_level_alphabet()
        if all(ch in alphabet for ch in piece):  # special tokens are plain text
            return bytes(alphabet[ch] for ch in piece)
    return tokenizer.decode([token_id]).encode("utf-8")


# -- loading ---------------------------------------------------------------------------------------


def _plain_message(m: Mapping[str, Any]) -> dict[str, Any]:
    """A message with its content as text: OpenAI's list of parts ([{"type": "text", ...}]) joined."""
    if not isinstance(m, Mapping) or "role" not in m:
        raise ValueError(f"a chat message is a mapping with 'role' and 'content', got {m!r}")
    content = m.get("content")
    if isinstance(content, list):
        kinds = {part.get("type") for part in content}
        if kinds - {"text"}:
            raise ValueError(f"message content parts of type {sorted(kinds - {'text'})} are not supported")
        content = "".join(part["text"] for part in content)
    return {**m, "content": content if content is not None else ""}


def _load_artifact(model: Any, device: str | None, quantization: str | None, num_threads: int | None):
    from llm_deploy.runtime.artifact import Artifact, is_artifact, load_artifact

    targets = {None: "llvm", "cpu": "llvm", "webgpu": "webgpu", "vulkan": "vulkan"}  # --device -> its target
    if device not in targets:
        raise ValueError(f"device {device!r} is not available in this build; available: cpu, webgpu, vulkan")
    if isinstance(model, Artifact) or (isinstance(model, (str, os.PathLike)) and is_artifact(model)):
        artifact = model if isinstance(model, Artifact) else load_artifact(model, num_threads)
        built = artifact.executable.target
        if device is not None and targets[device] != built:
            raise ValueError(f"device {device!r} cannot run this artifact: it was built for --target {built}")
        return artifact
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"Engine(model): an artifact folder, a model name or path, or an Artifact; got {model!r}"
        )
    from llm_deploy.build import ensure_artifact  # needs the compiler: only for models not yet built

    return load_artifact(ensure_artifact(model, targets[device], quantization), num_threads)


def _pool_pages(artifact: Any, num_pages: int | None, kv_cache_bytes: int | None) -> int:
    from llm_deploy.kv_cache import PagedKVCache

    opts, cfg = artifact.build_options, artifact.config
    if num_pages is not None and kv_cache_bytes is not None:
        raise ValueError("give num_pages or kv_cache_bytes, not both")
    if num_pages is not None:
        return num_pages
    per_page = PagedKVCache.bytes_per_page(
        cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_dim"], opts["kv_page_size"], opts["kv_dtype"]
    )  # fmt: skip
    if kv_cache_bytes is not None:
        pages = kv_cache_bytes // per_page
        if pages < 1:
            raise ValueError(f"kv_cache_bytes={kv_cache_bytes} buys no page; a page takes {per_page} bytes")
        return pages
    return DEFAULT_CONTEXTS * -(-opts["context_window"] // opts["kv_page_size"])
