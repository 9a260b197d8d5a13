"""The interactive chat, `llm-deploy chat ARTIFACT`, driven through a pseudo-terminal as a user
types into it; and its session object in process (commands, /set, a conversation that outgrows
the context window). The replies are held to the Python API's greedy answers for the same
conversation."""

from __future__ import annotations

import io
import os
import re
import sys

import pexpect
import pytest

from llm_deploy import Engine
from llm_deploy.runtime.artifact import load_artifact
from llm_deploy.serve.chat import ChatSession

PROMPT = ">>> "


@pytest.fixture(scope="module")
def engine(tiny_artifact):
    with Engine(load_artifact(tiny_artifact), num_pages=64) as e:
        yield e


def answer(engine, history: list[dict], **kw) -> str:
    return engine.chat.completions.create(messages=history, **kw).choices[0].message.content


def terminal_text(raw: str) -> str:
    """What the program wrote, as text: the terminal's CR-LF back to LF, mode switches removed."""
    return re.sub(r"\x1b\[\?\d+[hl]", "", raw).replace("\r\n", "\n")


@pytest.fixture(scope="module")
def long_context_artifact(tmp_path_factory):
    """The tiny model with room for a reply of thousands of tokens: long enough (seconds) for a
    Ctrl-C to land mid-reply, where 230 tokens now take a fraction of a second."""
    from llm_deploy.build import build_model

    return build_model(
        "llama-tiny", output=tmp_path_factory.mktemp("long") / "a", progress=False, context_window=8192
    )


def test_ctrl_c_stops_the_reply_not_the_program(long_context_artifact):
    env = {**os.environ, "TERM": "dumb", "COLUMNS": "400"}
    child = pexpect.spawn(
        sys.executable, ["-m", "llm_deploy.cli", "chat", str(long_context_artifact), "--temperature", "0", "--max-tokens", "8000"],
        encoding="utf-8", timeout=60, env=env, dimensions=(50, 400),
    )  # fmt: skip
    child.expect_exact(PROMPT)
    child.sendline("Tell me a long story")
    child.expect(r"Tell me a long story\r\n.")  # the reply has started
    child.sendintr()
    child.expect_exact(PROMPT)
    assert "[stopped]" in child.before
    child.sendline("/stats")
    child.expect_exact(PROMPT)
    stopped = terminal_text(child.before)
    match = re.search(r"stopped after (\d+) pieces of text", stopped)
    assert match and int(match.group(1)) < 8000, stopped
    assert re.search(r"(\d+) of \d+ pages in use \(\1 by the prefix cache\)", stopped), stopped
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_in_a_terminal(tiny_artifact, engine):
    env = {**os.environ, "TERM": "dumb", "COLUMNS": "400"}
    child = pexpect.spawn(
        sys.executable, ["-m", "llm_deploy.cli", "chat", str(tiny_artifact), "--temperature", "0", "--max-tokens", "10"],
        encoding="utf-8", timeout=60, env=env, dimensions=(50, 400),
    )  # fmt: skip

    def say(line: str) -> str:
        child.sendline(line)
        child.expect_exact(PROMPT)
        out = terminal_text(child.before)
        assert out.startswith(line + "\n"), out  # the echo of what was typed
        return out[len(line) + 1 :]

    child.expect_exact(PROMPT)
    assert "llama-tiny" in child.before and "/help" in child.before

    # Two turns: the second answers with the first in its context.
    greedy = dict(temperature=0, max_tokens=10)
    history = [{"role": "user", "content": "Hello there"}]
    first = answer(engine, history, **greedy)
    assert say("Hello there") == first + "\n"
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    assert say("And then?") == answer(engine, history, **greedy) + "\n"
    assert answer(engine, history[-1:], **greedy) != answer(engine, history, **greedy)  # history mattered

    stats = say("/stats")
    assert re.search(r"prompt \d+ tokens \(\d+ cached\), reply 10 tokens; first token [\d.]+ s", stats), stats
    assert re.search(r"decode [\d.]+ tokens/s", stats) and "KV cache:" in stats

    # /reset: the same question now gets the answer it gets alone.
    assert say("/reset") == "(conversation cleared)\n"
    assert say("And then?") == answer(engine, history[-1:], **greedy) + "\n"

    assert say("/set temperature=5").startswith("/set: temperature must be in [0, 2]")
    assert say("/nope").startswith("unknown command /nope")
    assert "/reset" in say("/help")

    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_prompt_answers_once_even_at_a_terminal(tiny_artifact, engine):
    proc = pexpect.run(
        f"{sys.executable} -m llm_deploy.cli chat {tiny_artifact} --temperature 0 --max-tokens 6 --prompt Hi",
        encoding="utf-8", timeout=60,
    )  # fmt: skip
    assert (
        terminal_text(proc)
        == answer(engine, [{"role": "user", "content": "Hi"}], temperature=0, max_tokens=6) + "\n"
    )


def session(engine) -> tuple[ChatSession, io.StringIO]:
    out = io.StringIO()
    return ChatSession(engine, {"temperature": 0, "max_tokens": 4}, out.write), out


def test_set_validates_all_or_nothing(engine):
    s, out = session(engine)
    s.handle("/set temperature=0.5; top_p=0.9 ;stop=ab,cd;seed=3")
    assert s.sampling == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 4, "stop": ["ab", "cd"], "seed": 3}
    assert "stop=ab,cd" in out.getvalue()
    for bad, says in [
        ("top_p=0", "top_p must be in (0, 1]"),
        ("seed=x", "seed takes an integer"),
        ("colour=red", "expected key=value"),
        ("temperature", "expected key=value"),
        ("temperature=0.1;max_tokens=-2", "max_tokens must be >= 1"),
    ]:
        before = dict(s.sampling)
        s.handle(f"/set {bad}")
        assert s.sampling == before and says in out.getvalue().splitlines()[-1]
    s.handle("/set seed=;stop=")  # back to the defaults
    assert "seed" not in s.sampling and "stop" not in s.sampling


def test_a_long_conversation_drops_its_oldest_turns(engine):
    s, out = session(engine)
    s.sampling["max_tokens"] = 2
    for i in range(12):  # each turn ~25 tokens of a 256-token window
        s.handle(f"turn {i}: " + "lorem ipsum " * 6)
    assert "dropped its oldest turn" in out.getvalue()
    assert s.history[-2]["content"].startswith("turn 11:") and len(s.history) < 24
    kept = list(s.history)
    s.handle("x " * 300)  # alone too long: said, and the conversation stays as it was
    assert "context window" in out.getvalue().splitlines()[-1] and s.history == kept
    assert engine.core.wait_idle(10) and engine.stats().failed_requests == 0
