"""The interactive chat: `llm-deploy chat ARTIFACT_OR_MODEL` at a terminal.

    >>> What is the capital of France?
    The capital of France is Paris.
    >>> /stats
    prompt 37 tokens (0 cached), reply 8 tokens; first token 0.41 s; prefill 92.1 tokens/s; decode 9.8 tokens/s

Replies stream as they are generated, through the model's chat template, with the whole
conversation as context (the oldest turns are dropped when it outgrows the context window).
Ctrl-C stops the reply being written, not the program; Ctrl-D or /exit quits. A thin front end
over `Engine` (which loads an artifact, or builds a model once into the artifact cache).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from llm_deploy.serve.engine import PromptTooLongError
from llm_deploy.serve.sampler import SamplingParams

HELP = """commands:
  /help                 this text
  /exit                 quit (also /quit, Ctrl-D)
  /reset                forget the conversation
  /stats                speed of the last reply, and the KV cache
  /set k=v;k=v          sampling for the next replies, e.g. /set temperature=0.7;top_p=0.9;max_tokens=256
                        keys: {keys}; stop takes a,b,c; k= resets k to the model's default
  /set                  show the sampling settings
Ctrl-C stops the reply being written."""

# /set keys -> how their text becomes a value.
SETTABLE: dict[str, Callable[[str], Any]] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "max_tokens": int,
    "seed": int,
    "stop": lambda s: [part for part in s.split(",") if part],
    "frequency_penalty": float,
    "presence_penalty": float,
    "repetition_penalty": float,
}


@dataclass
class ReplyStats:
    """What /stats reports about a reply: the engine's usage when it finished, else what the
    client saw (a stopped reply has no usage)."""

    started: float
    first_token: float | None = None
    ended: float | None = None
    chunks: int = 0
    usage: Any = None  # responses.Usage of a finished reply
    stopped: bool = False

    def describe(self) -> str:
        if self.usage is not None:
            u, extra = self.usage, self.usage.extra or {}
            return (
                f"prompt {u.prompt_tokens} tokens ({u.prompt_tokens_details.cached_tokens} cached), "
                f"reply {u.completion_tokens} tokens; first token {extra.get('ttft_s', 0):.2f} s; "
                f"prefill {extra.get('prefill_tokens_per_s', 0):.1f} tokens/s; "
                f"decode {extra.get('decode_tokens_per_s', 0):.1f} tokens/s"
            )
        first = f"first token {self.first_token - self.started:.2f} s; " if self.first_token else ""
        end = self.ended or time.perf_counter()
        return f"stopped after {self.chunks} pieces of text in {end - self.started:.2f} s; {first}no usage counted"


@dataclass
class ChatSession:
    """A conversation with one engine: its history and sampling settings, and the REPL's commands.
    `write` receives everything meant for the terminal."""

    engine: Any  # llm_deploy.Engine
    sampling: dict[str, Any] = field(default_factory=dict)  # overrides of the model's defaults
    write: Callable[[str], Any] = sys.stdout.write
    history: list[dict[str, str]] = field(default_factory=list)
    last: ReplyStats | None = None

    def handle(self, line: str) -> bool:
        """Act on one line of input; False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if not text.startswith("/"):
            self.reply(line)
            return True
        command, _, arg = text.partition(" ")
        match command:
            case "/exit" | "/quit":
                return False
            case "/help":
                self.write(HELP.format(keys=", ".join(SETTABLE)) + "\n")
            case "/reset":
                self.history.clear()
                self.write("(conversation cleared)\n")
            case "/stats":
                self.write(self.stats_text() + "\n")
            case "/set":
                self.set(arg)
            case _:
                self.write(f"unknown command {command}; /help lists them\n")
        return True

    def set(self, arg: str) -> None:
        """Apply `k=v;k=v`; all or nothing: a bad key or value leaves the settings as they were."""
        if not arg.strip():
            current = self.engine.default_sampling | self.sampling
            self.write("; ".join(f"{k}={_show(v)}" for k, v in current.items()) + "\n")
            return
        new = dict(self.sampling)
        for item in filter(None, (s.strip() for s in arg.split(";"))):
            key, eq, value = (part.strip() for part in item.partition("="))
            if key not in SETTABLE or not eq:
                self.write(f"/set: expected key=value with a key among {', '.join(SETTABLE)}; got {item!r}\n")
                return
            if not value:
                new.pop(key, None)
                continue
            try:
                new[key] = SETTABLE[key](value)
            except ValueError:
                self.write(f"/set: {key} takes {_kind(key)}, got {value!r}\n")
                return
        try:
            SamplingParams(**(self.engine.default_sampling | new))
        except ValueError as e:
            self.write(f"/set: {str(e).removeprefix('SamplingParams.')}\n")
            return
        self.sampling = new
        self.write(
            "; ".join(f"{k}={_show(v)}" for k, v in (self.engine.default_sampling | new).items()) + "\n"
        )

    def reply(self, text: str) -> None:
        """Stream the model's answer to `text`; Ctrl-C stops it (what was written stays in the
        conversation)."""
        self.history.append({"role": "user", "content": text})
        stats = self.last = ReplyStats(time.perf_counter())
        stream = self._start()
        if stream is None:
            return
        answer: list[str] = []
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    stats.usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        stats.first_token = stats.first_token or time.perf_counter()
                        stats.chunks += 1
                        answer.append(choice.delta.content)
                        self.write(choice.delta.content)
                        _flush(self.write)
        except KeyboardInterrupt:
            stream.close()  # cancels the request: its pages return to the pool
            stats.stopped = True
            self.write(" [stopped]")
        except Exception as e:  # the engine failed this request: say so, keep the session
            stream.close()
            self.write(f"\n[error: {e}]")
        stats.ended = time.perf_counter()
        self.write("\n")
        self.history.append({"role": "assistant", "content": "".join(answer)})

    def _start(self) -> Any:
        """The reply's chunk stream; the oldest turns go while the conversation is too long."""
        create = self.engine.chat.completions.create
        while True:
            try:
                return create(
                    messages=self.history,
                    stream=True,
                    stream_options={"include_usage": True},
                    **self.sampling,
                )
            except PromptTooLongError as e:
                if len(self.history) == 1 or self._too_long_alone(self.history[-1]):
                    self.write(f"[{e}]\n")
                    self.history.pop()
                    return None
                del self.history[:2]  # the oldest exchange: a user turn and its reply
                self.write("(the conversation outgrew the context window: dropped its oldest turn)\n")
            except ValueError as e:
                self.write(f"[{e}]\n")
                self.history.pop()
                return None

    def _too_long_alone(self, message: dict[str, str]) -> bool:
        window = self.engine.core.runner.context_window
        return len(self.engine.tokenizer.apply_chat_template([message])) >= window

    def stats_text(self) -> str:
        s = self.engine.stats()
        cache = f"KV cache: {s.pages_used} of {s.num_pages} pages in use ({s.prefix_cache_pages} by the prefix cache)"
        if self.last is None:
            return f"no reply yet; {cache}"
        return f"{self.last.describe()}\n{cache}"


def _show(value: Any) -> str:
    return ",".join(value) if isinstance(value, (list, tuple)) else str(value)


def _kind(key: str) -> str:
    kind = SETTABLE[key]
    return {float: "a number", int: "an integer"}.get(kind, "a comma-separated list")


def _flush(write: Callable[[str], Any]) -> None:
    stream = getattr(write, "__self__", None)
    if stream is not None and hasattr(stream, "flush"):
        stream.flush()


def run_chat(
    model: Any,
    *,
    device: str | None = None,
    quantization: str | None = None,
    sampling: dict[str, Any] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """The REPL: read a line, answer it, until /exit or end of input. `model` as `Engine` takes it."""
    from llm_deploy import Engine

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if stdin is sys.stdin and stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    with Engine(model, device=device, quantization=quantization) as engine:
        session = ChatSession(engine, dict(sampling or {}), stdout.write)
        window = engine.core.runner.context_window
        stdout.write(
            f"llm_deploy chat: {engine.model} (context window {window} tokens). "
            "/help for commands; /exit or Ctrl-D quits; Ctrl-C stops a reply.\n"
        )
        while True:
            try:
                stdout.flush()
                line = input(">>> ") if stdin is sys.stdin else _read(stdin, stdout)
            except EOFError:
                stdout.write("\n")
                return 0
            except KeyboardInterrupt:
                stdout.write("\n(Ctrl-C stops a reply; /exit or Ctrl-D quits)\n")
                continue
            if not session.handle(line):
                return 0


def _read(stdin: TextIO, stdout: TextIO) -> str:
    stdout.write(">>> ")
    stdout.flush()
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")
