"""Stop strings, stop tokens, EOS and max_tokens: the streamed text never shows part of a stop string.

The reference reads the text one character at a time and stops where a stop string first ends;
the checker must give the same output however the text is split into tokens, and must stream as
much as it safely can at every step.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_deploy.serve.sampler import SamplingParams
from llm_deploy.serve.stop import StopChecker, StopStep, TextStream

EOS = 2


def run(pieces, eos=(EOS,), token_ids=None, **params) -> tuple[list[StopStep], str]:
    """Feed text pieces as tokens (ids 100, 101, ... unless given) until the checker finishes."""
    checker = StopChecker(SamplingParams(**params), eos_token_ids=eos)
    steps = []
    for i, piece in enumerate(pieces):
        steps.append(checker.step(token_ids[i] if token_ids else 100 + i, piece))
        if steps[-1].finished:
            break
    return steps, "".join(s.text for s in steps)


def reference(text: str, stops: list[str], include: bool = False) -> tuple[str, str | None]:
    """Character by character: cut where a stop string first ends (the earliest-starting one there)."""
    for end in range(1, len(text) + 1):
        hits = [(end - len(s), s) for s in stops if text[:end].endswith(s)]
        if hits:
            start, stop = min(hits)
            return (text[:end] if include else text[:start]), stop
    return text, None


def held(text: str, stops: list[str]) -> int:
    """How much of the end of `text` could still begin a stop string."""
    return max(
        (n for n in range(1, len(text) + 1) for s in stops if len(s) > n and s.startswith(text[-n:])),
        default=0,
    )


# ---------------------------------------------------------------------------------------------
# Stop strings


@pytest.mark.parametrize(
    "pieces",
    [
        ["Hello", " wor", "ld<|", "end|>", " more"],  # split over 2 tokens
        ["Hello", " world", "<", "|en", "d|>", "more"],  # over 3
        ["Hello world<|end|>"],  # inside one token
        ["Hello world<|e", "nd|>tail"],  # the token ending it carries more text
    ],
)
def test_stop_string_across_tokens_never_leaks(pieces):
    steps, out = run(pieces, stop=["<|end|>"])
    assert out == "Hello world"
    assert steps[-1].finish_reason == "stop" and steps[-1].stop_reason == "<|end|>"
    assert all("<" not in s.text for s in steps)


def test_overlapping_prefixes():
    steps, out = run(["a", "a", "b", "c"], stop=["ab"])
    assert [s.text for s in steps] == ["", "a", ""] and out == "a" and steps[-1].finish_reason == "stop"
    # "abab" fails as "abac" at its first "a" but the second "ab" starts the real match.
    steps, out = run(["xa", "ba", "ba", "c"], stop=["abac"])
    assert [s.text for s in steps] == ["x", "", "ab", ""] and out == "xab" and steps[-1].stop_reason == "abac"


def test_held_text_is_released_when_it_cannot_be_a_stop():
    steps, out = run(["ab", "x", "ab"], stop=["abc"], max_tokens=3)
    assert [s.text for s in steps] == ["", "abx", "ab"]  # the last step releases: max_tokens ends it
    assert steps[-1].finish_reason == "length" and steps[-1].stop_reason is None


def test_several_stop_strings_the_first_to_end_wins():
    assert run(["xabcd"], stop=["abcd", "c"])[1] == "xab"  # "c" ends first, reading left to right
    assert run(["xab", "cd"], stop=["abcd", "c"])[1] == "xab"
    steps, out = run(["x", "abc"], stop=["bc", "abc"])  # both end at once: cut at the earlier start
    assert out == "x" and steps[-1].stop_reason == "abc"
    steps, out = run(["one\n", "\nUser:"], stop=["User:", "\n\n"])
    assert out == "one" and steps[-1].stop_reason == "\n\n"


def test_stop_at_the_very_start():
    steps, out = run(["<|end|>", "x"], stop=["<|end|>"])
    assert out == "" and len(steps) == 1 and steps[0].finish_reason == "stop"
    steps, out = run(["<|", "end|>"], stop=["<|end|>"])
    assert [s.text for s in steps] == ["", ""] and steps[-1].finished


def test_include_stop_str_in_output():
    steps, out = run(["Hello <|e", "nd|> after"], stop=["<|end|>"], include_stop_str_in_output=True)
    assert out == "Hello <|end|>" and steps[-1].finish_reason == "stop"


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc\n", max_size=30),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), min_size=1, max_size=4),
    include=st.booleans(),
    data=st.data(),
)
def test_any_split_matches_the_character_reference(text, stops, include, data):
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=len(text) + 1)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]  # empty pieces allowed
    checker = StopChecker(SamplingParams(stop=stops, include_stop_str_in_output=include))
    expected, reason = reference(text, stops, include)
    seen, out = "", ""
    for i, piece in enumerate(pieces):
        step = checker.step(100 + i, piece)
        seen += piece
        out += step.text
        if step.finished:
            break
        assert out == seen[: len(seen) - held(seen, stops)]  # all that is safe, nothing more
    assert (checker.finish_reason == "stop") == (reason is not None)
    if reason is None:  # the text ran out first: ending the sequence releases what was held
        out += checker.finish().text
    assert out == expected


# ---------------------------------------------------------------------------------------------
# Stop tokens, EOS, max_tokens


def test_stop_token_ids_and_eos():
    steps, out = run(["Hi a", "<eot>"], token_ids=[100, 7], stop=["ab"], stop_token_ids=[7])
    assert out == "Hi a" and steps[-1].finish_reason == "stop" and steps[-1].stop_reason == 7
    steps, out = run(["Hi", "</s>"], token_ids=[100, EOS])
    assert out == "Hi" and steps[-1].finish_reason == "stop" and steps[-1].stop_reason is None
    steps, out = run(["Hi", "</s>", "!"], token_ids=[100, EOS, 101], ignore_eos=True, max_tokens=3)
    assert out == "Hi</s>!" and steps[-1].finish_reason == "length"
    steps, out = run(["Hi", "</s>", "<eot>"], token_ids=[100, EOS, 7], ignore_eos=True, stop_token_ids=[7])
    assert out == "Hi</s>" and steps[-1].stop_reason == 7
    steps, out = run(["Hi", "</s>"], token_ids=[100, EOS], include_stop_str_in_output=True)
    assert out == "Hi</s>"


def test_max_tokens_and_what_wins_on_the_last_token():
    steps, out = run(["a", "b", "c", "d"], max_tokens=2)
    assert out == "ab" and len(steps) == 2 and steps[-1].finish_reason == "length"
    steps, out = run(["x<", "|end|>"], stop=["<|end|>"], max_tokens=2)
    assert out == "x" and steps[-1].finish_reason == "stop"
    steps, out = run(["x", "!"], token_ids=[100, EOS], max_tokens=2)
    assert out == "x" and steps[-1].finish_reason == "stop"
    steps, out = run(["x<|e"], stop=["<|end|>"], max_tokens=1)
    assert out == "x<|e" and steps[-1].finish_reason == "length"


def test_finished_sequences_refuse_tokens_and_abort_releases_held_text():
    checker = StopChecker(SamplingParams(stop=["###"]))
    assert checker.step(100, "ok #").text == "ok "
    aborted = checker.finish()
    assert aborted == StopStep("#", "abort", None) and checker.finish().text == ""
    with pytest.raises(RuntimeError, match="already finished"):
        checker.step(101, "x")


# ---------------------------------------------------------------------------------------------
# TextStream: detokenizer and stop checker together, on a byte tokenizer


def byte_decode(ids: list[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


EOT = 256  # a special token outside the bytes; decodes to nothing


def stream_text(ids, eos=(EOT,), prompt=(), end=False, **params) -> tuple[str, list[StopStep]]:
    """Stream `ids`; with `end`, a sequence the ids did not finish is then ended from outside."""
    stream = TextStream(byte_decode, SamplingParams(**params), eos_token_ids=eos, prompt_ids=prompt)
    steps = []
    for t in ids:
        steps.append(stream.step(t))
        if steps[-1].finished:
            break
    if end and stream.finish_reason is None:
        steps.append(stream.finish())
    return "".join(s.text for s in steps), steps


def test_stop_string_made_of_split_characters():
    ids = [*"Voilà 😀 fin. 日本語".encode()]
    out, steps = stream_text(ids, stop=["😀 f"])
    assert out == "Voilà " and steps[-1].stop_reason == "😀 f"
    assert all("\ufffd" not in s.text for s in steps)
    out, steps = stream_text(ids, stop=["本"])
    assert out == "Voilà 😀 fin. 日" and steps[-1].finish_reason == "stop"


def test_stream_ends_carry_the_pending_bytes():
    cut = [*b"ok ", *"😀".encode()[:2]]
    out, steps = stream_text([*cut, EOT, *b"zz"])
    assert out == byte_decode(cut) == "ok \ufffd" and steps[-1].finish_reason == "stop"
    out, steps = stream_text([*cut, *b"zz"], max_tokens=len(cut))
    assert out == "ok \ufffd" and steps[-1].finish_reason == "length"
    stream = TextStream(byte_decode, SamplingParams(stop=["ok 😀!"]))
    assert [stream.step(t).text for t in cut] == ["", "", "", "", ""]  # all could start the stop
    assert stream.finish() == StopStep("ok \ufffd", "abort", None)


def test_stream_with_prompt_and_stop_token_ids():
    out, steps = stream_text([*b" world!", 300, *b"more"], prompt=[*b"Hello"], stop_token_ids=[300])
    assert out == " world!" and steps[-1].stop_reason == 300
    out, _ = stream_text([*b"ab", EOT, *b"c"], ignore_eos=True, max_tokens=4)
    assert out == "abc"


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet="ab😀本é\n", min_size=1, max_size=20),
    stops=st.lists(st.text(alphabet="ab😀本é\n", min_size=1, max_size=3), max_size=3),
    data=st.data(),
)
def test_stream_output_is_the_truncated_full_decode(text, stops, data):
    ids = [*text.encode()]
    max_tokens = data.draw(st.none() | st.integers(1, max(len(ids), 1)))
    out, steps = stream_text(ids, stop=stops, max_tokens=max_tokens, end=True)
    decoded = byte_decode(ids[:max_tokens] if max_tokens else ids)
    expected, reason = reference(decoded, stops)
    assert out == expected
    if reason is not None:
        assert steps[-1].finish_reason == "stop" and steps[-1].stop_reason == reason
    else:
        assert steps[-1].finish_reason == ("length" if max_tokens else "abort")
    assert all("\ufffd" not in s.text for s in steps[:-1])
